"""Agreement, numerics and validation tests for the holographic read (DESIGN.md §1.5).

The float64 quadratic implementation is the ground truth (itself checked against a time-domain
circular convolution/correlation and by finite differences); chunked and recurrent must match it
in outputs, final state and the gradients of every input.
"""

from __future__ import annotations

import pytest
import torch

from muse.ops.holographic import (
    chunk_holographic,
    holographic,
    naive_quadratic,
    naive_recurrent,
    num_freqs,
    recurrent_step,
)

F64_TOL = 1e-10  # every impl in float64, max error relative to the largest reference entry
F32_TOL = 2e-5  # float32 impls vs the float64 reference: relative RMS error, outputs and gradients


def make_inputs(B, N, D, S, *, init=True, dtype=torch.float64, seed=0, log_gamma=None):
    """Random inputs: softmax slot weights and decays γ in about (0.3, 1)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, N, D, generator=g, dtype=dtype) for _ in range(3))
    alpha = torch.randn(B, N, S, generator=g, dtype=dtype).softmax(-1)
    beta = torch.randn(B, N, S, generator=g, dtype=dtype).softmax(-1)
    if log_gamma is None:
        log_gamma = -torch.rand(S, generator=g, dtype=dtype) * 1.2
    S0 = torch.randn(B, S, 2 * num_freqs(D), generator=g, dtype=dtype) if init else None
    return q, k, v, alpha, beta, log_gamma, S0


def cotangents(r_shape, s_shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(r_shape, generator=g, dtype=dtype), torch.randn(s_shape, generator=g, dtype=dtype)


def run_with_grads(fn, inputs, gr, gs, recall=False, **kw):
    """Forward with the final state and torch.autograd.grad of <r, gr> + <S, gs> over every input;
    with ``recall`` the recall v̂ joins r (returned as a pair, with cotangent gr flipped on D)."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    out = fn(*leaves, output_final_state=True, recall=True, **kw) if recall else fn(*leaves, output_final_state=True, **kw)
    r, S = out[0], out[1]
    loss = (r * gr.to(r.dtype)).sum() + (S * gs.to(S.dtype)).sum()
    if recall:
        loss = loss + (out[2] * gr.flip(-1).to(r.dtype)).sum()
        r = torch.stack([r, out[2]])
    grads = torch.autograd.grad(loss, [t for t in leaves if t is not None])
    return r.detach(), S.detach(), grads


def rel_err(a, b):
    """max |a - b| / max |b|: relative to the scale of the reference."""
    return ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def rel_rms(a, b):
    return ((a.double() - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-300)).item()


IMPLS = {
    "recurrent": naive_recurrent,
    "chunked C=4": lambda *a, **k: chunk_holographic(*a, chunk_size=4, **k),
    "chunked C=16": lambda *a, **k: chunk_holographic(*a, chunk_size=16, **k),
    "dispatch auto": lambda *a, **k: holographic(*a, impl="auto", chunk_size=8, **k),
}


# --------------------------------------------------------------------------- the reference itself

def test_reference_is_circular_convolution_and_correlation():
    """Without unit-modulus keys, one token reads (α·β) · (q ⋆ (k ⊛ v)) in the time domain."""
    D = 7
    q, k, v, a, b, lg, _ = make_inputs(2, 1, D, 3, init=False)
    n = torch.arange(D)
    bound = torch.stack([(k[:, 0] * v[:, 0, (j - n) % D]).sum(-1) for j in range(D)], -1)  # (k ⊛ v)[j]
    read = torch.stack([(q[:, 0] * bound[:, (j + n) % D]).sum(-1) for j in range(D)], -1)  # (q ⋆ b)[j]
    r, _ = naive_quadratic(q, k, v, a, b, lg, unitary=False)
    assert rel_err(r[:, 0], (a * b).sum(-1) * read) < F64_TOL


def test_unitary_unbinding_is_exact():
    """With unit-modulus keys, reading a single write with its own key returns the value exactly;
    so does the recall (read with the write weights) of every implementation."""
    q, k, v, a, b, lg, _ = make_inputs(3, 1, 10, 4, init=False)
    r, _ = naive_quadratic(k, k, v, a, b, lg)
    assert rel_err(r, (a * b).sum(-1, keepdim=True) * v) < F64_TOL
    for fn in (naive_quadratic, *IMPLS.values()):
        _, _, v_hat = fn(q, k, v, a, b, lg, recall=True)
        assert rel_err(v_hat, (a * a).sum(-1, keepdim=True) * v) < F64_TOL
    r, _ = naive_quadratic(k, k, v, a, b, lg, unitary=False)  # plain HRR is only approximate
    assert rel_err(r, (a * b).sum(-1, keepdim=True) * v) > 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keys_with_empty_frequencies_keep_gradients_finite(dtype):
    """A constant key has power only at frequency 0: every other bin is exactly zero. Unit-modulus
    keys used to give those bins the derivative −½·s^(−3/2) at s = 1e-30, inf in fp32, and NaN
    gradients for everything (hamt-small on WikiText-2 met such a bin). Now they map to 0 with zero
    gradient, in every implementation, and a key scaled by any factor reads the same."""
    q, k, v, a, b, lg, S0 = make_inputs(2, 7, 12, 3, dtype=dtype)
    k = k.clone()
    k[0, 3] = 0.5  # (D,) constant: rfft = [6, 0, 0, ...]
    q = q.clone()
    q[1, 2] = -2.0
    gr, gs = cotangents((2, 7, 12), S0.shape, 5, dtype)
    ref = None
    for fn in (naive_quadratic, *IMPLS.values()):
        r, S, grads = run_with_grads(fn, (q, k, v, a, b, lg, S0), gr, gs, recall=True)
        assert torch.isfinite(r).all() and torch.isfinite(S).all()
        assert all(torch.isfinite(g).all() for g in grads), fn
        ref = ref if ref is not None else r
        assert rel_err(r, ref.double()) < (F64_TOL if dtype == torch.float64 else 1e-5)
    scaled, _ = naive_quadratic(q * 1e-3, k * 1e3, v, a, b, lg, S0)
    assert rel_err(scaled, ref[0].double()) < (F64_TOL if dtype == torch.float64 else 1e-5)


def test_reference_matches_definition_by_slot():
    """The quadratic mixing matrix equals the slot recursion M^j_t = γ_j M^j_{t−1} + α_tj B_t
    written out with complex tensors, one slot at a time."""
    q, k, v, a, b, lg, S0 = make_inputs(2, 9, 8, 3)
    F = num_freqs(8)
    Q, K, V = (torch.fft.rfft(x, dim=-1) for x in (q, k, v))
    Q, K = Q / Q.abs(), K / K.abs()
    M = torch.complex(S0[..., 0::2], S0[..., 1::2])  # (B, S, F)
    rs, recalls = [], []
    for t in range(9):
        M = lg.exp()[:, None] * M + a[:, t, :, None] * (K[:, t] * V[:, t])[:, None]
        rs.append(torch.fft.irfft(Q[:, t].conj() * (b[:, t, :, None] * M).sum(1), n=8))
        recalls.append(torch.fft.irfft(K[:, t].conj() * (a[:, t, :, None] * M).sum(1), n=8))
    r, S, v_hat = naive_quadratic(q, k, v, a, b, lg, S0, True, recall=True)
    assert rel_err(r, torch.stack(rs, 1)) < F64_TOL and rel_err(v_hat, torch.stack(recalls, 1)) < F64_TOL
    assert rel_err(S, torch.view_as_real(M).flatten(-2)) < F64_TOL and S.shape == (2, 3, 2 * F)


@pytest.mark.parametrize("unitary", [True, False])
def test_reference_gradients_by_finite_differences(unitary):
    inputs = make_inputs(1, 5, 5, 2, seed=3)
    fn = lambda *x: naive_quadratic(*x, output_final_state=True, unitary=unitary, recall=True)
    leaves = tuple(t.clone().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


# --------------------------------------------------------------------------- agreement, float64

@pytest.mark.parametrize("N, D", [(1, 5), (7, 9), (23, 8), (37, 11)])
@pytest.mark.parametrize("init", [True, False])
@pytest.mark.parametrize("unitary, recall", [(True, False), (False, False), (True, True)])
def test_impls_agree_float64(N, D, init, unitary, recall):
    B, S = 2, 3
    inputs = make_inputs(B, N, D, S, init=init, seed=N + D)
    gr, gs = cotangents((B, N, D), (B, S, 2 * num_freqs(D)), N)
    r_ref, S_ref, g_ref = run_with_grads(naive_quadratic, inputs, gr, gs, recall, unitary=unitary)
    for name, fn in IMPLS.items():
        r, S, grads = run_with_grads(fn, inputs, gr, gs, recall, unitary=unitary)
        assert r.dtype == torch.float64 and S.dtype == torch.float64, name
        assert rel_err(r, r_ref) < F64_TOL, name
        assert rel_err(S, S_ref) < F64_TOL, name
        assert len(grads) == len(g_ref) == (7 if init else 6)
        for i, (a, b) in enumerate(zip(grads, g_ref)):
            assert a.shape == b.shape and rel_err(a, b) < F64_TOL, f"{name}: gradient {i}"


def test_chunk_size_and_padding_do_not_change_results():
    # N = 50 is padded to 52 (C=4), 56 (C=7), 64 (C=64 -> 50, unpadded), and C=1 is one position per chunk
    inputs = make_inputs(1, 50, 6, 4)
    r_ref, S_ref = naive_quadratic(*inputs, output_final_state=True)
    for C in (1, 4, 7, 16, 50, 64):
        r, S = chunk_holographic(*inputs, output_final_state=True, chunk_size=C)
        assert rel_err(r, r_ref) < F64_TOL and rel_err(S, S_ref) < F64_TOL, C


@pytest.mark.parametrize("N", [5, 37, 64])
def test_chunked_final_state_equals_recurrent(N):
    inputs = make_inputs(2, N, 7, 5, seed=N)
    _, S_rec = naive_recurrent(*inputs, output_final_state=True)
    for C in (3, 16, 64):
        _, S = chunk_holographic(*inputs, output_final_state=True, chunk_size=C)
        assert rel_err(S, S_rec) < F64_TOL, C


def test_state_continues_across_calls():
    """Two calls chained through the state equal one call: what prefill relies on."""
    inputs = make_inputs(2, 30, 9, 3, init=False)
    r_ref, S_ref = chunk_holographic(*inputs, output_final_state=True, chunk_size=8)
    head = [t[:, :11] if t.dim() == 3 else t for t in inputs[:6]]
    tail = [t[:, 11:] if t.dim() == 3 else t for t in inputs[:6]]
    r1, S1 = chunk_holographic(*head, output_final_state=True, chunk_size=8)
    r2, S2 = chunk_holographic(*tail, S1, output_final_state=True, chunk_size=8)
    assert rel_err(torch.cat([r1, r2], 1), r_ref) < F64_TOL and rel_err(S2, S_ref) < F64_TOL


def test_dispatcher_matches_impls():
    inputs = make_inputs(2, 20, 7, 3)
    r_ref, S_ref = naive_quadratic(*inputs, output_final_state=True)
    for impl in ("auto", "quadratic", "chunked", "recurrent"):
        r, S = holographic(*inputs, output_final_state=True, impl=impl, chunk_size=8)
        assert rel_err(r, r_ref) < F64_TOL and rel_err(S, S_ref) < F64_TOL, impl
        assert holographic(*inputs, impl=impl)[1] is None


# --------------------------------------------------------------------------- float32, numerics

@pytest.mark.parametrize("init", [True, False])
def test_float32_close_to_float64_reference(init):
    B, N, D, S = 2, 45, 33, 4
    inputs = make_inputs(B, N, D, S, init=init, seed=11)
    gr, gs = cotangents((B, N, D), (B, S, 2 * num_freqs(D)), 11)
    r_ref, S_ref, g_ref = run_with_grads(naive_quadratic, inputs, gr, gs, recall=True)
    f32 = [t.float() if t is not None else None for t in inputs]
    for name, fn in IMPLS.items():
        r, S, grads = run_with_grads(fn, f32, gr, gs, recall=True)
        assert r.dtype == torch.float32 and S.dtype == torch.float32, name
        assert rel_rms(r, r_ref) < F32_TOL and rel_rms(S, S_ref) < F32_TOL, name
        for i, (a, b) in enumerate(zip(grads, g_ref)):
            assert a.dtype == torch.float32 and rel_rms(a, b) < F32_TOL, f"{name}: gradient {i}"


def test_bfloat16_inputs_accumulate_in_float32():
    inputs = make_inputs(1, 20, 8, 3, init=False)
    r_ref, S_ref = naive_quadratic(*inputs, output_final_state=True)
    bf = [t.bfloat16() for t in inputs[:6]]
    r, S = chunk_holographic(*bf, output_final_state=True, chunk_size=8)
    assert r.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert rel_rms(r, r_ref) < 2e-2 and rel_rms(S, S_ref) < 2e-2  # bf16 inputs: ~3 significant digits


@pytest.mark.parametrize("log_gamma", [-60.0, -1e-5])
def test_extreme_decays_stay_finite(log_gamma):
    """γ ≈ 1e-26 (a slot that forgets at once) and γ ≈ 1 − 1e-5 (one that never does), over
    several chunks: no overflow, no NaN, and the chunked form still equals the reference, with
    gradients, in float32 too."""
    S = 3
    lg = torch.tensor([log_gamma, -0.7, log_gamma], dtype=torch.float64)
    inputs = make_inputs(1, 130, 6, S, log_gamma=lg, seed=5)
    gr, gs = cotangents((1, 130, 6), (1, S, 8), 5)
    r_ref, S_ref, g_ref = run_with_grads(naive_quadratic, inputs, gr, gs)
    for dtype, tol in ((torch.float64, F64_TOL), (torch.float32, 1e-4)):
        cast = [t.to(dtype) for t in inputs]
        r, S_, grads = run_with_grads(lambda *a, **k: chunk_holographic(*a, chunk_size=64, **k), cast, gr, gs)
        assert all(torch.isfinite(t).all() for t in (r, S_, *grads))
        assert rel_err(r, r_ref) < tol and rel_err(S_, S_ref) < tol, dtype
        for i, (a, b) in enumerate(zip(grads, g_ref)):
            assert rel_err(a, b) < tol, f"{dtype}: gradient {i}"


def test_zero_key_gives_zero_not_nan():
    q, k, v, a, b, lg, _ = make_inputs(1, 4, 6, 2, init=False)
    k = torch.zeros_like(k).requires_grad_(True)
    r, _ = chunk_holographic(q, k, v, a, b, lg)
    (g,) = torch.autograd.grad(r.sum(), k)
    assert torch.isfinite(r).all() and torch.isfinite(g).all() and r.abs().max() == 0


# --------------------------------------------------------------------------- the decoding step

def test_recurrent_step_matches_sequence_and_keeps_fp32_state():
    inputs = make_inputs(2, 6, 7, 3, dtype=torch.float32)
    q, k, v, a, b, lg, S0 = inputs
    r_ref, S_ref = naive_quadratic(*[t.double() for t in inputs], output_final_state=True)
    state = S0
    for t in range(6):
        r_t, state = recurrent_step(q[:, t], k[:, t], v[:, t], a[:, t], b[:, t], lg, state)
        assert r_t.shape == (2, 7) and state.shape == (2, 3, 8) and state.dtype == torch.float32
        assert rel_rms(r_t, r_ref[:, t]) < F32_TOL
    assert rel_rms(state, S_ref) < F32_TOL
    # a bf16 step keeps an fp32 memory
    r_t, state = recurrent_step(q[:, 0].bfloat16(), k[:, 0].bfloat16(), v[:, 0].bfloat16(), a[:, 0], b[:, 0], lg, None)
    assert r_t.dtype == torch.bfloat16 and state.dtype == torch.float32


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda x: x.update(q=x["q"][..., :-1]), "q must be"),
        (lambda x: x.update(k=x["k"][:, :-1]), "k must be"),
        (lambda x: x.update(v=x["v"][0]), "v must be a 3-D"),
        (lambda x: x.update(alpha=x["alpha"][:, :-1]), "alpha must be"),
        (lambda x: x.update(beta=x["beta"][..., :-1]), "beta must be"),
        (lambda x: x.update(log_gamma=x["log_gamma"][:-1]), "log_gamma must be"),
        (lambda x: x.update(initial_state=x["initial_state"][..., :-1]), "initial_state must be"),
        (lambda x: x.update(q=x["q"].long()), "q must be a floating-point"),
    ],
)
def test_bad_inputs_name_the_tensor(change, needle):
    names = ("q", "k", "v", "alpha", "beta", "log_gamma", "initial_state")
    x = dict(zip(names, make_inputs(2, 5, 6, 3)))
    change(x)
    for impl in ("chunked", "quadratic", "recurrent"):
        with pytest.raises(ValueError, match=needle):
            holographic(**x, impl=impl)


def test_bad_impl_and_chunk_size():
    inputs = make_inputs(1, 3, 4, 2, init=False)
    with pytest.raises(ValueError, match="impl must be one of"):
        holographic(*inputs[:6], impl="triton-ish")
    with pytest.raises(ValueError, match="chunk_size"):
        holographic(*inputs[:6], impl="chunked", chunk_size=0)
    with pytest.raises(ValueError, match="alpha_t must be a 2-D"):
        q, k, v, a, b, lg, _ = inputs
        recurrent_step(q[:, 0], k[:, 0], v[:, 0], a, b[:, 0], lg, None)


def test_autocast_does_not_lower_the_accumulation():
    """Under CPU bf16 autocast the scan's matmuls would run in bf16; the op turns autocast off, so
    float32 inputs keep float32 accuracy."""
    inputs = make_inputs(2, 40, 16, 4, seed=2)
    r_ref, S_ref = naive_quadratic(*inputs, output_final_state=True)
    f32 = [t.float() for t in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for impl in ("chunked", "quadratic", "recurrent"):
            r, S = holographic(*f32, output_final_state=True, impl=impl, chunk_size=16)
            assert r.dtype == torch.float32 and rel_rms(r, r_ref) < F32_TOL and rel_rms(S, S_ref) < F32_TOL, impl
