"""The whole training step as one CUDA graph (``train.cuda_graph``).

A training step of a small or factorised model is hundreds of short kernels: in eager mode the
host cannot launch them as fast as the GPU runs them (`standard` at N=2K, B=8 on an H100:
49 ms eager, 12 ms replayed), and even a compiled step spends ~1 ms of host time per step in
the optimizer and the glue between graphs. Captured once, the step (forward, backward, gradient
clipping, the fused AdamW update) is one ``cudaGraphLaunch``.

What this needs from the step, and how MUSE provides it:

- **No host syncs.** Token-id range checks run on the device while capturing
  (``muse.ops._dispatch.check_range``); loss scaling (fp16) reads a flag on the host every step,
  so the config refuses it; loss values are read in batches by the trainer anyway.
- **Static memory.** Inputs are copied into fixed buffers before each replay; gradients live in
  the graph's pool and are overwritten, not accumulated, by each replay (they are None when the
  capture starts, so the captured backward assigns them); the loss the graph returns is one
  buffer, cloned after each replay.
- **A capturable optimizer** whose learning rate is a device tensor (:func:`make_capturable`):
  a float would be baked into the captured kernel, and the schedule would silently stop. The
  ``LambdaLR`` schedule fills those tensors in place after each replay.
- **Warm-up before capture.** The first ``WARMUP_STEPS`` steps run eagerly on a side stream:
  they create the optimizer state, autotune the Triton kernels, compile under ``train.compile``
  and let autograd settle its streams (PyTorch's CUDA-graph notes ask for this). They are real
  training steps on real batches; the capture itself runs nothing.

Random numbers (dropout) are safe: PyTorch advances the generator's offset on every replay.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["WARMUP_STEPS", "CapturedStep", "make_capturable"]

WARMUP_STEPS = 3


def make_capturable(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """Make a ``torch.optim.AdamW`` safe to capture: ``capturable`` set and each group's ``lr`` a
    0-d tensor on ``device`` (call after loading a checkpoint's state: that restores float LRs)."""
    if type(opt) is not torch.optim.AdamW:
        # others (torchao's 8-bit AdamW compiles its own per-parameter steps) would be captured
        # with whatever they keep on the host frozen in, and train wrongly without an error
        raise ValueError(f"train.cuda_graph needs torch.optim.AdamW (train.optimizer adamw); got {type(opt).__name__}")
    for group in opt.param_groups:
        group["capturable"] = True
        lr = group["lr"]
        if not (isinstance(lr, Tensor) and lr.device.type == device.type and lr.dtype == torch.float32):
            group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)


class CapturedStep:
    """``step(batch) -> loss`` run eagerly for ``warmup`` calls, then captured and replayed.

    ``step`` must not sync with the host, must leave the gradients it produces in ``.grad`` for
    the optimizer it calls and must not zero them (``zero_grad`` below does that between eager
    steps, and before the capture so that the captured backward assigns fresh gradients).
    ``batch`` is a tuple of device tensors of the same shapes and dtypes on every call.
    """

    def __init__(self, step: Callable[..., Tensor], zero_grad: Callable[[], None], warmup: int = WARMUP_STEPS):
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (eager steps before the capture); got {warmup}")
        self.step, self.zero_grad, self.warmup = step, zero_grad, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[Tensor, ...] = ()
        self._loss: Tensor | None = None
        self._side: torch.cuda.Stream | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, *batch: Tensor) -> Tensor:
        if not all(t.is_cuda for t in batch):
            raise ValueError("train.cuda_graph replays a CUDA graph: the batch must be on a CUDA device")
        self.calls += 1
        if self.graph is None and self.calls <= self.warmup:
            return self._eager(batch)
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

    def _eager(self, batch: tuple[Tensor, ...]) -> Tensor:
        main = torch.cuda.current_stream()
        if self._side is None:
            self._side = torch.cuda.Stream(device=main.device)
        self._side.wait_stream(main)
        with torch.cuda.stream(self._side):
            loss = self.step(*batch)
            self.zero_grad()
        main.wait_stream(self._side)
        loss.record_stream(main)
        return loss

    def _capture(self, batch: tuple[Tensor, ...]) -> None:
        self._static = tuple(t.clone() for t in batch)
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
