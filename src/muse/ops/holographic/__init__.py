"""Holographic associative-memory read (DESIGN.md §1.5): bind keys and values by circular
convolution (rfft), write them into S decaying slots, unbind with a learned query.

Pure-torch implementations that agree to float64 tolerance:

- ``quadratic``  (``naive_quadratic``): builds the (B, N, N) mixing matrix; reference, tests only.
- ``chunked``    (``chunk_holographic``): O(N·C) chunked linear-attention scan over the bound
  spectra with S features and per-feature decay; the default.
- ``recurrent``  (``naive_recurrent`` / ``recurrent_step``): one position at a time with an
  (S, 2F) memory, the decoding path (constant memory in the context length).
- ``auto``       ``chunked``.

All take q, k, v: (B, N, D), alpha, beta: (B, N, S) slot write/read weights, log_gamma: (S,)
per-slot log decays <= 0, initial_state: (B, S, 2F) or None (F = D // 2 + 1), and return
(r: (B, N, D) in v's dtype, final_state: (B, S, 2F) in float32/float64 or None). Gradients reach
every input through ordinary autograd.
"""

from __future__ import annotations

from torch import Tensor

from muse.ops._dispatch import note_path

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
]

IMPLS = ("auto", "chunked", "quadratic", "recurrent")


def resolve_impl(impl: str, x: Tensor, chunk_size: int = 64) -> str:
    """The implementation ``impl`` means for tensor ``x``: "auto" is "chunked"."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got impl={impl!r}")
    return "chunked" if impl == "auto" else impl


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
) -> tuple[Tensor, Tensor | None]:
    """Run the holographic read with the implementation named by ``impl``.

    Args:
        q, k, v: (B, N, D). alpha, beta: (B, N, S). log_gamma: (S,), values <= 0.
        initial_state: (B, S, 2F) or None. output_final_state: also return the memory after N.
        unitary: make keys and queries unit-modulus per frequency (exact unbinding).
        impl: one of ``IMPLS`` = ("auto", "chunked", "quadratic", "recurrent").
        chunk_size: chunk length C of the chunked form (ignored otherwise).

    Returns:
        (r: (B, N, D) in v's dtype, final_state: (B, S, 2F) or None).

    Raises:
        ValueError: unknown ``impl``, or inputs of inconsistent shapes (the message names the tensor).
    """
    impl = note_path("holographic", resolve_impl(impl, v, chunk_size))
    args = (q, k, v, alpha, beta, log_gamma, initial_state, output_final_state, unitary)
    if impl == "chunked":
        return chunk_holographic(*args, chunk_size=chunk_size)
    if impl == "quadratic":
        return naive_quadratic(*args)
    return naive_recurrent(*args)
