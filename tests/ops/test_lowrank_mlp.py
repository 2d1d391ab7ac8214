"""The fused low-rank GELU MLP core against its float64 torch reference, and its use by the FFN.

Triton: on a GPU the kernels run compiled (fp32 through 3xTF32, bf16); without one, through
Triton's CPU interpreter (TRITON_INTERPRET=1, set in conftest.py) with 16-wide blocks, so every
loop runs over several blocks and the weight-gradient kernel sums two token splits. Every check
covers the output and the gradients of a, w_up, b_up and w_down.
"""

from __future__ import annotations

import pytest
import torch

from torch._subclasses.fake_tensor import FakeTensorMode

from muse.config import ConfigError, FFNConfig
from muse.layers.ffn import FFN
from muse.ops._dispatch import assume_cuda
from muse.ops.lowrank_mlp import MAX_RANK, lowrank_mlp, naive_lowrank_mlp, resolve_impl, triton_lowrank_mlp
from muse.ops.lowrank_mlp.triton_kernel import HAS_TRITON
from tests.compile_check import assert_one_graph_matching_eager

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Relative error vs float64: the interpreter's dots are exact (fp32 to rounding); on a GPU fp32
# goes through 3xTF32 and bf16 rounds its operands and the (T, H) GELU output.
TOL = {torch.float64: 1e-10, torch.float32: 1e-4 if DEVICE == "cuda" else 1e-5, torch.bfloat16: 2e-2}
DTYPES = [torch.float64, torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def make(T, R, H, S, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(T, R, generator=g, dtype=torch.float64)
    wu = torch.randn(R, H, generator=g, dtype=torch.float64) / R**0.5
    b = torch.randn(H, generator=g, dtype=torch.float64) if bias else None
    wd = torch.randn(H, S, generator=g, dtype=torch.float64) / H**0.5
    dc = torch.randn(T, S, generator=g, dtype=torch.float64)
    return [a, wu, b, wd], dc


def run(fn, inputs, dc, dtype, device=DEVICE):
    leaves = [t.detach().to(device, dtype).requires_grad_(True) if t is not None else None for t in inputs]
    c = fn(*leaves)
    grads = torch.autograd.grad(c, [t for t in leaves if t is not None], dc.to(device, c.dtype))
    return c.detach(), grads


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,R,H,S,bias", [(37, 5, 50, 7, True), (16, 16, 16, 16, False), (70, 32, 96, 20, True),
                                          (1, 3, 17, 2, True), (130, 33, 40, 48, False)])
def test_triton_matches_float64_reference(T, R, H, S, bias, dtype):
    inputs, dc = make(T, R, H, S, bias)
    c0, g0 = run(naive_lowrank_mlp, inputs, dc, torch.float64, "cpu")
    c1, g1 = run(triton_lowrank_mlp, inputs, dc, dtype)
    assert c1.dtype == dtype and all(g.dtype == dtype for g in g1)
    assert torch.isfinite(c1).all() and all(torch.isfinite(g).all() for g in g1)
    assert rel(c1, c0) < TOL[dtype], ("c", rel(c1, c0))
    names = ["a", "w_up"] + (["b_up"] if bias else []) + ["w_down"]
    for name, x, y in zip(names, g1, g0):
        assert rel(x, y) < TOL[dtype], (name, rel(x, y))


@needs_triton
def test_triton_gradient_subsets():
    """Only the gradients asked for: a frozen weight set, or a constant input a."""
    inputs, dc = make(21, 6, 40, 5)
    a, wu, b, wd = (t.to(DEVICE) for t in inputs)
    wu.requires_grad_(True)
    (ga,) = torch.autograd.grad(triton_lowrank_mlp(a.requires_grad_(True), wu.detach(), b, wd), [a], dc.to(DEVICE))
    ref = torch.autograd.grad(naive_lowrank_mlp(a, wu.detach(), b, wd), [a], dc.to(DEVICE))[0]
    assert rel(ga, ref) < 1e-10
    (gw,) = torch.autograd.grad(triton_lowrank_mlp(a.detach(), wu, b, wd), [wu], dc.to(DEVICE))
    assert rel(gw, torch.autograd.grad(naive_lowrank_mlp(a.detach(), wu, b, wd), [wu], dc.to(DEVICE))[0]) < 1e-10


def test_errors_name_the_tensor():
    a, wu, wd = torch.randn(4, 3), torch.randn(3, 8), torch.randn(8, 2)
    with pytest.raises(ValueError, match="same R"):
        lowrank_mlp(a, torch.randn(4, 8), None, wd)
    with pytest.raises(ValueError, match="same H"):
        lowrank_mlp(a, wu, None, torch.randn(7, 2))
    with pytest.raises(ValueError, match=r"b_up must be \(H,\)"):
        lowrank_mlp(a, wu, torch.randn(7), wd)
    with pytest.raises(ValueError, match="impl must be one of"):
        lowrank_mlp(a, wu, None, wd, impl="fast")
    with pytest.raises(ValueError, match="a must be"):
        lowrank_mlp(a[0], wu, None, wd)
    if HAS_TRITON:
        with pytest.raises(ValueError, match="share a dtype"):
            triton_lowrank_mlp(a.to(DEVICE), wu.to(DEVICE).double(), None, wd.to(DEVICE))
        with pytest.raises(ValueError, match=f"R, S <= {MAX_RANK}"):
            triton_lowrank_mlp(torch.randn(4, MAX_RANK + 1, device=DEVICE), torch.randn(MAX_RANK + 1, 8, device=DEVICE),
                               None, torch.randn(8, 2, device=DEVICE))
    with pytest.raises(ConfigError, match="ffn.impl"):
        FFNConfig(kind="lowrank", rank=4, impl="fused")


def test_auto_resolves_to_torch_off_cuda_and_for_wide_ranks(monkeypatch):
    a = torch.randn(4, 3)
    assert resolve_impl("auto", a, (3, 3)) == "torch"  # CPU, interpreter or not
    assert resolve_impl("triton", a, (3, 3)) == "triton"
    import muse.ops.lowrank_mlp as op

    monkeypatch.setattr(op, "AUTO_TRITON", True)
    assert resolve_impl("auto", a, (3, 3)) == "torch"
    with assume_cuda():  # the memory estimate's fake GPU step
        fake = FakeTensorMode().from_tensor(a)
        assert resolve_impl("auto", fake, (3, 3)) == "triton"  # fakes launch nothing: Triton or not
        assert resolve_impl("auto", fake, (3, MAX_RANK + 1)) == "torch"
    if torch.cuda.is_available():
        assert resolve_impl("auto", a.cuda(), (3, 3)) == ("triton" if HAS_TRITON else "torch")
        assert resolve_impl("auto", a.cuda(), (3, MAX_RANK + 1)) == "torch"
        assert resolve_impl("auto", a.cuda().double(), (3, 3)) == "torch"


@needs_triton
@pytest.mark.parametrize("autocast", [False, pytest.param(True, marks=pytest.mark.skipif(
    DEVICE != "cuda", reason="bf16 autocast: the interpreter (numpy) has no bfloat16"))])
def test_ffn_fused_matches_unfused(autocast):
    """The FFN's low-rank GELU through the kernels against the same FFN through torch: output and
    every parameter's gradient (fp32, and under bf16 autocast on the GPU)."""
    torch.manual_seed(0)
    d = 24
    ffns = {impl: FFN(d, FFNConfig(kind="lowrank", rank=5, impl=impl)).to(DEVICE) for impl in ("torch", "triton")}
    ffns["triton"].load_state_dict(ffns["torch"].state_dict())
    assert ffns["triton"].fused
    x = torch.randn(3, 11, d, device=DEVICE)
    out, grads = {}, {}
    for impl, ffn in ffns.items():
        xi = x.clone().requires_grad_(True)
        if autocast:
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                y = ffn(xi)
        else:
            y = ffn(xi)
        y.float().square().sum().backward()
        out[impl], grads[impl] = y, [xi.grad] + [p.grad for p in ffn.parameters()]
    assert out["triton"].dtype == out["torch"].dtype == (torch.bfloat16 if autocast else torch.float32)
    tol = 2e-2 if autocast else 1e-4
    assert rel(out["triton"], out["torch"]) < tol
    for g1, g0 in zip(grads["triton"], grads["torch"]):
        assert g1.dtype == g0.dtype and rel(g1, g0) < tol


def test_ffn_uses_the_op_only_for_lowrank_gelu():
    assert FFN(16, FFNConfig(kind="lowrank", rank=4)).fused
    assert not FFN(16, FFNConfig(kind="lowrank", rank=4, activation="swiglu")).fused
    assert not FFN(16, FFNConfig(kind="dense")).fused
    assert not FFN(16, FFNConfig(kind="tt", rank=2)).fused


@needs_triton
def test_ffn_triton_compiles_to_one_graph():
    """Under torch.compile the kernels are one opaque torch.ops.muse node each (fullgraph: no
    break on the autotuner's Python); AOTAutograd traces the fakes, then runs the real kernels,
    which must give eager mode's output and gradients. A fake whose strides differ from the real
    output's would fail here."""
    torch.manual_seed(0)
    ffn = FFN(24, FFNConfig(kind="lowrank", rank=5, impl="triton")).to(DEVICE)
    x = torch.randn(2, 13, 24, device=DEVICE)

    def grads(fn):
        xi = x.clone().requires_grad_(True)
        y = fn(xi)
        return [y.detach(), *torch.autograd.grad(y.square().sum(), [xi, *ffn.parameters()])]

    assert_one_graph_matching_eager(ffn, grads, "muse.lowrank_mlp_fwd.default", 1e-5)
