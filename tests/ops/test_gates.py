"""The fused gating kernel against the torch reference: every output and every gradient."""

import pytest
import torch

from muse.ops._triton import triton_supports
from muse.ops.gates import gate_inputs, naive_gate_inputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}

pytestmark = pytest.mark.skipif(
    not triton_supports(torch.zeros(1, device=DEVICE)), reason="needs Triton on CUDA or its CPU interpreter"
)


def _run(impl, dtype, device, raw, dl, H, r, n, decay):
    """The mixer's use: u and the gate logits are column slices of one projection."""
    rr = raw.to(device, dtype).requires_grad_()
    dd = dl.to(device, dtype).requires_grad_()
    u = rr[..., : H * r].unflatten(-1, (H, r))  # (B, N, H, r), strided
    gl = rr[..., H * r : H * (r + n)].unflatten(-1, (H, n)) if n else None
    ue, ld, gs, go = gate_inputs(u, gl, dd if decay else None, 0.3, impl)
    g = torch.Generator().manual_seed(1)
    loss = (ue * torch.randn(ue.shape, generator=g, dtype=torch.float64).to(device, dtype)).sum()
    outs = [ue]
    if decay:
        loss = loss + (ld * torch.randn(ld.shape, generator=g, dtype=torch.float64).to(device, ld.dtype)).sum()
        outs.append(ld)
    if n:
        loss = loss + 0.7 * gs.sum()
        outs += [gs, go]
    grads = torch.autograd.grad(loss, (rr, dd) if decay else (rr,))
    return [t.detach().cpu().double() for t in (*outs, *grads)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(
    "B,N,H,r,n,decay",
    [(2, 5, 3, 7, 4, True), (1, 9, 2, 32, 28, True), (1, 3, 2, 5, 0, True), (2, 4, 1, 6, 6, False), (1, 3, 2, 5, 0, False)],
)
def test_kernel_matches_reference(B, N, H, r, n, decay, dtype):
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(B, N, H * (r + n) + 7, generator=g, dtype=torch.float64) * 3
    dl = torch.randn(B, N, H, generator=g, dtype=torch.float64) * 5
    got = _run("triton", dtype, DEVICE, raw, dl, H, r, n, decay)
    ref = _run("naive", torch.float64, "cpu", raw, dl, H, r, n, decay)
    for i, (a, b) in enumerate(zip(got, ref)):
        assert a.shape == b.shape and torch.isfinite(a).all()
        err = float((a - b).norm() / b.norm().clamp_min(1e-300))
        assert err <= TOL[dtype], f"output {i}: relative error {err:.3g} > {TOL[dtype]:g}"


def test_softplus_tails():
    """−softplus at large |logit|: no overflow, and tiny decays keep their value (not 0)."""
    x = torch.tensor([[[-60.0, -20.0, 0.0, 20.0, 80.0]]], dtype=torch.float64)
    u = torch.zeros(1, 1, 5, 2, dtype=torch.float64)
    _, ld, _, _ = gate_inputs(u.to(DEVICE), None, x.to(DEVICE), 1.0, "triton")
    _, ref, _, _ = naive_gate_inputs(u, None, x, 1.0)
    assert torch.allclose(ld.cpu(), ref, rtol=1e-9, atol=0)


def test_bad_shapes():
    u = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="gate_logits must be"):
        naive_gate_inputs(u, torch.zeros(1, 2, 3, 5), None)
    with pytest.raises(ValueError, match="decay_logits must be"):
        naive_gate_inputs(u, None, torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="impl must be one of"):
        gate_inputs(u, None, None, impl="fast")
