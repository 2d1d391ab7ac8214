"""Single-launch Triton kernels for the semiseparable scan: the path for few chunks.

``triton_chunk.py`` spreads the scan over four kernels (3 launches forward, 7 backward), which
is what long sequences need: every chunk is its own program and only an element-wise pass is
sequential. For a few dozen chunks the GPU work is tiny and an eager forward+backward is bound
by the host's launches instead: at N = 2K the host spends several times longer launching the
kernels than the GPU spends running them (docs/performance-notes.md §4). These kernels do each
direction in one launch: one program per (batch, head) (and value block, forward) walks the
chunks in order with the (r x p) state in registers:

    forward   grid (p / BV, B*H):  y_t = (u v^T ⊙ D) z + (u e^b) h_t + band,
                                   h_{t+1} = e^{b_last} h_t + (v e^{b_last-b})^T z
    backward  grid (B*H,):  pass 1 (chunks in order) recomputes h_t and writes du and u·du;
                            pass 2 (reverse order) carries dH (the gradient of the state
                            leaving the chunk) and writes dz, dv, the log-decay gradient (the
                            suffix sum of u·du − v·dv, as a running carry) and the band's
                            weight gradient (summed over the chunks in registers).

Same inputs, outputs, dtypes and precision choices as ``scan_forward`` / ``scan_backward``
(which ``triton_scan.py`` picks between by ``use_fused``), and the same masked handling of any N.
"""

from __future__ import annotations

import torch

from muse.ops._dispatch import sms
from muse.ops._launch import cdiv, launch as _launch, next_pow2
from muse.ops._reduce import sum_partials
from muse.ops._triton import HAS_TRITON, autotune, configs, dot_precision, tl, triton

if HAS_TRITON:
    from ._common import band_tap_grads, block, chunk_decay, load_tile, store_tile, uvz_tiles

__all__ = ["FUSED_MAX_CHUNKS", "fused_backward", "fused_forward", "use_fused"]

# At most this many chunks per sequence take the single-launch kernels (eager calls; see
# use_fused). At 32 chunks (N = 2K at C = 64) the launches they save outweigh their sequential
# walk over the chunks, and the eager `standard` step is faster with them; at 64 chunks that
# walk's GPU time alone exceeds the chunk-parallel kernels' host and GPU time together
# (measurements in docs/performance-notes.md §4).
FUSED_MAX_CHUNKS = 32


def use_fused(n_chunks: int, n_seqs: int, x: torch.Tensor) -> bool:
    """Whether a scan of ``n_seqs`` = B*H sequences of ``n_chunks`` chunks each takes the
    single-launch kernels: few chunks, at most one sequence per SM (the backward runs two
    programs per sequence; more would queue their sequential chains in waves), and not while a
    CUDA graph is being captured (a replay has no launch cost to save, and the chunk-parallel
    kernels finish sooner on the GPU)."""
    if n_chunks > FUSED_MAX_CHUNKS:
        return False
    if not x.is_cuda:  # Triton's interpreter: either path is correct, this one is fewer steps
        return True
    return n_seqs <= sms(x) and not torch.cuda.is_current_stream_capturing()


if HAS_TRITON:

    @triton.jit
    def _decays(g, i_b, i_h, rows, N, H, oc, C: tl.constexpr, HAS_G: tl.constexpr, ACC64: tl.constexpr):
        """Within-chunk decays: D (C, C) causal e^{b_t − b_s}, e_read e^{b} and e_write e^{b_last − b}
        (C,), and the chunk's total e^{b_last}; all ones (D: the causal mask) without decay."""
        causal = oc[:, None] >= oc[None, :]
        if HAS_G:
            b, b_last = chunk_decay(g, i_b, i_h, rows, N, H)
            D = tl.exp(tl.where(causal, b[:, None] - b[None, :], float("-inf")))
            return D, tl.exp(b), tl.exp(b_last - b), tl.exp(b_last)
        else:
            acc_t = tl.float64 if ACC64 else tl.float32
            one = tl.full((C,), 1.0, acc_t)
            return tl.where(causal, 1.0, 0.0).to(acc_t), one, one, tl.sum(one, 0) / C

    @triton.jit
    def _advance(h, v_t, z_t, e_write, a_last, PREC: tl.constexpr):
        """The state leaving a chunk from the state h (BK, BV) entering it: e^{b_last} h plus
        (v e^{b_last − b})^T z, in h's dtype."""
        v_w = (v_t.to(h.dtype) * e_write[:, None]).to(z_t.dtype)
        return h * a_last + tl.dot(tl.trans(v_w), z_t, input_precision=PREC).to(h.dtype)

    @autotune(configs=configs([{"BV": 32}, {"BV": 64}]), key=["K", "V", "C", "HAS_G", "HAS_BAND"])
    @triton.jit
    def _fused_fwd_kernel(
        u, v, z, g, h0, band, y, ht, SU, SV, SZ, N, H, K: tl.constexpr, V: tl.constexpr, NT,
        C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr, HAS_INIT: tl.constexpr,
        STORE_FINAL: tl.constexpr, PREC: tl.constexpr, W: tl.constexpr, HAS_BAND: tl.constexpr,
        ACC64: tl.constexpr,
    ):
        i_v, i_bh = tl.program_id(0), tl.program_id(1)
        i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
        ok, ov, oc = tl.arange(0, BK), i_v * BV + tl.arange(0, BV), tl.arange(0, C)
        acc_t = tl.float64 if ACC64 else tl.float32
        kv_off = i_bh.to(tl.int64) * K * V + ok[:, None] * V + ov[None, :]
        kv_mask = (ok[:, None] < K) & (ov[None, :] < V)
        h = tl.zeros((BK, BV), dtype=acc_t)  # the state entering the chunk
        if HAS_INIT:
            h += tl.load(h0 + kv_off, mask=kv_mask, other=0.0)
        for t in range(NT):
            rows = t * C + oc
            u_t, v_t, z_t = uvz_tiles(u, v, z, i_b, i_h, rows, ok, ov, N, H, K, V, SU, SV, SZ)  # (C, BK/BV)
            dt = z_t.dtype
            D, e_read, e_write, a_last = _decays(g, i_b, i_h, rows, N, H, oc, C, HAS_G, ACC64)
            s = tl.dot(u_t, tl.trans(v_t), input_precision=PREC).to(acc_t) * D  # (C, C)
            u_r = (u_t.to(acc_t) * e_read[:, None]).to(dt)
            out = tl.dot(s.to(dt), z_t, input_precision=PREC).to(acc_t)
            out += tl.dot(u_r, h.to(dt), input_precision=PREC).to(acc_t)  # (C, BV)
            if HAS_BAND:  # y_t += sum_j band[c, W-1-j] z_{t-j}, as in _fwd_output_kernel
                for j in tl.static_range(W):
                    w_j = tl.load(band + (i_h * V + ov) * W + (W - 1 - j), mask=ov < V, other=0.0)
                    z_j = load_tile(z, i_b, i_h, rows - j, ov, N, H, V, SZ)
                    out += z_j.to(acc_t) * w_j.to(acc_t)[None, :]
            store_tile(y, out, i_b, i_h, rows, ov, N, H, V)
            h = _advance(h, v_t, z_t, e_write, a_last, PREC)  # (BK, BV)
        if STORE_FINAL:
            tl.store(ht + kv_off, h, mask=kv_mask)

    @autotune(configs=configs([{}]), key=["K", "V", "C", "HAS_G", "HAS_BAND"])
    @triton.jit
    def _fused_bwd_kernel(
        u, v, z, g, h0, dht, dy, band, du, dv, dz, dgs, fin, dh0, dband, SU, SV, SZ, N, H,
        K: tl.constexpr, V: tl.constexpr, NT, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
        HAS_G: tl.constexpr, HAS_INIT: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
        PREC: tl.constexpr, W: tl.constexpr, WP: tl.constexpr, HAS_BAND: tl.constexpr, ACC64: tl.constexpr,
    ):
        """Two programs per (batch, head), each walking all chunks: role 0 in order (the state
        entering each chunk, du, u·du), role 1 in reverse (the state gradient, dz, dv, v·dv, the
        band's weight gradient, dS_0). Two independent chains of NT steps instead of one of 2 NT."""
        role, i_bh = tl.program_id(0), tl.program_id(1)
        i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
        ok, ov, oc = tl.arange(0, BK), tl.arange(0, BV), tl.arange(0, C)
        acc_t = tl.float64 if ACC64 else tl.float32
        kv_off = i_bh.to(tl.int64) * K * V + ok[:, None] * V + ov[None, :]
        kv_mask = (ok[:, None] < K) & (ov[None, :] < V)
        # (2, B*H, NT*C) acc: u·du (role 0) and v·dv (role 1) per position
        dgs_row = (role * tl.num_programs(1) + i_bh).to(tl.int64) * NT * C
        if role == 0:
            h = tl.zeros((BK, BV), dtype=acc_t)  # the state entering the chunk
            if HAS_INIT:
                h += tl.load(h0 + kv_off, mask=kv_mask, other=0.0)
            for t in range(NT):
                rows = t * C + oc
                u_t, v_t, z_t = uvz_tiles(u, v, z, i_b, i_h, rows, ok, ov, N, H, K, V, SU, SV, SZ)  # (C, BK/BV)
                dy_t = load_tile(dy, i_b, i_h, rows, ov, N, H, V, H * V)  # (C, BV)
                dt = z_t.dtype
                D, e_read, e_write, a_last = _decays(g, i_b, i_h, rows, N, H, oc, C, HAS_G, ACC64)
                # fp32 operands for du and dv, as in _bwd_main_kernel: they feed the decay gradient
                dA = tl.dot(dy_t, tl.trans(z_t), input_precision=PREC).to(acc_t) * D  # (C, C)
                du_t = tl.dot(dA, v_t.to(acc_t), input_precision=PREC)
                du_t += tl.dot(dy_t.to(acc_t), tl.trans(h), input_precision=PREC) * e_read[:, None]  # (C, BK)
                store_tile(du, du_t, i_b, i_h, rows, ok, N, H, K)
                if HAS_G:
                    tl.store(dgs + dgs_row + rows, tl.sum(u_t.to(acc_t) * du_t, 1))
                h = _advance(h, v_t, z_t, e_write, a_last, PREC)
            if HAS_G and HAS_DHT:  # L_N scales S_N: <dS_N, S_N> reaches every log decay
                dht_t = tl.load(dht + kv_off, mask=kv_mask, other=0.0)
                tl.store(fin + i_bh, tl.sum(tl.sum(dht_t * h, 1), 0))
        else:
            dH = tl.zeros((BK, BV), dtype=acc_t)  # the gradient of the state leaving the chunk
            if HAS_DHT:
                dH += tl.load(dht + kv_off, mask=kv_mask, other=0.0)
            ow = tl.arange(0, WP)
            dband_acc = tl.zeros((BV, WP), dtype=acc_t)
            for tt in range(NT):
                t = NT - 1 - tt
                rows = t * C + oc
                u_t, v_t, z_t = uvz_tiles(u, v, z, i_b, i_h, rows, ok, ov, N, H, K, V, SU, SV, SZ)  # (C, BK/BV)
                dy_t = load_tile(dy, i_b, i_h, rows, ov, N, H, V, H * V)
                dt = z_t.dtype
                D, e_read, e_write, a_last = _decays(g, i_b, i_h, rows, N, H, oc, C, HAS_G, ACC64)
                A = (tl.dot(u_t, tl.trans(v_t), input_precision=PREC).to(acc_t) * D).to(dt)  # (C, C)
                v_w = (v_t.to(acc_t) * e_write[:, None]).to(dt)
                dz_t = tl.dot(tl.trans(A), dy_t, input_precision=PREC).to(acc_t)
                dz_t += tl.dot(v_w, dH.to(dt), input_precision=PREC).to(acc_t)  # (C, BV)
                dA = tl.dot(dy_t, tl.trans(z_t), input_precision=PREC).to(acc_t) * D
                dv_t = tl.dot(tl.trans(dA), u_t.to(acc_t), input_precision=PREC)
                dv_t += tl.dot(z_t.to(acc_t), tl.trans(dH), input_precision=PREC) * e_write[:, None]  # (C, BK)
                if HAS_BAND:  # as _bwd_main_kernel, the weight gradient summed over chunks here
                    for j in tl.static_range(W):
                        dz_j, dw_j = band_tap_grads(dy, z, band, dy_t, dz_t, i_b, i_h, rows, ov, N, H, V, SZ, W, j)
                        dz_t += dz_j
                        dband_acc += tl.where(ow[None, :] == W - 1 - j, dw_j[:, None], 0.0)
                store_tile(dz, dz_t, i_b, i_h, rows, ov, N, H, V)
                store_tile(dv, dv_t, i_b, i_h, rows, ok, N, H, K)
                if HAS_G:
                    tl.store(dgs + dgs_row + rows, tl.sum(v_t.to(acc_t) * dv_t, 1))
                u_r = (u_t.to(acc_t) * e_read[:, None]).to(dt)
                dH = dH * a_last + tl.dot(tl.trans(u_r), dy_t, input_precision=PREC).to(acc_t)
            if STORE_DH0:
                tl.store(dh0 + kv_off, dH, mask=kv_mask)
            if HAS_BAND:
                ptr = dband + (i_bh.to(tl.int64) * V + ov[:, None]) * W + ow[None, :]
                tl.store(ptr, dband_acc, mask=(ov[:, None] < V) & (ow[None, :] < W))

    @triton.jit
    def _fused_dg_kernel(dgs, fin, dg, N, H, NT, C: tl.constexpr, HAS_FIN: tl.constexpr):
        """dg[b, k, h] = sum over positions s >= k of (u·du − v·dv)_s (+ <dS_N, S_N>): each
        program sums the later chunks itself (NT is small on this path) and scans its own."""
        i_t, i_bh = tl.program_id(0), tl.program_id(1)
        i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
        oc = tl.arange(0, C)
        a_row = dgs + i_bh.to(tl.int64) * NT * C
        c_row = dgs + (tl.num_programs(1) + i_bh).to(tl.int64) * NT * C
        later = tl.zeros((C,), dtype=dgs.dtype.element_ty)
        for j in range(i_t + 1, NT):
            later += tl.load(a_row + j * C + oc) - tl.load(c_row + j * C + oc)
        d_t = tl.load(a_row + i_t * C + oc) - tl.load(c_row + i_t * C + oc)  # (C,)
        dg_t = tl.cumsum(d_t, 0, reverse=True) + tl.sum(later, 0)
        if HAS_FIN:
            dg_t += tl.load(fin + i_bh)
        rows = i_t * C + oc
        tl.store(dg + (i_b * N + rows) * H + i_h, dg_t.to(dg.dtype.element_ty), mask=rows < N)


def fused_forward(u, v, z, g, h0, band, output_final_state: bool, C: int):
    """``scan_forward`` in one launch (same arguments and results)."""
    B, N, H, K = u.shape
    V = z.shape[-1]
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    y = torch.empty(z.shape, device=z.device, dtype=z.dtype)
    ht = torch.empty(B, H, K, V, device=z.device, dtype=acc) if output_final_state else None
    grid = lambda meta: (cdiv(V, meta["BV"]), B * H)  # noqa: E731
    _launch(
        _fused_fwd_kernel, grid, u, v, z, g, h0, band, y, ht,
        u.stride(1), v.stride(1), z.stride(1), N, H, K, V, cdiv(N, C), C=C, BK=block(K),
        HAS_G=g is not None, HAS_INIT=h0 is not None, STORE_FINAL=output_final_state, PREC=dot_precision(z.dtype),
        W=band.shape[1] if band is not None else 1, HAS_BAND=band is not None, ACC64=acc == torch.float64,
    )
    return y, ht


def fused_backward(dy, dht, u, v, z, g, h0, band, C: int):
    """``scan_backward`` in one launch, plus one for the log-decay gradient's suffix sums and one
    for the band's weight gradient (its per-sequence sums added over the batch by ``sum_partials``)."""
    B, N, H, K = u.shape
    V = z.shape[-1]
    NT = cdiv(N, C)
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    dy = dy.contiguous()
    dht = dht.to(acc).contiguous() if dht is not None else None
    new = lambda shape, dtype: torch.empty(shape, device=z.device, dtype=dtype)  # noqa: E731
    du, dv, dz = new(u.shape, u.dtype), new(u.shape, u.dtype), new(z.shape, z.dtype)
    dgs = new((2, B * H, NT * C), acc) if g is not None else None
    fin = new((B * H,), acc) if g is not None and dht is not None else None
    dh0 = new((B, H, K, V), acc) if h0 is not None else None
    W = band.shape[1] if band is not None else 1
    dband = new((B, H * V, W), acc) if band is not None else None
    _launch(
        _fused_bwd_kernel, (2, B * H), u, v, z, g, h0, dht, dy, band, du, dv, dz, dgs, fin, dh0, dband,
        u.stride(1), v.stride(1), z.stride(1), N, H, K, V, NT, C=C, BK=block(K), BV=block(V),
        HAS_G=g is not None, HAS_INIT=h0 is not None, HAS_DHT=dht is not None, STORE_DH0=h0 is not None,
        PREC=dot_precision(z.dtype), W=W, WP=next_pow2(W), HAS_BAND=band is not None,
        ACC64=acc == torch.float64,
    )
    dg = None
    if g is not None:
        dg = new((B, N, H), g.dtype)
        _launch(_fused_dg_kernel, (NT, B * H), dgs, fin, dg, N, H, NT, C=C, HAS_FIN=fin is not None)
    dband_sum = sum_partials(dband, band.dtype) if band is not None else None
    return du, dv, dz, dg, dh0, dband_sum
