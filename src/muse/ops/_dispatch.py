"""How MUSE's Triton ops reach PyTorch: opaque ``torch.ops.muse.*`` operators, and ``assume_cuda``.

Each kernel *launcher* (allocate the outputs, launch the kernels; forward and backward
separately) is registered with ``define_op`` as a custom operator with a fake implementation,
so ``torch.compile`` traces it as one opaque node (no graph break on the Triton autotuner's
Python) and fake tensors (``muse memory``'s estimate) get outputs of the real shapes without
touching data. The ``torch.autograd.Function``s stay outside the ops: their forward and
backward call the op where ``use_op`` says so, else the launcher directly:

    y, ht = present(_fwd_op(*args), flags) if use_op(u) else scan_forward(*args)

A layer at N = 2K is launch-bound on the GPU, and a call through the dispatcher (which boxes
its arguments into Python) costs more host time than calling the launcher directly, while
``use_op`` is only a type check; so plain eager calls go straight to the launcher (figures in
docs/performance-notes.md §4). The op path is taken while compiling and for anything that is
not a plain eager tensor (fake, meta, other subclasses), where only the dispatcher knows what
to do.

Schemas are fixed-arity: an optional input is ``Tensor?``; an output that may be absent
(no final state, no decay gradient, ...) is returned by the op as an empty (0,) tensor of the
placeholder's dtype (``absent``), and ``present`` turns it back into None from the caller's
flags (never from the shape: a real output may be empty too). The launchers return None
there, so the eager path never allocates placeholders.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

__all__ = [
    "absent", "abstract", "assume_cuda", "assumes_cuda", "check_range", "contiguous", "define_op", "fake",
    "no_host_sync", "note_path", "present", "record_paths", "sms", "use_op",
]

_assume_cuda = False
_is_compiling = torch.compiler.is_compiling
# The GPU that ``assume_cuda`` models: an H100 SXM's streaming multiprocessors (the kernels size
# their grids and split buffers by them), as the estimate's cuBLAS workspace takes sm90's sizes.
ASSUMED_SMS = 132


@contextlib.contextmanager
def assume_cuda():
    """Inside: "auto" resolves fake tensors as if they were on a CUDA device with Triton (the
    ``muse memory`` estimate runs the step on fake CPU tensors but models a GPU step)."""
    global _assume_cuda
    old, _assume_cuda = _assume_cuda, True
    try:
        yield
    finally:
        _assume_cuda = old


_paths: dict[str, set[str]] | None = None


@contextlib.contextmanager
def record_paths():
    """Inside, every MUSE op notes the implementation it runs (eager calls only; nothing is noted
    while compiling). Yields a dict that is filled on exit with {op: sorted implementations},
    e.g. {"lowrank_mlp": ["triton"], "semiseparable": ["triton"], ...}: benchmarks record it, so
    a figure says which kernels produced it rather than the "auto" of the config."""
    global _paths
    old, _paths = _paths, {}
    found: dict[str, list[str]] = {}
    try:
        yield found
    finally:
        found.update({op: sorted(v) for op, v in sorted(_paths.items())})
        _paths = old


def note_path(op: str, impl: str) -> str:
    """Note that ``op`` runs ``impl`` (inside ``record_paths()``); returns ``impl``.

    ``_is_compiling()`` is asked first: dynamo folds it to True while tracing and never reads
    ``_paths``, so a compiled graph does not guard on it. (Read first, ``_paths`` became a guard,
    and the captured step's last warm-up, which records the paths, recompiled every graph that
    notes one.)"""
    if not _is_compiling() and _paths is not None:
        _paths.setdefault(op, set()).add(impl)
    return impl


def fake(x: Tensor) -> bool:
    """``is_fake(x)`` that is safe inside compiled code: dynamo cannot trace ``is_fake`` (a call
    breaks the graph, and the TT gather's dispatch split a compiled ``standard`` forward into six
    graphs, with the GPU idle between them; docs/performance-notes.md §6), and a compiled graph
    runs on real tensors, so while compiling the answer is False."""
    return not _is_compiling() and is_fake(x)


def no_host_sync(x: Tensor) -> bool:
    """True while compiling, or while a CUDA graph is being captured (``train.cuda_graph``) for
    a CUDA tensor ``x``: code then must not read a device value on the host (a graph break, or
    an error that aborts the capture). Per forward on the eager path: no device-count query."""
    return _is_compiling() or (x.is_cuda and torch.cuda.is_current_stream_capturing())


def check_range(ids: Tensor, size: int, error: Callable[[int | None, int | None], str]) -> None:
    """Raise ``ValueError(error(lo, hi))`` unless every value of ``ids`` lies in [0, size).

    Eagerly that is one host sync. Where no sync is allowed (``no_host_sync``) the check runs
    on the device with the message ``error(None, None)`` (``torch._assert_async``: the step
    fails when it runs, as an out-of-range gather would make it fail anyway, but never
    silently). Fake and meta tensors have no values to check."""
    if not ids.numel() or ids.is_meta or fake(ids):  # fake() is False while compiling
        return
    if no_host_sync(ids):  # a real CUDA tensor here, so CUDA is there to ask
        lo, hi = torch.aminmax(ids)
        torch._assert_async((lo >= 0) & (hi < size), error(None, None))
        return
    lo, hi = (int(v) for v in torch.aminmax(ids))  # one host sync
    if lo < 0 or hi >= size:
        raise ValueError(error(lo, hi))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sms(x: Tensor) -> int:
    """Streaming multiprocessors of the GPU that holds x (the kernels size their grids by it);
    ``ASSUMED_SMS`` for a fake tensor that stands for a GPU one (``assume_cuda``)."""
    if not x.is_cuda and _fake_gpu(x):
        return ASSUMED_SMS
    return _sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device())


def assumes_cuda(x: Tensor) -> bool:
    """x is a CUDA tensor, or a fake tensor while ``assume_cuda()`` is active."""
    return x.is_cuda or (_assume_cuda and fake(x))


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def use_op(x: Tensor) -> bool:
    """Whether a call with first tensor argument ``x`` goes through ``torch.ops.muse.*``:
    while compiling, and for anything but a plain eager tensor (fake and other subclasses,
    meta). One tensor stands for all: fake tensors come from one mode, never mixed with real
    ones. On a plain tensor it is only a type check (cheaper than ``is_fake`` alone): every
    eager call pays it. functorch's wrappers (vmap, grad, functionalize) need no check: they
    refuse the old-style autograd.Functions that call this before any of their tensors could
    get here.
    """
    return _is_compiling() or abstract(x)


def abstract(x: Tensor) -> bool:
    """Fake, meta or another subclass: a tensor whose data no kernel should read. Unlike
    ``is_fake``, dynamo traces it (a compiled graph sees plain tensors here)."""
    return type(x) not in _PLAIN or x.is_meta


def absent(like: Tensor) -> Tensor:
    """The placeholder an op returns for an absent output: (0,) in ``like``'s dtype and device."""
    return like.new_empty((0,))


def contiguous(t: Tensor | None) -> Tensor | None:
    return t.contiguous() if t is not None else None


def present(out: tuple, flags: Sequence[bool]) -> tuple:
    """An op's outputs with its placeholders for absent ones (``flags[i]`` False) made None."""
    return tuple(t if keep else None for t, keep in zip(out, flags))


# flexible_layout: Inductor hands the launchers its tensors as they are. Its default for custom
# ops (needs_exact_strides) copied the column slices of the mixer's fused projection into fresh
# buffers before every scan, forward and backward; the launchers take such slices as they are
# and copy only what their kernels cannot read (see define_op).
_TAGS = (torch.Tag.pt2_compliant_tag,) + ((torch.Tag.flexible_layout,) if hasattr(torch.Tag, "flexible_layout") else ())
_LIB = torch.library.Library("muse", "FRAGMENT")  # a fragment: other modules may define muse:: ops too


def define_op(name: str, schema: str, launcher: Callable, fake: Callable, placeholders: Sequence | None = None,
              scratch: Callable | None = None):
    """Register ``muse::name`` with ``schema`` (no mutation, no aliasing: every output is a
    fresh tensor), ``launcher`` as its CPU (Triton's interpreter) and CUDA kernel and ``fake``
    as its fake / meta implementation; returns the op's default overload (the cheapest to call).

    launcher: for the op path only, so it first puts its inputs into the layout the kernels read
    (cheap stride checks): a compiler may hand an op other strides than eager mode's (Inductor
    may pad or re-lay its buffers), which the eager callers have already normalised.

    placeholders: for ops with outputs that may be absent, one entry per output, None where
    the output is always there, else a function of the op's arguments giving the tensor whose
    dtype/device the (0,) placeholder takes (``absent``); the launcher returns None there and
    the registered kernel fills in the placeholder (the fake must return the same ``absent``).

    scratch: a function of the op's arguments giving the ``[(shape, dtype), ...]`` of the
    temporaries the launcher allocates on a GPU besides its outputs (split partials). Then the
    op is returned behind a wrapper that, for fake tensors standing for GPU ones (``muse
    memory``'s estimate), holds such tensors while the op runs: the memory tracker cannot see
    tensors made inside a fake implementation. Elsewhere the wrapper only calls the op.
    """
    _LIB.define(name + schema, tags=_TAGS)

    def filled(*args):
        out = launcher(*args)
        return tuple(absent(ph(*args)) if t is None else t for t, ph in zip(out, placeholders))

    kernel = launcher if placeholders is None else filled
    _LIB.impl(name, kernel, "CPU")
    _LIB.impl(name, kernel, "CUDA")
    torch.library.register_fake(f"muse::{name}", fake, lib=_LIB)
    op = getattr(torch.ops.muse, name).default
    if scratch is None:
        return op

    def call(*args):
        x = args[0]
        held = [x.new_empty(shape, dtype=dt) for shape, dt in scratch(*args)] if _fake_gpu(x) else []
        out = op(*args)
        del held
        return out

    return call


def _fake_gpu(x: Tensor) -> bool:
    """x is a fake tensor standing for a GPU one (``fake`` first: False while compiling, so a
    compiled graph never reads ``_assume_cuda``)."""
    return fake(x) and _assume_cuda
