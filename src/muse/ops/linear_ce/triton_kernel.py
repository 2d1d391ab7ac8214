"""Triton fused linear + cross-entropy: the NLL of x @ W^T + b without the (T, V) logits.

Same function and shapes as ``naive_linear_cross_entropy`` (the reference for this file):

    x (T, K), weight (V, K), bias (V,) or None, targets (T,)  ->  sum of the NLL (fp32 scalar)

Three kernels, none with atomics, so the loss and every gradient are deterministic:

    fwd  grid (T / BM, S):       per vocabulary split s, the online log-sum-exp of the logits
                                 tiles z = x_blk @ w_blk^T + b (BM, BV) and the target's logit;
                                 S partial (lse, logit) pairs per token are combined in torch
    dx   grid (T / BM, K / KG):  dx[:, g]  = sum over vocab blocks of dz_tile @ w[v, g]
    dw   grid (V / BV, K / KG):  dw[v, g]  = sum over token blocks of dz_tile^T @ x[t, g],
                                 dbias[v] = the column sums of dz

where dz = (softmax(z) - onehot(target)) * dloss (0 for ignored targets and padding rows) is
recomputed tile by tile from the saved lse (T,): the only tensor saved besides the inputs.
Each backward program owns a (BM or BV) x KG block of its gradient and accumulates it in
registers over the whole reduction, so a K wider than KG is covered by cdiv(K, KG) programs
that each recompute the logits: cheap for the low-rank heads (K = r <= 256: one group), a
multiple of the forward's cost for wide dense heads (see ``AUTO_MAX_K`` in ``__init__``).

Matmuls run on the tensor cores in the input dtype (3xTF32 for fp32, IEEE for fp64) with fp32
accumulation (fp64 for fp64 inputs); the exponentials, the lse and dz are fp32 (fp64). Any
T, V, K: tiles past the edges are masked (logits of padded vocabulary columns are -inf).
Offsets are int64, so T*K and V*K may exceed 2^31. Gradients come back in the inputs' dtypes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from muse.ops._dispatch import absent, contiguous, define_op, present, sms as _sms, use_op
from muse.ops._launch import cdiv, launch as _launch, next_pow2
from muse.ops._reduce import sum_partials
from muse.ops._triton import HAS_TRITON, autotune, configs, dot_precision, interpreting, tl, triton, triton_supports

from .naive import accumulation_dtype, check_inputs, naive_linear_cross_entropy

__all__ = ["HAS_TRITON", "triton_linear_cross_entropy", "triton_supports"]


if HAS_TRITON:
    LOG2E = tl.constexpr(1.4426950408889634)

    def _clamp_kg(configs, nargs, **kwargs):
        """Autotune pruning: no gradient group wider than K needs (rounded up to a power of two)."""
        K = {**nargs, **kwargs}["K"]
        kp = max(16, next_pow2(K))
        out, seen = [], set()
        for c in configs:
            kw = {**c.kwargs, "KG": min(c.kwargs["KG"], kp)}
            key = (tuple(sorted(kw.items())), c.num_warps, c.num_stages)
            if key not in seen:
                seen.add(key)
                out.append(triton.Config(kw, num_warps=c.num_warps, num_stages=c.num_stages))
        return out

    @triton.jit
    def _logits_tile(x, w, b, acc_ref, rows, cols, T, VL, K, sxt, sxk, swv, swk,
                     BM: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr,
                     HAS_BIAS: tl.constexpr, PREC: tl.constexpr):
        """(BM, BV) logits x[rows] @ w[cols]^T (+ b[cols]) in acc_ref's dtype, -inf in the
        columns >= VL (past V, or past the caller's vocabulary split). rows, cols: int64, so
        the offsets stay exact past 2^31 elements."""
        acc = tl.zeros((BM, BV), dtype=acc_ref.dtype.element_ty)
        for k0 in range(0, K, BK):
            ks = (k0 + tl.arange(0, BK)).to(tl.int64)
            xt = tl.load(x + rows[:, None] * sxt + ks[None, :] * sxk,
                         mask=(rows[:, None] < T) & (ks[None, :] < K), other=0.0)  # (BM, BK)
            wt = tl.load(w + cols[:, None] * swv + ks[None, :] * swk,
                         mask=(cols[:, None] < VL) & (ks[None, :] < K), other=0.0)  # (BV, BK)
            acc = tl.dot(xt, tl.trans(wt), acc, input_precision=PREC, out_dtype=acc.dtype)  # (BM, BK) @ (BK, BV)
        # one add per logit for the bias and the -inf past VL (per-logit work bounds these kernels)
        if HAS_BIAS:
            col = tl.load(b + cols, mask=cols < VL, other=0.0).to(acc.dtype)
        else:
            col = tl.zeros((BV,), dtype=acc.dtype)
        return acc + tl.where(cols < VL, col, float("-inf"))[None, :]

    @triton.jit
    def _row_stats(tgt, lse, rows, T, IGNORE):
        """Per row (BM,): the target id, -1 for rows that take no gradient (ignored, padding), so
        it matches no column; and lse * log2(e), +inf for those rows, so their softmax is 0."""
        ok = rows < T
        t = tl.load(tgt + rows, mask=ok, other=IGNORE)
        live = ok & (t != IGNORE)
        lse2 = _log2_scale(tl.load(lse + rows, mask=ok, other=0.0))
        return tl.where(live, t, -1), tl.where(live, lse2, float("inf"))

    @triton.jit
    def _log2_scale(v):
        """v * log2(e), the offset ``_softmax`` takes; v itself in fp64 (exact exp there)."""
        if v.dtype == tl.float64:
            return v
        return v * LOG2E

    @triton.jit
    def _softmax(z, c):
        """softmax = exp(z - lse) of a logits tile z (BM, BV) from c = _log2_scale(lse) (BM,): one
        FMA and one exp2 per logit (per-logit work, not the matmuls, bounds these kernels)."""
        if z.dtype == tl.float64:
            return tl.exp(z - c[:, None])
        return tl.exp2(z * LOG2E - c[:, None])

    @autotune(
        configs=configs([{"BM": 64, "BV": 64}, {"BM": 128, "BV": 128}, {"BM": 128, "BV": 64}, {"BM": 64, "BV": 128}],
                        stages=(2, 3), interp={"BM": 16, "BV": 32}),
        key=["V", "K", "HAS_BIAS"],
    )
    @triton.jit
    def _fwd_kernel(
        x, w, b, tgt, lse_part, tz_part, T, V, K, VS, sxt, sxk, swv, swk,
        BM: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr, HAS_BIAS: tl.constexpr, PREC: tl.constexpr,
    ):
        """lse_part[s, t] = log-sum-exp of row t's logits over the vocabulary slice
        [s*VS, (s+1)*VS) of split s, tz_part[s, t] = the target's logit if it lies in the slice."""
        i_m, i_s = tl.program_id(0), tl.program_id(1)
        rows = (i_m * BM + tl.arange(0, BM)).to(tl.int64)
        lo = i_s * VS
        hi = tl.minimum(lo + VS, V)
        t = tl.load(tgt + rows, mask=rows < T, other=-1)
        acc_t = lse_part.dtype.element_ty
        m = tl.full((BM,), float("-inf"), acc_t)  # running max
        s = tl.zeros((BM,), acc_t)  # running sum of exp(z - m)
        for v0 in range(lo, hi, BV):  # every block has a column < hi, so m stays finite
            cols = (v0 + tl.arange(0, BV)).to(tl.int64)
            z = _logits_tile(x, w, b, lse_part, rows, cols, T, hi, K, sxt, sxk, swv, swk,
                             BM, BV, BK, HAS_BIAS, PREC)  # (BM, BV)
            m_new = tl.maximum(m, tl.max(z, 1))
            s = s * tl.exp(m - m_new) + tl.sum(_softmax(z, _log2_scale(m_new)), 1)
            m = m_new
        # The target's logit, where it lies in this split: one row of w gathered per token rather
        # than a compare-and-select on every logit.
        hit = (t >= lo) & (t < hi)
        tz = tl.zeros((BM,), acc_t)
        for k0 in range(0, K, BK):
            ks = (k0 + tl.arange(0, BK)).to(tl.int64)
            xt = tl.load(x + rows[:, None] * sxt + ks[None, :] * sxk,
                         mask=(rows[:, None] < T) & (ks[None, :] < K), other=0.0)  # (BM, BK)
            wt = tl.load(w + t[:, None] * swv + ks[None, :] * swk,
                         mask=hit[:, None] & (ks[None, :] < K), other=0.0)  # (BM, BK): w[t]
            tz += tl.sum(xt.to(acc_t) * wt.to(acc_t), 1)
        if HAS_BIAS:
            tz += tl.load(b + t, mask=hit, other=0.0).to(acc_t)
        out = i_s.to(tl.int64) * T + rows
        tl.store(lse_part + out, m + tl.log(s), mask=rows < T)
        tl.store(tz_part + out, tz, mask=rows < T)

    _BWD = [  # (BM, BV, KG): the accumulator is (BM, KG) for dx, (BV, KG) for dw
        {"BM": 64, "BV": 64, "KG": 128}, {"BM": 64, "BV": 64, "KG": 256}, {"BM": 128, "BV": 64, "KG": 128},
        {"BM": 64, "BV": 128, "KG": 128}, {"BM": 128, "BV": 128, "KG": 128}, {"BM": 64, "BV": 64, "KG": 512},
    ]

    @autotune(
        configs=configs(_BWD, stages=(2, 3), interp={"BM": 16, "BV": 32, "KG": 16}),
        key=["V", "K", "HAS_BIAS"], prune_configs_by={"early_config_prune": _clamp_kg},
    )
    @triton.jit
    def _dx_kernel(
        x, w, b, tgt, lse, dloss, dx, T, V, K, VS, sxt, sxk, swv, swk, sdt, sdk, sds, IGNORE,
        BM: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr, KG: tl.constexpr,
        HAS_BIAS: tl.constexpr, PREC: tl.constexpr,
    ):
        """dx[s, rows, group] = sum over split s's vocabulary [s*VS, (s+1)*VS) of dz (BM, BV) @
        w[cols, group] (BV, KG). sds: the split stride of dx; 0 with one split."""
        i_m, i_g, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rows = (i_m * BM + tl.arange(0, BM)).to(tl.int64)
        kg = (i_g * KG + tl.arange(0, KG)).to(tl.int64)
        t, lse2 = _row_stats(tgt, lse, rows, T, IGNORE)
        acc = tl.zeros((BM, KG), dtype=lse.dtype.element_ty)
        dx += i_s.to(tl.int64) * sds
        lo = i_s * VS
        hi = tl.minimum(lo + VS, V)
        for v0 in range(lo, hi, BV):
            cols = (v0 + tl.arange(0, BV)).to(tl.int64)
            z = _logits_tile(x, w, b, lse, rows, cols, T, V, K, sxt, sxk, swv, swk, BM, BV, BK, HAS_BIAS, PREC)
            p = _softmax(z, lse2)  # (BM, BV)
            wg = tl.load(w + cols[:, None] * swv + kg[None, :] * swk,
                         mask=(cols[:, None] < V) & (kg[None, :] < K), other=0.0)  # (BV, KG)
            acc = tl.dot(p.to(wg.dtype), wg, acc, input_precision=PREC, out_dtype=acc.dtype)  # (BM, BV) @ (BV, KG)
        # dz = (softmax - onehot(t)) * dloss: the one-hot part is w[t] (if t is in this split),
        # subtracted once per row in fp32, and dloss scales the block once
        hit = (t >= lo) & (t < hi)
        wt = tl.load(w + t[:, None] * swv + kg[None, :] * swk, mask=hit[:, None] & (kg[None, :] < K), other=0.0)
        acc = (acc - wt.to(acc.dtype)) * tl.load(dloss)
        tl.store(dx + rows[:, None] * sdt + kg[None, :] * sdk, acc.to(dx.dtype.element_ty),
                 mask=(rows[:, None] < T) & (kg[None, :] < K))

    @autotune(
        configs=configs(_BWD, stages=(2, 3), interp={"BM": 16, "BV": 32, "KG": 16}),
        key=["V", "K", "HAS_BIAS"], prune_configs_by={"early_config_prune": _clamp_kg},
    )
    @triton.jit
    def _dw_kernel(
        x, w, b, tgt, lse, dloss, dw, db, T, V, K, TS, sxt, sxk, swv, swk, sdv, sdk, sds, IGNORE,
        BM: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr, KG: tl.constexpr,
        HAS_BIAS: tl.constexpr, PREC: tl.constexpr,
    ):
        """dw[s, cols, group] = sum over split s's tokens [s*TS, (s+1)*TS) of dz^T (BV, BM) @
        x[rows, group] (BM, KG); db[s, cols] = the column sums of dz (written by the programs of
        group 0). sds: the split stride of dw (and V of db); 0 with one split."""
        i_v, i_g, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        cols = (i_v * BV + tl.arange(0, BV)).to(tl.int64)
        kg = (i_g * KG + tl.arange(0, KG)).to(tl.int64)
        acc = tl.zeros((BV, KG), dtype=lse.dtype.element_ty)
        acc_b = tl.zeros((BV,), dtype=lse.dtype.element_ty)
        dw += i_s.to(tl.int64) * sds
        for t0 in range(i_s * TS, tl.minimum(i_s * TS + TS, T), BM):
            rows = (t0 + tl.arange(0, BM)).to(tl.int64)
            t, lse2 = _row_stats(tgt, lse, rows, T, IGNORE)
            z = _logits_tile(x, w, b, lse, rows, cols, T, V, K, sxt, sxk, swv, swk, BM, BV, BK, HAS_BIAS, PREC)
            p = _softmax(z, lse2)
            dz = tl.where(cols[None, :] == t[:, None], p - 1.0, p)  # (BM, BV), without dloss (scaled below)
            xg = tl.load(x + rows[:, None] * sxt + kg[None, :] * sxk,
                         mask=(rows[:, None] < T) & (kg[None, :] < K), other=0.0)  # (BM, KG)
            acc = tl.dot(tl.trans(dz.to(xg.dtype)), xg, acc, input_precision=PREC, out_dtype=acc.dtype)  # (BV, BM) @ (BM, KG)
            if HAS_BIAS:
                acc_b += tl.sum(dz, 0)
        dl = tl.load(dloss)
        acc *= dl
        acc_b *= dl
        tl.store(dw + cols[:, None] * sdv + kg[None, :] * sdk, acc.to(dw.dtype.element_ty),
                 mask=(cols[:, None] < V) & (kg[None, :] < K))
        if HAS_BIAS:
            if i_g == 0:
                tl.store(db + (sds > 0) * i_s.to(tl.int64) * V + cols, acc_b.to(db.dtype.element_ty), mask=cols < V)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _bk(K: int, dtype: torch.dtype) -> int:
    """The K step of the logits matmul: 16 under the interpreter (several steps in the tests),
    else 64 for 16-bit inputs and 32 for fp32/fp64 (shared memory per pipeline stage)."""
    if interpreting():
        return 16
    return min(max(16, 1 << (K - 1).bit_length()), 64 if dtype.itemsize <= 2 else 32)


def _vocab_splits(T: int, V: int, x: Tensor, gpu: bool | None = None) -> int:
    """Vocabulary splits of the forward: enough programs for ~2 per SM at BM = 128, each split
    keeping >= 1024 columns. Two under the interpreter (the tests cover the combine). Fake
    tensors get here only for the estimate's scratch (``gpu`` True: the GPU's sizes)."""
    if not (x.is_cuda if gpu is None else gpu):
        return 2 if interpreting() and V >= 64 else 1
    want = _cdiv(2 * _sms(x), _cdiv(T, 128))
    return max(1, min(want, _cdiv(V, 1024)))


def _token_split(T: int, V: int, x: Tensor, gpu: bool | None = None) -> int:
    """Tokens per split of the weight-gradient kernel (a multiple of 128, so of every BM): its
    programs tile the vocabulary only (V / BV of them: ~160 at V = 10K, one wave on an H100,
    each looping over all T tokens), so long inputs are split until there are ~4 per SM, each
    split keeping >= 1024 tokens. Splits of 32 tokens under the interpreter (the tests cover
    the sum of partials)."""
    if not (x.is_cuda if gpu is None else gpu):
        return 32 if interpreting() else max(T, 1)
    ns = max(1, min(_cdiv(4 * _sms(x), _cdiv(V, 128)), T // 1024))
    return _cdiv(_cdiv(T, ns), 128) * 128


def _dx_vocab_split(T: int, V: int, K: int, x: Tensor, gpu: bool | None = None) -> int:
    """Vocabulary columns per split of the input-gradient kernel (a multiple of 128, so of every
    BV). Its programs tile the tokens only (T / BM: 128 at T = 16K, one per SM), each looping over
    all V columns; with a narrow K (a low-rank head's r) each step is light and those programs are
    latency-bound, so the vocabulary is split until there are ~4 per SM. A split's fp32 partial
    costs T·K·4 bytes, so wider K splits less (none from K = 256 up: there the work per program
    already hides the latency). Splits of 128 columns under the interpreter (the tests cover the
    sum of partials)."""
    if not (x.is_cuda if gpu is None else gpu):
        return 128 if interpreting() else max(V, 1)
    ns = max(1, min(_cdiv(4 * _sms(x), _cdiv(T, 128)), V // 1024, 256 // max(K, 1)))
    return _cdiv(_cdiv(V, ns), 128) * 128


def ce_forward(x: Tensor, w: Tensor, b: Tensor | None, tgt: Tensor) -> tuple[Tensor, Tensor]:
    """Forward launcher (``muse::linear_ce_fwd``): per-token lse (T,) and target logit (T,) in
    the accumulation dtype, from contiguous targets."""
    T, K = x.shape
    V = w.shape[0]
    acc = accumulation_dtype(x)
    S = _vocab_splits(T, V, x)
    VS = _cdiv(V, S)
    S = _cdiv(V, VS)  # no empty split
    lse_part = torch.empty(S, T, device=x.device, dtype=acc)  # (S, T)
    tz_part = torch.empty(S, T, device=x.device, dtype=acc)
    grid = lambda meta: (cdiv(T, meta["BM"]), S)  # noqa: E731
    _launch(_fwd_kernel, grid,
        x, w, b, tgt, lse_part, tz_part, T, V, K, VS, x.stride(0), x.stride(1), w.stride(0), w.stride(1),
        BK=_bk(K, x.dtype), HAS_BIAS=b is not None, PREC=dot_precision(x.dtype),
    )
    if S == 1:
        return lse_part[0], tz_part[0]
    return torch.logsumexp(lse_part, 0), tz_part.sum(0)


def ce_backward(x: Tensor, w: Tensor, b: Tensor | None, tgt: Tensor, lse: Tensor, dloss: Tensor,
                ignore_index: int, need_dx: bool, need_dw: bool) -> tuple:
    """Backward launcher (``muse::linear_ce_bwd``): dx (like x) if need_dx, dw (like w) and db
    (like b, when there is a bias) if need_dw; None for the others. dloss: (1,) in lse's dtype."""
    T, K = x.shape
    V = w.shape[0]
    common = dict(BK=_bk(K, x.dtype), HAS_BIAS=b is not None, PREC=dot_precision(x.dtype))
    dx = dw = db = None
    if need_dx:
        dx = torch.empty_like(x)
        VS = _dx_vocab_split(T, V, K, x)
        ns = _cdiv(V, VS)
        # one split writes dx directly; more write fp32 partials (ns, T, K), summed below
        dx_p = dx if ns == 1 else torch.empty(ns, T, K, device=x.device, dtype=lse.dtype)
        sdt, sdk = (dx.stride(0), dx.stride(1)) if ns == 1 else (K, 1)
        grid = lambda meta: (cdiv(T, meta["BM"]), cdiv(K, meta["KG"]), ns)  # noqa: E731
        _launch(_dx_kernel, grid,
            x, w, b, tgt, lse, dloss, dx_p, T, V, K, VS, x.stride(0), x.stride(1), w.stride(0), w.stride(1),
            sdt, sdk, T * K if ns > 1 else 0, ignore_index, **common,
        )
        if ns > 1:
            sum_partials(dx_p, dx.dtype, out=dx)
    if need_dw:
        dw = torch.empty_like(w)  # w's strides: the gradient of a transposed view is contiguous
        db = torch.empty_like(b) if b is not None else None
        TS = _token_split(T, V, x)
        ns = _cdiv(T, TS)
        # one split writes dw (and db) directly; more write fp32 partials (ns, V, K), summed below
        dw_p = dw if ns == 1 else torch.empty(ns, V, K, device=x.device, dtype=lse.dtype)
        db_p = db if ns == 1 or b is None else torch.empty(ns, V, device=x.device, dtype=lse.dtype)
        sdv, sdk = (dw.stride(0), dw.stride(1)) if ns == 1 else (K, 1)
        grid = lambda meta: (cdiv(V, meta["BV"]), cdiv(K, meta["KG"]), ns)  # noqa: E731
        _launch(_dw_kernel, grid,
            x, w, b, tgt, lse, dloss, dw_p, db_p, T, V, K, TS, x.stride(0), x.stride(1), w.stride(0), w.stride(1),
            sdv, sdk, V * K if ns > 1 else 0, ignore_index, **common,
        )
        if ns > 1:
            sum_partials(dw_p, dw.dtype, out=dw)
            if b is not None:
                sum_partials(db_p, db.dtype, out=db)
    return dx, dw, db


# The launchers as ops (muse.ops._dispatch): one graph node each under torch.compile, outputs of
# the real shapes for fake tensors, and (the scratch functions) the fp32 split partials the
# launchers allocate on a GPU, for the memory estimate: the weight-gradient partials (ns, V, K)
# are 137 MiB at T = 16K, V = 10K, K = 512 on an H100.
def _fwd_scratch(x: Tensor, w: Tensor, b: Tensor | None, tgt: Tensor) -> list:
    T, V = x.shape[0], w.shape[0]
    S = _cdiv(V, _cdiv(V, _vocab_splits(T, V, x, gpu=True)))
    return [((S, T), accumulation_dtype(x))] * 2 if S > 1 else []


def _bwd_scratch(x: Tensor, w: Tensor, b: Tensor | None, tgt: Tensor, lse: Tensor, dloss: Tensor,
                 ignore_index: int, need_dx: bool, need_dw: bool) -> list:
    (T, K), V = x.shape, w.shape[0]
    out = []
    if need_dx and (ns := _cdiv(V, _dx_vocab_split(T, V, K, x, gpu=True))) > 1:
        out.append(((ns, T, K), lse.dtype))
    if need_dw and (ns := _cdiv(T, _token_split(T, V, x, gpu=True))) > 1:
        out += [((ns, V, K), lse.dtype)] + ([((ns, V), lse.dtype)] if b is not None else [])
    return out


def _fwd_fake(x, w, b, tgt):
    acc = accumulation_dtype(x)
    return x.new_empty((x.shape[0],), dtype=acc), x.new_empty((x.shape[0],), dtype=acc)


def _bwd_fake(x, w, b, tgt, lse, dloss, ignore_index, need_dx, need_dw):
    # empty_like as the launcher: a transposed weight (the low-rank head's B^T) gets a gradient
    # of its strides, and a compiler checks the real outputs' strides against these
    return (torch.empty_like(x) if need_dx else absent(x), torch.empty_like(w) if need_dw else absent(x),
            torch.empty_like(b) if need_dw and b is not None else absent(x))


_x = lambda *a: a[0]  # noqa: E731 - the placeholders take x's dtype
_fwd_op = define_op(
    "linear_ce_fwd", "(Tensor x, Tensor w, Tensor? b, Tensor tgt) -> (Tensor, Tensor)",
    lambda x, w, b, tgt: ce_forward(x, w, contiguous(b), tgt.contiguous()), _fwd_fake, scratch=_fwd_scratch,
)
_bwd_op = define_op(
    "linear_ce_bwd",
    "(Tensor x, Tensor w, Tensor? b, Tensor tgt, Tensor lse, Tensor dloss, int ignore_index, bool need_dx,"
    " bool need_dw) -> (Tensor, Tensor, Tensor)",
    lambda x, w, b, tgt, lse, *rest: ce_backward(x, w, contiguous(b), tgt.contiguous(), lse.contiguous(), *rest),
    _bwd_fake, placeholders=(_x, _x, _x), scratch=_bwd_scratch,
)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, tgt, ignore_index: int):
        lse, tz = (_fwd_op if use_op(x) else ce_forward)(x, w, b, tgt)  # (T,) each
        total = torch.where(tgt != ignore_index, lse - tz, 0.0).sum()
        ctx.save_for_backward(x, w, b, tgt, lse)
        ctx.ignore_index = ignore_index
        return total

    @staticmethod
    def backward(ctx, dloss):
        x, w, b, tgt, lse = ctx.saved_tensors
        dloss = dloss.to(lse.dtype).reshape(1).contiguous()
        need_dx = ctx.needs_input_grad[0]
        need_dw = ctx.needs_input_grad[1] or (b is not None and ctx.needs_input_grad[2])
        args = (x, w, b, tgt, lse, dloss, ctx.ignore_index, need_dx, need_dw)
        if use_op(x):
            dx, dw, db = present(_bwd_op(*args), (need_dx, need_dw, need_dw and b is not None))
        else:
            dx, dw, db = ce_backward(*args)
        return dx, dw if ctx.needs_input_grad[1] else None, db, None, None


def triton_linear_cross_entropy(
    x: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None, ignore_index: int = -100
) -> Tensor:
    """The fused linear + cross-entropy on the Triton kernels (CUDA, or the CPU interpreter).

    Args and result as ``naive_linear_cross_entropy``: x (T, K), weight (V, K), bias (V,) or
    None, targets (T,) in [0, V) or ``ignore_index`` (other ids are not checked: no host
    sync); returns the summed NLL, float32 (float64 for float64 inputs). x, weight and bias
    must share a dtype (cast them first, or run under autocast). Gradients reach x, weight
    and bias; fake / meta tensors (memory estimates) allocate what the kernels would.
    """
    check_inputs(x, weight, targets, bias)
    if not (use_op(x) or triton_supports(x, weight, bias)):
        if not HAS_TRITON:
            raise RuntimeError("impl='triton' needs the triton package (pip install triton); use impl='chunked'")
        raise ValueError(
            "impl='triton' runs CUDA tensors (or CPU ones under TRITON_INTERPRET=1) of dtype "
            f"float32/bfloat16/float16/float64; got {x.device.type} {x.dtype}"
        )
    if len({x.dtype, weight.dtype} | ({bias.dtype} if bias is not None else set())) > 1:
        raise ValueError(f"x, weight and bias must share a dtype; got {x.dtype}, {weight.dtype}, "
                         f"{bias.dtype if bias is not None else None}")
    if x.shape[0] == 0:
        return naive_linear_cross_entropy(x, weight, targets, bias, ignore_index)
    targets = targets.long().contiguous()
    bias = bias.contiguous() if bias is not None else None
    return _LinearCrossEntropy.apply(x, weight, bias, targets, int(ignore_index))
