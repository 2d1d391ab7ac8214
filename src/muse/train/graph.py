"""The whole training step as one CUDA graph (``train.cuda_graph``).

A training step of a small or factorised model is hundreds of short kernels: in eager mode the
host cannot launch them as fast as the GPU runs them, and even a compiled step spends host time
in the optimizer and the glue between graphs. Captured once, the step (forward, backward,
gradient clipping, the optimizer update) is one ``cudaGraphLaunch``.

How it is turned on: ``train.cuda_graph`` is ``auto`` by default, and the trainer resolves it
once, through :func:`resolve_cuda_graph`, to on exactly where the step can be captured (one CUDA
device, AdamW or torchao's 8-bit AdamW, not fp16, no ``compile_mode`` with CUDA graphs of its
own, no model path that syncs with the host) and to off elsewhere, and logs one line saying
which and why. ``true`` captures or fails with the reason; ``false`` never captures.

What this needs from the step, and how MUSE provides it:

- **No host syncs.** Token-id range checks run on the device while capturing
  (``muse.ops._dispatch.check_range``); loss scaling (fp16) reads a flag on the host every step,
  and a checkpointed block with dropout saves and restores the CUDA RNG state on the host, so the
  config refuses both; the TT embedding's torch row gather deduplicates ids with ``torch.unique``,
  so a step that took it in its last warm-up step is not captured (:data:`HOST_SYNC_PATHS`); loss
  values are read in batches by the trainer anyway.
- **Static memory.** Inputs are copied into fixed buffers before each replay; gradients live in
  the graph's pool and are overwritten, not accumulated, by each replay (they are None when the
  capture starts, so the captured backward assigns them); the loss the graph returns is one
  buffer, cloned after each replay. The graph's pool stays reserved between steps, so the
  (uncaptured) evaluation allocates beside it: at the very edge of GPU memory, ``false`` can fit
  where a captured step does not (``muse memory`` measures the uncaptured step).
- **A capturable optimizer** (:func:`make_capturable`) whose learning rate and step counters are
  device tensors: a host value would be baked into the captured kernels, and the schedule and
  the bias corrections would silently stop. The ``LambdaLR`` schedule fills the LR tensors in
  place after each replay. ``torch.optim.AdamW`` runs fused with ``capturable``; torchao's
  ``AdamW8bit`` keeps its LR and step counters on the host and creates its state at the first
  update, so its state is created up front with the counters on the device (its per-parameter
  update is ``torch.compile``'d with ``fullgraph=True``: device kernels only, once compiled).
- **Warm-up before capture.** The first ``WARMUP_STEPS`` steps run eagerly on a side stream:
  they create the optimizer state, autotune the Triton kernels, compile under ``train.compile``
  (and torchao's update) and let autograd settle its streams (PyTorch's CUDA-graph notes ask for
  this). They are real training steps on real batches; the capture itself runs nothing.

Random numbers (dropout) are safe: PyTorch advances the generator's offset on every replay.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from muse.config import Config, ConfigError
from muse.runtime import side_stream_call

__all__ = [
    "HOST_SYNC_PATHS", "WARMUP_STEPS", "CapturedStep", "capture_blocker", "make_capturable", "resolve_cuda_graph",
    "static_copy",
]

WARMUP_STEPS = 3

# (op, implementation) pairs, as ``muse.ops.record_paths`` names them, that read device values on
# the host during a step: a capture would abort on them. The TT embedding takes its torch row
# gather where the fused kernel cannot run (no Triton, a rank or tile beyond the kernel's limits).
HOST_SYNC_PATHS = {
    ("tt_gather", "torch"): "the TT embedding's torch row gather (torch.unique over the batch's ids)",
}


def _kind(opt) -> str | None:
    """"adamw" (torch.optim.AdamW), "adamw8bit" (torchao's AdamW8bit) or None."""
    if type(opt) is torch.optim.AdamW:
        return "adamw"
    cls = type(opt)
    if cls.__name__ == "AdamW8bit" and cls.__module__.startswith("torchao."):  # no torchao import for the check
        return "adamw8bit"
    return None


def capture_blocker(opt) -> str | None:
    """Why ``opt.step()`` cannot run inside a captured graph, or None."""
    kind = _kind(opt)
    if kind is None:
        return (f"optimizer {type(opt).__name__} (only torch.optim.AdamW and torchao's AdamW8bit are made "
                "capturable)")
    if kind == "adamw8bit" and not callable(getattr(opt, "_new_buffer", None)):
        # make_capturable creates the state as torchao's first update would, through this method
        return "adamw8bit: this torchao's AdamW8bit has no _new_buffer to create its state on the device with"
    return None


def resolve_cuda_graph(cfg: Config, device: torch.device, world_size: int, optimizer=None) -> tuple[bool, str]:
    """Whether the trainer captures its step, and why: ``(on, reason)``.

    ``train.cuda_graph`` false: off. ``auto``: on exactly where the step can be captured, i.e. one
    process on a CUDA device, no conflict in the config (:meth:`Config.cuda_graph_conflict`) and,
    when given, an ``optimizer`` that :func:`capture_blocker` accepts; the reason names what
    decided. ``true``: on, or a ConfigError naming what stands in the way.
    """
    setting = cfg.train.cuda_graph
    if setting is False:
        return False, "train.cuda_graph false"
    blocked = None
    if device.type != "cuda" or world_size > 1:
        where = f"{world_size} processes" if device.type == "cuda" else f"device {device}"
        blocked = where, f"train.cuda_graph needs a single CUDA device; this run has {where}"
    blocked = blocked or cfg.cuda_graph_conflict()
    if blocked is None and optimizer is not None and (why := capture_blocker(optimizer)):
        blocked = why, f"train.cuda_graph: {why}"
    if setting is True:
        if blocked:
            raise ConfigError(blocked[1])
        return True, "train.cuda_graph true"
    if blocked:
        return False, blocked[0]
    return True, f"one CUDA device, {cfg.train.optimizer}, {cfg.train.precision}"


def make_capturable(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """Make ``opt`` safe to capture (call after loading a checkpoint's state, which restores
    host-side learning rates and step counters; calling it again changes nothing).

    ``torch.optim.AdamW``: ``capturable`` set and each group's ``lr`` a 0-d fp32 tensor on
    ``device``. torchao's ``AdamW8bit``: each group's ``lr`` likewise (torchao keeps a host tensor,
    which Inductor would pass to the captured kernels by value), and every parameter's state
    created now as its first update would create it, but with the ``step`` counter on ``device``
    (torchao makes a host tensor and increments it on the host, which a replay never runs).
    Any other optimizer raises ValueError (:func:`capture_blocker`): captured, whatever it keeps
    on the host would be frozen in and it would train wrongly without an error.
    """
    if why := capture_blocker(opt):
        raise ValueError(f"train.cuda_graph needs torch.optim.AdamW or torchao's AdamW8bit; {why}")
    for group in opt.param_groups:
        lr = group["lr"]
        if not (isinstance(lr, Tensor) and _on(lr, device) and lr.dtype == torch.float32 and lr.ndim == 0):
            group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
        if _kind(opt) == "adamw":
            group["capturable"] = True
            continue
        for p in group["params"]:
            state = opt.state[p]
            if not state:  # what torchao's first update creates (torchao.optim.adam._AdamBase.step)
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = opt._new_buffer(p, True)
                state["exp_avg_sq"] = opt._new_buffer(p, False)
                if group.get("amsgrad"):
                    state["max_exp_avg_sq"] = opt._new_buffer(p, False)
            elif not _on(state["step"], p.device):
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def static_copy(t: Tensor) -> Tensor:
    """A copy of ``t`` in fresh memory with its sizes, strides and storage offset.

    The capture must run the graphs ``train.compile`` built during the warm-up, and dynamo guards
    on strides: ``t.clone()`` of a view such as ``ids[:, :-1]`` is contiguous, so the captured
    forward recompiled, and compiling inside a capture aborts it (Inductor reads values on the
    host). The offset keeps the warm-up's alignment, which Inductor's code may assume."""
    extent = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True)) if t.numel() else 0
    base = torch.empty(t.storage_offset() + extent, dtype=t.dtype, device=t.device)
    return base.as_strided(t.shape, t.stride(), t.storage_offset()).copy_(t)


def _on(t: Tensor, device: torch.device) -> bool:
    """t lies on ``device`` ("cuda" without an index: on some CUDA device)."""
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


class CapturedStep:
    """``step(batch) -> loss`` run eagerly for ``warmup`` calls, then captured and replayed.

    ``step`` must not sync with the host, must leave the gradients it produces in ``.grad`` for
    the optimizer it calls and must not zero them (``zero_grad`` below does that between eager
    steps, and before the capture so that the captured backward assigns fresh gradients).
    ``batch`` is a tuple of device tensors of the same shapes and dtypes on every call, on the
    current CUDA device.

    The last warm-up step records the implementations MUSE's ops run (``muse.ops.record_paths``;
    eager ops only, so not inside ``train.compile``): if one of them syncs with the host
    (:data:`HOST_SYNC_PATHS`), ``strict`` raises ConfigError; otherwise the step is never
    captured, every later call runs eagerly, ``uncaptured`` holds the reason and ``notify`` (if
    given) is called with it once.
    """

    def __init__(self, step: Callable[..., Tensor], zero_grad: Callable[[], None], warmup: int = WARMUP_STEPS,
                 strict: bool = True, notify: Callable[[str], None] | None = None):
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (eager steps before the capture); got {warmup}")
        self.step, self.zero_grad, self.warmup = step, zero_grad, warmup
        self.strict, self.notify = strict, notify
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.uncaptured: str | None = None
        self._static: tuple[Tensor, ...] = ()
        self._loss: Tensor | None = None
        self._side: torch.cuda.Stream | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, *batch: Tensor) -> Tensor:
        if not all(t.is_cuda for t in batch):
            raise ValueError("train.cuda_graph replays a CUDA graph: the batch must be on a CUDA device")
        current = torch.cuda.current_device()
        if any(t.device.index != current for t in batch):
            # streams and the capture belong to the current device: kernels on another would run
            # outside the capture, and the replays would do nothing
            raise ValueError(f"train.cuda_graph captures on the current CUDA device (cuda:{current}); the batch is "
                             f"on {batch[0].device}: make it current first (torch.cuda.set_device)")
        self.calls += 1
        if self.uncaptured is not None:
            loss = self.step(*batch)
            self.zero_grad()
            return loss
        if self.graph is None and self.calls < self.warmup:
            return self._eager(batch)
        if self.graph is None and self.calls == self.warmup:
            return self._last_warmup(batch)
        if self.graph is None:
            self._capture(batch)
        for dst, src in zip(self._static, batch, strict=True):
            if dst.shape != src.shape or dst.dtype != src.dtype:
                raise ValueError(
                    f"train.cuda_graph: the captured step takes {tuple(dst.shape)} {dst.dtype} inputs; got "
                    f"{tuple(src.shape)} {src.dtype} (batch shapes must not change between steps)"
                )
            dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self._loss.clone()  # the graph's loss buffer is overwritten by the next replay

    def _last_warmup(self, batch: tuple[Tensor, ...]) -> Tensor:
        from muse.ops import record_paths

        with record_paths() as paths:
            loss = self._eager(batch)
        syncs = [why for (op, impl), why in HOST_SYNC_PATHS.items() if impl in paths.get(op, ())]
        if syncs:
            reason = f"the step syncs with the host in {'; '.join(syncs)}"
            if self.strict:  # a setting that cannot be honoured: one line, no traceback
                raise ConfigError(f"train.cuda_graph true: the training step cannot be captured: {reason}; set "
                                  "train.cuda_graph auto or false")
            self.uncaptured = reason
            if self.notify is not None:
                self.notify(reason)
        return loss

    def _eager(self, batch: tuple[Tensor, ...]) -> Tensor:
        if self._side is None:
            self._side = torch.cuda.Stream(device=torch.cuda.current_stream().device)

        def step() -> Tensor:
            loss = self.step(*batch)
            self.zero_grad()
            return loss

        return side_stream_call(step, self._side)

    def _capture(self, batch: tuple[Tensor, ...]) -> None:
        self._static = tuple(static_copy(t) for t in batch)
        self.zero_grad()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._loss = self.step(*self._static)
        except Exception as e:  # noqa: BLE001 - anything the capture refuses gets the same advice
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise RuntimeError(
                f"train.cuda_graph: the training step cannot be captured as a CUDA graph ({type(e).__name__}: "
                f"{first}); set train.cuda_graph false"
            ) from e
        self.graph = graph
