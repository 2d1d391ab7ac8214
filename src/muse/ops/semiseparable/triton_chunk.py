"""Triton chunked kernels for the causal semiseparable scan: the fast GPU path.

The kernels and their launchers ``scan_forward`` / ``scan_backward``; ``triton_scan.py``
registers those as the ops ``muse::semiseparable_fwd`` / ``_bwd`` and wraps them in autograd
as ``triton_chunk_semiseparable``, with the function and shapes of ``chunk_semiseparable``
(the torch reference for this file):

    u, v (B, N, H, r), z (B, N, H, p), log_decay (B, N, H) <= 0 or None,
    initial_state (B, H, r, p) or None  ->  y (B, N, H, p), final_state (B, H, r, p) or None

Four kernels over chunks of C positions (h_t = the state entering chunk t, fp32):

    chunk_local grid (NT, p / BV, B*H):  X_t = (v e^{b_last-b})^T z  (or (u e^b)^T dy backward)
    state_scan  grid (r*p / BLOCK, B*H), sequential in t, element-wise:
                h_{t+1} = e^{b_last} h_t + X_t   (reverse for the state gradients)
    fwd_output  grid (NT, p / BV, B*H):  y = (u v^T ⊙ D) z + (u e^{b}) h_t
    bwd_main    grid (NT, B*H):  du, dv, dz and u·du − v·dv per position

Only the element-wise scan is sequential, and it is spread over the state's r*p entries: a
single chain of (r x p) matmuls over N / C chunks is latency-bound (as an earlier design that
ran such a chain was; docs/performance-notes.md §3).

where b is the cumulative log decay inside the chunk and D_ts = e^{b_t − b_s} for s <= t.
The log-decay gradient is the reverse cumulative sum of u·du − v·dv along the sequence plus
<dS_N, S_N> (L_t enters every u_t term with +1 and every v_s term with −1; L_N scales S_N).
Only the inputs are saved for backward; the chunk states are recomputed (one cheap pass), so
training memory is that of the inputs, not O(N·r·p / C) extra per layer.

Matmuls run on the tensor cores in the input dtype (tf32 for fp32 inputs) with fp32
accumulation; states, decays and the log-decay gradient are fp32 (fp64 for fp64 inputs,
which is how the CPU interpreter tests check the algorithm to 1e-10). Any N is accepted:
positions past N are masked loads of zero, which neither write to nor decay the state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from muse.ops._launch import cdiv, launch as _launch, next_pow2
from muse.ops._reduce import sum_partials
from muse.ops._triton import HAS_TRITON, autotune, configs, dot_precision, tl, triton, triton_supports

if HAS_TRITON:
    from ._common import band_tap_grads, block, chunk_decay, load_tile, store_tile, uvz_tiles

__all__ = ["HAS_TRITON", "scan_backward", "scan_forward", "triton_supports", "valid_chunk"]


def valid_chunk(chunk_size) -> bool:
    """The kernels' chunk length: a power of two >= 16 (tl.dot's smallest tile)."""
    C = chunk_size
    return isinstance(C, int) and not isinstance(C, bool) and C >= 16 and not C & (C - 1)


if HAS_TRITON:

    @autotune(configs=configs([{}]), key=["K", "V", "C", "HAS_G", "READ"])
    @triton.jit
    def _chunk_local_kernel(
        a, x, g, X, decay, SA, SX, N, H, K: tl.constexpr, V: tl.constexpr, NT,
        C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
        HAS_G: tl.constexpr, READ: tl.constexpr, PREC: tl.constexpr,
    ):
        """X[t] = (a_t ⊙ decay)^T x_t, one chunk per program: what chunk t adds to the state.

        Forward (READ=False): a = v decayed to the chunk end, x = z.
        Backward (READ=True): a = u decayed from the chunk start, x = dy.
        Also writes the chunk's total decay e^{b_last} to decay[b, h, t].
        """
        i_t, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
        ok, ov, oc = tl.arange(0, BK), i_v * BV + tl.arange(0, BV), tl.arange(0, C)
        rows = i_t * C + oc
        a_t = load_tile(a, i_b, i_h, rows, ok, N, H, K, SA)  # (C, BK)
        x_t = load_tile(x, i_b, i_h, rows, ov, N, H, V, SX)  # (C, BV)
        acc_t = X.dtype.element_ty
        if HAS_G:
            b, b_last = chunk_decay(g, i_b, i_h, rows, N, H)
            scale = tl.exp(b) if READ else tl.exp(b_last - b)
            a_t = (a_t.to(acc_t) * scale[:, None]).to(x_t.dtype)
            if i_v == 0:
                tl.store(decay + i_bh.to(tl.int64) * NT + i_t, tl.exp(b_last))
        out = tl.dot(tl.trans(a_t), x_t, input_precision=PREC)  # (BK, C) @ (C, BV)
        ptr = X + (i_bh.to(tl.int64) * NT + i_t) * K * V + ok[:, None] * V + ov[None, :]
        tl.store(ptr, out.to(acc_t), mask=(ok[:, None] < K) & (ov[None, :] < V))

    @triton.jit
    def _then(a1, x1, a2, x2):
        """Compose two state updates S -> a S + x: first (a1, x1), then (a2, x2)."""
        return a1 * a2, a2 * x1 + x2

    @autotune(
        configs=configs(
            [{"BLOCK": 64, "TB": 16}, {"BLOCK": 128, "TB": 16}, {"BLOCK": 64, "TB": 32}, {"BLOCK": 256, "TB": 8}],
            warps=(4, 2), stages=(2, 3),
        ),
        key=["KV", "HAS_G"],
        restore_value=["X"],  # it scans X in place: every benchmarked config must see the input
    )
    @triton.jit
    def _state_scan_kernel(
        X, decay, init, final, NT, KV, BLOCK: tl.constexpr, TB: tl.constexpr, HAS_G: tl.constexpr,
        HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, REVERSE: tl.constexpr,
    ):
        """S <- e^{b_last,t} S + X[t] along the chunks, replacing X[t] by the S it found.

        Element-wise in the (r x p) state, so the grid spreads each state over many programs.
        TB chunks at a time are loaded together and combined by an associative scan, so only
        one dependent step per TB chunks is sequential (one chunk per step was latency-bound
        at long N; docs/performance-notes.md §3). Forward: X[t] becomes the state
        entering chunk t. Reverse: the gradient of the state leaving chunk t; the final S is
        then the initial state's gradient.
        """
        i_e, i_bh = tl.program_id(0), tl.program_id(1)
        offs = i_e * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) state entries
        mask = offs < KV
        base = X + i_bh.to(tl.int64) * NT * KV
        S = tl.zeros((BLOCK,), dtype=X.dtype.element_ty)
        if HAS_INIT:
            S += tl.load(init + i_bh.to(tl.int64) * KV + offs, mask=mask, other=0.0)
        for j0 in range(0, NT, TB):
            oj = j0 + tl.arange(0, TB)  # (TB,) steps in scan order
            t = NT - 1 - oj if REVERSE else oj  # (TB,) chunk indices
            ptr = base + t.to(tl.int64)[:, None] * KV + offs[None, :]
            x = tl.load(ptr, mask=(oj < NT)[:, None] & mask[None, :], other=0.0)  # (TB, BLOCK)
            # Steps past NT read x = 0 (and a = 1): they leave the state unchanged, so the
            # last row always holds the state after the tile.
            if HAS_G:
                a = tl.load(decay + i_bh.to(tl.int64) * NT + t, mask=oj < NT, other=1.0)  # (TB,)
                a = tl.broadcast_to(a[:, None], (TB, BLOCK)).to(x.dtype)
                A, Xs = tl.associative_scan((a, x), 0, _then)  # (TB, BLOCK) each
                after = A * S[None, :] + Xs  # state after each step
            else:
                after = S[None, :] + tl.cumsum(x, 0)
            # the state entering step j is the state after step j - 1: stored one step on
            nxt = NT - 2 - oj if REVERSE else oj + 1
            keep = (oj + 1 < NT) & (oj + 1 < j0 + TB)
            tl.store(base + nxt.to(tl.int64)[:, None] * KV + offs[None, :], after,
                     mask=keep[:, None] & mask[None, :])
            first = NT - 1 - j0 if REVERSE else j0
            tl.store(base + first.to(tl.int64) * KV + offs, S, mask=mask)
            S = tl.sum(tl.where((oj == j0 + TB - 1)[:, None], after, 0.0), 0)
        if STORE_FINAL:
            tl.store(final + i_bh.to(tl.int64) * KV + offs, S, mask=mask)

    @autotune(configs=configs([{}]), key=["K", "V", "C", "HAS_G"])
    @triton.jit
    def _fwd_output_kernel(
        u, v, z, g, hs, band, y, SU, SV, SZ, N, H, K: tl.constexpr, V: tl.constexpr, NT,
        C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr, PREC: tl.constexpr,
        W: tl.constexpr, HAS_BAND: tl.constexpr,
    ):
        i_t, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
        ok, ov, oc = tl.arange(0, BK), i_v * BV + tl.arange(0, BV), tl.arange(0, C)
        rows = i_t * C + oc
        u_t, v_t, z_t = uvz_tiles(u, v, z, i_b, i_h, rows, ok, ov, N, H, K, V, SU, SV, SZ)  # (C, BK/BV)
        kv_mask = (ok[:, None] < K) & (ov[None, :] < V)
        h_ptr = hs + (i_bh.to(tl.int64) * NT + i_t) * K * V + ok[:, None] * V + ov[None, :]
        h = tl.load(h_ptr, mask=kv_mask, other=0.0)  # (BK, BV): state entering the chunk
        acc_t = h.dtype
        causal = oc[:, None] >= oc[None, :]
        s = tl.dot(u_t, tl.trans(v_t), input_precision=PREC).to(acc_t)  # (C, C)
        if HAS_G:
            b, b_last = chunk_decay(g, i_b, i_h, rows, N, H)
            s = s * tl.exp(tl.where(causal, b[:, None] - b[None, :], float("-inf")))
            u_t = (u_t.to(acc_t) * tl.exp(b)[:, None]).to(z_t.dtype)
        else:
            s = tl.where(causal, s, 0.0)
        out = tl.dot(s.to(z_t.dtype), z_t, input_precision=PREC).to(acc_t)
        out += tl.dot(u_t, h.to(z_t.dtype), input_precision=PREC).to(acc_t)
        if HAS_BAND:  # the causal band T: y_t += sum_j band[c, W-1-j] z_{t-j} (depthwise conv)
            for j in tl.static_range(W):
                w_j = tl.load(band + (i_h * V + ov) * W + (W - 1 - j), mask=ov < V, other=0.0)
                z_j = load_tile(z, i_b, i_h, rows - j, ov, N, H, V, SZ)  # rows < 0 read as 0
                out += z_j.to(acc_t) * w_j.to(acc_t)[None, :]
        store_tile(y, out, i_b, i_h, rows, ov, N, H, V)

    @autotune(configs=configs([{}]), key=["K", "V", "C", "HAS_G"])
    @triton.jit
    def _bwd_main_kernel(
        u, v, z, g, hs, dhs, dy, band, du, dv, dz, dgl, dg_tot, dband, SU, SV, SZ, N, H, K: tl.constexpr,
        V: tl.constexpr, NT, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
        HAS_G: tl.constexpr, PREC: tl.constexpr, W: tl.constexpr, HAS_BAND: tl.constexpr,
        PREC32: tl.constexpr,
    ):
        i_t, i_bh = tl.program_id(0), tl.program_id(1)
        i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
        ok, ov, oc = tl.arange(0, BK), tl.arange(0, BV), tl.arange(0, C)
        rows = i_t * C + oc
        u_t, v_t, z_t = uvz_tiles(u, v, z, i_b, i_h, rows, ok, ov, N, H, K, V, SU, SV, SZ)  # (C, BK/BV)
        dy_t = load_tile(dy, i_b, i_h, rows, ov, N, H, V, H * V)  # (C, BV)
        dt = z_t.dtype
        kv_off = (i_bh.to(tl.int64) * NT + i_t) * K * V + ok[:, None] * V + ov[None, :]
        kv_mask = (ok[:, None] < K) & (ov[None, :] < V)
        h = tl.load(hs + kv_off, mask=kv_mask, other=0.0)  # (BK, BV): state entering, fp32
        dh = tl.load(dhs + kv_off, mask=kv_mask, other=0.0)  # (BK, BV): grad of state leaving
        acc_t = dhs.dtype.element_ty
        causal = oc[:, None] >= oc[None, :]
        if HAS_G:
            b, b_last = chunk_decay(g, i_b, i_h, rows, N, H)
            D = tl.exp(tl.where(causal, b[:, None] - b[None, :], float("-inf")))  # (C, C)
            e_read = tl.exp(b)  # (C,): decay from the chunk start to t
            e_write = tl.exp(b_last - b)  # (C,): decay from s to the chunk end
        else:
            D = tl.where(causal, 1.0, 0.0).to(acc_t)
            e_read = tl.full((C,), 1.0, acc_t)
            e_write = tl.full((C,), 1.0, acc_t)
        A = (tl.dot(u_t, tl.trans(v_t), input_precision=PREC).to(acc_t) * D).to(dt)  # (C, C)
        v_w = (v_t.to(acc_t) * e_write[:, None]).to(dt)
        dz_t = tl.dot(tl.trans(A), dy_t, input_precision=PREC).to(acc_t)
        dz_t += tl.dot(v_w, dh.to(dt), input_precision=PREC).to(acc_t)  # (C, BV)
        # du and dv feed the log-decay gradient, a sum over the whole sequence in which the
        # rounding of bf16 intermediates would pile up with N (measured: 2.3e-2 relative at
        # N = 64K): their products take fp32 operands instead, at PREC32, the fp32 inputs'
        # precision. With PREC (None for 16-bit inputs: plain TF32) beside this kernel's 16-bit
        # dots, an H100 with Triton 3.6 gave NaN gradients under one autotune config and an
        # illegal memory access under others at the tiny preset's bf16 shapes (K=16, V=32);
        # tests/train/test_fsdp.py::test_tiny_trains_on_cuda_in_bf16 is the GPU check.
        dA = tl.dot(dy_t, tl.trans(z_t), input_precision=PREC).to(acc_t) * D  # (C, C)
        dy_f, z_f, u_f, v_f = dy_t.to(acc_t), z_t.to(acc_t), u_t.to(acc_t), v_t.to(acc_t)
        du_t = tl.dot(dA, v_f, input_precision=PREC32)
        du_t += tl.dot(dy_f, tl.trans(h), input_precision=PREC32) * e_read[:, None]  # (C, BK)
        dv_t = tl.dot(tl.trans(dA), u_f, input_precision=PREC32)
        dv_t += tl.dot(z_f, tl.trans(dh), input_precision=PREC32) * e_write[:, None]  # (C, BK)
        if HAS_BAND:
            # dz_s += sum_j band[c, W-1-j] dy_{s+j};  dband[c, W-1-j] = sum_t dy_t z_{t-j},
            # summed here over this chunk's t and over chunks and batch by the caller.
            for j in tl.static_range(W):
                dz_j, dw_j = band_tap_grads(dy, z, band, dy_t, dz_t, i_b, i_h, rows, ov, N, H, V, SZ, W, j)
                dz_t += dz_j
                ptr = dband + ((i_t * tl.num_programs(1) + i_bh).to(tl.int64) * V + ov) * W + (W - 1 - j)
                tl.store(ptr, dw_j, mask=ov < V)
        store_tile(du, du_t, i_b, i_h, rows, ok, N, H, K)
        store_tile(dv, dv_t, i_b, i_h, rows, ok, N, H, K)
        store_tile(dz, dz_t, i_b, i_h, rows, ov, N, H, V)
        if HAS_G:
            # d log_decay_k = sum_{t >= k} (u_t.du_t - v_t.dv_t): the in-chunk part of that
            # suffix sum here, the chunks after this one added by the caller from dg_tot.
            dgl_t = tl.sum(u_f * du_t - v_f * dv_t, 1)  # (C,)
            tl.store(dgl + (i_bh.to(tl.int64) * NT + i_t) * C + oc, tl.cumsum(dgl_t, 0, reverse=True))
            tl.store(dg_tot + i_bh.to(tl.int64) * NT + i_t, tl.sum(dgl_t, 0))


    @triton.jit
    def _dg_finish_kernel(dgl, dg_tot, dg_final, dg, N, H, NT, C: tl.constexpr, BNT: tl.constexpr,
                          HAS_FINAL: tl.constexpr):
        """dg[b, k, h] = in-chunk suffix sum + the totals of all later chunks (+ <dS_N, S_N>).

        Each program reads the whole (NT,) row of chunk totals: O(NT) work per chunk, no
        sequential pass, and a single launch instead of a chain of torch ops.
        """
        i_t, i_bh = tl.program_id(0), tl.program_id(1)
        i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
        after = tl.zeros((BNT,), dtype=dgl.dtype.element_ty)
        for j0 in range(0, NT, BNT):
            oj = j0 + tl.arange(0, BNT)
            after += tl.load(dg_tot + i_bh.to(tl.int64) * NT + oj, mask=(oj < NT) & (oj > i_t), other=0.0)
        after = tl.sum(after, 0)
        if HAS_FINAL:
            after += tl.load(dg_final + i_bh)
        oc = tl.arange(0, C)
        rows = i_t * C + oc
        rc = tl.load(dgl + (i_bh.to(tl.int64) * NT + i_t) * C + oc)
        tl.store(dg + (i_b * N + rows) * H + i_h, (rc + after).to(dg.dtype.element_ty), mask=rows < N)


def kernel_rows(t: Tensor) -> Tensor:
    """t (B, N, H, D) as the kernels read it: unit stride in D, heads adjacent, rows evenly
    spaced (so column slices of one fused projection need no copy); else a contiguous copy."""
    B, N, H, D = t.shape
    if t.stride(3) == 1 and t.stride(2) == D and t.stride(0) == N * t.stride(1) and t.stride(1) >= H * D:
        return t
    return t.contiguous()


def _scan(a, x, g, init, C, *, read: bool, store_final: bool):
    """Per-chunk states along the sequence: two parallel passes instead of one long chain.

    Forward (read=False, a=v, x=z): returns hs (B, H, NT, r, p) with hs[t] the state
    entering chunk t, and the final state. Backward (read=True, a=u, x=dy): hs[t] is the
    gradient of the state leaving chunk t (init = dS_N), and "final" is dS_0.
    """
    B, N, H, K = a.shape
    V = x.shape[-1]
    NT = cdiv(N, C)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    X = torch.empty(B, H, NT, K, V, device=x.device, dtype=acc)
    decay = torch.empty(B, H, NT, device=x.device, dtype=acc) if g is not None else None
    BV = min(64, block(V))
    _launch(
        _chunk_local_kernel, (NT, cdiv(V, BV), B * H), a, x, g, X, decay, a.stride(1), x.stride(1),
        N, H, K, V, NT, C=C, BK=block(K), BV=BV, HAS_G=g is not None, READ=read, PREC=dot_precision(x.dtype),
    )
    final = torch.empty(B, H, K, V, device=x.device, dtype=acc) if store_final else None
    grid = lambda meta: (cdiv(K * V, meta["BLOCK"]), B * H)  # noqa: E731
    _launch(
        _state_scan_kernel, grid, X, decay, init, final, NT, K * V, HAS_G=g is not None,
        HAS_INIT=init is not None, STORE_FINAL=store_final, REVERSE=read,
    )
    return X, final


def scan_forward(u, v, z, g, h0, band, output_final_state: bool, C: int):
    """Forward launcher (``muse::semiseparable_fwd``): y (B, N, H, p) in z's dtype and the
    final state (B, H, r, p) in fp32/fp64, or None. Inputs as ``triton_chunk_semiseparable``
    leaves them: u, v, z in one dtype laid out as ``kernel_rows`` accepts, g and h0 fp32/fp64
    contiguous or None, band (H*p, W) contiguous or None. Writes only fresh tensors."""
    B, N, H, K = u.shape
    V = z.shape[-1]
    hs, ht = _scan(v, z, g, h0, C, read=False, store_final=output_final_state)
    y = torch.empty(z.shape, device=z.device, dtype=z.dtype)
    BV = min(64, block(V))
    grid = (hs.shape[2], cdiv(V, BV), B * H)
    _launch(
        _fwd_output_kernel, grid, u, v, z, g, hs, band, y, u.stride(1), v.stride(1), z.stride(1),
        N, H, K, V, hs.shape[2], C=C, BK=block(K), BV=BV, HAS_G=g is not None, PREC=dot_precision(z.dtype),
        W=band.shape[1] if band is not None else 1, HAS_BAND=band is not None,
    )
    return y, ht


def scan_backward(dy, dht, u, v, z, g, h0, band, C: int):
    """Backward launcher (``muse::semiseparable_bwd``): (du, dv, dz, dg, dh0, dband) for the
    forward's inputs, None where that input is None. dht: the final state's gradient, or None
    when the forward returned none (or it got no gradient). The chunk states are recomputed
    rather than saved; the final state only for the <dS_N, S_N> term of the decay gradient."""
    B, N, H, K = u.shape
    V = z.shape[-1]
    dy = dy.contiguous()
    has_dht = dht is not None
    hs, ht = _scan(v, z, g, h0, C, read=False, store_final=has_dht and g is not None)
    dht = dht.to(hs.dtype).contiguous() if has_dht else None
    dhs, dh0 = _scan(u, dy, g, dht, C, read=True, store_final=h0 is not None)
    NT = hs.shape[2]
    du, dv = (torch.empty(u.shape, device=u.device, dtype=u.dtype) for _ in range(2))
    dz = torch.empty(z.shape, device=z.device, dtype=z.dtype)
    W = band.shape[1] if band is not None else 1
    new = lambda *shape: torch.empty(*shape, device=z.device, dtype=hs.dtype)  # noqa: E731
    dgl = new(B, H, NT, C) if g is not None else None
    dg_tot = new(B, H, NT) if g is not None else None
    dband = new(NT, B, H, V, W) if band is not None else None
    _launch(
        _bwd_main_kernel, (NT, B * H), u, v, z, g, hs, dhs, dy, band, du, dv, dz, dgl, dg_tot, dband,
        u.stride(1), v.stride(1), z.stride(1), N, H, K, V, NT, C=C,
        BK=block(K), BV=block(V), HAS_G=g is not None, PREC=dot_precision(z.dtype),
        W=W, HAS_BAND=band is not None, PREC32=dot_precision(hs.dtype),
    )
    dg = None
    if g is not None:
        # L_N scales S_N, so <dS_N, S_N> reaches every log decay.
        dg_final = (dht * ht).sum((-2, -1)).contiguous() if has_dht else None  # (B, H)
        dg = torch.empty(B, N, H, device=z.device, dtype=g.dtype)
        _launch(
            _dg_finish_kernel, (NT, B * H), dgl, dg_tot, dg_final, dg, N, H, NT, C=C,
            BNT=min(1024, max(16, next_pow2(NT))), HAS_FINAL=has_dht,
        )
    dband_sum = sum_partials(dband.flatten(0, 1), band.dtype).reshape(H * V, W) if band is not None else None
    return du, dv, dz, dg, dh0, dband_sum
