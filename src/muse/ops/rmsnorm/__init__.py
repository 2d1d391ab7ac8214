"""RMS normalisation over the last dimension, with one weight row per group (per-head norms).

- ``naive``  (``naive_rms_norm``): torch, fp32 math; the reference and the CPU path.
- ``triton`` (``triton_rms_norm``): one fused kernel forward, one backward (CUDA, or the CPU
  interpreter under TRITON_INTERPRET=1).
- ``auto``   the kernel for CUDA tensors when Triton is installed (and for fake tensors under
  ``muse.ops.assume_cuda()``: the memory estimate's GPU step), else ``naive`` (with a one-time
  notice when Triton is missing on CUDA).

x: (..., D) with weight (D,), or (..., G, D) with weight (G, D); returns x's shape and dtype.
"""

from __future__ import annotations

from torch import Tensor

from muse.ops._dispatch import assumes_cuda, note_path
from muse.ops._triton import kernels_available

from .naive import naive_rms_norm
from .triton_kernel import triton_rms_norm

__all__ = ["IMPLS", "naive_rms_norm", "rms_norm", "triton_rms_norm"]

IMPLS = ("auto", "triton", "naive")


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6, impl: str = "auto") -> Tensor:
    """x / sqrt(mean(x², -1) + eps) * weight (see the module docstring for shapes)."""
    if impl not in IMPLS:
        raise ValueError(f"rms_norm: impl must be one of {IMPLS}; got {impl!r}")
    if impl == "auto" and assumes_cuda(x) and kernels_available(x):
        impl = "triton"
    if impl == "triton":
        note_path("rms_norm", "triton")
        return triton_rms_norm(x, weight, eps)
    note_path("rms_norm", "naive")
    return naive_rms_norm(x, weight, eps)
