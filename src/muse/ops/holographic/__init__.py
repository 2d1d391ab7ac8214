"""Holographic associative-memory read (DESIGN.md §1.5): bind keys and values by circular
convolution (rfft), write them into S decaying slots, unbind with a learned query.

Pure-torch implementations that agree to float64 tolerance:

- ``quadratic``  (``naive_quadratic``): builds the (B, N, N) mixing matrix; reference, tests only.
- ``chunked``    (``chunk_holographic``): O(N·C) chunked linear-attention scan over the bound
  spectra with S features and per-feature decay; the default.
- ``recurrent``  (``naive_recurrent`` / ``recurrent_step``): one position at a time with an
  (S, 2F) memory, the decoding path (constant memory in the context length).
- ``triton``     (``triton_chunk_holographic``): the chunked scan as Triton kernels, forward and
  backward, between torch FFTs, with the binding and unbinding around it fused too
  (``triton_glue.py``) (CUDA, or the CPU interpreter under TRITON_INTERPRET=1).
- ``auto``       ``triton`` for CUDA tensors (and fake ones under ``muse.ops.assume_cuda()``) with
  a power-of-two chunk in [16, 128], ``chunked`` otherwise (with a one-time notice when Triton is
  missing on CUDA).

All take q, k, v: (B, N, D), alpha, beta: (B, N, S) slot write/read weights, log_gamma: (S,)
per-slot log decays <= 0, initial_state: (B, S, 2F) or None (F = D // 2 + 1), and return
(r: (B, N, D) in v's dtype, final_state: (B, S, 2F) in float32/float64 or None). Gradients reach
every input through ordinary autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from muse.ops._dispatch import assumes_cuda, note_path
from muse.ops._triton import kernels_available

from .chunk import chunk_holographic
from .naive import (
    check_inputs,
    naive_quadratic,
    naive_recurrent,
    num_freqs,
    read_out,
    recurrent_step,
    spectra,
)
from .triton_scan import triton_chunk_holographic, valid_chunk

__all__ = [
    "IMPLS",
    "check_inputs",
    "chunk_holographic",
    "holographic",
    "naive_quadratic",
    "naive_recurrent",
    "num_freqs",
    "read_out",
    "recurrent_step",
    "resolve_impl",
    "spectra",
    "triton_chunk_holographic",
]

IMPLS = ("auto", "triton", "chunked", "quadratic", "recurrent")


def resolve_impl(impl: str, x: Tensor, chunk_size: int = 64) -> str:
    """The implementation ``impl`` means for tensor ``x``: "auto" becomes "triton" for CUDA
    tensors (fake ones too under ``muse.ops.assume_cuda()``) with a kernel chunk size, else
    "chunked". The scan runs in fp32 whatever x's dtype, so any float dtype qualifies."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got impl={impl!r}")
    if impl != "auto":
        return impl
    if assumes_cuda(x) and x.dtype != torch.float64 and valid_chunk(chunk_size) and kernels_available(x):
        return "triton"
    return "chunked"


def holographic(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    alpha: Tensor,
    beta: Tensor,
    log_gamma: Tensor,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    unitary: bool = True,
    impl: str = "auto",
    chunk_size: int = 64,
    recall: bool = False,
) -> tuple[Tensor, ...]:
    """Run the holographic read with the implementation named by ``impl``.

    Args:
        q, k, v: (B, N, D). alpha, beta: (B, N, S). log_gamma: (S,), values <= 0.
        initial_state: (B, S, 2F) or None. output_final_state: also return the memory after N.
        unitary: make keys and queries unit-modulus per frequency (exact unbinding).
        impl: one of ``IMPLS`` = ("auto", "triton", "chunked", "quadratic", "recurrent").
        chunk_size: chunk length C of the chunked and Triton forms (ignored otherwise).
        recall: also return v̂ (B, N, D), each token's own value unbound from the memory with its
            own key, read with its write weights (the mixer's auxiliary loss), sharing the spectra.

    Returns:
        (r: (B, N, D) in v's dtype, final_state: (B, S, 2F) or None), and v̂ with ``recall``.

    Raises:
        ValueError: unknown ``impl``, or inputs of inconsistent shapes (the message names the tensor).
    """
    impl = note_path("holographic", resolve_impl(impl, v, chunk_size))
    args = (q, k, v, alpha, beta, log_gamma, initial_state, output_final_state, unitary)
    if impl == "triton":
        return triton_chunk_holographic(*args, chunk_size=chunk_size, recall=recall)
    if impl == "chunked":
        return chunk_holographic(*args, chunk_size=chunk_size, recall=recall)
    if impl == "quadratic":
        return naive_quadratic(*args, recall=recall)
    return naive_recurrent(*args, recall=recall)
