"""The Triton semiseparable scan as torch ops (``muse::semiseparable_fwd`` / ``_bwd``) with autograd.

The launchers of ``triton_chunk.py`` are registered as opaque operators (``muse.ops._dispatch``):
``torch.compile`` sees one node per direction instead of the autotuner's Python, and fake
tensors get outputs of the real shapes. ``_TritonChunkScan`` (autograd) calls them; in eager
mode it calls the launchers directly (no dispatcher overhead on a launch-bound layer).

    muse::semiseparable_fwd(Tensor u, Tensor v, Tensor z, Tensor? g, Tensor? h0, Tensor? band,
                            bool output_final_state, int C) -> (Tensor y, Tensor final_state)
    muse::semiseparable_bwd(Tensor dy, Tensor? dht, Tensor u, Tensor v, Tensor z, Tensor? g,
                            Tensor? h0, Tensor? band, int C)
                            -> (Tensor du, Tensor dv, Tensor dz, Tensor dg, Tensor dh0, Tensor dband)

An absent output (no final state; dg / dh0 / dband without g / h0 / band) is an empty (0,)
tensor of z's dtype. The fake implementations model the outputs only: the launchers' own
temporaries are not seen by ``muse memory``'s estimate. Per call, with NT = ceil(N / C) and
acc = fp32 (fp64 for fp64 inputs):

    forward:   chunk states X (B, H, NT, r, p) + chunk decays (B, H, NT), acc
    backward:  two (B, H, NT, r, p) state buffers + two (B, H, NT) decays, acc; with decay also
               dgl (B, H, NT, C) + dg_tot (B, H, NT) acc; with a band dband (NT, B, H, p, W) acc

Each launcher call picks its kernels (``_pick``): for few chunks per sequence the single-launch
ones of ``triton_fused.py`` (forward: no temporaries; backward: with decay (2, B*H, NT*C) acc,
with a band (B, H*p, W) acc), else the chunk-parallel ones of ``triton_chunk.py`` above. Both
compute the same thing, so a forward and its backward may take different ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from muse.ops._dispatch import absent, contiguous, define_op, present, use_op

from .naive import check_inputs
from .triton_chunk import HAS_TRITON, kernel_rows, scan_backward, scan_forward, triton_supports, valid_chunk
from .triton_fused import fused_backward, fused_forward, use_fused

__all__ = ["triton_chunk_semiseparable"]


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _decay_dtype(dtype: torch.dtype, acc: torch.dtype) -> torch.dtype:
    """The dtype the kernels read log decays in (and return their gradient in): fp32 and
    16-bit ones as given, else the accumulator's (fp64 inputs: fp64 throughout)."""
    return dtype if acc == torch.float32 and dtype in (torch.float32, torch.bfloat16, torch.float16) else acc


def _fwd_fake(u, v, z, g, h0, band, output_final_state, C):
    B, N, H, K = u.shape
    V = z.shape[-1]
    ht = z.new_empty((B, H, K, V), dtype=_acc(z.dtype)) if output_final_state else absent(z)
    return z.new_empty(z.shape), ht


def _bwd_fake(dy, dht, u, v, z, g, h0, band, C):
    B, N, H, K = u.shape
    V, acc = z.shape[-1], _acc(z.dtype)
    dg = z.new_empty((B, N, H), dtype=g.dtype) if g is not None else absent(z)
    dh0 = z.new_empty((B, H, K, V), dtype=acc) if h0 is not None else absent(z)
    dband = band.new_empty(band.shape) if band is not None else absent(z)
    return u.new_empty(u.shape), v.new_empty(u.shape), z.new_empty(z.shape), dg, dh0, dband


_PRIMED: set = set()


def _spec(t):
    return (t.dtype, t.shape[-1], t.stride(1) if t.dim() > 1 else 0) if isinstance(t, torch.Tensor) else t


def _pick(fused, chunked, z, C, args):
    """``fused`` where ``use_fused`` says so, else ``chunked``; the first fused call of each
    specialization on CUDA also runs ``chunked`` once (results dropped). A CUDA graph captured
    later takes the chunk-parallel kernels, and those cannot be autotuned (benchmarked) inside a
    capture: this way they are tuned and compiled beforehand, on the warm-up step that every
    capture needs anyway. The cost is that of the first call before the fused path existed."""
    B, N, H, _ = z.shape
    if not use_fused(-(-N // C), B * H, z):
        return chunked(*args)
    if z.is_cuda:
        # what the chunk-parallel launches specialize on (``muse.ops._launch``), as plain values
        # (a key of torch.Size objects was slow to compare on every call): all sizes but B, the
        # row strides, the dtypes, which optional tensors are there, the flags
        key = (fused, N, H, *map(_spec, args))
        if key not in _PRIMED:
            chunked(*args)
            _PRIMED.add(key)
    return fused(*args)


def _forward(u, v, z, g, h0, band, output_final_state, C):
    """The forward launcher for this call: one launch for few chunks (eager), else the
    chunk-parallel kernels (``triton_fused.use_fused``)."""
    return _pick(fused_forward, scan_forward, z, C, (u, v, z, g, h0, band, output_final_state, C))


def _backward(dy, dht, u, v, z, g, h0, band, C):
    return _pick(fused_backward, scan_backward, z, C, (dy, dht, u, v, z, g, h0, band, C))


def _fwd_kernel(u, v, z, g, h0, band, output_final_state, C):
    u, v, z = kernel_rows(u), kernel_rows(v), kernel_rows(z)
    return _forward(u, v, z, contiguous(g), contiguous(h0), contiguous(band), output_final_state, C)


def _bwd_kernel(dy, dht, u, v, z, g, h0, band, C):
    u, v, z = kernel_rows(u), kernel_rows(v), kernel_rows(z)
    return _backward(dy, dht, u, v, z, contiguous(g), contiguous(h0), contiguous(band), C)


# the placeholders take z's dtype: z is argument 2 of the forward, argument 4 of the backward
_fwd_z, _bwd_z = (lambda *a: a[2]), (lambda *a: a[4])
_fwd_op = define_op(
    "semiseparable_fwd",
    "(Tensor u, Tensor v, Tensor z, Tensor? g, Tensor? h0, Tensor? band, bool output_final_state, int C)"
    " -> (Tensor, Tensor)",
    _fwd_kernel, _fwd_fake, placeholders=(None, _fwd_z),
)
_bwd_op = define_op(
    "semiseparable_bwd",
    "(Tensor dy, Tensor? dht, Tensor u, Tensor v, Tensor z, Tensor? g, Tensor? h0, Tensor? band, int C)"
    " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    _bwd_kernel, _bwd_fake, placeholders=(None, None, None, _bwd_z, _bwd_z, _bwd_z),
)


class _TritonChunkScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, v, z, g, h0, band, output_final_state: bool, C: int):
        args = (u, v, z, g, h0, band, output_final_state, C)
        y, ht = present(_fwd_op(*args), (True, output_final_state)) if use_op(u) else _forward(*args)
        ctx.save_for_backward(u, v, z, g, h0, band)
        ctx.C = C
        ctx.output_final_state = output_final_state
        return y, ht

    @staticmethod
    def backward(ctx, dy, dht):
        u, v, z, g, h0, band = ctx.saved_tensors
        dht = dht if ctx.output_final_state else None
        args = (dy, dht, u, v, z, g, h0, band, ctx.C)
        if use_op(dy):
            grads = present(_bwd_op(*args), (True, True, True, g is not None, h0 is not None, band is not None))
        else:
            grads = _backward(*args)
        return (*grads, None, None)


def triton_chunk_semiseparable(
    u: Tensor,
    v: Tensor,
    z: Tensor,
    log_decay: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    band: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The semiseparable scan on the Triton kernels (CUDA, or the CPU interpreter).

    Args and returns as ``chunk_semiseparable``: u, v (B, N, H, r), z (B, N, H, p),
    log_decay (B, N, H) <= 0 or None, initial_state (B, H, r, p) or None; returns
    y (B, N, H, p) in z's dtype and the final state (B, H, r, p) in fp32 (fp64 for fp64
    inputs) or None. u and v are cast to z's dtype. chunk_size must be a power of two >= 16.
    band: (H*p, w) causal band weights, added inside the output kernel (as ``causal_band``).
    Gradients reach u, v, z, log_decay, initial_state and band. Fake tensors (memory
    estimates) and ``torch.compile`` go through the ops' fake implementations / graph nodes.
    """
    check_inputs(u, v, z, log_decay, initial_state, band)
    if not triton_supports(u, v, z, log_decay, initial_state):
        if not HAS_TRITON:
            raise RuntimeError("impl='triton' needs the triton package (pip install triton); use impl='chunked'")
        raise ValueError(
            "impl='triton' runs CUDA tensors (or CPU ones under TRITON_INTERPRET=1) of dtype "
            f"float32/bfloat16/float16/float64; got {u.device.type} {z.dtype}"
        )
    C = chunk_size
    if not valid_chunk(C):
        raise ValueError(f"chunk_size must be a power of two >= 16 for impl='triton'; got {C!r}")
    acc = _acc(z.dtype)
    u, v, z = (kernel_rows(t.to(z.dtype)) for t in (u, v, z))
    # the kernels read 16-bit decays as they are (a cast would be two more launches per call)
    g = log_decay.to(_decay_dtype(log_decay.dtype, acc)).contiguous() if log_decay is not None else None
    h0 = initial_state.to(acc).contiguous() if initial_state is not None else None
    if band is not None:
        band = band.contiguous()
    return _TritonChunkScan.apply(u, v, z, g, h0, band, output_final_state, C)
