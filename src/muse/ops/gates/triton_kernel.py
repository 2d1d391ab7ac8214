"""The mixer's input gating in one Triton kernel forward and one backward.

In torch it is a dozen small launches per layer and step (scale, sigmoid, slice, multiply,
concatenate, softplus, negate; twice that backward), over strided column slices of the fused
projection; at long N they took a sizeable share of the layer's time (docs/performance-notes.md
§3). Here each program owns BR rows (b, n, h) and all r ranks of u; reads are strided, u_eff is
written contiguous. The scale is a compile-time constant: a runtime float argument would be fp32
even for fp64 inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from muse.ops._dispatch import absent, define_op, present, use_op
from muse.ops._launch import cdiv, launch as _launch, next_pow2
from muse.ops._triton import HAS_TRITON, tl, triton, triton_supports

from .naive import check_inputs

if HAS_TRITON:

    @triton.jit
    def _softplus(x):
        # log1p(e^{-|x|}) + max(x, 0); log(1 + y) loses small y in fp32, so a series there
        y = tl.exp(-tl.abs(x))
        return tl.where(y < 1e-4, y - 0.5 * y * y, tl.log(1.0 + y)) + tl.maximum(x, 0.0)

    @triton.jit
    def _rows(R, H, BR: tl.constexpr):
        rows = tl.program_id(0) * BR + tl.arange(0, BR)  # (BR,) = (b·N + n)·H + h
        return rows, (rows // H).to(tl.int64), rows % H, rows < R

    @triton.jit
    def _gate_fwd_kernel(u, gl, dl, ue, ld, gs, go, R, H, SU, SG, SD, scale: tl.constexpr, r: tl.constexpr,
                         n: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, HAS_GATE: tl.constexpr, HAS_DECAY: tl.constexpr):
        rows, m, h, ok = _rows(R, H, BR)
        c = tl.arange(0, BK)  # (BK,) rank index
        mask = ok[:, None] & (c[None, :] < r)
        acc_t = tl.float64 if u.dtype.element_ty == tl.float64 else tl.float32
        x = tl.load(u + m[:, None] * SU + h[:, None] * r + c[None, :], mask=mask, other=0.0).to(acc_t) * scale
        if HAS_GATE:
            j = c - (r - n)  # (BK,) gate index, >= 0 on the gated ranks
            gm = mask & (j[None, :] >= 0)
            a = tl.load(gl + m[:, None] * SG + h[:, None] * n + j[None, :], mask=gm, other=0.0).to(acc_t)
            g = 1.0 / (1.0 + tl.exp(-a))
            x = tl.where(gm, x * g, x)
            tl.store(gs + rows, tl.sum(tl.where(gm, g, 0.0), 1), mask=ok)
            tl.store(go + rows, tl.sum(tl.where(gm & (g > 0.5), 1.0, 0.0), 1), mask=ok)
        tl.store(ue + rows.to(tl.int64)[:, None] * r + c[None, :], x.to(ue.dtype.element_ty), mask=mask)
        if HAS_DECAY:
            d = tl.load(dl + m * SD + h, mask=ok, other=0.0).to(ld.dtype.element_ty)
            tl.store(ld + rows, -_softplus(d), mask=ok)

    @triton.jit
    def _gate_bwd_kernel(u, gl, dl, due, dld, dgs, du, dgl, ddl, R, H, SU, SG, SD, scale: tl.constexpr,
                         r: tl.constexpr,
                         n: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, HAS_GATE: tl.constexpr,
                         HAS_DECAY: tl.constexpr, HAS_DGS: tl.constexpr, HAS_DLD: tl.constexpr):
        rows, m, h, ok = _rows(R, H, BR)
        c = tl.arange(0, BK)
        mask = ok[:, None] & (c[None, :] < r)
        acc_t = tl.float64 if u.dtype.element_ty == tl.float64 else tl.float32
        dy = tl.load(due + rows.to(tl.int64)[:, None] * r + c[None, :], mask=mask, other=0.0).to(acc_t)
        dx = dy * scale
        if HAS_GATE:
            j = c - (r - n)
            gm = mask & (j[None, :] >= 0)
            x = tl.load(u + m[:, None] * SU + h[:, None] * r + c[None, :], mask=mask, other=0.0).to(acc_t) * scale
            a = tl.load(gl + m[:, None] * SG + h[:, None] * n + j[None, :], mask=gm, other=0.0).to(acc_t)
            g = 1.0 / (1.0 + tl.exp(-a))
            dg = dy * x  # d/dg of x·g
            if HAS_DGS:
                dg += tl.load(dgs + rows, mask=ok, other=0.0).to(acc_t)[:, None]
            tl.store(dgl + rows.to(tl.int64)[:, None] * n + j[None, :], (dg * g * (1.0 - g)).to(dgl.dtype.element_ty),
                     mask=gm)
            dx = tl.where(gm, dx * g, dx)
        tl.store(du + rows.to(tl.int64)[:, None] * r + c[None, :], dx.to(du.dtype.element_ty), mask=mask)
        if HAS_DECAY:
            d = tl.load(dl + m * SD + h, mask=ok, other=0.0).to(acc_t)
            dd = tl.zeros_like(d)
            if HAS_DLD:
                dd = -tl.load(dld + rows, mask=ok, other=0.0).to(acc_t) / (1.0 + tl.exp(-d))  # −σ(d)·dℓ
            tl.store(ddl + rows, dd.to(ddl.dtype.element_ty), mask=ok)


def _row_stride(t: Tensor, width: int) -> Tensor:
    """t (B, N, H, w) is read as rows of H·w with one row stride (a column slice of a fused
    projection qualifies); else a contiguous copy."""
    B, N, H, w = t.shape
    if t.stride(3) == 1 and t.stride(2) == w and t.stride(0) == N * t.stride(1):
        return t
    return t.contiguous()


def _block_rows(r: int) -> int:
    return max(1, min(128, 4096 // next_pow2(r)))


def gates_forward(u, gl, dl, scale: float):
    """Forward launcher (``muse::gate_inputs_fwd``): (u_eff (B, N, H, r) in u's dtype, log_decay,
    gate_sum, gate_open (B, N, H) fp32/fp64, None without decay logits / gates). u and gl are
    read with one row stride (``_row_stride``), dl with unit head stride."""
    B, N, H, r = u.shape
    n = gl.shape[-1] if gl is not None else 0
    R = B * N * H
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    ue = torch.empty(B, N, H, r, device=u.device, dtype=u.dtype)
    ld = torch.empty(B, N, H, device=u.device, dtype=acc) if dl is not None else None
    gs, go = (torch.empty(B, N, H, device=u.device, dtype=acc) if n else None for _ in range(2))
    BR, BK = _block_rows(r), next_pow2(r)
    _launch(_gate_fwd_kernel, (cdiv(R, BR),),
        u, gl, dl, ue, ld, gs, go, R, H, u.stride(1), gl.stride(1) if n else 0, dl.stride(1) if dl is not None else 0,
        scale=scale, r=r, n=n, BR=BR, BK=BK, HAS_GATE=n > 0, HAS_DECAY=dl is not None,
    )
    return ue, ld, gs, go


def gates_backward(due, dld, dgs, u, gl, dl, scale: float):
    """Backward launcher (``muse::gate_inputs_bwd``): (du, d gate_logits, d decay_logits), None
    where that input is None. dld, dgs: the gradients of log_decay and gate_sum, or None."""
    B, N, H, r = u.shape
    n = gl.shape[-1] if gl is not None else 0
    R = B * N * H
    due = due.contiguous()
    du = torch.empty(B, N, H, r, device=u.device, dtype=u.dtype)
    dgl = torch.empty(B, N, H, n, device=u.device, dtype=gl.dtype) if n else None
    ddl = torch.empty(B, N, H, device=u.device, dtype=dl.dtype) if dl is not None else None
    BR, BK = _block_rows(r), next_pow2(r)
    _launch(_gate_bwd_kernel, (cdiv(R, BR),),
        u, gl, dl, due, dld.contiguous() if dld is not None else None,
        dgs.contiguous() if dgs is not None else None, du, dgl, ddl, R, H, u.stride(1),
        gl.stride(1) if n else 0, dl.stride(1) if dl is not None else 0, scale=scale, r=r, n=n, BR=BR, BK=BK,
        HAS_GATE=n > 0, HAS_DECAY=dl is not None, HAS_DGS=dgs is not None, HAS_DLD=dld is not None,
    )
    return du, dgl, ddl


# The launchers as ops (muse.ops._dispatch): one graph node each under torch.compile, outputs of
# the real shapes for fake tensors. Absent outputs are (0,) tensors of u's dtype. No temporaries.
def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fwd_fake(u, gl, dl, scale):
    B, N, H, r = u.shape
    rows = lambda: u.new_empty((B, N, H), dtype=_acc(u.dtype))  # noqa: E731
    gs, go = (rows(), rows()) if gl is not None and gl.shape[-1] else (absent(u), absent(u))
    return u.new_empty(u.shape), rows() if dl is not None else absent(u), gs, go


def _bwd_fake(due, dld, dgs, u, gl, dl, scale):
    dgl = gl.new_empty(gl.shape) if gl is not None and gl.shape[-1] else absent(u)
    return u.new_empty(u.shape), dgl, dl.new_empty(dl.shape) if dl is not None else absent(u)


def _dl_layout(dl):
    """decay_logits (B, N, H) as the kernels read it: unit head stride, one row stride."""
    if dl is not None and not (dl.stride(2) == 1 and dl.stride(0) == dl.shape[1] * dl.stride(1)):
        return dl.contiguous()
    return dl


def _fwd_kernel(u, gl, dl, scale):
    gl = _row_stride(gl, gl.shape[-1]) if gl is not None else None
    return gates_forward(_row_stride(u, u.shape[-1]), gl, _dl_layout(dl), scale)


def _bwd_kernel(due, dld, dgs, u, gl, dl, scale):
    gl = _row_stride(gl, gl.shape[-1]) if gl is not None else None
    return gates_backward(due, dld, dgs, _row_stride(u, u.shape[-1]), gl, _dl_layout(dl), scale)


_u = lambda *a: a[0]  # noqa: E731
_fwd_op = define_op(
    "gate_inputs_fwd", "(Tensor u, Tensor? gate_logits, Tensor? decay_logits, float scale) -> (Tensor, Tensor, Tensor, Tensor)",
    _fwd_kernel, _fwd_fake, placeholders=(None, _u, _u, _u),
)
_bwd_op = define_op(
    "gate_inputs_bwd",
    "(Tensor d_u_eff, Tensor? d_log_decay, Tensor? d_gate_sum, Tensor u, Tensor? gate_logits, Tensor? decay_logits,"
    " float scale) -> (Tensor, Tensor, Tensor)",
    _bwd_kernel, _bwd_fake, placeholders=(None, lambda *a: a[3], lambda *a: a[3]),
)


class _GateInputs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, gl, dl, scale: float):
        if use_op(u):
            n = gl is not None
            ue, ld, gs, go = present(_fwd_op(u, gl, dl, scale), (True, dl is not None, n, n))
        else:
            ue, ld, gs, go = gates_forward(u, gl, dl, scale)
        ctx.save_for_backward(u, gl, dl)
        ctx.scale = scale
        if go is not None:
            ctx.mark_non_differentiable(go)
        return ue, ld, gs, go

    @staticmethod
    def backward(ctx, due, dld, dgs, _dgo):
        u, gl, dl = ctx.saved_tensors
        args = (due, dld, dgs, u, gl, dl, ctx.scale)
        if use_op(due):
            du, dgl, ddl = present(_bwd_op(*args), (True, gl is not None, dl is not None))
        else:
            du, dgl, ddl = gates_backward(*args)
        return du, dgl, ddl, None


def triton_gate_inputs(u: Tensor, gate_logits: Tensor | None, decay_logits: Tensor | None, scale: float = 1.0):
    """``naive_gate_inputs`` on the Triton kernels (CUDA, or the CPU interpreter); same results."""
    r, n = check_inputs(u, gate_logits, decay_logits)
    if not triton_supports(u, gate_logits, decay_logits):
        raise ValueError(
            "impl='triton' runs CUDA tensors (or CPU fp32/fp64 ones under TRITON_INTERPRET=1); "
            f"got {u.device.type} {u.dtype}"
        )
    if n and gate_logits.dtype != u.dtype:
        gate_logits = gate_logits.to(u.dtype)
    u = _row_stride(u, r)
    gl = _row_stride(gate_logits, n) if n else None
    return _GateInputs.apply(u, gl, _dl_layout(decay_logits), float(scale))
