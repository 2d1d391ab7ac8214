"""Triton fused low-rank GELU MLP core: c = gelu_tanh(a @ w_up + b_up) @ w_down, no (T, H) tensor.

Same function and shapes as ``naive_lowrank_mlp`` (the reference for this file):

    a (T, R), w_up (R, H), b_up (H,) or None, w_down (H, S)  ->  c (T, S)

In a low-rank FFN (R = S = r, H = 4d) the thin projections cost O(T·d·r) while the middle reads
and writes (T, 4d) activations several times per step (up, GELU, down; their gradients): at
d = 512, r = 32 that traffic is most of the FFN's time and its largest activation. Here every
(T, H) tile lives only in registers. Three kernels, none with atomics (deterministic):

    fwd  grid (T / BT, splits):   c[t]  = sum over hidden blocks of gelu(a[t] @ w_up[:, h] + b[h]) @ w_down[h]
    da   grid (T / BT, splits):   da[t] = sum over hidden blocks of dh @ w_up[:, h]^T
    dw   grid (H / BH, splits):   dw_up[:, h] = a^T @ dh, dw_down[h] = g^T @ dc, db[h] = column sums
                                  of dh, summed over token tiles

where each split owns every splits-th block of its loop (hidden blocks, or token tiles for dw),
so short grids still fill the GPU; the splits' fp32 partials are summed in torch.

with h, g = gelu(h) and dh = (dc @ w_down[h]^T) · gelu'(h) recomputed tile by tile (only a, the
weights and dc are read). Matmuls run on the tensor cores in the input dtype (3xTF32 for fp32,
IEEE for fp64) with fp32 (fp64) accumulation; h, gelu and dh are fp32 (fp64), and g / dh are
rounded to the input dtype before they enter a matmul, as the unfused layers round them. Any
T, R, H, S: tiles past the edges are masked. Gradients come back in the inputs' dtypes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from muse.ops._dispatch import absent, contiguous, define_op, present, sms as _sms, use_op
from muse.ops._launch import cdiv, launch as _launch, next_pow2
from muse.ops._reduce import sum_partials
from muse.ops._triton import HAS_TRITON, autotune, configs, dot_precision, interpreting, tl, triton, triton_supports
from muse.ops._inputs import accumulation_dtype

from .naive import check_inputs, naive_lowrank_mlp

__all__ = ["HAS_TRITON", "triton_lowrank_mlp"]

MAX_RANK = 128  # R and S above this: a (BT, R) tile and its accumulators no longer fit registers


if HAS_TRITON:

    @triton.jit
    def _gelu(h, FAST: tl.constexpr):
        """gelu_tanh(h) = h·σ(2u), u = √(2/π)(h + 0.044715 h³), and its derivative. FAST (16-bit
        inputs): through the hardware tanh (relative error 2^-11, below bf16/fp16 rounding) instead
        of an exp and a full-precision division: about half the instructions per (T, H) element,
        and these kernels do little else per element, so all three got faster with it
        (docs/performance-notes.md §6)."""
        if FAST:
            h2 = h * h
            t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f",
                                          [h * (0.7978845608028654 + 0.035677408136300125 * h2)],
                                          dtype=tl.float32, is_pure=True, pack=1)
            hh = 0.5 * h
            return hh + hh * t, 0.5 + 0.5 * t + hh * (1.0 - t * t) * (0.7978845608028654 + 0.10703222440890037 * h2)
        u2 = 1.5957691216057308 * (h + 0.044715 * h * h * h)  # 2u
        s = 1.0 / (1.0 + tl.exp(-u2))
        g = h * s
        return g, s + g * (1.0 - s) * 1.5957691216057308 * (1.0 + 0.134145 * h * h)

    @triton.jit
    def _load(ptr, rows, cols, n_rows, n_cols):
        """(len(rows), len(cols)) tile of a contiguous (n_rows, n_cols) matrix, zeros outside."""
        return tl.load(ptr + rows[:, None].to(tl.int64) * n_cols + cols[None, :],
                       mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)

    @triton.jit
    def _hidden(at, wu, bu, hcols, H, ACC: tl.constexpr, HAS_B: tl.constexpr, PREC: tl.constexpr):
        """h = a_tile @ w_up[:, hcols] (+ b_up[hcols]), (BT, BH) in ACC."""
        h = tl.dot(at, wu, input_precision=PREC, out_dtype=ACC)
        if HAS_B:
            h += tl.load(bu + hcols, mask=hcols < H, other=0.0).to(ACC)[None, :]
        return h

    _CFG = [{"BT": 128, "BH": 64}, {"BT": 64, "BH": 64}, {"BT": 128, "BH": 128}, {"BT": 64, "BH": 128}]
    _INTERP = {"BT": 16, "BH": 16}  # several blocks of every loop in the interpreter tests

    @autotune(configs=configs(_CFG, stages=(2, 3), interp=_INTERP), key=["R", "H", "S", "HAS_B", "NSPLIT"])
    @triton.jit
    def _fwd_kernel(a, wu, bu, wd, c_p, T, R, H, S, NSPLIT, BR: tl.constexpr, BS: tl.constexpr, BT: tl.constexpr,
                    BH: tl.constexpr, ACC: tl.constexpr, HAS_B: tl.constexpr, PREC: tl.constexpr,
                    FAST: tl.constexpr):
        """Split i_s sums over the hidden blocks i_s, i_s + NSPLIT, ...: partial c_p[i_s] (T, S)."""
        i_t, i_s = tl.program_id(0), tl.program_id(1)
        rows = i_t * BT + tl.arange(0, BT)
        kr, ks = tl.arange(0, BR), tl.arange(0, BS)
        at = _load(a, rows, kr, T, R)  # (BT, BR)
        acc = tl.zeros((BT, BS), dtype=ACC)
        for h0 in range(i_s * BH, H, NSPLIT * BH):
            hc = h0 + tl.arange(0, BH)
            h = _hidden(at, _load(wu, kr, hc, R, H), bu, hc, H, ACC, HAS_B, PREC)  # (BT, BH)
            g, _ = _gelu(h, FAST)
            acc = tl.dot(g.to(at.dtype), _load(wd, hc, ks, H, S), acc, input_precision=PREC, out_dtype=ACC)
        tl.store(c_p + i_s.to(tl.int64) * T * S + rows[:, None].to(tl.int64) * S + ks[None, :], acc,
                 mask=(rows[:, None] < T) & (ks[None, :] < S))

    @triton.jit
    def _dh(at, dct, wut, wdt, bu, hc, H, ACC: tl.constexpr, HAS_B: tl.constexpr, PREC: tl.constexpr,
            FAST: tl.constexpr):
        """For one hidden block hc, from its w_up block wut (BR, BH) and w_down block wdt (BH, BS):
        g (BT, BH) and dh (BT, BH) in ACC."""
        g, dgelu = _gelu(_hidden(at, wut, bu, hc, H, ACC, HAS_B, PREC), FAST)
        dg = tl.dot(dct, tl.trans(wdt), input_precision=PREC, out_dtype=ACC)  # (BT, BH)
        return g, dg * dgelu

    @autotune(configs=configs(_CFG, stages=(2, 3), interp=_INTERP), key=["R", "H", "S", "HAS_B", "NSPLIT"])
    @triton.jit
    def _da_kernel(a, wu, bu, wd, dc, da_p, T, R, H, S, NSPLIT, BR: tl.constexpr, BS: tl.constexpr, BT: tl.constexpr,
                   BH: tl.constexpr, ACC: tl.constexpr, HAS_B: tl.constexpr, PREC: tl.constexpr,
                   FAST: tl.constexpr):
        """Split i_s sums over the hidden blocks i_s, i_s + NSPLIT, ...: partial da_p[i_s] (T, R)."""
        i_t, i_s = tl.program_id(0), tl.program_id(1)
        rows = i_t * BT + tl.arange(0, BT)
        kr, ks = tl.arange(0, BR), tl.arange(0, BS)
        at, dct = _load(a, rows, kr, T, R), _load(dc, rows, ks, T, S)  # (BT, BR), (BT, BS)
        acc = tl.zeros((BT, BR), dtype=ACC)
        for h0 in range(i_s * BH, H, NSPLIT * BH):
            hc = h0 + tl.arange(0, BH)
            wut = _load(wu, kr, hc, R, H)
            _, dh = _dh(at, dct, wut, _load(wd, hc, ks, H, S), bu, hc, H, ACC, HAS_B, PREC, FAST)
            acc = tl.dot(dh.to(at.dtype), tl.trans(wut), acc, input_precision=PREC, out_dtype=ACC)  # (BT, BR)
        tl.store(da_p + i_s.to(tl.int64) * T * R + rows[:, None].to(tl.int64) * R + kr[None, :], acc,
                 mask=(rows[:, None] < T) & (kr[None, :] < R))

    @autotune(configs=configs(_CFG, stages=(2, 3), interp=_INTERP), key=["R", "H", "S", "HAS_B", "NSPLIT"])
    @triton.jit
    def _dw_kernel(a, wu, bu, wd, dc, dwu_p, dwd_p, db_p, T, R, H, S, NSPLIT, BR: tl.constexpr, BS: tl.constexpr,
                   BT: tl.constexpr, BH: tl.constexpr, ACC: tl.constexpr, HAS_B: tl.constexpr, PREC: tl.constexpr,
                   FAST: tl.constexpr):
        """Split i_s sums over the token tiles i_s, i_s + NSPLIT, ...: partials dwu_p[i_s] (R, H),
        dwd_p[i_s] (H, S), db_p[i_s] (H,)."""
        i_h, i_s = tl.program_id(0), tl.program_id(1)
        hc = i_h * BH + tl.arange(0, BH)
        kr, ks = tl.arange(0, BR), tl.arange(0, BS)
        acc_u = tl.zeros((BR, BH), dtype=ACC)
        acc_d = tl.zeros((BH, BS), dtype=ACC)
        acc_b = tl.zeros((BH,), dtype=ACC)
        wut, wdt = _load(wu, kr, hc, R, H), _load(wd, hc, ks, H, S)  # this program's hidden block, all loop long
        for t0 in range(i_s * BT, T, NSPLIT * BT):
            rows = t0 + tl.arange(0, BT)
            at, dct = _load(a, rows, kr, T, R), _load(dc, rows, ks, T, S)
            g, dh = _dh(at, dct, wut, wdt, bu, hc, H, ACC, HAS_B, PREC, FAST)
            # padded rows have dc = 0, so dh = 0 there and g (nonzero: gelu of the bias) meets a 0 dc
            acc_u = tl.dot(tl.trans(at), dh.to(at.dtype), acc_u, input_precision=PREC, out_dtype=ACC)  # (BR, BH)
            acc_d = tl.dot(tl.trans(g.to(at.dtype)), dct, acc_d, input_precision=PREC, out_dtype=ACC)  # (BH, BS)
            acc_b += tl.sum(dh, 0)
        base = i_s.to(tl.int64)
        tl.store(dwu_p + base * R * H + kr[:, None] * H + hc[None, :], acc_u, mask=(kr[:, None] < R) & (hc[None, :] < H))
        tl.store(dwd_p + base * H * S + hc[:, None] * S + ks[None, :], acc_d, mask=(hc[:, None] < H) & (ks[None, :] < S))
        if HAS_B:
            tl.store(db_p + base * H + hc, acc_b, mask=hc < H)


def _meta(a: Tensor, w_up: Tensor, w_down: Tensor, b_up: Tensor | None) -> dict:
    R, S = w_up.shape[0], w_down.shape[1]
    return dict(BR=max(16, next_pow2(R)), BS=max(16, next_pow2(S)),
                ACC=tl.float64 if a.dtype == torch.float64 else tl.float32, HAS_B=b_up is not None,
                PREC=dot_precision(a.dtype),
                FAST=a.is_cuda and a.dtype in (torch.bfloat16, torch.float16) and not interpreting())


def _splits(n_programs: int, most: int, a: Tensor) -> int:
    """How many ways to split a kernel's reduction loop (over hidden blocks for fwd and da, over
    token tiles for dw) so that its n_programs (at 128-wide blocks) become ~4 per SM, at most
    ``most``. Without the split, T = 16K gives the fwd and da kernels 128 programs, each looping
    over all of H: one per SM, latency-bound. Two under the interpreter (the tests cover the
    sum of partials)."""
    if not a.is_cuda:
        return min(2, most) if interpreting() else 1
    return max(1, min(-(-4 * _sms(a) // n_programs), most))


def _run(kernel, grid, a: Tensor, *args, **meta) -> None:
    """Launch with the autotuned blocks (remembered by ``_launch``), or fixed small ones where the
    operand tiles of the large blocks would overflow shared memory: fp64, ranks above 64."""
    if (a.element_size() >= 8 or max(meta["BR"], meta["BS"]) > 64) and not interpreting():
        blk = 32 if a.element_size() >= 8 else 64
        kernel.fn[grid](a, *args, **meta, BT=blk, BH=blk, num_warps=4, num_stages=1)
    else:
        _launch(kernel, grid, a, *args, **meta)


def mlp_forward(a: Tensor, w_up: Tensor, b_up: Tensor | None, w_down: Tensor) -> Tensor:
    """Forward launcher (``muse::lowrank_mlp_fwd``): c (T, S) in a's dtype; contiguous inputs."""
    T, R = a.shape
    H, S = w_down.shape
    ns = _splits(-(-T // 128), -(-H // 64), a)
    c_p = torch.empty(ns, T, S, device=a.device, dtype=accumulation_dtype(a))  # fp32 partials, one per split
    _run(_fwd_kernel, lambda m: (cdiv(T, m["BT"]), ns), a, w_up, b_up, w_down, c_p, T, R, H, S, ns,
         **_meta(a, w_up, w_down, b_up))
    return sum_partials(c_p, a.dtype)


def mlp_backward(a: Tensor, w_up: Tensor, b_up: Tensor | None, w_down: Tensor, dc: Tensor, need_da: bool,
                 need_dw: bool) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Backward launcher (``muse::lowrank_mlp_bwd``): (da, dw_up, db_up, dw_down), None where not
    needed (need_da / need_dw; db_up also when there is no bias); contiguous inputs."""
    T, R = a.shape
    H, S = w_down.shape
    meta = _meta(a, w_up, w_down, b_up)
    da = dwu = db = dwd = None
    if need_da:
        ns = _splits(-(-T // 128), -(-H // 64), a)
        da_p = torch.empty(ns, T, R, device=a.device, dtype=accumulation_dtype(a))
        _run(_da_kernel, lambda m: (cdiv(T, m["BT"]), ns), a, w_up, b_up, w_down, dc, da_p, T, R, H, S, ns,
             **meta)
        da = sum_partials(da_p, a.dtype)
    if need_dw:
        ns = _splits(-(-H // 64), -(-T // 128), a)
        acc = accumulation_dtype(a)
        dwu_p = torch.empty(ns, R, H, device=a.device, dtype=acc)
        dwd_p = torch.empty(ns, H, S, device=a.device, dtype=acc)
        db_p = torch.empty(ns, H, device=a.device, dtype=acc) if b_up is not None else None
        _run(_dw_kernel, lambda m: (cdiv(H, m["BH"]), ns), a, w_up, b_up, w_down, dc, dwu_p, dwd_p, db_p,
             T, R, H, S, ns, **meta)
        dwu, dwd = sum_partials(dwu_p, w_up.dtype), sum_partials(dwd_p, w_down.dtype)
        db = sum_partials(db_p, b_up.dtype) if b_up is not None else None
    return da, dwu, db, dwd


# The launchers as ops (muse.ops._dispatch): one graph node each under torch.compile, outputs of
# the real shapes for fake tensors (the split partials of the backward are not modelled).
def _fwd_fake(a, w_up, b_up, w_down):
    return a.new_empty((a.shape[0], w_down.shape[1]))


def _bwd_fake(a, w_up, b_up, w_down, dc, need_da, need_dw):
    return (torch.empty_like(a) if need_da else absent(a), torch.empty_like(w_up) if need_dw else absent(a),
            torch.empty_like(b_up) if need_dw and b_up is not None else absent(a),
            torch.empty_like(w_down) if need_dw else absent(a))


_a = lambda *args: args[0]  # noqa: E731 - the placeholders take a's dtype
_fwd_op = define_op(
    "lowrank_mlp_fwd", "(Tensor a, Tensor w_up, Tensor? b_up, Tensor w_down) -> Tensor",
    lambda a, wu, b, wd: mlp_forward(a.contiguous(), wu.contiguous(), contiguous(b), wd.contiguous()), _fwd_fake,
)
_bwd_op = define_op(
    "lowrank_mlp_bwd",
    "(Tensor a, Tensor w_up, Tensor? b_up, Tensor w_down, Tensor dc, bool need_da, bool need_dw)"
    " -> (Tensor, Tensor, Tensor, Tensor)",
    lambda a, wu, b, wd, dc, *flags: mlp_backward(a.contiguous(), wu.contiguous(), contiguous(b), wd.contiguous(),
                                                  dc.contiguous(), *flags),
    _bwd_fake, placeholders=(_a, _a, _a, _a),
)


class _LowRankMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, w_up, b_up, w_down):
        c = (_fwd_op if use_op(a) else mlp_forward)(a, w_up, b_up, w_down)
        ctx.save_for_backward(a, w_up, b_up, w_down)  # the (T, H) activations are recomputed
        return c

    @staticmethod
    def backward(ctx, dc):
        a, w_up, b_up, w_down = ctx.saved_tensors
        need_da = ctx.needs_input_grad[0]
        need_dw = any(ctx.needs_input_grad[1:])
        args = (a, w_up, b_up, w_down, dc.contiguous(), need_da, need_dw)
        if use_op(a):
            out = present(_bwd_op(*args), (need_da, need_dw, need_dw and b_up is not None, need_dw))
        else:
            out = mlp_backward(*args)
        return tuple(g if need else None for g, need in zip(out, ctx.needs_input_grad))


def triton_lowrank_mlp(a: Tensor, w_up: Tensor, b_up: Tensor | None, w_down: Tensor) -> Tensor:
    """The fused low-rank GELU MLP core on the Triton kernels (CUDA, or the CPU interpreter).

    Args and result as ``naive_lowrank_mlp``: a (T, R), w_up (R, H), b_up (H,) or None,
    w_down (H, S) with R, S <= ``MAX_RANK``, all of one dtype (cast them first, or go through
    ``lowrank_mlp``, which applies autocast); returns c (T, S) in that dtype. Gradients reach
    every input; fake / meta tensors (memory estimates) allocate what the kernels would.
    """
    check_inputs(a, w_up, b_up, w_down)
    if not (use_op(a) or triton_supports(a, w_up, b_up, w_down)):
        if not HAS_TRITON:
            raise RuntimeError("impl='triton' needs the triton package (pip install triton); use impl='torch'")
        raise ValueError("impl='triton' runs CUDA tensors (or CPU ones under TRITON_INTERPRET=1) of dtype "
                         f"float32/bfloat16/float16/float64; got {a.device.type} {a.dtype}")
    dtypes = {t.dtype for t in (a, w_up, b_up, w_down) if t is not None}
    if len(dtypes) > 1:
        raise ValueError(f"a, w_up, b_up and w_down must share a dtype; got {sorted(map(str, dtypes))}")
    if max(a.shape[1], w_down.shape[1]) > MAX_RANK:
        raise ValueError(f"impl='triton' takes ranks R, S <= {MAX_RANK}; got R={a.shape[1]}, S={w_down.shape[1]}")
    if a.shape[0] == 0:
        return naive_lowrank_mlp(a, w_up, b_up, w_down)
    return _LowRankMLP.apply(a.contiguous(), w_up.contiguous(), contiguous(b_up), w_down.contiguous())
