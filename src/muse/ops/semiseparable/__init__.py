"""Causal low-rank semiseparable scan (DESIGN.md §1.2): y = (U V^T ⊙ causal decay mask) Z.

Equivalently "simple gated linear attention" / Mamba-2 SSD with q=u, k=v, v=z, g=log_decay.
Three pure-torch implementations that agree to float64 tolerance:

- ``quadratic``  (``naive_quadratic``): builds the (B, H, N, N) matrix; reference, tests only.
- ``chunked``    (``chunk_semiseparable``): O(N * C) chunked scan; default on CPU and the
  reference for the fused GPU kernel.
- ``recurrent``  (``naive_recurrent`` / ``recurrent_step``): step-by-step state update, the
  decoding path with memory constant in the context length.

All take u, v: (B, N, H, r), z: (B, N, H, p), log_decay: (B, N, H) with values <= 0 or None,
initial_state: (B, H, r, p) or None, and return (y: (B, N, H, p) in z's dtype,
final_state: (B, H, r, p) in float32/float64 or None). Gradients reach every input through
ordinary autograd.
"""

from __future__ import annotations

from torch import Tensor

from .chunk import chunk_semiseparable
from .naive import naive_quadratic, naive_recurrent, recurrent_step

__all__ = [
    "IMPLS",
    "chunk_semiseparable",
    "naive_quadratic",
    "naive_recurrent",
    "recurrent_step",
    "semiseparable",
]

IMPLS = ("quadratic", "chunked", "recurrent")


def semiseparable(
    u: Tensor,
    v: Tensor,
    z: Tensor,
    log_decay: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    impl: str = "chunked",
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """Run the semiseparable scan with the implementation named by ``impl``.

    Args:
        u, v: (B, N, H, r). z: (B, N, H, p). log_decay: (B, N, H), values <= 0, or None.
        initial_state: (B, H, r, p) or None. output_final_state: also return S_N.
        impl: one of ``IMPLS`` = ("quadratic", "chunked", "recurrent").
        chunk_size: chunk length C for ``impl="chunked"`` (ignored otherwise).

    Returns:
        (y: (B, N, H, p) in z's dtype, final_state: (B, H, r, p) or None).

    Raises:
        ValueError: unknown ``impl``, or inputs of inconsistent shapes (the message names the
        tensor).
    """
    if impl == "chunked":
        return chunk_semiseparable(
            u, v, z, log_decay, initial_state, output_final_state, chunk_size=chunk_size
        )
    if impl == "quadratic":
        return naive_quadratic(u, v, z, log_decay, initial_state, output_final_state)
    if impl == "recurrent":
        return naive_recurrent(u, v, z, log_decay, initial_state, output_final_state)
    raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got impl={impl!r}")
