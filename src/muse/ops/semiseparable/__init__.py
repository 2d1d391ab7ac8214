"""Causal low-rank semiseparable scan (DESIGN.md §1.2): y = (U V^T ⊙ causal decay mask) Z.

Equivalently "simple gated linear attention" / Mamba-2 SSD with q=u, k=v, v=z, g=log_decay.
Three pure-torch implementations that agree to float64 tolerance, and the GPU kernels:

- ``quadratic``  (``naive_quadratic``): builds the (B, H, N, N) matrix; reference, tests only.
- ``chunked``    (``chunk_semiseparable``): O(N * C) chunked scan; default on CPU and the
  reference for the fused GPU kernel.
- ``recurrent``  (``naive_recurrent`` / ``recurrent_step``): step-by-step state update, the
  decoding path with memory constant in the context length.
- ``triton``     (``triton_chunk_semiseparable``): chunked Triton kernels, forward and backward,
  for CUDA (and the CPU interpreter under TRITON_INTERPRET=1): chunk-parallel ones
  (``triton_chunk.py``), or for up to 32 chunks per sequence one launch per direction
  (``triton_fused.py``), where an eager call is bound by launches rather than GPU work.
- ``auto``       the Triton kernels for CUDA tensors of dtype fp32/bf16/fp16 (and fake ones under
  ``muse.ops.assume_cuda()``), the torch ``chunked`` scan otherwise (with a one-time notice
  when Triton is missing on CUDA).

All take u, v: (B, N, H, r), z: (B, N, H, p), log_decay: (B, N, H) with values <= 0 or None,
initial_state: (B, H, r, p) or None, and return (y: (B, N, H, p) in z's dtype,
final_state: (B, H, r, p) in float32/float64 or None). Gradients reach every input through
ordinary autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from muse.ops._dispatch import assumes_cuda, note_path
from muse.ops._triton import kernels_available

from .chunk import chunk_semiseparable
from .naive import check_inputs, causal_band, causal_band_matrix, naive_quadratic, naive_recurrent, recurrent_step
from .triton_chunk import valid_chunk
from .triton_scan import triton_chunk_semiseparable

__all__ = [
    "IMPLS",
    "causal_band",
    "causal_band_matrix",
    "chunk_semiseparable",
    "naive_quadratic",
    "naive_recurrent",
    "recurrent_step",
    "resolve_impl",
    "semiseparable",
    "triton_chunk_semiseparable",
]

IMPLS = ("auto", "triton", "chunked", "quadratic", "recurrent")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def resolve_impl(impl: str, x: Tensor, chunk_size: int = 64) -> str:
    """The implementation ``impl`` means for tensor ``x``: "auto" becomes "triton" for CUDA
    tensors of a kernel dtype (with a power-of-two chunk >= 16), else "chunked". Fake tensors
    count as CUDA ones under ``muse.ops.assume_cuda()`` (the memory estimate's GPU step)."""
    if impl != "auto":
        return impl
    if not (assumes_cuda(x) and x.dtype in _KERNEL_DTYPES and valid_chunk(chunk_size)):
        return "chunked"
    return "triton" if kernels_available(x) else "chunked"


def semiseparable(
    u: Tensor,
    v: Tensor,
    z: Tensor,
    log_decay: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    impl: str = "auto",
    chunk_size: int = 64,
    band: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Run the semiseparable scan with the implementation named by ``impl``.

    Args:
        u, v: (B, N, H, r). z: (B, N, H, p). log_decay: (B, N, H), values <= 0, or None.
        initial_state: (B, H, r, p) or None. output_final_state: also return S_N.
        impl: one of ``IMPLS`` = ("auto", "triton", "chunked", "quadratic", "recurrent").
        chunk_size: chunk length C for the chunked and Triton forms (ignored otherwise).
        band: (H*p, w) weights of the causal band added to y (``causal_band``: a depthwise
            causal convolution of z), or None. The Triton kernels fuse it into the scan.

    Returns:
        (y: (B, N, H, p) in z's dtype, final_state: (B, H, r, p) or None).

    Raises:
        ValueError: unknown ``impl``, or inputs of inconsistent shapes (the message names the
        tensor).
    """
    impl = note_path("semiseparable", resolve_impl(impl, z, chunk_size))
    args = (u, v, z, log_decay, initial_state, output_final_state)
    if impl == "triton":
        return triton_chunk_semiseparable(*args, chunk_size=chunk_size, band=band)
    if impl == "chunked":
        y, S = chunk_semiseparable(*args, chunk_size=chunk_size)
    elif impl == "quadratic":
        y, S = naive_quadratic(*args)
    elif impl == "recurrent":
        y, S = naive_recurrent(*args)
    else:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got impl={impl!r}")
    if band is not None:
        check_inputs(u, v, z, band=band)
        y = y + (causal_band_matrix if impl == "quadratic" else causal_band)(z, band)
    return y, S
