"""RMS normalisation over the last dimension with per-group weights, one Triton kernel each way.

    x (M, G, D), weight (G, D)  ->  y = x * rstd * weight,  rstd = 1 / sqrt(mean(x², -1) + eps)

Torch's layer-norm kernels took a large share of the semiseparable mixer's time for its
per-head norm at long N (B·N·H short rows of 64; docs/performance-notes.md §3); this is two
passes over the data. Programs own BM rows of one group, so each loads its weight row once and
its weight gradient is a plain column sum (partials per program, summed by the caller).
"""

from __future__ import annotations

import torch
from torch import Tensor

from muse.ops._dispatch import define_op, use_op
from muse.ops._launch import cdiv, launch as _launch, next_pow2
from muse.ops._reduce import sum_partials
from muse.ops._triton import HAS_TRITON, tl, triton, triton_supports

from .naive import check_inputs

if HAS_TRITON:

    @triton.jit
    def _tile(x, i_m, i_g, M, G, D, BM: tl.constexpr, BD: tl.constexpr):
        rows = i_m * BM + tl.arange(0, BM)  # (BM,) positions m
        cols = tl.arange(0, BD)
        offs = (rows.to(tl.int64)[:, None] * G + i_g) * D + cols[None, :]  # (BM, BD)
        mask = (rows[:, None] < M) & (cols[None, :] < D)
        return tl.load(x + offs, mask=mask, other=0.0), offs, mask, rows

    @triton.jit
    def _rms_fwd_kernel(x, w, y, rstd, M, G, D, eps: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
        i_m, i_g = tl.program_id(0), tl.program_id(1)
        xv, offs, mask, rows = _tile(x, i_m, i_g, M, G, D, BM, BD)
        acc_t = rstd.dtype.element_ty
        xf = xv.to(acc_t)
        r = 1.0 / tl.sqrt(tl.sum(xf * xf, 1) / D + eps)  # (BM,)
        cols = tl.arange(0, BD)
        wv = tl.load(w + i_g * D + cols, mask=cols < D, other=0.0).to(acc_t)  # (BD,)
        tl.store(y + offs, (xf * r[:, None] * wv[None, :]).to(y.dtype.element_ty), mask=mask)
        tl.store(rstd + rows.to(tl.int64) * G + i_g, r, mask=rows < M)

    @triton.jit
    def _rms_bwd_kernel(x, w, dy, rstd, dx, dw, M, G, D, BM: tl.constexpr, BD: tl.constexpr):
        i_m, i_g = tl.program_id(0), tl.program_id(1)
        xv, offs, mask, rows = _tile(x, i_m, i_g, M, G, D, BM, BD)
        acc_t = rstd.dtype.element_ty
        dyv = tl.load(dy + offs, mask=mask, other=0.0).to(acc_t)
        r = tl.load(rstd + rows.to(tl.int64) * G + i_g, mask=rows < M, other=0.0)  # (BM,)
        cols = tl.arange(0, BD)
        wv = tl.load(w + i_g * D + cols, mask=cols < D, other=0.0).to(acc_t)
        xhat = xv.to(acc_t) * r[:, None]  # (BM, BD)
        gx = dyv * wv[None, :]
        # d/dx of x·rstd: rstd (g − x̂ · mean(g · x̂))
        c = tl.sum(gx * xhat, 1) / D  # (BM,)
        tl.store(dx + offs, (r[:, None] * (gx - xhat * c[:, None])).to(dx.dtype.element_ty), mask=mask)
        tl.store(dw + (i_m.to(tl.int64) * G + i_g) * D + cols, tl.sum(dyv * xhat, 0), mask=cols < D)


def _block_rows(D: int) -> int:
    # about 4K elements per program: enough rows to hide latency, few enough to keep registers
    return max(1, min(64, 4096 // next_pow2(D)))


def norm_forward(x: Tensor, weight: Tensor, eps: float):
    """Forward launcher (``muse::rms_norm_fwd``): y (x's shape and dtype) and rstd (M, G) fp32
    (fp64 for fp64), for contiguous x (M, G, D) in any leading shape and weight (G, D) or (D,)."""
    G, D = (1, weight.shape[0]) if weight.dim() == 1 else weight.shape
    M = x.numel() // (G * D)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = torch.empty_like(x)
    rstd = torch.empty(M, G, device=x.device, dtype=acc)
    BM, BD = _block_rows(D), next_pow2(D)
    _launch(_rms_fwd_kernel, (cdiv(M, BM), G), x, weight, y, rstd, M, G, D, eps=eps, BM=BM, BD=BD)
    return y, rstd


def norm_backward(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor):
    """Backward launcher (``muse::rms_norm_bwd``): dx (x's shape and dtype), dweight (weight's)."""
    G, D = (1, weight.shape[0]) if weight.dim() == 1 else weight.shape
    M = rstd.shape[0]
    BM, BD = _block_rows(D), next_pow2(D)
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    nm = cdiv(M, BM)
    dw = torch.empty(nm, G, D, device=x.device, dtype=rstd.dtype)  # per-program partial sums
    _launch(_rms_bwd_kernel, (nm, G), x, weight, dy, rstd, dx, dw, M, G, D, BM=BM, BD=BD)
    return dx, sum_partials(dw, weight.dtype).reshape(weight.shape)


# The launchers as ops (muse.ops._dispatch): one graph node each under torch.compile, outputs of
# the real shapes for fake tensors. Not modelled by the fakes: the backward's per-program partial
# weight gradients, (ceil(M / BM), G, D) fp32 with BM = _block_rows(D).
def _fwd_fake(x, weight, eps):
    G = 1 if weight.dim() == 1 else weight.shape[0]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.empty_like(x), x.new_empty((x.numel() // (G * weight.shape[-1]), G), dtype=acc)


def _bwd_fake(dy, x, weight, rstd):
    return torch.empty_like(x), weight.new_empty(weight.shape)


_fwd_op = define_op("rms_norm_fwd", "(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)",
                    lambda x, w, eps: norm_forward(x.contiguous(), w.contiguous(), eps), _fwd_fake)
_bwd_op = define_op("rms_norm_bwd", "(Tensor dy, Tensor x, Tensor weight, Tensor rstd) -> (Tensor, Tensor)",
                    lambda dy, x, w, rstd: norm_backward(dy, x.contiguous(), w.contiguous(), rstd.contiguous()),
                    _bwd_fake)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float):
        y, rstd = (_fwd_op if use_op(x) else norm_forward)(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = (_bwd_op if use_op(dy) else norm_backward)(dy, x, weight, rstd)
        return dx, dw, None


def triton_rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """``naive_rms_norm`` on the Triton kernels (CUDA, or the CPU interpreter); same shapes."""
    check_inputs(x, weight)
    if not triton_supports(x, weight):
        raise ValueError(
            "impl='triton' runs CUDA tensors (or CPU fp32/fp64 ones under TRITON_INTERPRET=1); "
            f"got {x.device.type} {x.dtype}"
        )
    if x.numel() == 0:
        return x * weight
    return _RMSNorm.apply(x.contiguous(), weight.contiguous(), float(eps))
