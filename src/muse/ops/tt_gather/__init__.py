"""TT row gather: rows of a tensor-train matrix straight from its cores (TT embeddings).

``tt_gather(ids, cores, row_factors, col_factors, num_cols, impl)`` → (L, num_cols):

- ``torch``  (``tt_contract``): the core-by-core torch contraction over every id; the reference,
  and the math ``TTMatrix._contract_rows`` runs on the unique ids of a batch.
- ``triton`` (``triton_tt_gather``): fused kernels for k = 2, 3, 4 real cores, ranks <= 64,
  forward (only the output is written) and backward (every core's gradient, fp32 atomics:
  nondeterministic summation order). CUDA, or the CPU interpreter under TRITON_INTERPRET=1.
- ``auto``: ``triton`` for CUDA tensors of dtype fp32/bf16/fp16 and a supported shape when Triton
  is installed (never the interpreter), ``torch`` otherwise (``AUTO_ON_GPU`` switches this off).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from muse.ops._dispatch import assumes_cuda, fake, note_path
from muse.ops._triton import interpreting, kernels_available

from .naive import check_inputs, tt_contract
from .triton_kernel import MAX_RANK, OutOfResources, shape_unsupported, triton_supports, triton_tt_gather

__all__ = [
    "IMPLS", "MAX_RANK", "resolve_impl", "shape_unsupported", "triton_supports", "triton_tt_gather", "tt_contract",
    "tt_gather",
]

IMPLS = ("auto", "triton", "torch")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _ranks(cores: list[Tensor]) -> list[int]:
    return [1] + [c.shape[-1] for c in cores[:-1]] + [1]


# "auto" takes the kernel on CUDA: it passed the GPU test run (H100) and benchmarks/tt_embedding.py
# (faster than the torch path forward+backward at every shape checked; docs/performance-notes.md
# §8). False keeps "auto" on the torch path.
AUTO_ON_GPU = True


def resolve_impl(impl: str, ids: Tensor, cores: list[Tensor], col_factors) -> str:
    """What ``impl`` means for these tensors: "auto" becomes "triton" for real CUDA cores of a
    kernel dtype and a supported shape (Triton installed, not interpreting), else "torch" (with a
    one-time notice when Triton is missing on CUDA). Fake tensors count as CUDA ones under
    ``muse.ops.assume_cuda()`` (the memory estimate)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got impl={impl!r}")
    if impl != "auto":
        return impl
    on_gpu = AUTO_ON_GPU and all(assumes_cuda(t) for t in (ids, *cores)) and all(
        c.dtype in _KERNEL_DTYPES for c in cores)
    if not on_gpu or shape_unsupported(_ranks(cores), list(col_factors)) is not None:
        return "torch"
    if not kernels_available(ids):
        return "torch"
    return "torch" if interpreting() and not fake(ids) else "triton"


def tt_gather(ids: Tensor, cores: list[Tensor], row_factors, col_factors, num_cols: int, impl: str = "auto",
              out_dtype: torch.dtype | None = None) -> Tensor:
    """Rows ``ids`` of a TT matrix: (L,) → (L, num_cols), differentiable w.r.t. the cores.

    Args:
        ids: (L,) int64 (or int32) row ids, already range-checked: 0 <= id < prod(row_factors).
        cores: k real tensors (r_{i-1}, m_i, n_i, r_i) with r_0 = r_k = 1, the *effective* cores
            (bond phases folded in by the caller, so their gradients flow through).
        row_factors, col_factors: the m_i and n_i; digits are mixed radix, most significant first.
        num_cols: N <= prod(col_factors); padded columns are dropped.
        impl: "auto" | "triton" | "torch" (see the module docstring).
        out_dtype: the result dtype (default the cores'); the kernels also run their dots in it
            (e.g. bf16 under autocast), with fp32 accumulation.
    """
    check_inputs(ids, cores, row_factors, col_factors, num_cols)
    resolved = note_path("tt_gather", resolve_impl(impl, ids, cores, col_factors))
    if resolved == "triton":
        if any(c.is_complex() for c in cores):
            raise ValueError("impl='triton' takes real cores; complex ones run on impl='torch'")
        try:
            return triton_tt_gather(ids, list(cores), row_factors, col_factors, num_cols, out_dtype)
        except OutOfResources as e:  # a shape within the limits that this GPU still cannot fit
            if impl != "auto":
                raise
            warnings.warn(f"muse: the fused TT gather does not fit this GPU ({e}); using the torch path", stacklevel=2)
    out = tt_contract(ids.long(), list(cores), list(row_factors), list(col_factors), num_cols)
    return out if out_dtype is None else out.to(out_dtype)
