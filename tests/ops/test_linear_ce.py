"""The fused linear + cross-entropy against the full-logits reference, and its use by the model.

On a GPU the kernels run compiled (fp32 through 3xTF32, bf16); without one, through Triton's
CPU interpreter (TRITON_INTERPRET=1, set in conftest.py) with small blocks, where the dots are
exact: fp64 checks the algorithm to 1e-10, fp32 to rounding. Every check covers the loss and
the gradients of x, weight and bias.
"""

from __future__ import annotations

import pytest
import torch

import muse
from muse import build_model
from muse.config import ConfigError, HeadConfig
from muse.layers.head import resolve_loss_impl
from muse.ops.linear_ce import (
    IMPLS, linear_cross_entropy, naive_linear_cross_entropy, resolve_impl, triton_linear_cross_entropy,
)
from muse.ops.linear_ce.triton_kernel import HAS_TRITON

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
    # the chunked loss holds at least one (128, 8192) fp32 logits chunk and its gradient
    assert chunked["activations"] - fused["activations"] >= 2 * 128 * 8192 * 4


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
