"""The holographic read's scan in Triton (CUDA, or the CPU interpreter under TRITON_INTERPRET=1).

The FFTs stay in torch (cuFFT); the kernels run the part between them, the linear-attention scan
of ``chunk.py`` over the bound spectra X (B, N, W), W = 2F real channels, with the S slot
weights as features and a per-slot decay γ_j = exp(log_gamma_j):

    read_t = Σ_{s≤t} A_ts X_s + Σ_j β_tj γ_j^{t−c₀+1} M^j_enter,   A_ts = Σ_j β_tj γ_j^{t−s} α_sj

Kernels, with C the chunk length, NC = ceil(N / C) chunks, SP >= max(S, 16) and BV value columns
per program:

- ``_mix_kernel`` (grid NC × B): the in-chunk mixing matrix A (C, C), looping over the S slots
  with exp((i − i')·log γ_j) on the causal triangle (every power of γ in (0, 1]).
- ``_scan_fwd_kernel`` (grid W/BV × B): walks the chunks in order with the memory (SP, BV) in
  registers: read = A·X + (β ⊙ γ^{i+1})·M, then M ← γ^L ⊙ M + (α ⊙ γ^{L−1−i})ᵀ·X, L the chunk's
  real length (the last chunk may be short: its padded rows would decay the final memory).
  Optionally stores the memory entering each chunk (the backward's recomputation).
- ``_scan_bwd_kernel`` (grid W/BV × B): walks the chunks backwards with G = ∂/∂(memory leaving
  the chunk) in registers: dX = Aᵀ·dread + (α ⊙ γ^{L−1−i})·G, stores G per chunk, then
  G ← γ^L ⊙ G + (β ⊙ γ^{i+1})ᵀ·dread; the last G is the initial memory's gradient.
- ``_mix_bwd_kernel`` (grid NC × B): per chunk, the reductions over W (dA = dread·Xᵀ,
  P = dread·M_enterᵀ, Q = X·Gᵀ, R = Σ G ⊙ M_enter) and from them dα, dβ (C, S) and the chunk's
  part of d log γ (S,), summed on the host. No atomics: deterministic.

With ``recall`` the same kernels also read the memory with the write weights α (the mixer's
auxiliary loss): a second mixing matrix A2 = Σ_j α γ^(i−i') α, a second output per chunk in the
same forward walk, its gradient folded into the same backward walk (the recall's part of G) and
into the same per-chunk reductions. One walk each way instead of two.

Only the inputs are saved for the backward; A and the chunk memories are recomputed. Temporaries
per call, acc = fp32 (fp64 for fp64 inputs): forward A (B, NC, C, C); backward A and two
(B, NC, SP, W) memory buffers plus (B, NC, SP) for d log γ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from muse.ops._dispatch import absent, define_op, present, sms, use_op
from muse.ops._launch import cdiv, launch, next_pow2
from muse.ops._triton import HAS_TRITON, dot_precision, tl, triton, triton_supports

from .naive import accumulation_dtype, check_inputs, full_precision, transforms
from .triton_glue import bind, unbind

__all__ = ["scan_backward", "scan_forward", "triton_chunk_holographic", "valid_chunk"]



def valid_chunk(C: int) -> bool:
    """The kernels take chunks of a power of two between 16 (tl.dot's minimum) and 128."""
    return isinstance(C, int) and not isinstance(C, bool) and 16 <= C <= 128 and C & (C - 1) == 0


if HAS_TRITON:

    @triton.jit
    def _decays(lg, i, s, L, S):
        """γ^{i+1} (C, SP), γ^{L−1−i} on the chunk's real rows and 0 past them (C, SP), γ^L (SP,),
        and log γ (SP,): all exponents >= 0, zero on the padded slots s >= S."""
        lg_s = tl.load(lg + s, mask=s < S, other=0.0)
        w_read = tl.exp((i[:, None] + 1).to(lg_s.dtype) * lg_s[None, :])
        to_end = tl.maximum(L - 1 - i, 0).to(lg_s.dtype)
        w_write = tl.where((i[:, None] < L) & (s[None, :] < S), tl.exp(to_end[:, None] * lg_s[None, :]), 0.0)
        return w_read, w_write, tl.exp(L.to(lg_s.dtype) * lg_s), lg_s

    @triton.jit
    def _slot_tile(w, i_b, rows, s, N, S):
        """(C, SP) tile of α or β laid out (B, N, S), zeros outside [0, N) × [0, S)."""
        ptr = w + (i_b * N + rows[:, None]).to(tl.int64) * S + s[None, :]
        return tl.load(ptr, mask=(rows[:, None] < N) & (s[None, :] < S), other=0.0)

    @triton.jit
    def _value_tile(x, i_b, rows, v, N, W):
        """(C, BV) tile of x laid out (B, N, W), zeros outside [0, N) × [0, W)."""
        ptr = x + (i_b * N + rows[:, None]).to(tl.int64) * W + v[None, :]
        return tl.load(ptr, mask=(rows[:, None] < N) & (v[None, :] < W), other=0.0)

    @triton.jit
    def _state_ptrs(m, i_b, i_c, NC, s, v, W, SP: tl.constexpr):
        """Pointers and mask of the (SP, BV) block of chunk i_c in an (B, NC, SP, W) buffer."""
        return m + ((i_b * NC + i_c) * SP + s[:, None]).to(tl.int64) * W + v[None, :], v[None, :] < W

    @triton.jit
    def _mix_offsets(i_b, i_c, NC, i, C: tl.constexpr):
        """Offsets of chunk i_c's (C, C) block in a (B, NC, C, C) mixing-matrix buffer."""
        return ((i_b * NC + i_c) * C + i[:, None]).to(tl.int64) * C + i[None, :]

    @triton.jit
    def _mix_kernel(alpha, beta, lg, mix, N, S, NC, C: tl.constexpr):
        i_c, i_b = tl.program_id(0), tl.program_id(1)
        i = tl.arange(0, C)
        rows = i_c * C + i
        ok = rows < N
        acc_t = mix.dtype.element_ty
        causal = i[:, None] >= i[None, :]
        lag = (i[:, None] - i[None, :]).to(acc_t)
        A = tl.zeros((C, C), dtype=acc_t)
        for j in range(S):
            lg_j = tl.load(lg + j)
            a_j = tl.load(alpha + (i_b * N + rows).to(tl.int64) * S + j, mask=ok, other=0.0)
            b_j = tl.load(beta + (i_b * N + rows).to(tl.int64) * S + j, mask=ok, other=0.0)
            # exp on the causal triangle only: above it lag·log γ > 0 could overflow
            A += b_j[:, None] * a_j[None, :] * tl.exp(tl.where(causal, lag * lg_j, float("-inf")))
        tl.store(mix + ((i_b * NC + i_c) * C + i[:, None]).to(tl.int64) * C + i[None, :], A)

    @triton.jit
    def _scan_fwd_kernel(x, alpha, beta, lg, mix, mix2, m0, y, y2, mfin, states, N, S, W, NC, C: tl.constexpr,
                         SP: tl.constexpr, BV: tl.constexpr, HAS_M0: tl.constexpr, STORE_Y: tl.constexpr,
                         RECALL: tl.constexpr, STORE_FINAL: tl.constexpr, STORE_STATES: tl.constexpr,
                         PREC: tl.constexpr):
        i_v, i_b = tl.program_id(0), tl.program_id(1)
        v = i_v * BV + tl.arange(0, BV)
        i, s = tl.arange(0, C), tl.arange(0, SP)
        acc_t = x.dtype.element_ty
        sm = (s[:, None] < S) & (v[None, :] < W)
        M = tl.zeros((SP, BV), dtype=acc_t)  # the memory entering the chunk
        if HAS_M0:
            M = tl.load(m0 + (i_b * S + s[:, None]).to(tl.int64) * W + v[None, :], mask=sm, other=0.0).to(acc_t)
        for i_c in range(NC):
            rows = i_c * C + i
            L = tl.minimum(N - i_c * C, C)
            w_read, w_write, decay_L, _ = _decays(lg, i, s, L, S)
            X = _value_tile(x, i_b, rows, v, N, W)  # (C, BV)
            if STORE_STATES:
                ptr, vm = _state_ptrs(states, i_b, i_c, NC, s, v, W, SP)
                tl.store(ptr, M, mask=vm)
            a_t = _slot_tile(alpha, i_b, rows, s, N, S)  # (C, SP)
            if STORE_Y:
                A = tl.load(mix + _mix_offsets(i_b, i_c, NC, i, C))  # (C, C)
                be = _slot_tile(beta, i_b, rows, s, N, S) * w_read  # (C, SP)
                out = tl.dot(A, X, input_precision=PREC) + tl.dot(be, M, input_precision=PREC)  # (C, BV)
                tl.store(y + (i_b * N + rows[:, None]).to(tl.int64) * W + v[None, :], out,
                         mask=(rows[:, None] < N) & (v[None, :] < W))
                if RECALL:  # the same memory read with the write weights, in the same walk
                    A2 = tl.load(mix2 + _mix_offsets(i_b, i_c, NC, i, C))
                    out = tl.dot(A2, X, input_precision=PREC) + tl.dot(a_t * w_read, M, input_precision=PREC)
                    tl.store(y2 + (i_b * N + rows[:, None]).to(tl.int64) * W + v[None, :], out,
                             mask=(rows[:, None] < N) & (v[None, :] < W))
            al = a_t * w_write  # (C, SP)
            M = decay_L[:, None] * M + tl.dot(tl.trans(al), X, input_precision=PREC)  # (SP, BV)
        if STORE_FINAL:
            tl.store(mfin + (i_b * S + s[:, None]).to(tl.int64) * W + v[None, :], M, mask=sm)

    @triton.jit
    def _scan_bwd_kernel(dy, dy2, x, alpha, beta, lg, mix, mix2, dmfin, dx, gstates, dm0, N, S, W, NC,
                         C: tl.constexpr, SP: tl.constexpr, BV: tl.constexpr, HAS_DMFIN: tl.constexpr,
                         RECALL: tl.constexpr, STORE_DM0: tl.constexpr, PREC: tl.constexpr):
        i_v, i_b = tl.program_id(0), tl.program_id(1)
        v = i_v * BV + tl.arange(0, BV)
        i, s = tl.arange(0, C), tl.arange(0, SP)
        acc_t = dx.dtype.element_ty
        sm = (s[:, None] < S) & (v[None, :] < W)
        G = tl.zeros((SP, BV), dtype=acc_t)  # ∂ loss / ∂ memory leaving the chunk
        if HAS_DMFIN:
            G = tl.load(dmfin + (i_b * S + s[:, None]).to(tl.int64) * W + v[None, :], mask=sm, other=0.0).to(acc_t)
        for k in range(NC):
            i_c = NC - 1 - k
            rows = i_c * C + i
            L = tl.minimum(N - i_c * C, C)
            w_read, w_write, decay_L, _ = _decays(lg, i, s, L, S)
            ptr, vm = _state_ptrs(gstates, i_b, i_c, NC, s, v, W, SP)
            tl.store(ptr, G, mask=vm)
            dY = _value_tile(dy, i_b, rows, v, N, W)  # (C, BV)
            A = tl.load(mix + _mix_offsets(i_b, i_c, NC, i, C))  # (C, C)
            a_t = _slot_tile(alpha, i_b, rows, s, N, S)  # (C, SP)
            dX = tl.dot(tl.trans(A), dY, input_precision=PREC) + tl.dot(a_t * w_write, G, input_precision=PREC)
            be = _slot_tile(beta, i_b, rows, s, N, S) * w_read  # (C, SP)
            G_in = tl.dot(tl.trans(be), dY, input_precision=PREC)  # (SP, BV): the reads' part
            if RECALL:  # the recall read: the same memory with the write weights
                dY2 = _value_tile(dy2, i_b, rows, v, N, W)
                A2 = tl.load(mix2 + _mix_offsets(i_b, i_c, NC, i, C))
                dX += tl.dot(tl.trans(A2), dY2, input_precision=PREC)
                G_in += tl.dot(tl.trans(a_t * w_read), dY2, input_precision=PREC)
            tl.store(dx + (i_b * N + rows[:, None]).to(tl.int64) * W + v[None, :], dX,
                     mask=(rows[:, None] < N) & (v[None, :] < W))
            G = decay_L[:, None] * G + G_in  # (SP, BV)
        if STORE_DM0:
            tl.store(dm0 + (i_b * S + s[:, None]).to(tl.int64) * W + v[None, :], G, mask=sm)

    @triton.jit
    def _mix_bwd_kernel(dy, dy2, x, alpha, beta, lg, states, gstates, dalpha, dbeta, dlg, N, S, W, NC,
                        C: tl.constexpr, SP: tl.constexpr, BV: tl.constexpr, RECALL: tl.constexpr,
                        PREC: tl.constexpr):
        i_c, i_b = tl.program_id(0), tl.program_id(1)
        i, s = tl.arange(0, C), tl.arange(0, SP)
        rows = i_c * C + i
        L = tl.minimum(N - i_c * C, C)
        acc_t = dalpha.dtype.element_ty
        dA = tl.zeros((C, C), dtype=acc_t)
        P = tl.zeros((C, SP), dtype=acc_t)  # dread_i · M_enter_j
        Q = tl.zeros((C, SP), dtype=acc_t)  # X_i · G_j
        R = tl.zeros((SP,), dtype=acc_t)  # G_j · M_enter_j
        dA2 = tl.zeros((C, C), dtype=acc_t)  # the recall read's dA and P
        P2 = tl.zeros((C, SP), dtype=acc_t)
        for v0 in range(0, W, BV):
            v = v0 + tl.arange(0, BV)
            dY = _value_tile(dy, i_b, rows, v, N, W)
            X = _value_tile(x, i_b, rows, v, N, W)
            ptr, vm = _state_ptrs(states, i_b, i_c, NC, s, v, W, SP)
            Me = tl.load(ptr, mask=vm, other=0.0)  # (SP, BV)
            ptr, vm = _state_ptrs(gstates, i_b, i_c, NC, s, v, W, SP)
            Gx = tl.load(ptr, mask=vm, other=0.0)
            dA += tl.dot(dY, tl.trans(X), input_precision=PREC)
            P += tl.dot(dY, tl.trans(Me), input_precision=PREC)
            Q += tl.dot(X, tl.trans(Gx), input_precision=PREC)
            R += tl.sum(Gx * Me, 1)
            if RECALL:
                dY2 = _value_tile(dy2, i_b, rows, v, N, W)
                dA2 += tl.dot(dY2, tl.trans(X), input_precision=PREC)
                P2 += tl.dot(dY2, tl.trans(Me), input_precision=PREC)
        w_read, w_write, decay_L, lg_s = _decays(lg, i, s, L, S)
        al = _slot_tile(alpha, i_b, rows, s, N, S)
        be = _slot_tile(beta, i_b, rows, s, N, S)
        fi = i.to(acc_t)
        # the carried memory (read) and the chunk's writes into the memory it leaves
        d_be = w_read * P
        d_al = w_write * Q
        d_lg = tl.sum(be * (fi[:, None] + 1) * w_read * P, 0) + tl.sum(al * (L - 1 - fi)[:, None] * w_write * Q, 0)
        d_lg += L.to(acc_t) * decay_L * R
        if RECALL:  # the recall reads the carried memory with α
            d_al += w_read * P2
            d_lg += tl.sum(al * (fi[:, None] + 1) * w_read * P2, 0)
        # the in-chunk mixing matrix, one slot at a time
        causal = i[:, None] >= i[None, :]
        lag = (i[:, None] - i[None, :]).to(acc_t)
        for j in range(S):
            lg_j = tl.load(lg + j)
            a_j = tl.load(alpha + (i_b * N + rows).to(tl.int64) * S + j, mask=rows < N, other=0.0)
            b_j = tl.load(beta + (i_b * N + rows).to(tl.int64) * S + j, mask=rows < N, other=0.0)
            Wm = dA * tl.exp(tl.where(causal, lag * lg_j, float("-inf")))  # (C, C)
            d_be = tl.where(s[None, :] == j, d_be + tl.sum(Wm * a_j[None, :], 1)[:, None], d_be)
            d_al = tl.where(s[None, :] == j, d_al + tl.sum(Wm * b_j[:, None], 0)[:, None], d_al)
            d_lg = tl.where(s == j, d_lg + tl.sum(tl.sum(Wm * lag * b_j[:, None] * a_j[None, :], 1), 0), d_lg)
            if RECALL:  # A2[i, i'] = Σ_j α_ij γ_j^(i−i') α_i'j: α on both sides
                Wm = dA2 * tl.exp(tl.where(causal, lag * lg_j, float("-inf")))
                both = tl.sum(Wm * a_j[None, :], 1) + tl.sum(Wm * a_j[:, None], 0)
                d_al = tl.where(s[None, :] == j, d_al + both[:, None], d_al)
                d_lg = tl.where(s == j, d_lg + tl.sum(tl.sum(Wm * lag * a_j[:, None] * a_j[None, :], 1), 0), d_lg)
        tile = (i_b * N + rows[:, None]).to(tl.int64) * S + s[None, :]
        ok = (rows[:, None] < N) & (s[None, :] < S)
        tl.store(dalpha + tile, d_al, mask=ok)
        tl.store(dbeta + tile, d_be, mask=ok)
        tl.store(dlg + (i_b * NC + i_c).to(tl.int64) * SP + s, d_lg)


def _block_v(x: Tensor) -> int:
    """Value columns per program of the scan kernels (a tl.dot operand: >= 16). Each program walks
    every chunk of its batch row in sequence, so the grid is only B·W/BV programs: narrower blocks
    where 64 would leave SMs idle (one sequence of D = 2048 is 33 blocks of 64)."""
    B, _, W = x.shape
    if x.is_cuda:
        for bv in (64, 32):
            if B * cdiv(W, bv) >= sms(x):
                return bv
        return 16
    return 64


def _sizes(x: Tensor, alpha: Tensor, C: int) -> tuple[int, int, int, int, int, int]:
    B, N, W = x.shape
    S = alpha.shape[-1]
    return B, N, W, S, cdiv(N, C), max(16, next_pow2(S))


def _mix(alpha, beta, lg, C: int) -> Tensor:
    B, N, S = alpha.shape
    NC = cdiv(N, C)
    mix = torch.empty(B, NC, C, C, device=alpha.device, dtype=alpha.dtype)
    launch(_mix_kernel, (NC, B), alpha, beta, lg, mix, N, S, NC, C=C)
    return mix


def scan_forward(x, alpha, beta, lg, m0, output_final_state: bool, C: int, recall: bool = False):
    """Forward launcher (``muse::holographic_fwd``): (read (B, N, W), final memory (B, S, W) or
    None, recall (B, N, W) or None) from x (B, N, W), alpha, beta (B, N, S), lg (S,), m0 (B, S, W)
    or None, all contiguous and of one dtype (fp32/fp64). ``recall``: also read the same memory
    with the write weights alpha, in the same walk over the chunks."""
    B, N, W, S, NC, SP = _sizes(x, alpha, C)
    BV = _block_v(x)
    y = torch.empty_like(x)
    y2 = torch.empty_like(x) if recall else None
    mfin = x.new_empty((B, S, W)) if output_final_state else None
    mix2 = _mix(alpha, alpha, lg, C) if recall else None
    launch(_scan_fwd_kernel, (cdiv(W, BV), B), x, alpha, beta, lg, _mix(alpha, beta, lg, C), mix2, m0, y, y2, mfin,
           None, N, S, W, NC, C=C, SP=SP, BV=BV, HAS_M0=m0 is not None, STORE_Y=True, RECALL=recall,
           STORE_FINAL=output_final_state, STORE_STATES=False, PREC=dot_precision(x.dtype))
    return y, mfin, y2


def scan_backward(dy, dmfin, dy2, x, alpha, beta, lg, m0, C: int):
    """Backward launcher (``muse::holographic_bwd``): (dx, dalpha, dbeta, dlg, dm0) from the read's
    gradient dy, the final memory's dmfin (or None) and the recall's dy2 (or None); dm0 None
    without m0."""
    B, N, W, S, NC, SP = _sizes(x, alpha, C)
    recall = dy2 is not None
    BV, prec = _block_v(x), dot_precision(x.dtype)
    mix = _mix(alpha, beta, lg, C)
    mix2 = _mix(alpha, alpha, lg, C) if recall else None
    states = x.new_empty((B, NC, SP, W))
    launch(_scan_fwd_kernel, (cdiv(W, BV), B), x, alpha, beta, lg, mix, None, m0, None, None, None, states,
           N, S, W, NC, C=C, SP=SP, BV=BV, HAS_M0=m0 is not None, STORE_Y=False, RECALL=False, STORE_FINAL=False,
           STORE_STATES=True, PREC=prec)
    dx, gstates = torch.empty_like(x), x.new_empty((B, NC, SP, W))
    dm0 = x.new_empty((B, S, W)) if m0 is not None else None
    launch(_scan_bwd_kernel, (cdiv(W, BV), B), dy, dy2, x, alpha, beta, lg, mix, mix2, dmfin, dx, gstates, dm0,
           N, S, W, NC, C=C, SP=SP, BV=BV, HAS_DMFIN=dmfin is not None, RECALL=recall, STORE_DM0=m0 is not None,
           PREC=prec)
    dalpha, dbeta, dlg = torch.empty_like(alpha), torch.empty_like(beta), x.new_empty((B, NC, SP))
    launch(_mix_bwd_kernel, (NC, B), dy, dy2, x, alpha, beta, lg, states, gstates, dalpha, dbeta, dlg,
           N, S, W, NC, C=C, SP=SP, BV=BV, RECALL=recall, PREC=prec)
    return dx, dalpha, dbeta, dlg.sum((0, 1))[:S], dm0


# The launchers as ops (muse.ops._dispatch): one graph node each under torch.compile, outputs of
# the real shapes for fake tensors. An absent final memory, recall or dm0 is a (0,) tensor of x's dtype.
def _fwd_fake(x, alpha, beta, lg, m0, output_final_state, C, recall):
    B, N, W = x.shape
    return (x.new_empty(x.shape), x.new_empty((B, alpha.shape[-1], W)) if output_final_state else absent(x),
            x.new_empty(x.shape) if recall else absent(x))


def _bwd_fake(dy, dmfin, dy2, x, alpha, beta, lg, m0, C):
    dm0 = m0.new_empty(m0.shape) if m0 is not None else absent(x)
    return x.new_empty(x.shape), alpha.new_empty(alpha.shape), beta.new_empty(beta.shape), lg.new_empty(lg.shape), dm0


def _c(t):
    return t.contiguous() if t is not None else None


def _fwd_launch(x, alpha, beta, lg, m0, output_final_state, C, recall):
    return scan_forward(_c(x), _c(alpha), _c(beta), _c(lg), _c(m0), output_final_state, C, recall)


def _bwd_launch(dy, dmfin, dy2, x, alpha, beta, lg, m0, C):
    return scan_backward(_c(dy), _c(dmfin), _c(dy2), _c(x), _c(alpha), _c(beta), _c(lg), _c(m0), C)


_x = lambda *a: a[0]  # noqa: E731
_fwd_op = define_op(
    "holographic_fwd",
    "(Tensor x, Tensor alpha, Tensor beta, Tensor log_gamma, Tensor? m0, bool output_final_state, int C,"
    " bool recall) -> (Tensor, Tensor, Tensor)",
    _fwd_launch, _fwd_fake, placeholders=(None, _x, _x),
)
_bwd_op = define_op(
    "holographic_bwd",
    "(Tensor dy, Tensor? dmfin, Tensor? dy2, Tensor x, Tensor alpha, Tensor beta, Tensor log_gamma, Tensor? m0,"
    " int C) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    _bwd_launch, _bwd_fake, placeholders=(None, None, None, None, lambda *a: a[3]),
)


class _HolographicScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, beta, lg, m0, output_final_state: bool, C: int, recall: bool):
        args = (x, alpha, beta, lg, m0, output_final_state, C, recall)
        out = present(_fwd_op(*args), (True, output_final_state, recall)) if use_op(x) else scan_forward(*args)
        ctx.save_for_backward(x, alpha, beta, lg, m0)
        ctx.C = C
        return out

    @staticmethod
    def backward(ctx, dy, dmfin, dy2):
        x, alpha, beta, lg, m0 = ctx.saved_tensors
        args = (_c(dy) if dy is not None else torch.zeros_like(x), _c(dmfin), _c(dy2), x, alpha, beta, lg, m0, ctx.C)
        if use_op(x):
            dx, da, db, dlg, dm0 = present(_bwd_op(*args), (True, True, True, True, m0 is not None))
        else:
            dx, da, db, dlg, dm0 = scan_backward(*args)
        return dx, da, db, dlg, dm0, None, None, None


@full_precision
def triton_chunk_holographic(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    alpha: Tensor,
    beta: Tensor,
    log_gamma: Tensor,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    unitary: bool = True,
    chunk_size: int = 64,
    recall: bool = False,
) -> tuple[Tensor, ...]:
    """``chunk_holographic`` with the scan and the binding / unbinding glue on the Triton kernels
    (FFTs in torch); same results.
    The scan runs in the accumulation dtype (fp32; fp64 for fp64 inputs); the recall is a second
    read of the same memory with the write weights, made in the same walk over the chunks (forward
    and backward)."""
    _, _, D, _, _ = check_inputs(q, k, v, alpha, beta, log_gamma, initial_state)
    if not valid_chunk(chunk_size):
        raise ValueError(f"impl='triton' needs chunk_size a power of two in [16, 128]; got {chunk_size!r}")
    acc = accumulation_dtype(q, k, v)
    probe = v.new_empty((0,), dtype=acc)
    if not triton_supports(probe):
        raise ValueError(
            "impl='triton' runs CUDA tensors (or CPU fp32/fp64 ones under TRITON_INTERPRET=1); "
            f"got {v.device.type} {v.dtype}"
        )
    Q, K, bound = bind(*transforms(q, k, v, acc), unitary)  # (B, N, F) × 2, (B, N, 2F)
    x, a, lg = bound, alpha.to(acc).contiguous(), log_gamma.to(acc).contiguous()
    m0 = initial_state.to(acc).contiguous() if initial_state is not None else None
    b = beta.to(acc).contiguous()
    read, final_state, again = _HolographicScan.apply(x, a, b, lg, m0, output_final_state, chunk_size, recall)
    r = torch.fft.irfft(unbind(Q, read), n=D, dim=-1).to(v.dtype)  # (B, N, D)
    if recall:  # `again`: the same memory read with α, from the same walk
        return r, final_state, torch.fft.irfft(unbind(K, again), n=D, dim=-1).to(v.dtype)
    return r, final_state
