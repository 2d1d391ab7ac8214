"""The sum of a kernel's split partials, cast to the output dtype, in one launch.

Kernels that split a reduction over several programs (the FFN kernels, the linear-CE gradients,
the head norm's and the band's weight gradients) write fp32 (fp64) partials (S, ...) and need
``p.sum(0).to(dtype)``. ATen runs that as a reduction plus a cast: two launches, the first a
generic outer-dimension reduce over these few-MiB partials, and MUSE's ops make ~45 such pairs
per 16K-token `standard` step (their cost is in docs/performance-notes.md §6).
``sum_partials`` reads each column's S values in one program and writes the cast result: one
launch, one pass over the partials.
"""

from __future__ import annotations

import torch
from torch import Tensor

from muse.ops._launch import cdiv, launch as _launch, next_pow2
from muse.ops._triton import HAS_TRITON, interpreting, tl, triton

if HAS_TRITON:

    @triton.jit
    def _sum_kernel(p, out, S, M, SB: tl.constexpr, BLOCK: tl.constexpr):
        """out[cols] = sum over s of p[s, cols], SB splits per step loaded as one (SB, BLOCK) tile:
        every load of a step is in flight at once (a loop of one split per step waited on each
        load in turn, so it took several times the partials' memory time; see
        docs/performance-notes.md §6)."""
        cols = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
        mask = cols < M
        acc = tl.zeros((BLOCK,), dtype=p.dtype.element_ty)
        for s0 in range(0, S, SB):
            rows = s0 + tl.arange(0, SB)  # (SB,) splits
            x = tl.load(p + rows.to(tl.int64)[:, None] * M + cols[None, :],
                        mask=(rows[:, None] < S) & mask[None, :], other=0.0)  # (SB, BLOCK)
            acc += tl.sum(x, 0)
        tl.store(out + cols, acc.to(out.dtype.element_ty), mask=mask)


def sum_partials(p: Tensor, dtype: torch.dtype, out: Tensor | None = None) -> Tensor:
    """``p.sum(0).to(dtype)`` for contiguous partials p (S, *shape), summed in p's dtype in a
    fixed order (deterministic, like the kernels that write the partials); written into ``out``
    (of that shape and dtype) when given. The Triton kernel on CUDA and under the interpreter,
    torch elsewhere."""
    if not (HAS_TRITON and p.is_contiguous() and p.numel() and (p.is_cuda or interpreting())):
        res = p.sum(0).to(dtype)
        return res if out is None else out.copy_(res)
    S, M = p.shape[0], p[0].numel()
    dst = out if out is not None and out.is_contiguous() else torch.empty(p.shape[1:], device=p.device, dtype=dtype)
    # ~2 programs per SM or more, then SB splits per step up to 4096 elements (16 KiB of fp32)
    # per (SB, BLOCK) tile: tall partials (many splits of few columns) take tall tiles
    if interpreting():
        SB, block = 2, 16
    else:
        block = max(16, min(1024, next_pow2(cdiv(M, 264))))
        SB = min(next_pow2(S), max(2, 4096 // block))
    _launch(_sum_kernel, (cdiv(M, block),), p, dst, S, M, SB=SB, BLOCK=block, num_warps=4)
    return dst if out is None or out is dst else out.copy_(dst)
