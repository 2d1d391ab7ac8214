"""The holographic read's elementwise glue in Triton: binding before the scan, unbinding after it.

Between the FFTs (torch, cuFFT) and the scan (``triton_scan.py``) the read works on spectra of F
complex frequencies per token, carried as real pairs (..., F, 2) (``torch.view_as_real`` order).
In torch (``naive.spectra`` / ``naive.read_out``, the references) that glue is a dozen
elementwise kernels forward and more backward, each a pass over an fp32 tensor 2F wide, and it
took most of the holographic layer's GPU time (docs/performance-notes.md §3). Here it is two
kernels each way:

- ``bind``: Q, K, V spectra -> unit-modulus Q̂, K̂ (when ``unitary``) and the bound spectrum
  B = K̂ ⊙ V, one program per token: a first pass sums |Q|², |K|² over the frequencies (the
  floor of ``naive._unit`` is relative to their mean), a second writes. Its backward recomputes
  Q̂, K̂ and gives dQ, dK, dV; the unit projection's derivative is (g − û (û · g)) / |z| on the
  kept frequencies and 0 on the dropped ones, as the reference's.
- ``unbind``: R = conj(Q̂) ⊙ M for a read memory M (..., 2F), elementwise; backward dQ̂, dM.

All tensors are contiguous in the accumulation dtype (fp32, fp64 under the interpreter's tests).
"""

from __future__ import annotations

import torch
from torch import Tensor

from muse.ops._dispatch import define_op, use_op
from muse.ops._launch import cdiv, launch
from muse.ops._triton import HAS_TRITON, tl, triton

from .naive import UNIT_FLOOR  # the reference's floor: both paths drop the same frequencies

__all__ = ["bind", "unbind"]

BLOCK_F = 512  # frequencies per step of a token's loop (F = 1,025 at hcm_dim 2,048: three steps)
BLOCK_E = 1024  # frequencies per program of the elementwise unbind

if HAS_TRITON:

    @triton.jit
    def _pair(x, row, f, F):
        """The (re, im) parts of frequencies f of token ``row`` in an (R, F, 2) tensor."""
        ptr = x + (row * F + f).to(tl.int64) * 2
        m = f < F
        return tl.load(ptr, mask=m, other=0.0), tl.load(ptr + 1, mask=m, other=0.0)

    @triton.jit
    def _store_pair(x, row, f, F, re, im):
        ptr = x + (row * F + f).to(tl.int64) * 2
        tl.store(ptr, re, mask=f < F)
        tl.store(ptr + 1, im, mask=f < F)

    @triton.jit
    def _mean_power(x, row, F, FLOOR, BF: tl.constexpr):
        """FLOOR · mean over the F frequencies of |x|²: a frequency at or below it is dropped."""
        acc = tl.zeros((BF,), dtype=x.dtype.element_ty)
        for f0 in range(0, F, BF):
            re, im = _pair(x, row, f0 + tl.arange(0, BF), F)
            acc += re * re + im * im
        return FLOOR * tl.sum(acc, 0) / F

    @triton.jit
    def _inv_norm(re, im, floor):
        """1 / |z| on the kept frequencies, 0 on the dropped ones."""
        s = re * re + im * im
        keep = s > floor
        return tl.where(keep, 1.0 / tl.sqrt(tl.where(keep, s, 1.0)), 0.0)

    @triton.jit
    def _floors(q, k, row, F, FLOOR, UNIT: tl.constexpr, BF: tl.constexpr):
        """The drop thresholds of Q's and K's frequencies for token ``row`` (0 without ``UNIT``)."""
        if UNIT:
            fq, fk = _mean_power(q, row, F, FLOOR, BF), _mean_power(k, row, F, FLOOR, BF)
        else:  # unused; scalars of FLOOR's type keep one signature
            fq, fk = FLOOR * 0.0, FLOOR * 0.0
        return fq, fk

    @triton.jit
    def _spectra_block(q, k, v, row, f, F, fq, fk, UNIT: tl.constexpr, BF: tl.constexpr):
        """Q, K, V at frequencies f as (re, im) pairs, and 1/|Q|, 1/|K| (0 on dropped frequencies;
        1 without ``UNIT``)."""
        qr, qi = _pair(q, row, f, F)
        kr, ki = _pair(k, row, f, F)
        vr, vi = _pair(v, row, f, F)
        if UNIT:
            iq, ik = _inv_norm(qr, qi, fq), _inv_norm(kr, ki, fk)
        else:
            iq = tl.full((BF,), 1.0, qr.dtype)
            ik = tl.full((BF,), 1.0, qr.dtype)
        return qr, qi, kr, ki, vr, vi, iq, ik

    @triton.jit
    def _bind_fwd_kernel(q, k, v, qu, ku, b, F, FLOOR, UNIT: tl.constexpr, BF: tl.constexpr):
        row = tl.program_id(0)
        fq, fk = _floors(q, k, row, F, FLOOR, UNIT, BF)
        for f0 in range(0, F, BF):
            f = f0 + tl.arange(0, BF)
            qr, qi, kr, ki, vr, vi, iq, ik = _spectra_block(q, k, v, row, f, F, fq, fk, UNIT, BF)
            qr, qi, kr, ki = qr * iq, qi * iq, kr * ik, ki * ik
            _store_pair(qu, row, f, F, qr, qi)
            _store_pair(ku, row, f, F, kr, ki)
            _store_pair(b, row, f, F, kr * vr - ki * vi, kr * vi + ki * vr)  # K̂ ⊙ V

    @triton.jit
    def _bind_bwd_kernel(q, k, v, gqu, gku, gb, gq, gk, gv, F, FLOOR, UNIT: tl.constexpr, HAS_GQU: tl.constexpr,
                         HAS_GKU: tl.constexpr, BF: tl.constexpr):
        row = tl.program_id(0)
        fq, fk = _floors(q, k, row, F, FLOOR, UNIT, BF)
        for f0 in range(0, F, BF):
            f = f0 + tl.arange(0, BF)
            qr, qi, kr, ki, vr, vi, iq, ik = _spectra_block(q, k, v, row, f, F, fq, fk, UNIT, BF)
            br, bi = _pair(gb, row, f, F)
            ur, ui = kr * ik, ki * ik  # K̂
            # B = K̂ ⊙ V: dK̂ = dB ⊙ conj(V), dV = dB ⊙ conj(K̂)
            dkr, dki = br * vr + bi * vi, bi * vr - br * vi
            _store_pair(gv, row, f, F, br * ur + bi * ui, bi * ur - br * ui)
            if HAS_GKU:
                xr, xi = _pair(gku, row, f, F)
                dkr, dki = dkr + xr, dki + xi
            dqr = tl.zeros((BF,), qr.dtype)
            dqi = tl.zeros((BF,), qr.dtype)
            if HAS_GQU:
                dqr, dqi = _pair(gqu, row, f, F)
            if UNIT:  # d(z/|z|): (g − ẑ (ẑ · g)) / |z|, zero where the frequency was dropped
                pr, pi = qr * iq, qi * iq
                dot = pr * dqr + pi * dqi
                dqr, dqi = iq * (dqr - pr * dot), iq * (dqi - pi * dot)
                dot = ur * dkr + ui * dki
                dkr, dki = ik * (dkr - ur * dot), ik * (dki - ui * dot)
            _store_pair(gq, row, f, F, dqr, dqi)
            _store_pair(gk, row, f, F, dkr, dki)

    @triton.jit
    def _unbind_fwd_kernel(qu, m, out, n, BE: tl.constexpr):
        f = tl.program_id(0) * BE + tl.arange(0, BE)
        qr, qi = _pair(qu, 0, f, n)
        mr, mi = _pair(m, 0, f, n)
        _store_pair(out, 0, f, n, qr * mr + qi * mi, qr * mi - qi * mr)  # conj(Q̂) ⊙ M

    @triton.jit
    def _unbind_bwd_kernel(qu, m, g, gqu, gm, n, BE: tl.constexpr):
        f = tl.program_id(0) * BE + tl.arange(0, BE)
        qr, qi = _pair(qu, 0, f, n)
        mr, mi = _pair(m, 0, f, n)
        gr, gi = _pair(g, 0, f, n)
        _store_pair(gqu, 0, f, n, gr * mr + gi * mi, gr * mi - gi * mr)  # dQ̂ = conj(dR ⊙ conj(M))
        _store_pair(gm, 0, f, n, gr * qr - gi * qi, gr * qi + gi * qr)  # dM = dR ⊙ Q̂


def _rows(x: Tensor) -> tuple[int, int]:
    """(tokens, frequencies) of an (..., F, 2) tensor."""
    return x.numel() // (2 * x.shape[-2]), x.shape[-2]


def bind_forward(q: Tensor, k: Tensor, v: Tensor, unitary: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Launcher (``muse::holographic_bind``): Q̂, K̂, B (..., F, 2) from contiguous Q, K, V (..., F, 2)."""
    R, F = _rows(q)
    qu, ku, b = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    launch(_bind_fwd_kernel, (R,), q, k, v, qu, ku, b, F, UNIT_FLOOR, UNIT=unitary, BF=BLOCK_F)
    return qu, ku, b


def bind_backward(q, k, v, gqu, gku, gb, unitary: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Launcher (``muse::holographic_bind_bwd``): dQ, dK, dV; gqu / gku None where Q̂ / K̂ got no gradient."""
    R, F = _rows(q)
    gq, gk, gv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    launch(_bind_bwd_kernel, (R,), q, k, v, gqu, gku, gb, gq, gk, gv, F, UNIT_FLOOR, UNIT=unitary,
           HAS_GQU=gqu is not None, HAS_GKU=gku is not None, BF=BLOCK_F)
    return gq, gk, gv


def unbind_forward(qu: Tensor, m: Tensor) -> Tensor:
    """Launcher (``muse::holographic_unbind``): conj(Q̂) ⊙ M as (..., F, 2)."""
    n = qu.numel() // 2
    out = torch.empty_like(qu)
    launch(_unbind_fwd_kernel, (cdiv(n, BLOCK_E),), qu, m, out, n, BE=BLOCK_E)
    return out


def unbind_backward(qu: Tensor, m: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    n = qu.numel() // 2
    gqu, gm = torch.empty_like(qu), torch.empty_like(m)
    launch(_unbind_bwd_kernel, (cdiv(n, BLOCK_E),), qu, m, g, gqu, gm, n, BE=BLOCK_E)
    return gqu, gm


def _c(t: Tensor | None) -> Tensor | None:
    return t.contiguous() if t is not None else None


_bind_op = define_op(
    "holographic_bind", "(Tensor q, Tensor k, Tensor v, bool unitary) -> (Tensor, Tensor, Tensor)",
    lambda q, k, v, unitary: bind_forward(_c(q), _c(k), _c(v), unitary),
    lambda q, k, v, unitary: (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)),
)
_bind_bwd_op = define_op(
    "holographic_bind_bwd",
    "(Tensor q, Tensor k, Tensor v, Tensor? gqu, Tensor? gku, Tensor gb, bool unitary) -> (Tensor, Tensor, Tensor)",
    lambda q, k, v, gqu, gku, gb, unitary: bind_backward(_c(q), _c(k), _c(v), _c(gqu), _c(gku), _c(gb), unitary),
    lambda q, k, v, gqu, gku, gb, unitary: (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)),
)
_unbind_op = define_op(
    "holographic_unbind", "(Tensor qu, Tensor m) -> Tensor",
    lambda qu, m: unbind_forward(_c(qu), _c(m)), lambda qu, m: qu.new_empty(qu.shape),
)
_unbind_bwd_op = define_op(
    "holographic_unbind_bwd", "(Tensor qu, Tensor m, Tensor g) -> (Tensor, Tensor)",
    lambda qu, m, g: unbind_backward(_c(qu), _c(m), _c(g)),
    lambda qu, m, g: (qu.new_empty(qu.shape), m.new_empty(m.shape)),
)


class _Bind(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, unitary: bool):
        out = _bind_op(q, k, v, unitary) if use_op(q) else bind_forward(q, k, v, unitary)
        ctx.save_for_backward(q, k, v)
        ctx.unitary = unitary
        return out

    @staticmethod
    def backward(ctx, gqu, gku, gb):
        q, k, v = ctx.saved_tensors
        gb = _c(gb) if gb is not None else torch.zeros_like(v)
        args = (q, k, v, _c(gqu), _c(gku), gb, ctx.unitary)
        gq, gk, gv = _bind_bwd_op(*args) if use_op(q) else bind_backward(*args)
        return gq, gk, gv, None


class _Unbind(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qu, m):
        ctx.save_for_backward(qu, m)
        return _unbind_op(qu, m) if use_op(qu) else unbind_forward(qu, m)

    @staticmethod
    def backward(ctx, g):
        qu, m = ctx.saved_tensors
        return _unbind_bwd_op(qu, m, _c(g)) if use_op(qu) else unbind_backward(qu, m, _c(g))


def bind(q: Tensor, k: Tensor, v: Tensor, unitary: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Q̂, K̂ (..., F) complex and B = K̂ ⊙ V (..., 2F) real from the spectra Q, K, V (..., F) complex:
    ``naive.spectra`` after its FFTs, in one kernel (and one backward)."""
    as_pairs = lambda z: torch.view_as_real(z).contiguous()  # noqa: E731  (..., F, 2)
    qu, ku, b = _Bind.apply(as_pairs(q), as_pairs(k), as_pairs(v), unitary)
    return torch.view_as_complex(qu), torch.view_as_complex(ku), b.flatten(-2)


def unbind(qu: Tensor, memory: Tensor) -> Tensor:
    """conj(Q̂) ⊙ M (..., F) complex for Q̂ (..., F) complex and a read memory M (..., 2F) real:
    ``naive.read_out`` before its inverse FFT."""
    pairs = _Unbind.apply(torch.view_as_real(qu).contiguous(), memory.contiguous().unflatten(-1, (-1, 2)))
    return torch.view_as_complex(pairs)
