"""Low-rank and TT linear layers against their dense weights; make_linear dispatch and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from muse.layers.linear import LowRankLinear, TTLinear, make_linear


@pytest.mark.parametrize("bias", [True, False])
def test_lowrank_forward_matches_dense(bias):
    torch.manual_seed(0)
    lin = LowRankLinear(30, 70, rank=6, bias=bias).double()
    if bias:
        nn.init.normal_(lin.bias)
    W = lin.to_dense()
    assert W.shape == (70, 30)
    x = torch.randn(4, 5, 30, dtype=torch.float64)
    torch.testing.assert_close(lin(x), F.linear(x, W, lin.bias), rtol=1e-10, atol=1e-12)
    assert sum(p.numel() for p in lin.parameters()) == 30 * 6 + 6 * 70 + (70 if bias else 0)


def test_lowrank_from_dense():
    torch.manual_seed(0)
    W, b = torch.randn(70, 30, dtype=torch.float64), torch.randn(70, dtype=torch.float64)
    lin = LowRankLinear.from_dense(W, b, rank=100)  # clipped to 30: exact
    assert lin.rank == 30
    torch.testing.assert_close(lin.to_dense(), W, rtol=0, atol=1e-10)
    x = torch.randn(3, 30, dtype=torch.float64)
    torch.testing.assert_close(lin(x), F.linear(x, W, b), rtol=1e-10, atol=1e-10)
    # truncated: the Eckart–Young optimum
    S = torch.linalg.svdvals(W)
    err = (LowRankLinear.from_dense(W, None, rank=7).to_dense() - W).norm()
    torch.testing.assert_close(err, S[7:].square().sum().sqrt())


@pytest.mark.parametrize("kw", [{}, dict(num_cores=3), dict(in_factors=[5, 6], out_factors=[10, 7])])
def test_tt_forward_matches_dense(kw):
    torch.manual_seed(0)
    lin = TTLinear(30, 70, rank=4, **kw).double()
    nn.init.normal_(lin.bias)
    W = lin.to_dense()
    assert W.shape == (70, 30)
    x = torch.randn(2, 3, 30, dtype=torch.float64)
    torch.testing.assert_close(lin(x), F.linear(x, W, lin.bias), rtol=1e-10, atol=1e-12)


def test_tt_grads_match_dense():
    torch.manual_seed(0)
    lin = TTLinear(24, 40, rank=3, num_cores=3, init_std=0.3).double()
    x = torch.randn(5, 24, dtype=torch.float64)
    params = list(lin.parameters())
    g = torch.autograd.grad(lin(x).square().sum(), params)
    g_ref = torch.autograd.grad(F.linear(x, lin.to_dense(), lin.bias).square().sum(), params)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "shape,kw", [((70, 30), {}), ((70, 30), dict(num_cores=3)), ((13, 97), {}), ((64, 48), dict(num_cores=4))]
)
def test_tt_from_dense_exact_at_full_rank(shape, kw):
    torch.manual_seed(0)
    W, b = torch.randn(*shape, dtype=torch.float64), torch.randn(shape[0], dtype=torch.float64)
    lin = TTLinear.from_dense(W, b, rank=10**6, **kw)
    torch.testing.assert_close(lin.to_dense(), W, rtol=0, atol=1e-10)
    x = torch.randn(3, shape[1], dtype=torch.float64)
    torch.testing.assert_close(lin(x), F.linear(x, W, b), rtol=1e-10, atol=1e-10)
    assert TTLinear.from_dense(W, None, rank=2).bias is None


@pytest.mark.parametrize("kind", ["dense", "lowrank", "tt"])
def test_init_std_and_zero_bias(kind):
    torch.manual_seed(0)
    lin = make_linear(kind, 512, 1024, rank=16, init_std=0.02)
    with torch.no_grad():
        W = lin.weight if kind == "dense" else lin.to_dense()
    assert W.shape == (1024, 512)
    assert 0.85 * 0.02 < W.std().item() < 1.15 * 0.02
    assert torch.count_nonzero(lin.bias) == 0


def test_make_linear_kinds():
    assert isinstance(make_linear("dense", 8, 4), nn.Linear)
    assert make_linear("dense", 8, 4, bias=False).bias is None
    assert isinstance(make_linear("lowrank", 8, 4, rank=2), LowRankLinear)
    assert isinstance(make_linear("tt", 8, 4, rank=2), TTLinear)
    assert isinstance(make_linear("identity", 8, 8), nn.Identity)


def test_make_linear_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        make_linear("sparse", 8, 8)
    with pytest.raises(ValueError, match="in_features=8, out_features=4"):
        make_linear("identity", 8, 4)
    for kind in ("lowrank", "tt"):
        with pytest.raises(ValueError, match="rank must be an integer >= 1"):
            make_linear(kind, 8, 4)
    with pytest.raises(ValueError, match="in_features"):
        make_linear("dense", 0, 4)


@pytest.mark.parametrize("kind", ["dense", "lowrank", "tt"])
def test_autocast_keeps_the_activation_in_the_autocast_dtype(kind):
    """An fp32 bias must not promote a bf16 product to fp32 under autocast (as nn.Linear does
    not): a promoted (T, 4d) FFN activation doubles its memory and every kernel's traffic."""
    torch.manual_seed(0)
    layer = make_linear(kind, 24, 40, rank=4)
    with torch.no_grad():
        for p in layer.parameters():
            if p.dim() == 1:
                p.normal_()  # a nonzero bias
    x = torch.randn(3, 5, 24, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    W = layer.weight if kind == "dense" else layer.to_dense()  # (out, in)
    ref = x.detach() @ W.detach().T + layer.bias.detach()  # fp32 reference
    assert torch.allclose(y.float(), ref, rtol=3e-2, atol=3e-2)
    y.float().sum().backward()
    assert x.grad is not None and all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())
