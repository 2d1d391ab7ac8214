"""The sum of a kernel's split partials, cast to the output dtype, in one launch.

Kernels that split a reduction over several programs (the FFN kernels, the linear-CE gradients,
the head norm's and the band's weight gradients) write fp32 (fp64) partials (S, ...) and need
``p.sum(0).to(dtype)``. ATen runs that as a reduction plus a cast: two launches, the first a
generic outer-dimension reduce (~7 us on average for these few-MiB partials on an H100, ~45 of
them from MUSE's ops per 16K-token `standard` step, each followed by a ~1.5 us cast).
``sum_partials`` reads each column's S values in one program and writes the cast result: one
launch, one pass over the partials.
"""

from __future__ import annotations

import torch
from torch import Tensor

from muse.ops.semiseparable.triton_chunk import HAS_TRITON, _interpreting

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _sum_kernel(p, out, S, M, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        acc = tl.zeros((BLOCK,), dtype=p.dtype.element_ty)
        for s in range(S):
            acc += tl.load(p + s * M + offs, mask=mask, other=0.0)
        tl.store(out + offs, acc.to(out.dtype.element_ty), mask=mask)


def sum_partials(p: Tensor, dtype: torch.dtype, out: Tensor | None = None) -> Tensor:
    """``p.sum(0).to(dtype)`` for contiguous partials p (S, *shape), summed in p's dtype in split
    order; written into ``out`` (of that shape and dtype) when given. The Triton kernel on CUDA
    and under the interpreter, torch elsewhere."""
    if not (HAS_TRITON and p.is_contiguous() and p.numel() and (p.is_cuda or _interpreting())):
        res = p.sum(0).to(dtype)
        return res if out is None else out.copy_(res)
    S, M = p.shape[0], p[0].numel()
    dst = out if out is not None and out.is_contiguous() else torch.empty(p.shape[1:], device=p.device, dtype=dtype)
    # ~2 programs per SM or more, 128-1024 columns each
    block = 128 if _interpreting() else max(128, min(1024, triton.next_power_of_2(max(1, M // 264))))
    _sum_kernel[(triton.cdiv(M, block),)](p, dst, S, M, BLOCK=block, num_warps=4)
    return dst if out is None or out is dst else out.copy_(dst)
