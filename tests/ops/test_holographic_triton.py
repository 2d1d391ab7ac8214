"""The holographic read on the Triton kernels (``impl="triton"``) against the float64 quadratic
reference: outputs, final memory and the gradients of every input. Without a GPU the kernels run
on Triton's CPU interpreter (TRITON_INTERPRET=1, set by tests/conftest.py), where tl.dot is exact;
on a GPU fp32 dots run as 3xTF32 (the float32 tolerance below covers both)."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from muse.ops import assume_cuda
from muse.ops.holographic import holographic, naive_quadratic, naive_recurrent, num_freqs, resolve_impl
from muse.ops.holographic import triton_scan as hs
from tests.ops.test_holographic import F64_TOL, cotangents, make_inputs, rel_err, rel_rms, run_with_grads

pytestmark = pytest.mark.skipif(not hs.HAS_TRITON, reason="triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F32_TOL = 5e-5  # relative RMS vs the float64 reference (3xTF32 dots on a GPU)


def triton_fn(C):
    return lambda *a, **k: holographic(*a, impl="triton", chunk_size=C, **k)


def on_device(inputs, dtype):
    return [t.to(DEVICE, dtype) if t is not None else None for t in inputs]


@pytest.mark.parametrize(
    "N, D, S, C",
    [
        (1, 5, 3, 16),  # one position
        (37, 9, 5, 16),  # N not a multiple of the chunk: a short last chunk
        (64, 131, 17, 32),  # W = 132: three value blocks; S = 17 > 16: a 32-wide slot tile; N = 2 chunks
        (50, 24, 1, 64),  # one slot, one chunk longer than the sequence
    ],
)
@pytest.mark.parametrize("init", [True, False])
def test_triton_matches_reference_float64(N, D, S, C, init):
    if DEVICE == "cuda":
        pytest.skip("fp64 runs on the interpreter only (the GPU path is fp32)")
    B = 2
    inputs = make_inputs(B, N, D, S, init=init, seed=N + S)
    gr, gs = cotangents((B, N, D), (B, S, 2 * num_freqs(D)), N)
    r_ref, S_ref, g_ref = run_with_grads(naive_quadratic, inputs, gr, gs, recall=init)
    r, S_, grads = run_with_grads(triton_fn(C), inputs, gr, gs, recall=init)
    assert r.dtype == torch.float64 and S_.dtype == torch.float64
    assert rel_err(r, r_ref) < F64_TOL and rel_err(S_, S_ref) < F64_TOL
    assert len(grads) == len(g_ref)
    for i, (a, b) in enumerate(zip(grads, g_ref)):
        assert a.shape == b.shape and rel_err(a, b) < F64_TOL, f"gradient {i}"


@pytest.mark.parametrize("unitary", [True, False])
def test_triton_float32_close_to_reference(unitary):
    B, N, D, S = 2, 45, 33, 4
    inputs = make_inputs(B, N, D, S, seed=11)
    gr, gs = cotangents((B, N, D), (B, S, 2 * num_freqs(D)), 11)
    r_ref, S_ref, g_ref = run_with_grads(naive_quadratic, inputs, gr, gs, recall=True, unitary=unitary)
    r, S_, grads = run_with_grads(triton_fn(16), on_device(inputs, torch.float32), gr.to(DEVICE), gs.to(DEVICE),
                                  recall=True, unitary=unitary)
    assert r.dtype == torch.float32 and S_.dtype == torch.float32
    assert rel_rms(r.cpu(), r_ref) < F32_TOL and rel_rms(S_.cpu(), S_ref) < F32_TOL
    for i, (a, b) in enumerate(zip(grads, g_ref)):
        assert a.dtype == torch.float32 and rel_rms(a.cpu(), b) < F32_TOL, f"gradient {i}"


def test_triton_final_state_equals_recurrent_and_chains():
    """The final memory is the recurrence's, also after a short last chunk, and two calls chained
    through it equal one (what prefill relies on)."""
    inputs = make_inputs(1, 41, 12, 3, init=False, seed=4)
    r_ref, S_rec = naive_recurrent(*inputs, output_final_state=True)
    dev = on_device(inputs[:6], torch.float32)
    r, S_ = holographic(*dev, output_final_state=True, impl="triton", chunk_size=16)
    assert rel_rms(S_.cpu(), S_rec) < F32_TOL and rel_rms(r.cpu(), r_ref) < F32_TOL
    head = [t[:, :23] if t.dim() == 3 else t for t in dev]
    tail = [t[:, 23:] if t.dim() == 3 else t for t in dev]
    r1, S1 = holographic(*head, output_final_state=True, impl="triton", chunk_size=16)
    r2, S2 = holographic(*tail, S1, output_final_state=True, impl="triton", chunk_size=16)
    assert rel_rms(torch.cat([r1, r2], 1).cpu(), r_ref) < F32_TOL and rel_rms(S2.cpu(), S_rec) < F32_TOL


def test_triton_extreme_decays_stay_finite():
    lg = torch.tensor([-60.0, -0.7, -1e-5], dtype=torch.float64)
    inputs = make_inputs(1, 70, 6, 3, log_gamma=lg, seed=5)
    gr, gs = cotangents((1, 70, 6), (1, 3, 8), 5)
    r_ref, S_ref, g_ref = run_with_grads(naive_quadratic, inputs, gr, gs)
    r, S_, grads = run_with_grads(triton_fn(32), on_device(inputs, torch.float32), gr.to(DEVICE), gs.to(DEVICE))
    assert all(torch.isfinite(t).all() for t in (r, S_, *grads))
    for a, b in zip((r, S_, *grads), (r_ref, S_ref, *g_ref)):
        assert rel_err(a.cpu(), b) < 1e-4


def test_bf16_inputs_scan_in_float32():
    inputs = make_inputs(1, 20, 8, 3, init=False)
    r_ref, S_ref = naive_quadratic(*inputs, output_final_state=True)
    r, S_ = holographic(*on_device(inputs[:6], torch.bfloat16), output_final_state=True, impl="triton",
                        chunk_size=16) if DEVICE == "cuda" else (None, None)
    if DEVICE == "cpu":  # the interpreter computes garbage on bf16 (numpy has none): the op casts first
        bf = [t.bfloat16() for t in inputs[:6]]
        r, S_ = holographic(*bf, output_final_state=True, impl="triton", chunk_size=16)
    assert r.dtype == torch.bfloat16 and S_.dtype == torch.float32
    assert rel_rms(r.float().cpu(), r_ref) < 2e-2 and rel_rms(S_.cpu(), S_ref) < 2e-2


def test_dispatch_and_errors(not_interpreting):
    x = torch.zeros(1, 4, 6)
    assert resolve_impl("auto", x) == "chunked"  # CPU tensors: the torch scan
    with FakeTensorMode():
        fx = torch.zeros(1, 20, 6)
        assert resolve_impl("auto", fx) == "chunked"
        with assume_cuda():
            assert resolve_impl("auto", fx) == "triton"
            assert resolve_impl("auto", fx, chunk_size=24) == "chunked"  # not a kernel chunk
            assert resolve_impl("auto", fx.double()) == "chunked"
    inputs = make_inputs(1, 4, 6, 2, init=False, dtype=torch.float32)[:6]
    with pytest.raises(ValueError, match="runs CUDA tensors"):
        holographic(*inputs, impl="triton", chunk_size=16)
    with pytest.raises(ValueError, match="chunk_size a power of two"):
        holographic(*inputs, impl="triton", chunk_size=24)


def test_fake_tensors_take_the_ops_fakes():
    """Under assume_cuda (the memory estimate) "auto" takes the kernels' ops, whose fakes give the
    real shapes forward and backward, launching nothing."""
    with FakeTensorMode(), assume_cuda():
        q, k, v = (torch.randn(2, 21, 10, requires_grad=True) for _ in range(3))
        a, b = (torch.randn(2, 21, 3).softmax(-1).requires_grad_() for _ in range(2))
        lg, m0 = (-torch.rand(3)).requires_grad_(), torch.randn(2, 3, 12, requires_grad=True)
        r, S = holographic(q, k, v, a, b, lg, m0, output_final_state=True, impl="auto", chunk_size=16)
        assert isinstance(r, FakeTensor) and r.shape == (2, 21, 10) and S.shape == (2, 3, 12)
        grads = torch.autograd.grad(r.sum() + S.sum(), [q, k, v, a, b, lg, m0])
        assert [g.shape for g in grads] == [t.shape for t in (q, k, v, a, b, lg, m0)]


def test_mixer_on_the_kernels_equals_chunked():
    """The mixer with impl triton: forward, aux loss and every gradient equal the torch scan."""
    from muse.config import load_config
    from muse.mixers import build_mixer

    cfg = load_config("tiny", {"model.d_model": 24, "model.mixer.kind": "holographic",
                               "model.mixer.holographic.hcm_dim": 15, "model.mixer.holographic.num_slots": 5,
                               "model.mixer.holographic.chunk_size": 16}).model
    torch.manual_seed(0)
    mixer = build_mixer(cfg, 0).to(DEVICE)
    x = torch.randn(2, 29, 24, device=DEVICE, requires_grad=True)
    out = []
    for impl in ("chunked", "triton"):
        mixer.h.impl = impl
        y, aux = mixer(x)
        out.append((y, aux, torch.autograd.grad(y.square().sum() + aux, [x, *mixer.parameters()])))
    (y0, a0, g0), (y1, a1, g1) = out
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a1, a0, rtol=1e-4, atol=1e-6)
    for ga, gb in zip(g1, g0):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("unitary", [True, False])
@pytest.mark.parametrize("D", [9, 12, 1100])  # odd D; F = 551 > the kernels' 512-frequency step
def test_glue_kernels_match_torch(D, unitary):
    """``bind`` / ``unbind`` (the glue around the scan) against ``naive.spectra`` / ``read_out``:
    Q̂, K̂, the bound spectrum and the unbound read, and the gradients of q, k, v and the memory,
    with exactly empty frequencies among the inputs (dropped with zero gradient by both)."""
    from muse.ops.holographic import spectra, read_out
    from muse.ops.holographic.naive import transforms
    from muse.ops.holographic.triton_glue import bind, unbind

    dtype = torch.float64 if DEVICE == "cpu" else torch.float32
    tol = F64_TOL if dtype == torch.float64 else F32_TOL
    g = torch.Generator().manual_seed(D)
    q, k, v = (torch.randn(2, 3, D, generator=g, dtype=dtype) for _ in range(3))
    k[0, 1] = 0.5  # constant: every frequency but 0 is empty
    q[1, 2] = -1.0
    mem = torch.randn(2, 3, 2 * num_freqs(D), generator=g, dtype=dtype)
    cot = [torch.randn(2, 3, n, generator=g, dtype=dtype) for n in (D, D, 2 * num_freqs(D))]

    def run(fn):
        leaves = [t.to(DEVICE).requires_grad_() for t in (q, k, v, mem)]
        Q, K, bound = fn(*leaves[:3])
        outs = (read_out(Q, leaves[3], D), read_out(K, bound, D), bound)
        loss = sum((o * c.to(DEVICE)).sum() for o, c in zip(outs, cot))
        return [o.detach().cpu() for o in outs], [x.cpu() for x in torch.autograd.grad(loss, leaves)]

    ref_out, ref_grads = run(lambda a, b, c: spectra(a, b, c, unitary, dtype))

    out, grads = run(lambda a, b, c: bind(*transforms(a, b, c, dtype), unitary))
    for i, (a, b) in enumerate(zip(out, ref_out)):
        assert rel_err(a, b) < tol, f"output {i}"
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert torch.isfinite(a).all() and rel_err(a, b) < tol, f"gradient {i}"
    # unbind alone: conj(Q̂) ⊙ M, forward and backward
    Qc = torch.complex(*torch.randn(2, 2, 5, generator=g, dtype=dtype)).to(DEVICE).requires_grad_()
    M = torch.randn(2, 10, generator=g, dtype=dtype).to(DEVICE).requires_grad_()
    ref = Qc.conj() * torch.complex(M[..., 0::2], M[..., 1::2])
    got = unbind(Qc, M)
    w = torch.complex(*torch.randn(2, 2, 5, generator=g, dtype=dtype)).to(DEVICE)
    ga = torch.autograd.grad(torch.view_as_real(got * w).sum(), [Qc, M])
    gb = torch.autograd.grad(torch.view_as_real(ref * w).sum(), [Qc, M])
    pairs = lambda z: torch.view_as_real(z.detach().resolve_conj()).cpu() if z.is_complex() else z.cpu()  # noqa: E731
    assert rel_err(pairs(got), pairs(ref)) < tol
    assert all(rel_err(pairs(a), pairs(b)) < tol for a, b in zip(ga, gb))


@pytest.mark.parametrize("used", ["read", "recall"])
def test_read_and_recall_from_one_walk_when_one_is_unused(used):
    """The read and the recall come from one scan walk: with only one of them in the loss (the
    other's gradient None), every gradient still equals the chunked reference's."""
    from muse.ops.holographic import chunk_holographic

    dtype = torch.float64 if DEVICE == "cpu" else torch.float32
    inputs = make_inputs(2, 40, 10, 3, seed=9, dtype=torch.float64)
    g = torch.randn(2, 40, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def grads(fn, tensors):
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        r, _, v_hat = fn(*leaves, recall=True)
        out = r if used == "read" else v_hat
        got = torch.autograd.grad((out * g.to(out)).sum(), leaves, allow_unused=True)  # q: none for the recall
        return [torch.zeros_like(t) if d is None else d for t, d in zip(leaves, got)]

    ref = grads(lambda *a, **k: chunk_holographic(*a, chunk_size=16, **k), inputs)
    got = grads(triton_fn(16), on_device(inputs, dtype))
    tol = F64_TOL if dtype == torch.float64 else F32_TOL
    for i, (a, b) in enumerate(zip(got, ref)):
        assert (a.cpu() == 0).all() if (b == 0).all() else rel_rms(a.cpu(), b) < tol, f"gradient {i}"
