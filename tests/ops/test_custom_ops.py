"""The Triton launchers as torch ops (``torch.ops.muse.*``): schemas, fake implementations, and
which path a call takes (the launcher directly in eager mode, the op for fake tensors).

``opcheck`` runs its default checks on each op with small odd-shaped fp32 inputs (the real
kernels on Triton's CPU interpreter, TRITON_INTERPRET=1 from conftest.py): test_schema (no
undeclared mutation or aliasing), test_faketensor (the fake's outputs have the real ones'
shapes, dtypes, devices and strides), test_aot_dispatch_dynamic (traceable by AOTAutograd with
dynamic shapes) and test_autograd_registration. The inputs do not require grad: the ops are
not differentiable by design (autograd is the ``torch.autograd.Function`` around them), so
the last check only confirms that no stray autograd kernel is registered.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

import muse.ops.holographic  # noqa: F401  (registers muse::holographic_*)
import muse.ops.semiseparable as ss
from muse.ops import _triton, assume_cuda
from muse.ops.gates import gate_inputs
from muse.ops.gates import triton_kernel as gk
from muse.ops.rmsnorm import rms_norm
from muse.ops.rmsnorm import triton_kernel as rk
from muse.ops.semiseparable import triton_chunk as tc
from muse.ops.semiseparable import triton_scan as ts
from muse.ops.tt_gather import tt_gather
from muse.ops.tt_gather import triton_kernel as tk

pytestmark = pytest.mark.skipif(not tc.HAS_TRITON, reason="triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, N, H, K, V, W = 2, 19, 2, 3, 5, 3  # odd sizes: N not a multiple of the chunk, r and p below 16
RF, CF, RANKS, NC = [5, 7, 3], [3, 4, 5], [1, 3, 5, 1], 50  # a 3-core TT matrix, 60 > 50 columns


_GEN = torch.Generator().manual_seed(0)


def _r(*shape):
    return torch.randn(*shape, generator=_GEN).to(DEVICE)


def _cases():
    """(op name, args) pairs: every optional input present and absent."""
    u, v, z = _r(B, N, H, K), _r(B, N, H, K), _r(B, N, H, V)
    ld, h0, band = -_r(B, N, H).abs(), _r(B, H, K, V), _r(H * V, W)
    x, w = _r(3, 7, 2, 5), _r(2, 5)
    rstd = torch.rsqrt(x.pow(2).mean(-1) + 1e-6).reshape(-1, 2)  # (M, G), as the forward saves it
    cores = [_r(RANKS[i], RF[i], CF[i], RANKS[i + 1]) for i in range(3)]
    ids = torch.tensor([3, 0, 3, 104, 7, 7, 7, 50, 1, 2, 99], device=DEVICE)
    gu, gl, dl = _r(B, N, H, 5), _r(B, N, H, 3), _r(B, N, H)
    hx_a, hx_b, hx_lg = _r(B, N, 3).softmax(-1), _r(B, N, 3).softmax(-1), -_r(3).abs()  # 3 slots, W = 9
    return [
        ("semiseparable_fwd", (u, v, z, ld, h0, band, True, 16)),
        ("semiseparable_fwd", (u, v, z, None, None, None, False, 16)),
        ("semiseparable_bwd", (_r(B, N, H, V), _r(B, H, K, V), u, v, z, ld, h0, band, 16)),
        ("semiseparable_bwd", (_r(B, N, H, V), None, u, v, z, None, None, None, 16)),
        ("gate_inputs_fwd", (gu, gl, dl, 0.3)),
        ("gate_inputs_fwd", (gu, None, None, 0.3)),
        ("gate_inputs_bwd", (_r(B, N, H, 5), _r(B, N, H), _r(B, N, H), gu, gl, dl, 0.3)),
        ("gate_inputs_bwd", (_r(B, N, H, 5), None, None, gu, None, None, 0.3)),
        ("rms_norm_fwd", (x, w, 1e-6)),
        ("rms_norm_fwd", (_r(7, 5), _r(5), 1e-5)),
        ("rms_norm_bwd", (_r(3, 7, 2, 5), x, w, rstd)),
        ("tt_gather_fwd", (ids, cores, RF, CF, NC, torch.float32)),
        ("tt_gather_bwd", (_r(11, NC), ids, cores, RF, CF)),
        ("holographic_fwd", (_r(B, N, 9), hx_a, hx_b, hx_lg, _r(B, 3, 9), True, 16, False)),
        ("holographic_fwd", (_r(B, N, 9), hx_a, hx_b, hx_lg, None, False, 16, False)),
        ("holographic_fwd", (_r(B, N, 9), hx_a, hx_b, hx_lg, _r(B, 3, 9), False, 16, True)),  # and the recall
        ("holographic_bwd", (_r(B, N, 9), _r(B, 3, 9), None, _r(B, N, 9), hx_a, hx_b, hx_lg, _r(B, 3, 9), 16)),
        ("holographic_bwd", (_r(B, N, 9), None, None, _r(B, N, 9), hx_a, hx_b, hx_lg, None, 16)),
        ("holographic_bwd", (_r(B, N, 9), None, _r(B, N, 9), _r(B, N, 9), hx_a, hx_b, hx_lg, _r(B, 3, 9), 16)),
        ("holographic_bind", (_r(B, N, 5, 2), _r(B, N, 5, 2), _r(B, N, 5, 2), True)),
        ("holographic_bind", (_r(B, N, 5, 2), _r(B, N, 5, 2), _r(B, N, 5, 2), False)),
        ("holographic_bind_bwd", (*(_r(B, N, 5, 2) for _ in range(6)), True)),
        ("holographic_bind_bwd", (_r(B, N, 5, 2), _r(B, N, 5, 2), _r(B, N, 5, 2), None, None, _r(B, N, 5, 2), True)),
        ("holographic_unbind", (_r(B, N, 5, 2), _r(B, N, 5, 2))),
        ("holographic_unbind_bwd", (_r(B, N, 5, 2), _r(B, N, 5, 2), _r(B, N, 5, 2))),
    ]


CASES = _cases()


@pytest.mark.parametrize("name,args", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_opcheck(name, args):
    torch.library.opcheck(getattr(torch.ops.muse, name).default, args)


def test_every_op_is_checked_and_tagged():
    names = {"semiseparable_fwd", "semiseparable_bwd", "gate_inputs_fwd", "gate_inputs_bwd", "rms_norm_fwd",
             "rms_norm_bwd", "tt_gather_fwd", "tt_gather_bwd", "holographic_fwd", "holographic_bwd",
             "holographic_bind", "holographic_bind_bwd", "holographic_unbind", "holographic_unbind_bwd"}
    assert {n for n, _ in CASES} == names
    for n in names:
        op = getattr(torch.ops.muse, n).default
        assert torch.Tag.pt2_compliant_tag in op.tags
        assert not any(a.alias_info for a in op._schema.arguments)  # nothing mutated or aliased


class _Spy:
    """Counts the calls of an op that the autograd.Functions look up at call time."""

    def __init__(self, monkeypatch, module, attr="_fwd_op"):
        self.n, real = 0, getattr(module, attr)

        def spy(*a):
            self.n += 1
            return real(*a)

        monkeypatch.setattr(module, attr, spy)


def _public_calls(fake: bool):
    """Each public function on the Triton path (forward and backward) on tensors made here."""
    g = torch.Generator().manual_seed(0)
    leaf = lambda *s: torch.randn(*s, generator=g).to(DEVICE).requires_grad_()  # noqa: E731
    u, v, z, h0, band = leaf(B, N, H, K), leaf(B, N, H, K), leaf(B, N, H, V), leaf(B, H, K, V), leaf(H * V, W)
    ld = (-torch.rand(B, N, H, generator=g)).to(DEVICE).requires_grad_()
    y, S = ss.semiseparable(u, v, z, ld, h0, True, impl="triton", chunk_size=16, band=band)
    gu, gl, dl = leaf(B, N, H, 5), leaf(B, N, H, 3), leaf(B, N, H)
    ue, lde, gs, go = gate_inputs(gu, gl, dl, 0.3, impl="triton")
    x, w = leaf(3, 7, 2, 5), leaf(2, 5)
    yn = rms_norm(x, w, impl="triton")
    cores = [leaf(RANKS[i], RF[i], CF[i], RANKS[i + 1]) for i in range(3)]
    rows = tt_gather(torch.tensor([3, 0, 104, 3]).to(DEVICE), cores, RF, CF, NC, impl="triton")
    outs = {"y": y, "S": S, "u_eff": ue, "log_decay": lde, "gate_sum": gs, "gate_open": go, "norm": yn, "rows": rows}
    expect = {"y": (B, N, H, V), "S": (B, H, K, V), "u_eff": (B, N, H, 5), "log_decay": (B, N, H),
              "gate_sum": (B, N, H), "gate_open": (B, N, H), "norm": (3, 7, 2, 5), "rows": (4, NC)}
    for k, t in outs.items():
        assert tuple(t.shape) == expect[k] and t.dtype == torch.float32 and isinstance(t, FakeTensor) == fake, k
    loss = sum((t.float() * t.float()).sum() for k, t in outs.items() if k != "gate_open")
    leaves = [u, v, z, ld, h0, band, gu, gl, dl, x, w, *cores]
    grads = torch.autograd.grad(loss, leaves)
    for t, d in zip(leaves, grads):
        assert d.shape == t.shape and d.dtype == t.dtype and isinstance(d, FakeTensor) == fake


def _spies(monkeypatch):
    return {m.__name__: (_Spy(monkeypatch, m), _Spy(monkeypatch, m, "_bwd_op")) for m in (ts, gk, rk, tk)}


def test_fake_tensors_take_the_ops_fakes(monkeypatch):
    """Under FakeTensorMode every public function runs forward and backward on the ops' fake
    implementations: outputs and gradients of the real shapes and dtypes, no kernel launched."""
    spies = _spies(monkeypatch)
    with FakeTensorMode():
        _public_calls(fake=True)
    assert all(f.n == 1 and b.n == 1 for f, b in spies.values()), {k: (f.n, b.n) for k, (f, b) in spies.items()}


def test_eager_calls_the_launchers_directly(monkeypatch):
    """Plain tensors never go through the dispatcher (its Python boxing costs microseconds a call)."""
    spies = _spies(monkeypatch)
    _public_calls(fake=False)
    assert all(f.n == 0 and b.n == 0 for f, b in spies.values())


def test_assume_cuda_makes_auto_pick_the_kernels(monkeypatch, not_interpreting):
    """"auto" on fake CPU tensors: the torch paths, unless assume_cuda() models a GPU step; then
    the Triton paths, also where neither a GPU nor the interpreter is there to run them."""
    spies = _spies(monkeypatch)
    with FakeTensorMode():
        u, v, z = torch.randn(1, 20, 2, 4), torch.randn(1, 20, 2, 4), torch.randn(1, 20, 2, 8)
        x, w = torch.randn(5, 2, 8), torch.randn(2, 8)
        assert ss.resolve_impl("auto", z) == "chunked"
        ss.semiseparable(u, v, z, impl="auto", chunk_size=16)
        gate_inputs(u, None, None, 0.5, impl="auto")
        rms_norm(x, w, impl="auto")
        assert not any(f.n for f, _ in spies.values())
        with assume_cuda():
            assert ss.resolve_impl("auto", z) == "triton"
            assert ss.resolve_impl("auto", z.double()) == "chunked"  # not a kernel dtype on a GPU
            assert ss.resolve_impl("auto", z, chunk_size=24) == "chunked"
            assert ss.semiseparable(u, v, z, impl="auto", chunk_size=16)[0].shape == z.shape
            assert gate_inputs(u, None, None, 0.5, impl="auto")[0].shape == u.shape
            assert rms_norm(x, w, impl="auto").shape == x.shape
        assert [spies[m.__name__][0].n for m in (ts, gk, rk)] == [1, 1, 1]
    with assume_cuda():  # real CPU tensors are not assumed to be anywhere else
        assert ss.resolve_impl("auto", torch.zeros(1)) == "chunked"


def test_assume_cuda_without_triton_installed(no_triton, not_interpreting):
    """The estimate models the GPU path on machines without Triton: fakes launch nothing."""
    with FakeTensorMode():
        u, z = torch.randn(1, 20, 2, 4), torch.randn(1, 20, 2, 8)
        with assume_cuda():
            assert ss.resolve_impl("auto", z) == "triton"
            y, _ = ss.semiseparable(u, u, z, impl="auto", chunk_size=16)
            assert isinstance(y, FakeTensor) and y.shape == z.shape
    with pytest.raises(RuntimeError, match="needs the triton package"):
        ss.semiseparable(torch.zeros(1, 20, 2, 4), torch.zeros(1, 20, 2, 4), torch.zeros(1, 20, 2, 8), impl="triton")


def test_meta_tensors_take_the_fakes():
    """register_fake also serves as the ops' meta kernel."""
    u, z = torch.zeros(2, 9, 2, 3, device="meta"), torch.zeros(2, 9, 2, 5, device="meta")
    y, S = torch.ops.muse.semiseparable_fwd(u, u, z, None, None, None, True, 16)
    assert y.device.type == "meta" and y.shape == (2, 9, 2, 5) and S.shape == (2, 2, 3, 5)
    du, dv, dz, dg, dh0, dband = torch.ops.muse.semiseparable_bwd(z, None, u, u, z, None, None, None, 16)
    assert du.shape == u.shape and dz.shape == z.shape and dg.shape == dh0.shape == dband.shape == (0,)


@pytest.mark.parametrize("has_triton", [True, False])
def test_auto_dispatch_compiles_without_graph_breaks(monkeypatch, has_triton):
    """Each op's "auto" resolution, on tensors taken for CUDA ones (as on a GPU), traces into one
    graph: an ``is_fake`` call there broke the compiled ``standard`` model into six graphs on the
    H100 (tt_gather's resolver), leaving the GPU idle between them."""
    import muse.ops.linear_ce as lce
    import muse.ops.lowrank_mlp as lm
    import muse.ops.tt_gather as tg

    for m in (ss, tg, lce, lm):
        monkeypatch.setattr(m, "assumes_cuda", lambda t: True)
    monkeypatch.setattr(_triton, "HAS_TRITON", has_triton)  # what every op's dispatch asks
    monkeypatch.setattr(_triton, "_noticed", True)  # the Triton-missing notice is not the subject here
    monkeypatch.setattr(tg, "interpreting", lambda: False)
    ids, z, a = torch.arange(7), torch.randn(1, 20, 2, 8), torch.randn(5, 8)
    cores = [torch.randn(r0, m, n, r1) for r0, m, n, r1 in zip(RANKS, RF, CF, RANKS[1:])]

    def resolve(ids, z, a, *cores):
        return (tg.resolve_impl("auto", ids, list(cores), CF), ss.resolve_impl("auto", z, chunk_size=16),
                lce.resolve_impl("auto", a), lm.resolve_impl("auto", a, (4, 4)))

    eager = resolve(ids, z, a, *cores)
    torch._dynamo.reset()
    # fullgraph=True raises on a graph break; the strings are constants the graph returns
    assert torch.compile(resolve, fullgraph=True, backend="eager")(ids, z, a, *cores) == eager
    assert eager[:3] == (("triton",) * 3 if has_triton else ("torch", "chunked", "chunked"))


def test_fake_is_traceable():
    from muse.ops._dispatch import fake

    with FakeTensorMode():
        assert fake(torch.zeros(2))
    assert not fake(torch.zeros(2))
    torch._dynamo.reset()
    assert torch.compile(lambda x: x + fake(x), fullgraph=True, backend="eager")(torch.zeros(2)).tolist() == [0, 0]


def test_record_paths_names_what_ran():
    """record_paths() collects each op's implementation from eager calls (none while compiling),
    and nests: an inner recorder sees only its own calls and hands the outer one back."""
    from muse.ops import record_paths

    x, w = _r(5, 2, 8), _r(8)
    with record_paths() as outer:
        rms_norm(x, w, impl="naive")
        with record_paths() as inner:
            rms_norm(x, w, impl="naive")
            ss.semiseparable(_r(1, 20, 2, 4), _r(1, 20, 2, 4), _r(1, 20, 2, 8), impl="chunked", chunk_size=16)
        assert inner == {"rms_norm": ["naive"], "semiseparable": ["chunked"]}
        torch._dynamo.reset()
        torch.compile(lambda x: rms_norm(x, w, impl="auto") * 2, fullgraph=True, backend="eager")(x)
    assert outer == {"rms_norm": ["naive"]}
    rms_norm(x, w, impl="naive")  # not recording: nothing to note, nothing kept
    assert outer == {"rms_norm": ["naive"]}
