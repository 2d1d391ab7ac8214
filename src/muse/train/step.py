"""One training step, shared by everything that trains or measures training.

``muse train`` (the :class:`~muse.train.trainer.Trainer`), ``muse memory`` / ``muse verify``
(:mod:`muse.memory.profile`) and the benchmarks all build the model and optimizer with
:func:`build_training` and run the step as a :class:`TrainStep` (captured through
:func:`capture` under ``train.cuda_graph``), so a measured peak or throughput is the peak or
throughput of the step the trainer runs, clipping and loss scaling included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from muse.config import Config
from muse.runtime import autocast_context
from muse.train.graph import CapturedStep, make_capturable
from muse.train.optim import build_optimizer, clip_grad_norm

__all__ = ["TrainStep", "build_training", "capture", "training_loss"]


def build_training(cfg: Config, device: torch.device, *, optimizer: bool = True,
                   init_on_device: bool = False) -> tuple[nn.Module, torch.optim.Optimizer | None]:
    """The model of ``cfg`` on ``device`` in its training dtype, and its optimizer (``None`` with
    ``optimizer=False``). Seed the generator first for reproducible weights.

    ``bf16-pure`` builds the parameters in bf16 from the start: an fp32 copy first would double
    the peak (and break budgets). ``init_on_device`` False (the trainer) initialises on the CPU and
    moves the model, so a run's weights do not depend on the device it trains on; True (memory
    measurements) builds on ``device`` directly, with no host copy of a model that may be large.
    """
    from muse.model import build_model

    device = torch.device(device)
    dtype = torch.bfloat16 if cfg.train.precision == "bf16-pure" else None
    if init_on_device:
        model = build_model(cfg, device=device, dtype=dtype)
    else:
        model = build_model(cfg, dtype=dtype).to(device)
    return model, build_optimizer(model, cfg.train, device.type) if optimizer else None


def training_loss(model: nn.Module, x: Tensor, y: Tensor, autocast=None) -> tuple[Tensor, Tensor]:
    """One forward of the training objective on ids ``x`` and targets ``y`` (B, N) under
    ``autocast`` (a context manager; none: as the model's dtype runs). Returns ``(objective,
    loss)``: the next-token loss plus the model's auxiliary loss, which backward differentiates,
    and the next-token loss alone, which is reported."""
    with autocast if autocast is not None else contextlib.nullcontext():
        out = model(x, y)
        objective = out.loss if out.aux_loss is None else out.loss + out.aux_loss
    return objective, out.loss


class TrainStep:
    """``step(x, y) -> loss``: the trainer's update on the micro-batches ``x[i], y[i]`` (accum, B, N).

    For each micro-batch: forward of :func:`training_loss` under the precision's autocast through
    ``forward_model`` (default ``model``; under DDP or FSDP the gradients are reduced at the last
    micro-batch only), and backward of objective / accum, loss-scaled for ``fp16``.
    Then, with ``grad_clip`` > 0, unscaling and :func:`~muse.train.optim.clip_grad_norm` over
    every gradient (host-side ones of ``adamw-offload`` too), and the optimizer step through the
    grad scaler. Returns the mean next-token loss over the micro-batches as a 0-d fp32 device
    tensor; the caller reads it when it likes, so the step itself never syncs with the host
    (except fp16 loss scaling's, which ``train.cuda_graph`` refuses) and :func:`capture` can
    record it. The gradients are left in place: call :meth:`zero_grad` after the step (a
    :class:`~muse.train.graph.CapturedStep` does that itself).

    ``optimizer`` None: forward, backward and clipping only, no loss scaling and no update (a
    forward + backward memory measurement, or the estimate, whose optimizer state is computed).
    ``scaler``: the trainer's, whose state goes into checkpoints; by default one is made for the
    precision.
    """

    def __init__(self, model: nn.Module, optimizer, device: torch.device, *, precision: str = "fp32",
                 grad_clip: float = 0.0, forward_model: nn.Module | None = None,
                 scaler: torch.amp.GradScaler | None = None):
        self.model, self.optimizer = model, optimizer
        self.device = torch.device(device)
        self.forward_model = model if forward_model is None else forward_model
        self.grad_clip = grad_clip
        self.autocast = autocast_context(precision, self.device)
        if scaler is None:
            scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16" and optimizer is not None)
        self.scaler = scaler
        self._no_sync = _no_sync_context(self.forward_model)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        accum = x.shape[0]
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(accum):
            sync = contextlib.nullcontext()
            if self._no_sync is not None and micro < accum - 1:
                sync = self._no_sync()  # gradients reduced once per step, at the last micro-batch
            with sync:  # DDP decides in the forward, FSDP in the backward: both inside
                objective, loss = training_loss(self.forward_model, x[micro], y[micro], self.autocast)
                self.scaler.scale(objective / accum).backward()
            loss_sum += loss.detach().float()
        if self.grad_clip:
            if self.optimizer is not None:
                self.scaler.unscale_(self.optimizer)
            clip_grad_norm(self.model, self.optimizer, self.grad_clip)
        if self.optimizer is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss_sum / accum

    def zero_grad(self) -> None:
        """Drop the gradients (set to None, so the next backward assigns rather than adds)."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.model.zero_grad(set_to_none=True)


def _no_sync_context(model: nn.Module) -> Callable[[], contextlib.AbstractContextManager] | None:
    """A context that skips the gradient reduction of data parallelism for a micro-batch (DDP's
    ``no_sync``, also under torch.compile, which forwards attribute lookups; FSDP2's
    ``set_requires_gradient_sync``), or None for a single-device model."""
    if hasattr(model, "no_sync"):
        return model.no_sync
    if hasattr(model, "set_requires_gradient_sync"):

        @contextlib.contextmanager
        def no_sync():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)

        return no_sync
    return None


def capture(step: TrainStep, *, strict: bool = True, notify: Callable[[str], None] | None = None) -> CapturedStep:
    """``step`` as ``train.cuda_graph`` runs it: eager warm-up steps, then one CUDA-graph replay
    per call (:class:`~muse.train.graph.CapturedStep`, which zeroes the gradients itself; see it
    for ``strict`` and ``notify``). Makes the optimizer capturable first, so call it after any
    checkpoint state has been loaded into the optimizer."""
    if step.optimizer is None:
        raise ValueError("a captured training step needs an optimizer (the update is part of the graph)")
    make_capturable(step.optimizer, step.device)
    return CapturedStep(step, step.zero_grad, strict=strict, notify=notify)
