"""Low-rank GELU MLP core: c = gelu_tanh(a @ w_up + b_up) @ w_down without the (T, H) activations.

The middle of a low-rank GELU FFN (DESIGN §1.3): with x·A1 = a (T, R) and c·B2 the thin outer
projections, this is everything at the hidden width H = 4d. Implementations that agree to float64
tolerance:

- ``torch``   (``naive_lowrank_mlp``): plain ops; stores the (T, H) pre-activation and GELU
  output for the backward. The reference, and the path off CUDA.
- ``triton``  (``triton_lowrank_mlp``): three fused kernels (forward, input gradient, weight
  gradients) that keep every (T, H) tile in registers and recompute it in the backward; CUDA,
  or the CPU interpreter under TRITON_INTERPRET=1. Saves nothing but the inputs.
- ``auto``    the Triton kernels for CUDA tensors (fakes under ``assume_cuda()``) of dtype
  fp32/bf16/fp16 with R, S <= ``MAX_RANK``, the torch path otherwise. On the GPU they beat
  both the eager and the compiled torch FFN forward+backward at a fraction of their step memory
  (no (T, H) tensor is stored), and they shorten the compiled ``standard`` training step
  (``benchmarks/lowrank_ffn.py``; figures in docs/performance-notes.md §7). ``AUTO_TRITON`` =
  False keeps "auto" on the torch path.

All take a (T, R), w_up (R, H), b_up (H,) or None, w_down (H, S) and return c (T, S).
"""

from __future__ import annotations

from torch import Tensor

from muse.ops._dispatch import assumes_cuda, note_path
from muse.ops._triton import kernels_available
from muse.ops.linear_ce.naive import AUTOCAST_CASTABLE, autocast_operands

from .naive import check_inputs, naive_lowrank_mlp
from .triton_kernel import MAX_RANK, triton_lowrank_mlp

__all__ = ["IMPLS", "MAX_RANK", "lowrank_mlp", "naive_lowrank_mlp", "resolve_impl", "triton_lowrank_mlp"]

IMPLS = ("auto", "triton", "torch")
AUTO_TRITON = True  # see the module docstring


def resolve_impl(impl: str, a: Tensor, ranks: tuple[int, int]) -> str:
    """What ``impl`` means for inputs a (T, R) with (R, S) = ranks: "auto" is "triton" (when
    ``AUTO_TRITON``) for CUDA tensors (fakes under ``assume_cuda()``) of dtype
    fp32/bf16/fp16 with R, S <= MAX_RANK, else "torch" (with a one-time notice when Triton is
    missing on CUDA)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got impl={impl!r}")
    if impl != "auto":
        return impl
    if not (AUTO_TRITON and assumes_cuda(a) and a.dtype in AUTOCAST_CASTABLE and max(ranks) <= MAX_RANK):
        return "torch"
    return "triton" if kernels_available(a) else "torch"


def lowrank_mlp(a: Tensor, w_up: Tensor, b_up: Tensor | None, w_down: Tensor, impl: str = "auto") -> Tensor:
    """c = gelu_tanh(a @ w_up + b_up) @ w_down.

    Args:
        a: (T, R). w_up: (R, H). b_up: (H,) or None. w_down: (H, S).
        impl: one of ``IMPLS`` = ("auto", "triton", "torch").

    Returns:
        c (T, S): in a's dtype, or the autocast dtype under autocast (the Triton path casts its
        operands as ``F.linear`` would; the casts are recorded, so gradients come back in the
        callers' dtypes).
    """
    check_inputs(a, w_up, b_up, w_down)
    if note_path("lowrank_mlp", resolve_impl(impl, a, (w_up.shape[0], w_down.shape[1]))) == "torch":
        return naive_lowrank_mlp(a, w_up, b_up, w_down)
    a, w_up, b_up = autocast_operands(a, w_up, b_up)
    _, w_down, _ = autocast_operands(a, w_down, None)
    return triton_lowrank_mlp(a, w_up, b_up, w_down)
