"""Fused Triton kernels for the TT row gather (TT embeddings), forward and backward.

Row t of a TT matrix with k = 2, 3 or 4 cores G_i (r_{i-1}, m_i, n_i, r_i), r_0 = r_k = 1:

    out[t, (c_1, …, c_k)] = G_1[0, t_1, c_1, :] · G_2[:, t_2, c_2, :] · … · G_k[:, t_k, c_k, 0]

Per token, each slice S_i = G_i[:, t_i] is loaded as a zero-padded tile and the row is a chain
of small matmuls on the tensor cores whose rows index the column digits found so far:

    A_2 = S_1 · S_2[c_2]           batched over c_2: (NP_2, NP_1, RP_2), rows (c_2, c_1)
    A_3 = reshape(A_2 @ S_3)       (P_3, RP_3), rows (c_2, c_1, c_3)                (k = 4)
    out = A_{k-1} @ S_k            (P_{k-1}, NP_k)                  (k = 2: S_1 @ S_2)

with NP_i, RP_i the padded n_i, r_i and P_i the product of the NP so far. Chained dots keep
the long side as M: Triton lays a chained dot's warps along M, so an M of 16 would be
replicated on every warp (seen in sm_90 builds as registers spilling), hence the batched dots.

Forward: one pass over the L tokens, BT per program; only the (L, N) output is written.

Backward: the tokens are sorted by id (no host sync, no (U, N) table); a program walks BT
sorted tokens, sums the gradient rows of each run of equal ids in registers, then per unique
id recomputes the chain and back-propagates it (dS_i = A_{i-1}ᵀ dY_i, dA_{i-1} = dY_i S_iᵀ).
Core slices are accumulated in registers while their digit stays the same (sorted ids share
their leading digits for long runs) and flushed with fp32 ``tl.atomic_add`` when it changes;
the last core's slice changes with every id and is added at once. Atomic adds make the core
gradients' summation order, hence their last bits, nondeterministic.

Tiles are powers of two, at least 16 on every tl.dot dimension (NP_1, NP_k and the ranks),
masked everywhere; shapes whose largest tile exceeds MAX_TILE stay on the torch path. Dots take
the output dtype (bf16/fp16, or fp32 as tf32x3) with fp32 accumulation; fp64 (the CPU
interpreter tests) runs exact "ieee" dots into fp64 buffers.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from muse.ops._dispatch import define_op, use_op
from muse.ops._launch import cdiv, launch as _launch
from muse.ops._triton import (
    HAS_TRITON, OutOfResources, autotune, configs, dot_precision, runs, tl, triton, triton_supports,
)

from .naive import tt_contract

__all__ = [
    "HAS_TRITON", "MAX_RANK", "MAX_TILE", "best_configs", "shape_unsupported", "triton_supports", "triton_tt_gather",
]

MAX_RANK = 64  # largest bond rank the kernels take
# Largest tile (elements) of one token's chain: beyond it registers spill heavily and shared memory
# runs out (ptxas reports of sm_90 builds: col factors [16, 12, 16] fit with ranks 32, not 64).
MAX_TILE = 2**14


def _pow2(n: int, lo: int = 1) -> int:
    return max(lo, 1 << (int(n) - 1).bit_length())


def tile_sizes(ranks: list[int], col_factors: list[int]) -> tuple[list[int], list[int]]:
    """Padded column digits NP (4,) and bond ranks RP (3,): unused entries are 1.

    NP_1 and NP_k are the M and N of a tl.dot and the ranks its K: powers of two >= 16; the
    inner digits only multiply tile sizes, so they are padded to a power of two.
    """
    k = len(col_factors)
    NP = [_pow2(n) for n in col_factors]
    NP[0], NP[-1] = max(16, NP[0]), max(16, NP[-1])
    RP = [_pow2(r, 16) for r in ranks[1:-1]]
    return NP + [1] * (4 - k), RP + [1] * (3 - len(RP))


def shape_unsupported(ranks: list[int], col_factors: list[int]) -> str | None:
    """Why the kernels cannot take this TT shape, or None. ranks = [1, r_1, …, r_{k-1}, 1]."""
    k = len(col_factors)
    if k not in (2, 3, 4):
        return f"the fused TT gather takes 2, 3 or 4 cores; got {k}"
    if max(ranks) > MAX_RANK:
        return f"the fused TT gather takes ranks up to {MAX_RANK}; got {ranks}"
    NP, RP = tile_sizes(ranks, col_factors)
    R, P, tiles = [1] + RP[: k - 1] + [1], 1, []
    for i in range(k):  # core slices (RP_{i-1}, NP_i, RP_i), chain A_i (P_i, RP_i), the result (P_k,)
        P *= NP[i]
        tiles += [R[i] * NP[i] * R[i + 1], P * R[i + 1]]
    if max(tiles) > MAX_TILE:
        return (f"the fused TT gather needs a tile of {max(tiles)} > {MAX_TILE} elements "
                f"(col_factors={col_factors}, ranks={ranks})")
    return None


if HAS_TRITON:

    _KEY = ["K", "NP1", "NP2", "NP3", "NP4", "RP1", "RP2", "RP3"]

    @triton.jit
    def _idx(R0P: tl.constexpr, NP: tl.constexpr, R1P: tl.constexpr, BATCHED: tl.constexpr):
        """Indices (a, c, b) of a core slice G[:, t] as a (R0P, NP·R1P) tile (row a, column (c, b)),
        or BATCHED as a (NP, R0P, R1P) tile: one (R0P, R1P) matrix per column digit c."""
        if BATCHED:
            a, c = tl.arange(0, R0P)[None, :, None], tl.arange(0, NP)[:, None, None]
            b = tl.arange(0, R1P)[None, None, :]
        else:
            j = tl.arange(0, NP * R1P)[None, :]
            a, c, b = tl.arange(0, R0P)[:, None], j // R1P, j % R1P
        return a, c, b

    @triton.jit
    def _ld(core, t, m, n, r0, r1, R0P: tl.constexpr, NP: tl.constexpr, R1P: tl.constexpr,
            BATCHED: tl.constexpr, DT: tl.constexpr):
        """The slice G[:, t] of a contiguous core (r0, m, n, r1) as ``_idx`` lays it out, zero
        padded, in the dot dtype (int32 offsets: a core is small)."""
        a, c, b = _idx(R0P, NP, R1P, BATCHED)
        mask = (a < r0) & (c < n) & (b < r1)
        return tl.load(core + t * (n * r1) + (a * (m * n * r1) + c * r1 + b), mask=mask, other=0.0).to(DT)

    @triton.jit
    def _add(dC, val, t, m, n, r0, r1, R0P: tl.constexpr, NP: tl.constexpr, R1P: tl.constexpr,
             BATCHED: tl.constexpr):
        """dC[:, t] += val (fp32/fp64 atomics; dC laid out as the core, val as ``_ld`` loads)."""
        a, c, b = _idx(R0P, NP, R1P, BATCHED)
        mask = (a < r0) & (c < n) & (b < r1)
        offs = a * (m * n * r1) + c * r1 + b
        tl.atomic_add(dC + t * (n * r1) + offs, tl.reshape(val, offs.shape), mask=mask, sem="relaxed")

    @triton.jit
    def _out_offs(n1, n2, n3, n4, N, K: tl.constexpr, NP1: tl.constexpr, NP2: tl.constexpr,
                  NP3: tl.constexpr, NP4: tl.constexpr):
        """Column of each entry of the (P, NP_k) result tile and its mask (real digits, < N).
        Rows hold the digits (c_1) for k = 2, (c_2, c_1) for k = 3, (c_2, c_1, c_3) for k = 4."""
        if K == 2:
            c1, ck = tl.arange(0, NP1)[:, None], tl.arange(0, NP2)[None, :]
            col, ok = c1 * n2 + ck, (c1 < n1) & (ck < n2)
        elif K == 3:
            p, ck = tl.arange(0, NP2 * NP1)[:, None], tl.arange(0, NP3)[None, :]
            c2, c1 = p // NP1, p % NP1
            col, ok = (c1 * n2 + c2) * n3 + ck, (c1 < n1) & (c2 < n2) & (ck < n3)
        else:
            p, ck = tl.arange(0, NP2 * NP1 * NP3)[:, None], tl.arange(0, NP4)[None, :]
            c2, c1, c3 = p // (NP1 * NP3), (p // NP3) % NP1, p % NP3
            col = ((c1 * n2 + c2) * n3 + c3) * n4 + ck
            ok = (c1 < n1) & (c2 < n2) & (c3 < n3) & (ck < n4)
        return col, ok & (col < N)

    @triton.jit
    def _chain(c1, c2, c3, c4, idx, m1, m2, m3, m4, n1, n2, n3, n4, r1, r2, r3, st1, st2, st3,
               K: tl.constexpr, NP1: tl.constexpr, NP2: tl.constexpr, NP3: tl.constexpr, NP4: tl.constexpr,
               RP1: tl.constexpr, RP2: tl.constexpr, RP3: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
        """Row ``idx``: slices S_1..S_4, chain A_2, A_3 (unused ones are S_1) and the result tile.

        The second core's slice is batched over its column digit c_2, (NP2, RP1, RP2), so
        A_2 = S_1 · S_2[c_2] is a batched dot with rows (c_2, c_1) and no transposes; the chained
        2-D dots then have M = P_i (Triton lays chained dots' warps along M: a 16-row M would be
        replicated on every warp)."""
        S1 = tl.reshape(_ld(c1, (idx // st1) % m1, m1, n1, 1, r1, 1, NP1, RP1, False, DT), (NP1, RP1))
        S3, S4, A2, A3 = S1, S1, S1, S1
        if K == 2:
            S2 = _ld(c2, idx % m2, m2, n2, r1, 1, RP1, NP2, 1, False, DT)  # (RP1, NP2)
            y = tl.dot(S1, S2, input_precision=PREC)  # (NP1, NP2)
        else:
            S2 = _ld(c2, (idx // st2) % m2, m2, n2, r1, r2, RP1, NP2, RP2, True, DT)  # (NP2, RP1, RP2)
            A2 = tl.dot(tl.broadcast_to(S1[None, :, :], (NP2, NP1, RP1)), S2, input_precision=PREC)
            A2 = tl.reshape(A2, (NP2 * NP1, RP2)).to(DT)  # (P2, RP2): rows (c2, c1)
            if K == 3:
                S3 = _ld(c3, idx % m3, m3, n3, r2, 1, RP2, NP3, 1, False, DT)  # (RP2, NP3)
                y = tl.dot(A2, S3, input_precision=PREC)  # (P2, NP3)
            else:
                S3 = _ld(c3, (idx // st3) % m3, m3, n3, r2, r3, RP2, NP3, RP3, False, DT)  # (RP2, NP3·RP3)
                A3 = tl.reshape(tl.dot(A2, S3, input_precision=PREC), (NP2 * NP1 * NP3, RP3)).to(DT)  # (P3, RP3)
                S4 = _ld(c4, idx % m4, m4, n4, r3, 1, RP3, NP4, 1, False, DT)  # (RP3, NP4)
                y = tl.dot(A3, S4, input_precision=PREC)  # (P3, NP4)
        return S1, S2, S3, S4, A2, A3, y

    @autotune(configs=configs([{"BT": 8}, {"BT": 32}], stages=(1,)), key=_KEY)
    @triton.jit
    def _fwd_kernel(ids, out, c1, c2, c3, c4, L, N, m1, m2, m3, m4, n1, n2, n3, n4, r1, r2, r3, st1, st2, st3,
                    K: tl.constexpr, NP1: tl.constexpr, NP2: tl.constexpr, NP3: tl.constexpr, NP4: tl.constexpr,
                    RP1: tl.constexpr, RP2: tl.constexpr, RP3: tl.constexpr, PREC: tl.constexpr, BT: tl.constexpr):
        """out[j] = row ids[j], BT tokens per program."""
        DT: tl.constexpr = out.dtype.element_ty
        col, ok = _out_offs(n1, n2, n3, n4, N, K, NP1, NP2, NP3, NP4)  # (P, NPk)
        start = tl.program_id(0).to(tl.int64) * BT
        for jj in range(BT):
            j = tl.minimum(start + jj, L - 1)  # past L: the last row again, same values
            idx = tl.load(ids + j)
            _, _, _, _, _, _, y = _chain(c1, c2, c3, c4, idx, m1, m2, m3, m4, n1, n2, n3, n4, r1, r2, r3,
                                         st1, st2, st3, K, NP1, NP2, NP3, NP4, RP1, RP2, RP3, DT, PREC)
            tl.store(out + j * N + col, y.to(DT), mask=ok)

    @autotune(configs=configs([{"BT": 16}, {"BT": 64}], warps=(8, 4), stages=(1,)), key=_KEY, reset_to_zero=["dC"])
    @triton.jit
    def _bwd_kernel(sids, order, grad, c1, c2, c3, c4, dC, o2, o3, o4, L, N, m1, m2, m3, m4, n1, n2, n3, n4,
                    r1, r2, r3, st1, st2, st3,
                    K: tl.constexpr, NP1: tl.constexpr, NP2: tl.constexpr, NP3: tl.constexpr, NP4: tl.constexpr,
                    RP1: tl.constexpr, RP2: tl.constexpr, RP3: tl.constexpr, PREC: tl.constexpr, BT: tl.constexpr):
        """dC[o_i + …] += dL/dG_i over the sorted tokens [pid·BT, pid·BT + BT) (sids = sorted
        ids, order = their positions in grad). dC holds every core's gradient, flat, fp32/fp64."""
        DT: tl.constexpr = grad.dtype.element_ty
        ACC: tl.constexpr = dC.dtype.element_ty
        col, ok = _out_offs(n1, n2, n3, n4, N, K, NP1, NP2, NP3, NP4)  # (P, NPk)
        start = tl.program_id(0).to(tl.int64) * BT
        cnt = tl.minimum(L - start, BT)
        first = tl.load(sids + start)
        cur1, cur2, cur3 = (first // st1) % m1, (first // st2) % m2, (first // st3) % m3
        acc1 = tl.zeros((NP1, RP1), dtype=ACC)  # dG_1[0, cur1]
        acc2 = tl.zeros((NP2, RP1, RP2), dtype=ACC)  # dG_2[:, cur2] batched over c2 (k >= 3)
        acc3 = tl.zeros((RP2, NP3 * RP3), dtype=ACC)  # dG_3[:, cur3] (k = 4)
        G = tl.zeros(col.shape, dtype=ACC)  # (P, NPk): gradient rows of the current run of equal ids
        for jj in range(cnt):
            j = start + jj
            idx = tl.load(sids + j)
            tok = tl.load(order + j)
            G += tl.load(grad + tok * N + col, mask=ok, other=0.0).to(ACC)
            nxt = tl.load(sids + j + 1, mask=jj + 1 < cnt, other=-1)
            if nxt != idx:  # the run ends: back-propagate its summed gradient once
                S1, S2, S3, S4, A2, A3, _ = _chain(c1, c2, c3, c4, idx, m1, m2, m3, m4, n1, n2, n3, n4, r1, r2, r3,
                                                   st1, st2, st3, K, NP1, NP2, NP3, NP4, RP1, RP2, RP3, DT, PREC)
                dY = G.to(DT)  # (P, NPk)
                if K >= 3:  # A2ᵀ batched over c2: (NP2, RP2, NP1)
                    A2t = tl.permute(tl.reshape(A2, (NP2, NP1, RP2)), (0, 2, 1))
                if K == 4:
                    A3t = tl.permute(tl.reshape(A3, (NP2, NP1 * NP3, RP3)), (0, 2, 1))  # (NP2, RP3, NP1·NP3)
                    dS4 = tl.sum(tl.dot(A3t, tl.reshape(dY, (NP2, NP1 * NP3, NP4)), input_precision=PREC), 0)
                    _add(dC + o4, dS4, idx % m4, m4, n4, r3, 1, RP3, NP4, 1, False)  # (RP3, NP4)
                    dY = tl.reshape(tl.dot(dY, tl.trans(S4), input_precision=PREC), (NP2 * NP1, NP3 * RP3)).to(DT)
                    t3 = (idx // st3) % m3
                    if t3 != cur3:
                        _add(dC + o3, acc3, cur3, m3, n3, r2, r3, RP2, NP3, RP3, False)
                        acc3 = tl.zeros((RP2, NP3 * RP3), dtype=ACC)
                        cur3 = t3
                    dS3 = tl.dot(A2t, tl.reshape(dY, (NP2, NP1, NP3 * RP3)), input_precision=PREC)
                    acc3 += tl.sum(dS3, 0).to(ACC)  # (RP2, NP3·RP3)
                    dA2 = tl.dot(dY, tl.trans(S3), input_precision=PREC)  # (P2, RP2)
                elif K == 3:
                    dS3 = tl.sum(tl.dot(A2t, tl.reshape(dY, (NP2, NP1, NP3)), input_precision=PREC), 0)
                    _add(dC + o3, dS3, idx % m3, m3, n3, r2, 1, RP2, NP3, 1, False)  # (RP2, NP3)
                    dA2 = tl.dot(dY, tl.trans(S3), input_precision=PREC)  # (P2, RP2)
                if K == 2:
                    dS2 = tl.dot(tl.trans(S1), dY, input_precision=PREC)  # (RP1, NP2)
                    _add(dC + o2, dS2, idx % m2, m2, n2, r1, 1, RP1, NP2, 1, False)
                    dS1 = tl.dot(dY, tl.trans(S2), input_precision=PREC)  # (NP1, RP1)
                else:
                    dA2 = tl.reshape(dA2, (NP2, NP1, RP2)).to(DT)  # batched over c2
                    t2 = (idx // st2) % m2
                    if t2 != cur2:
                        _add(dC + o2, acc2, cur2, m2, n2, r1, r2, RP1, NP2, RP2, True)
                        acc2 = tl.zeros((NP2, RP1, RP2), dtype=ACC)
                        cur2 = t2
                    S1t = tl.broadcast_to(tl.trans(S1)[None, :, :], (NP2, RP1, NP1))
                    acc2 += tl.dot(S1t, dA2, input_precision=PREC).to(ACC)  # dS2 (NP2, RP1, RP2)
                    dS1 = tl.sum(tl.dot(dA2, tl.permute(S2, (0, 2, 1)), input_precision=PREC), 0)  # (NP1, RP1)
                t1 = (idx // st1) % m1
                if t1 != cur1:
                    _add(dC, acc1, cur1, m1, n1, 1, r1, 1, NP1, RP1, False)
                    acc1 = tl.zeros((NP1, RP1), dtype=ACC)
                    cur1 = t1
                acc1 += dS1.to(ACC)
                G = tl.zeros(col.shape, dtype=ACC)
        _add(dC, acc1, cur1, m1, n1, 1, r1, 1, NP1, RP1, False)
        if K >= 3:
            _add(dC + o2, acc2, cur2, m2, n2, r1, r2, RP1, NP2, RP2, True)
        if K == 4:
            _add(dC + o3, acc3, cur3, m3, n3, r2, r3, RP2, NP3, RP3, False)


def best_configs() -> dict[str, str | None]:
    """The launch configs Triton's autotuner picked for the forward and backward kernels, as text
    (None before a kernel's first launch or without Triton): benchmarks record them beside timings."""
    if not HAS_TRITON:
        return {"forward": None, "backward": None}
    chosen = {k: getattr(kern, "best_config", None) for k, kern in (("forward", _fwd_kernel), ("backward", _bwd_kernel))}
    return {k: None if c is None else str(c) for k, c in chosen.items()}


def _kernel_args(cores: list[Tensor], row_factors, col_factors) -> tuple[list, dict]:
    """Sizes (m 4, n 4, r 3, digit strides 3; unused = 1) and the constexpr tile sizes."""
    k = len(cores)
    ranks = [1] + [c.shape[-1] for c in cores[:-1]] + [1]
    NP, RP = tile_sizes(ranks, list(col_factors))
    pad = lambda xs, n: list(xs) + [1] * (n - len(xs))  # noqa: E731
    strides = [math.prod(row_factors[i + 1 :]) for i in range(k)]
    sizes = pad(row_factors, 4) + pad(col_factors, 4) + pad(ranks[1:-1], 3) + pad(strides[:3], 3)
    meta = dict(K=k, **{f"NP{i + 1}": v for i, v in enumerate(NP)}, **{f"RP{i + 1}": v for i, v in enumerate(RP)})
    return sizes, meta


def gather_forward(ids: Tensor, cores: list[Tensor], row_factors: list[int], col_factors: list[int], num_cols: int,
                   out_dtype: torch.dtype) -> Tensor:
    """Forward launcher (``muse::tt_gather_fwd``): rows ``ids`` (L,) int64 -> (L, num_cols) in
    ``out_dtype``, from contiguous cores."""
    L = ids.numel()
    out = torch.empty(L, num_cols, device=ids.device, dtype=out_dtype)
    sizes, meta = _kernel_args(list(cores), row_factors, col_factors)
    ptrs = list(cores) + [None] * (4 - len(cores))
    if L:
        grid = lambda m: (cdiv(L, m["BT"]),)  # noqa: E731
        _launch(_fwd_kernel, grid, ids, out, *ptrs, L, num_cols, *sizes, **meta, PREC=dot_precision(out_dtype))
    return out


def gather_backward(grad_out: Tensor, ids: Tensor, cores: list[Tensor], row_factors: list[int],
                    col_factors: list[int]) -> Tensor:
    """Backward launcher (``muse::tt_gather_bwd``): every core's gradient, concatenated flat in
    fp32 (fp64 for fp64 cores); the caller splits and casts it. One output rather than one per
    core: the per-core gradients would be views of one buffer, and an op's outputs must not
    alias. Raises OutOfResources where the kernel does not fit the GPU."""
    L, N = grad_out.shape
    acc = torch.float64 if cores[0].dtype == torch.float64 else torch.float32
    sizes_n = [c.numel() for c in cores]
    offs = [sum(sizes_n[:i]) for i in range(len(cores))] + [0] * (4 - len(cores))
    dC = torch.zeros(sum(sizes_n), device=grad_out.device, dtype=acc)  # every core's gradient, flat
    if L:
        sids, order = torch.sort(ids)  # runs of equal ids become adjacent
        sizes, meta = _kernel_args(list(cores), row_factors, col_factors)
        ptrs = list(cores) + [None] * (4 - len(cores))
        grid = lambda m: (cdiv(L, m["BT"]),)  # noqa: E731
        _launch(_bwd_kernel, grid, sids, order, grad_out.contiguous(), *ptrs, dC, *offs[1:4], L, N, *sizes, **meta,
                PREC=dot_precision(grad_out.dtype))
    return dC


# The launchers as ops (muse.ops._dispatch): one graph node each under torch.compile, outputs of
# the real shapes for fake tensors. Not modelled by the fakes: the backward's sorted ids and
# their order, (L,) int64 each.
def _fwd_fake(ids, cores, row_factors, col_factors, num_cols, out_dtype):
    return ids.new_empty((ids.numel(), num_cols), dtype=out_dtype)


def _bwd_fake(grad_out, ids, cores, row_factors, col_factors):
    acc = torch.float64 if cores[0].dtype == torch.float64 else torch.float32
    return grad_out.new_empty((sum(c.numel() for c in cores),), dtype=acc)


_fwd_op = define_op(
    "tt_gather_fwd",
    "(Tensor ids, Tensor[] cores, int[] row_factors, int[] col_factors, int num_cols, ScalarType out_dtype) -> Tensor",
    lambda ids, cores, *rest: gather_forward(ids.contiguous(), [c.contiguous() for c in cores], *rest), _fwd_fake,
)
_bwd_op = define_op(
    "tt_gather_bwd", "(Tensor grad_out, Tensor ids, Tensor[] cores, int[] row_factors, int[] col_factors) -> Tensor",
    lambda g, ids, cores, *rest: gather_backward(g, ids.contiguous(), [c.contiguous() for c in cores], *rest),
    _bwd_fake,
)


class _TTGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids: Tensor, row_factors, col_factors, num_cols: int, out_dtype, *cores: Tensor) -> Tensor:
        out = (_fwd_op if use_op(ids) else gather_forward)(ids, list(cores), row_factors, col_factors, num_cols,
                                                            out_dtype)
        ctx.save_for_backward(ids, *cores)
        ctx.factors = (row_factors, col_factors)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        ids, *cores = ctx.saved_tensors
        row_factors, col_factors = ctx.factors
        try:
            dC = (_bwd_op if use_op(grad_out) else gather_backward)(grad_out, ids, cores, row_factors, col_factors)
        except OutOfResources as e:  # the forward fit, the backward does not: recompute in torch
            warnings.warn(f"muse: the fused TT gather backward does not fit this GPU ({e}); using torch",
                          stacklevel=2)
            with torch.enable_grad():
                leaves = [c.detach().requires_grad_() for c in cores]
                out = tt_contract(ids, leaves, list(row_factors), list(col_factors), grad_out.shape[1])
                return (None, None, None, None, None, *torch.autograd.grad(out.to(grad_out.dtype), leaves, grad_out))
        grads, o = [], 0
        for c in cores:  # views of dC, cast to the cores' dtype
            grads.append(dC[o : o + c.numel()].view(c.shape).to(c.dtype))
            o += c.numel()
        return (None, None, None, None, None, *grads)


def triton_tt_gather(ids: Tensor, cores: list[Tensor], row_factors, col_factors, num_cols: int,
                     out_dtype: torch.dtype | None = None) -> Tensor:
    """Rows ``ids`` (L,) → (L, num_cols) on the fused kernels; gradients reach every core.

    ids must be in range (not checked here); cores as ``tt_gather``. The result has
    ``out_dtype`` (default: the cores'), which is also the dtype of the dots.
    """
    out_dtype = out_dtype or cores[0].dtype
    if not (triton_supports(*cores) and runs(cores[0], out_dtype)):
        if not HAS_TRITON:
            raise RuntimeError("impl='triton' needs the triton package (pip install triton); use impl='torch'")
        raise ValueError(
            "impl='triton' runs CUDA tensors (or CPU ones under TRITON_INTERPRET=1) of dtype "
            f"float32/bfloat16/float16/float64 (interpreter: float32/float64); got {cores[0].device.type} "
            f"{cores[0].dtype} -> {out_dtype}"
        )
    if ids.device != cores[0].device:
        raise ValueError(f"ids are on {ids.device} but the cores on {cores[0].device}")
    why = shape_unsupported([1] + [c.shape[-1] for c in cores[:-1]] + [1], list(col_factors))
    if why:
        raise ValueError(why + "; use impl='torch'")
    return _TTGather.apply(ids.long().contiguous(), tuple(row_factors), tuple(col_factors), num_cols, out_dtype,
                           *(c.contiguous() for c in cores))
