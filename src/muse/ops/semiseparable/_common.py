"""Triton helpers shared by the semiseparable scan's two kernel files (``triton_chunk.py``,
``triton_fused.py``): tile loads and stores of the (B, N, H, D) layout, the in-chunk decays, the
band's backward tap. Imported only where Triton is installed."""

from __future__ import annotations

import triton
import triton.language as tl

from muse.ops._launch import next_pow2

__all__ = ["band_tap_grads", "block", "chunk_decay", "load_tile", "store_tile", "uvz_tiles"]


def block(n: int) -> int:
    """Power-of-two tile width >= 16 (tl.dot's minimum) covering n."""
    return max(16, next_pow2(n))


@triton.jit
def chunk_decay(g, i_b, i_h, rows, N, H):
    """Within-chunk cumulative log decay b (C,) and its total b_last, fp32 (fp64 for fp64 g:
    g may be bf16/fp16, read as it is rather than copied to fp32 by an extra launch)."""
    gl = tl.load(g + (i_b * N + rows) * H + i_h, mask=rows < N, other=0.0)
    if gl.dtype != tl.float64:
        gl = gl.to(tl.float32)
    b = tl.cumsum(gl, 0)
    return b, tl.sum(gl, 0)


@triton.jit
def load_tile(x, i_b, i_h, rows, cols, N, H, D, SR):
    """(C, BD) tile of x laid out (B, N, H, D) with row stride SR (H*D when contiguous;
    wider for column slices of a fused projection), zeros outside [0, N) x [0, D)."""
    ptr = x + (i_b * N + rows[:, None]) * SR + i_h * D + cols[None, :]
    mask = (rows[:, None] >= 0) & (rows[:, None] < N) & (cols[None, :] < D)
    return tl.load(ptr, mask=mask, other=0.0)


@triton.jit
def uvz_tiles(u, v, z, i_b, i_h, rows, ok, ov, N, H, K, V, SU, SV, SZ):
    """One chunk's u, v (C, BK) and z (C, BV) tiles (rows of the chunk; zeros past N)."""
    u_t = load_tile(u, i_b, i_h, rows, ok, N, H, K, SU)
    v_t = load_tile(v, i_b, i_h, rows, ok, N, H, K, SV)
    z_t = load_tile(z, i_b, i_h, rows, ov, N, H, V, SZ)
    return u_t, v_t, z_t


@triton.jit
def band_tap_grads(dy, z, band, dy_t, ref, i_b, i_h, rows, ov, N, H, V, SZ, W: tl.constexpr, j):
    """Tap j of the causal band's backward for one chunk: what dy_{t+j} adds to dz_t (C, BV),
    and this chunk's part of dband[c, W-1-j] = sum_t dy_t z_{t-j} (BV,), in ref's dtype."""
    acc_t = ref.dtype
    w_j = tl.load(band + (i_h * V + ov) * W + (W - 1 - j), mask=ov < V, other=0.0)
    dy_j = load_tile(dy, i_b, i_h, rows + j, ov, N, H, V, H * V)
    z_j = load_tile(z, i_b, i_h, rows - j, ov, N, H, V, SZ)
    return dy_j.to(acc_t) * w_j.to(acc_t)[None, :], tl.sum(dy_t.to(acc_t) * z_j.to(acc_t), 0)


@triton.jit
def store_tile(x, val, i_b, i_h, rows, cols, N, H, D):
    ptr = x + ((i_b * N + rows[:, None]) * H + i_h) * D + cols[None, :]
    tl.store(ptr, val.to(x.dtype.element_ty), mask=(rows[:, None] < N) & (cols[None, :] < D))
