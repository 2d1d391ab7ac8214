"""Linear + cross-entropy: the summed next-token NLL of x @ W^T + b without (T, V) logits.

Implementations that agree to float64 tolerance:

- ``naive``    (``naive_linear_cross_entropy``): the whole (T, V) logits; reference, tests only.
- ``chunked``  (``chunk_linear_cross_entropy``): torch, chunks of tokens with the gradients of
  x, weight and bias computed in the forward (no recomputation; the backward scales them by
  grad_output); the CPU path, and the GPU's where the Triton kernels are not selected.
  ``chunked_nll`` is its counterpart for any logits function (TT heads, heads tied to a TT or
  low-rank embedding): activation checkpointing on each chunk's projection.
- ``triton``   (``triton_linear_cross_entropy``): three fused kernels (forward, dx, dW) that
  never hold a logits tile outside registers; CUDA, or the CPU interpreter under
  TRITON_INTERPRET=1. Saves only the per-token log-sum-exp (T,) for the backward.
- ``auto``     the Triton kernels for CUDA tensors of dtype fp32/bf16/fp16 with K <=
  ``AUTO_MAX_K``, the torch ``chunked`` loss otherwise (CPU included, interpreter or not).

All take x (T, K), weight (V, K) (``nn.Linear.weight``'s layout), targets (T,) integer ids,
bias (V,) or None, and return the SUM of the NLL over the tokens whose target is not
``ignore_index`` as a float32 scalar (float64 for float64 inputs); the mean is that sum over
``(targets != ignore_index).sum()``. Gradients reach x, weight and bias.
"""

from __future__ import annotations

from torch import Tensor

from muse.ops._dispatch import assume_cuda, assumes_cuda, note_path
from muse.ops._triton import kernels_available

from .chunk import chunk_linear_cross_entropy, chunked_nll
from .naive import AUTOCAST_CASTABLE, autocast_operands, check_inputs, naive_linear_cross_entropy
from .triton_kernel import triton_linear_cross_entropy, triton_supports

__all__ = [
    "AUTO_MAX_K",
    "IMPLS",
    "assume_cuda",
    "chunk_linear_cross_entropy",
    "chunked_nll",
    "linear_cross_entropy",
    "naive_linear_cross_entropy",
    "resolve_impl",
    "triton_linear_cross_entropy",
    "triton_supports",
]

IMPLS = ("auto", "triton", "chunked", "naive")
_KERNEL_DTYPES = AUTOCAST_CASTABLE  # fp32/bf16/fp16
# The backward kernels keep a (block, KG) gradient block in registers (KG <= 512) and recompute
# the logits once per group of KG columns: one group for the low-rank heads, cdiv(K, KG) for wide
# dense heads, where cuBLAS over large loss chunks does fewer FLOPs. "auto" fuses up to this K.
AUTO_MAX_K = 512


# "auto" takes the kernels on CUDA: they passed the GPU test run (H100/H200, fp64/fp32/bf16,
# outputs and all gradients) and, in benchmarks/train_throughput.py, made the `standard` step at
# N=16K much shorter than with the torch loss (docs/performance-notes.md §5). False keeps "auto"
# on the torch loss.
AUTO_ON_GPU = True


def resolve_impl(impl: str, x: Tensor, K: int | None = None) -> str:
    """The implementation ``impl`` means for hidden states ``x`` (..., K): "auto" becomes
    "triton" for CUDA tensors of a kernel dtype with K <= AUTO_MAX_K (and Triton installed),
    else "chunked". Under the CPU interpreter "auto" stays "chunked"; ask for "triton".
    K: the width the kernels would contract over, when it is not x's last dimension."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got impl={impl!r}")
    if impl != "auto":
        return impl
    on_gpu = assumes_cuda(x)
    if not (AUTO_ON_GPU and on_gpu and x.dtype in _KERNEL_DTYPES and (K or x.shape[-1]) <= AUTO_MAX_K):
        return "chunked"
    return "triton" if kernels_available(x) else "chunked"


def linear_cross_entropy(
    x: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    impl: str = "auto",
    chunk_size: int = 2048,
) -> Tensor:
    """Summed NLL of the logits ``x @ weight^T + bias`` against ``targets``, logits never stored.

    Args:
        x: (T, K) hidden states, any float dtype. weight: (V, K). bias: (V,) or None.
        targets: (T,) int64/int32 ids in [0, V), or ``ignore_index`` (contributes 0).
        impl: one of ``IMPLS`` = ("auto", "triton", "chunked", "naive").
        chunk_size: tokens per chunk of the ``chunked`` path (ignored otherwise).

    Returns:
        The SUM of the NLL over the non-ignored tokens: a float32 scalar (float64 for float64
        inputs); 0 when every target is ignored. Divide by the count for the mean.

    Under autocast the Triton and chunked paths cast x, weight and bias to the autocast dtype,
    as ``F.linear`` does on the naive path.
    """
    check_inputs(x, weight, targets, bias)
    impl = note_path("linear_cross_entropy", resolve_impl(impl, x))
    if impl == "triton":
        x, weight, bias = autocast_operands(x, weight, bias)
        return triton_linear_cross_entropy(x, weight, targets, bias, ignore_index)
    if impl == "chunked":
        return chunk_linear_cross_entropy(x, weight, targets, bias, ignore_index, chunk_size)
    return naive_linear_cross_entropy(x, weight, targets, bias, ignore_index)

