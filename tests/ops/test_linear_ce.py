"""The linear + cross-entropies against the full-logits reference, and their use by the model.

Triton: on a GPU the kernels run compiled (fp32 through 3xTF32, bf16); without one, through
Triton's CPU interpreter (TRITON_INTERPRET=1, set in conftest.py) with small blocks, where the
dots are exact: fp64 checks the algorithm to 1e-10, fp32 to rounding. The torch chunked loss
(gradients in the forward) runs on the CPU. Every check covers the loss and the gradients of
x, weight and bias.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import muse
from muse import build_model
from muse.config import ConfigError, HeadConfig
from muse.layers.head import resolve_loss_impl
from muse.ops.linear_ce import (
    IMPLS, chunk_linear_cross_entropy, linear_cross_entropy, naive_linear_cross_entropy, resolve_impl,
    triton_linear_cross_entropy,
)
from muse.ops.linear_ce.triton_kernel import HAS_TRITON
from tests.compile_check import assert_one_graph_matching_eager

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Relative error vs float64: the interpreter's dots are exact (fp32 to rounding); on a GPU fp32
# goes through 3xTF32 and bf16 rounds its operands.
TOL = {torch.float64: 1e-10, torch.float32: 1e-4 if DEVICE == "cuda" else 1e-5, torch.bfloat16: 2e-2}
DTYPES = [torch.float64, torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def make(T, V, K, bias=True, ignore_every=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, K, generator=g, dtype=torch.float64)
    w = torch.randn(V, K, generator=g, dtype=torch.float64) / K**0.5
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    t = torch.randint(0, V, (T,), generator=g)
    if ignore_every:
        t[::ignore_every] = -100
    return x, w, b, t


def run(fn, x, w, b, t, dtype, grad=1.0, **kw):
    leaves = [u.detach().to(DEVICE, dtype).requires_grad_(True) for u in (x, w, b) if u is not None]
    xb, wb = leaves[0], leaves[1]
    bb = leaves[2] if b is not None else None
    loss = fn(xb, wb, t.to(DEVICE), bb, **kw)
    return loss.detach(), torch.autograd.grad(loss * grad, leaves)


def check(T, V, K, dtype, bias=True, ignore_every=5, seed=0, **kw):
    x, w, b, t = make(T, V, K, bias, ignore_every, seed)
    l_ref, g_ref = run(naive_linear_cross_entropy, x, w, b, t, torch.float64, grad=0.7)
    loss, grads = run(linear_cross_entropy, x, w, b, t, dtype, grad=0.7, impl="triton", **kw)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert abs(float(loss) - float(l_ref)) <= TOL[dtype] * abs(float(l_ref))
    for g, r in zip(grads, g_ref):
        assert g.dtype == dtype and torch.isfinite(g).all()
        assert rel(g, r) < TOL[dtype], (g.shape, rel(g, r))


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(37, 101, 19), (1, 7, 3), (50, 40, 33)])  # (T, V, K): no block multiples
def test_triton_matches_reference(shape, dtype, bias):
    check(*shape, dtype, bias=bias)


@needs_triton
def test_weight_gradient_splits_the_tokens():
    """The weight-gradient kernel sums per-split partials once T is long enough (32-token splits
    on the interpreter, >= 1024 on a GPU): the shapes above with T > 32 take that path."""
    from muse.ops.linear_ce.triton_kernel import _token_split

    x = torch.zeros(37, 19, device=DEVICE)
    ts = _token_split(37, 101, x)
    assert -(-37 // ts) > 1 if DEVICE == "cpu" else ts % 128 == 0
    if DEVICE == "cuda":  # 2 splits of 1,152 tokens there
        assert -(-2100 // _token_split(2100, 301, x)) == 2
        for bias in (True, False):
            check(2100, 301, 19, torch.float32, bias=bias)


@needs_triton
def test_input_gradient_splits_the_vocabulary():
    """The input-gradient kernel sums per-split fp32 partials once V is wide enough and K narrow
    (128-column splits on the interpreter; on a GPU up to ~4 programs per SM, none from K = 256)."""
    from muse.ops.linear_ce.triton_kernel import _dx_vocab_split

    x = torch.zeros(37, 19, device=DEVICE)
    if DEVICE == "cpu":
        assert -(-300 // _dx_vocab_split(37, 300, 19, x)) == 3
        for bias in (True, False):
            check(37, 300, 19, torch.float32, bias=bias)
    else:
        assert _dx_vocab_split(2100, 4096, 512, x) >= 4096  # wide K: one split
        assert -(-4096 // _dx_vocab_split(2100, 4096, 19, x)) == 4
        for bias in (True, False):
            check(2100, 4096, 19, torch.float32, bias=bias)


@needs_triton
def test_strided_inputs_and_int32_targets():
    """A column slice as x and a transposed weight (the low-rank head's B^T), int32 targets."""
    x, w, b, t = make(29, 45, 20)
    base = torch.randn(29, 31, dtype=torch.float64)
    base[:, 5:25] = x
    xs = base.to(DEVICE)[:, 5:25].requires_grad_(True)  # (T, K), row stride 31
    wt = w.T.contiguous().to(DEVICE).requires_grad_(True)  # (K, V): weight = wt.T, strides (1, V)
    bb = b.to(DEVICE).requires_grad_(True)
    loss = triton_linear_cross_entropy(xs, wt.T, t.to(DEVICE, torch.int32), bb)
    gx, gwt, gb = torch.autograd.grad(loss, (xs, wt, bb))
    loss = loss.detach()
    l_ref, (rx, rw, rb) = run(naive_linear_cross_entropy, x, w, b, t, torch.float64)
    assert abs(float(loss) - float(l_ref)) < 1e-10 * abs(float(l_ref))
    assert gwt.is_contiguous()  # the gradient of the transposed view comes back in wt's layout
    for g, r in ((gx, rx), (gwt.T, rw), (gb, rb)):
        assert rel(g, r) < 1e-10


@needs_triton
@pytest.mark.parametrize("bias", [True, False])
def test_all_targets_ignored_gives_zero_loss_and_grads(bias):
    x, w, b, t = make(21, 50, 17, bias=bias, ignore_every=0)
    t[:] = -1
    loss, grads = run(linear_cross_entropy, x, w, b, t, torch.float32, impl="triton", ignore_index=-1)
    assert float(loss) == 0.0
    for g in grads:
        assert torch.isfinite(g).all() and not g.any()


def test_chunked_and_naive_agree():
    x, w, b, t = make(37, 101, 19)
    l_ref, g_ref = run(naive_linear_cross_entropy, x, w, b, t, torch.float64)
    loss, grads = run(linear_cross_entropy, x, w, b, t, torch.float64, impl="chunked", chunk_size=8)
    assert abs(float(loss) - float(l_ref)) < 1e-12 * abs(float(l_ref))
    for g, r in zip(grads, g_ref):
        assert rel(g, r) < 1e-12


# ------------------------------------------------------------ the torch chunked loss (grads in fwd)


class OpCounter(TorchDispatchMode):
    """Counts the aten ops (kernel launches, roughly) that are not views."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def chunk_run(x, w, b, t, dtype, requires=(True, True, True), scale=3.0, **kw):
    """Loss and the .grad of the leaves that require one after ``(scale * loss).backward()``."""
    leaves = [None if u is None else u.detach().to(dtype).requires_grad_(r) for u, r in zip((x, w, b), requires)]
    loss = chunk_linear_cross_entropy(leaves[0], leaves[1], t, leaves[2], **kw)
    if loss.requires_grad:
        (scale * loss).backward()
    return loss.detach(), [None if u is None else u.grad for u in leaves]


CHUNK_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk", [1, 8, 16, 37, 64])
def test_chunk_matches_reference(dtype, bias, chunk):
    x, w, b, t = make(37, 101, 13, bias=bias)  # (T, V, K): nothing divides anything
    l_ref, g_ref = run(naive_linear_cross_entropy, x, w, b, t, torch.float64, grad=3.0)
    loss, grads = chunk_run(x, w, b, t, dtype, chunk_size=chunk)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert abs(float(loss) - float(l_ref)) <= CHUNK_TOL[dtype] * abs(float(l_ref))
    for g, r in zip([g for g in grads if g is not None], g_ref):
        assert g.dtype == dtype
        assert rel(g, r) < CHUNK_TOL[dtype], (g.shape, rel(g, r))
    assert (grads[2] is None) == (not bias)


@pytest.mark.parametrize("bias", [True, False])
def test_chunk_all_ignored_gives_zero_loss_and_grads(bias):
    x, w, b, t = make(21, 50, 17, bias=bias, ignore_every=0)
    t[:] = -1
    loss, grads = chunk_run(x, w, b, t, torch.float64, ignore_index=-1, chunk_size=8)
    assert float(loss) == 0.0
    for g in grads[: 3 if bias else 2]:
        assert torch.isfinite(g).all() and not g.any()


def _mms(ops: list[str]) -> int:
    return sum(op.rstrip("_") in ("mm", "addmm", "addmv") for op in ops)


@pytest.mark.parametrize("requires", [(True, False, False), (False, True, False), (False, False, True),
                                      (True, False, True), (False, True, True)])
def test_chunk_computes_only_the_gradients_asked_for(requires):
    x, w, b, t = make(37, 101, 13)
    _, g_ref = run(naive_linear_cross_entropy, x, w, b, t, torch.float64, grad=3.0)
    with OpCounter() as c:
        _, grads = chunk_run(x, w, b, t, torch.float64, requires, chunk_size=16)  # 3 chunks
    for g, r, req in zip(grads, g_ref, requires):
        assert (g is not None) == req
        if req:
            assert rel(g, r) < 1e-10
    # per chunk: the logits matmul, plus one matmul per gradient of x or weight (db: a reduction,
    # then gemvs), minus the first chunk's db, which is a sum
    want = 3 * (1 + requires[0] + requires[1] + requires[2]) - requires[2]
    assert _mms(c.ops) == want, c.ops
    assert ("scatter_add_" in c.ops) == any(requires)


def test_chunk_without_grad_mode_computes_the_loss_only():
    x, w, b, t = make(37, 101, 13)
    l_ref, _ = run(naive_linear_cross_entropy, x, w, b, t, torch.float64)
    leaves = [u.clone().requires_grad_(True) for u in (x, w, b)]
    with torch.no_grad(), OpCounter() as c:
        loss = chunk_linear_cross_entropy(leaves[0], leaves[1], t, leaves[2], chunk_size=8)
    assert loss.grad_fn is None and not loss.requires_grad
    assert abs(float(loss) - float(l_ref)) < 1e-10 * abs(float(l_ref))
    assert _mms(c.ops) == 5 and "scatter_add_" not in c.ops  # one logits matmul per chunk, no dz


def test_chunk_kernel_launches_per_chunk():
    """The counts in ``_forward``'s docstring: 12 ops per chunk with every gradient in fp32, 14
    under bf16 autocast (the upcast of the logits and the downcast of dz)."""
    x, w, b, t = make(64, 101, 13)

    def ops(T, dtype, autocast):
        leaves = [u.to(dtype).requires_grad_(True) for u in (x[:T], w, b)]
        with OpCounter() as c, torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            chunk_linear_cross_entropy(leaves[0], leaves[1], t[:T], leaves[2], chunk_size=8).backward()
        return len(c.ops)

    assert ops(64, torch.float32, False) - ops(56, torch.float32, False) == 12
    assert ops(64, torch.float32, True) - ops(56, torch.float32, True) == 14


def test_chunk_under_bf16_autocast_matches_naive_under_autocast():
    """Both see F.linear's bf16 operands; the softmax is fp32 in both. 2e-2 relative: bf16
    logits and dz (rounded at different points) and a bf16 dW accumulated chunk by chunk."""
    x, w, b, t = make(37, 101, 13)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l_ref, g_ref = run(naive_linear_cross_entropy, x, w, b, t, torch.float32, grad=3.0)
        loss, grads = chunk_run(x, w, b, t, torch.float32, chunk_size=8)
    assert loss.dtype == torch.float32
    assert abs(float(loss) - float(l_ref)) < 2e-2 * abs(float(l_ref))
    for g, r in zip(grads, g_ref):
        assert g.dtype == torch.float32  # through the autocast casts, back to the leaves' dtype
        assert rel(g, r) < 2e-2, (g.shape, rel(g, r))
    _, g32 = run(naive_linear_cross_entropy, x, w, b, t, torch.float32, grad=3.0)
    assert rel(grads[1], g32[1]) > 1e-4  # the bf16 rounding shows: autocast did apply


def test_chunk_errors_and_second_backward():
    x, w, b, t = make(9, 11, 5)
    for bad in (11, -3):
        t2 = t.clone()
        t2[4] = bad
        for fn in (naive_linear_cross_entropy, chunk_linear_cross_entropy):
            with pytest.raises(IndexError, match=f"Target {bad} is out of bounds"):
                fn(x, w, t2, b)
    with pytest.raises(ValueError, match="share a dtype"):
        chunk_linear_cross_entropy(x.float(), w, t, b)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_linear_cross_entropy(x, w, t, b, chunk_size=0)
    xg = x.clone().requires_grad_(True)
    loss = chunk_linear_cross_entropy(xg, w, t, b, chunk_size=4)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()
    empty = chunk_linear_cross_entropy(x[:0].requires_grad_(True), w, t[:0], b)
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_chunk_runs_on_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.randn(300, 16, requires_grad=True)
        w = torch.randn(1000, 16, requires_grad=True)
        t = torch.randint(0, 1000, (300,))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = chunk_linear_cross_entropy(x, w, t, chunk_size=128)
        loss.backward()
    assert loss.shape == () and loss.dtype == torch.float32
    assert x.grad.shape == x.shape and w.grad.shape == w.shape and w.grad.dtype == torch.float32


def test_chunk_peak_is_one_logits_chunk_and_its_copy():
    """bf16 on fake tensors: at most one fp32 (c, V) chunk plus a bf16 copy (the logits before
    the upcast, dz after the downcast) alive at a time, on top of x, W and their gradients."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    class Loss(torch.nn.Module):
        def forward(self, x, w, t):
            return chunk_linear_cross_entropy(x, w, t, chunk_size=128)

    T, K, V = 1024, 16, 4096
    with FakeTensorMode():
        x = torch.randn(T, K, dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(V, K, dtype=torch.bfloat16, requires_grad=True)
        t = torch.randint(0, V, (T,))
        tracker, mod = MemTracker(), Loss()
        tracker.track_external(mod, x, w)
        with tracker:
            start = sum(d["Total"] for d in tracker.get_tracker_snapshot("current").values())
            mod(x, w, t).backward()
        peak = sum(d["Total"] for d in tracker.get_tracker_snapshot("peak").values())
    chunk = 128 * V * 4
    grads = (T + V) * K * 2  # dx, dW in bf16, alive from the forward on
    assert peak - start <= 1.5 * chunk + grads + 64 * 1024, (peak - start) / chunk


def test_resolver_and_errors(monkeypatch):
    x = torch.randn(4, 8)
    for interp in ("0", "1"):  # auto stays chunked on CPU tensors, interpreter or not
        monkeypatch.setenv("TRITON_INTERPRET", interp)
        assert resolve_impl("auto", x) == "chunked"
        assert resolve_loss_impl(HeadConfig(), torch.nn.Linear(8, 5), None, x) == "chunked"
    assert resolve_impl("triton", x) == "triton"
    with pytest.raises(ValueError, match="'auto', 'triton', 'chunked', 'naive'"):
        resolve_impl("fast", x)
    assert IMPLS == ("auto", "triton", "chunked", "naive")
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(x, torch.randn(5, 7), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(x, torch.randn(5, 8), torch.zeros(3, dtype=torch.long))


def test_triton_on_cpu_without_interpreter_errors(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises((ValueError, RuntimeError), match="triton"):
        triton_linear_cross_entropy(torch.randn(4, 8), torch.randn(5, 8), torch.zeros(4, dtype=torch.long))
    model = build_model(_small({"kind": "dense", "loss_impl": "fused"}))
    idx = torch.randint(0, 61, (1, 9))
    with pytest.raises(ValueError, match="head.loss_impl 'fused' runs the Triton kernels"):
        model(idx[:, :-1], idx[:, 1:])


# ----------------------------------------------------------------------------- the model's loss


def _small(head: dict, **over):
    base = {
        "model.vocab_size": 61, "model.d_model": 24, "model.n_layers": 1, "model.n_heads": 2,
        "model.max_seq_len": 16, "model.embedding.vocab_factors": None, "model.embedding.dim_factors": None,
        "model.embedding.kind": "dense", "model.mixer.kind": "attention", "model.head": head,
    }
    base.update(over)
    return muse.load_config("baseline", base)


@needs_triton
@pytest.mark.parametrize("head", [
    {"kind": "dense", "bias": True}, {"kind": "lowrank", "rank": 5, "bias": True}, {"kind": "tied"},
])
def test_model_fused_loss_equals_chunked(head):
    torch.manual_seed(0)
    model = build_model(_small({**head, "loss_impl": "chunked", "loss_chunk": 7})).to(DEVICE)
    idx = torch.randint(0, 61, (2, 13), device=DEVICE)
    idx[0, 3] = 0

    def loss_and_grads(impl):
        model.cfg.head.loss_impl = impl
        model.zero_grad()
        loss = model(idx[:, :-1], idx[:, 1:]).loss
        return loss.detach(), torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)

    l_c, g_c = loss_and_grads("chunked")
    l_f, g_f = loss_and_grads("fused")
    assert l_f.dtype == torch.float32
    torch.testing.assert_close(l_f, l_c, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_f, g_c):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_config_validates_loss_impl():
    with pytest.raises(ConfigError, match=r"head\.loss_impl must be one of auto, fused, chunked; got 'fast'"):
        HeadConfig(loss_impl="fast")
    with pytest.raises(ConfigError, match="head.loss_impl 'fused'.*tt"):
        muse.load_config("tiny", {"model.head": {"kind": "tt", "rank": 4, "loss_impl": "fused"}})
    with pytest.raises(ConfigError, match="head.loss_impl 'fused'.*tied to a tt embedding"):
        muse.load_config("tiny", {"model.head.loss_impl": "fused"})  # tiny: tied to a TT embedding
    assert muse.load_config("tiny").model.head.loss_impl == "auto"


def test_fused_on_an_unfusable_head_errors_at_the_loss():
    model = build_model(_small({"kind": "tt", "rank": 4}))
    model.cfg.head.loss_impl = "fused"  # past the config check
    idx = torch.randint(0, 61, (1, 9))
    with pytest.raises(ValueError, match="head.loss_impl 'fused' needs a dense or lowrank head"):
        model(idx[:, :-1], idx[:, 1:])


def test_memory_estimate_models_the_fused_loss():
    """On fake tensors the estimate takes the GPU's path: a per-token lse, not a logits chunk."""
    from muse.memory.profile import StepPlan, estimate

    over = {"model.vocab_size": 8192, "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2,
            "model.max_seq_len": 64, "model.head.loss_chunk": 128}
    plan = StepPlan(batch=2, seq=64, mode="fwdbwd")
    # dense head, K = 32 ("auto" would fuse too once AUTO_ON_GPU is set)
    fused = estimate(muse.load_config("baseline", {**over, "model.head.loss_impl": "fused"}), plan)
    chunked = estimate(muse.load_config("baseline", {**over, "model.head.loss_impl": "chunked"}), plan)
    assert fused["gradients"] == chunked["gradients"]
    chunk = 128 * 8192 * 4  # one (128, 8192) fp32 logits chunk
    # the chunked loss (gradient in the forward: softmax and dz in place) holds one logits chunk on
    # top of the parameters; it peaks in the forward, before the gradients that "activations"
    # subtracts exist, so compare against the peak less the parameters and the workspace
    assert chunked["peak"] - chunked["parameters"] - chunked["workspace"] >= chunk
    assert fused["activations"] < chunk // 16  # the fused loss: a per-token lse, no logits chunk


def test_auto_fuses_on_gpu_only_when_enabled(monkeypatch):
    """"auto" picks the kernels for (fake) CUDA-bound tensors only behind AUTO_ON_GPU, and only
    up to AUTO_MAX_K; "fused" is the opt-in meanwhile."""
    import muse.ops.linear_ce as lce
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        small, wide = torch.empty(4, 64), torch.empty(4, lce.AUTO_MAX_K + 1)
    with lce.assume_cuda():
        monkeypatch.setattr(lce, "AUTO_ON_GPU", False)
        assert resolve_impl("auto", small) == "chunked"
        monkeypatch.setattr(lce, "AUTO_ON_GPU", True)
        assert resolve_impl("auto", small) == "triton"
        assert resolve_impl("auto", wide) == "chunked"


@needs_triton
@pytest.mark.parametrize("bias", [True, False])
def test_compiles_to_one_graph_with_the_kernels_as_ops(bias):
    """The launchers are torch.ops.muse.linear_ce_{fwd,bwd}: fullgraph compile (AOTAutograd,
    the ops' fakes while tracing, then the real kernels) gives eager's loss and gradients."""
    x, w, b, t = make(23, 37, 11, bias=bias)
    leaves = [u.to(DEVICE, torch.float32).requires_grad_(True) for u in (x, w, b) if u is not None]
    tgt = t.to(DEVICE)

    def step(fn):
        loss = fn(leaves[0], leaves[1], tgt, leaves[2] if bias else None)
        return [loss.detach(), *torch.autograd.grad(loss, leaves)]

    assert_one_graph_matching_eager(triton_linear_cross_entropy, step, "muse.linear_ce_fwd.default", 1e-6)


@needs_triton
def test_fake_outputs_have_the_real_strides():
    """A compiler checks an op's real outputs against its fake's sizes and strides: with a
    transposed weight (the low-rank head's B^T) dw has the weight's strides in both."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, w, b, t = make(13, 21, 9)
    x, wt, b = (u.to(DEVICE, torch.float32) for u in (x, w.T.contiguous(), b))  # wt: (K, V)
    t = t.to(DEVICE)
    lse, dloss = torch.zeros(13, device=DEVICE), torch.ones(1, device=DEVICE)
    real = (x, wt.T, b, t, lse, dloss)  # weight (V, K) of strides (1, V)
    mode = FakeTensorMode()
    fake = tuple(mode.from_tensor(u) for u in real)
    for op, extra in ((torch.ops.muse.linear_ce_fwd, 4), (torch.ops.muse.linear_ce_bwd, 6)):
        rest = () if extra == 4 else (-100, True, True)
        out = op(*real[:extra], *rest)
        with mode:
            out_fake = op(*fake[:extra], *rest)
        for r, f in zip(out, out_fake):
            assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype), op
    assert out[1].stride() == (1, 21)  # dw in the weight's layout
