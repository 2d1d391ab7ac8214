"""The fused RMS-norm kernel against the torch reference: output and both gradients."""

import pytest
import torch

from muse.ops._triton import triton_supports
from muse.ops.rmsnorm import naive_rms_norm, rms_norm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}

pytestmark = pytest.mark.skipif(
    not triton_supports(torch.zeros(1, device=DEVICE)), reason="needs Triton on CUDA or its CPU interpreter"
)


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(
    "shape,wshape",
    [((3, 7, 5, 19), (5, 19)), ((37, 64), (64,)), ((2, 65, 3, 80), (3, 80)), ((1, 1, 1, 3), (1, 3))],
    ids=str,
)
def test_kernel_matches_reference(shape, wshape, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    w = torch.randn(wshape, generator=g, dtype=torch.float64)
    gy = torch.randn(shape, generator=g, dtype=torch.float64)
    res = {}
    for impl, dt, dev in (("triton", dtype, DEVICE), ("naive", torch.float64, "cpu")):
        xx, ww = (t.to(dev, dt).requires_grad_() for t in (x, w))
        y = rms_norm(xx, ww, 1e-6, impl)
        res[impl] = [t.cpu() for t in (y, *torch.autograd.grad((y * gy.to(dev, dt)).sum(), (xx, ww)))]
    for name, a, b in zip(("y", "dx", "dweight"), res["triton"], res["naive"]):
        assert a.shape == b.shape and torch.isfinite(a).all()
        err = rel(a, b)
        assert err <= TOL[dtype], f"{name}: relative error {err:.3g} > {TOL[dtype]:g}"


def test_bad_shapes_and_impl():
    with pytest.raises(ValueError, match="weight must be"):
        naive_rms_norm(torch.zeros(2, 4), torch.ones(5))
    with pytest.raises(ValueError, match="impl must be one of"):
        rms_norm(torch.zeros(2, 4), torch.ones(4), impl="fast")
