"""Reference implementations of the holographic memory read (DESIGN.md §1.5).

Per batch row, with D the holographic width, F = D // 2 + 1 rfft frequencies and S slots:

    K_t, V_t, Q_t = rfft(k_t), rfft(v_t), rfft(q_t)     (K, Q made unit-modulus per frequency)
    B_t           = K_t ⊙ V_t                             binding (circular convolution)
    M^j_t         = γ_j M^j_{t−1} + α_tj B_t              S slots, per-slot decay γ_j = exp(log_gamma_j)
    R_t           = conj(Q_t) ⊙ Σ_j β_tj M^j_t            unbinding (circular correlation)
    r_t           = irfft(R_t, n=D)

Unrolled, Σ_j β_tj M^j_t = Σ_{s≤t} (Σ_j β_tj γ_j^{t−s} α_sj) B_s + Σ_j β_tj γ_j^{t+1} M^j_{−1}:
linear attention with the S slot weights as features, a per-feature decay, and the bound spectra
as values. The complex memory is carried as real numbers, the real and imaginary part of each
frequency side by side (``torch.view_as_real`` order), so every scan works on real tensors.

Shapes (shared by every implementation in this package):

    q, k, v        (B, N, D)     query, key, value
    alpha, beta    (B, N, S)     slot write / read weights (rows of a softmax in the mixer)
    log_gamma      (S,)          per-slot log decay, values <= 0
    initial_state  (B, S, 2F)    the memory before position 0, or None for zeros
    r              (B, N, D)     returned in v's dtype
    final_state    (B, S, 2F)    returned in the accumulation dtype

Accumulation (FFTs, memory, state) is float32, or float64 when any of q, k, v is float64: torch
has no bf16 FFT, and the memory sums thousands of bound vectors.

With ``recall=True`` every implementation also returns the *recall* v̂ (B, N, D): each token's own
value unbound from the memory it has just written to, with its own key as the query and its
write weights as the read weights, v̂_t = irfft(conj(K_t) ⊙ Σ_j α_tj M^j_t). It shares the spectra
and the memory with the read (the mixer's auxiliary reconstruction loss and memory fidelity).

``naive_quadratic`` builds the (B, N, N) mixing matrix and is the ground truth; ``naive_recurrent``
loops over ``recurrent_step``, the decoding primitive (state O(S·D), constant in the context length).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from muse.ops._inputs import accumulation_dtype, check_float

__all__ = [
    "accumulation_dtype",
    "check_inputs",
    "full_precision",
    "naive_quadratic",
    "naive_recurrent",
    "num_freqs",
    "read_out",
    "recurrent_step",
    "spectra",
    "transforms",
    "UNIT_FLOOR",
]

# A frequency whose |z|² is below this share of its token's mean |z|² has no direction worth
# keeping (an fp32 sum of D terms carries rounding near 1e-7 of its size): it maps to 0 and passes
# no gradient. Divided by its |z| like the others, its gradient grew as 1/|z|, and an exactly zero
# bin (fp32 sums do cancel; docs/quality-notes.md §6) turned the rsqrt's derivative −½·s^(−3/2)
# at s = 1e-30 into inf, and 0 · inf into NaN for the whole step.
UNIT_FLOOR = 1e-8


def num_freqs(D: int) -> int:
    """F = D // 2 + 1, the rfft frequencies of a length-D real signal."""
    return D // 2 + 1


def check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    alpha: Tensor,
    beta: Tensor,
    log_gamma: Tensor,
    initial_state: Tensor | None = None,
) -> tuple[int, int, int, int, int]:
    """Validate the inputs of a holographic read and return (B, N, D, S, F).

    Raises ValueError naming the offending tensor. Signs (γ <= 1, weights >= 0) are not checked:
    that would synchronise the device on every call.
    """
    check_float("v", v)
    if v.dim() != 3 or v.shape[1] < 1 or v.shape[2] < 1:
        raise ValueError(f"v must be a 3-D tensor (B, N, D) with N, D >= 1; got shape {tuple(v.shape)}")
    B, N, D = v.shape
    for name, t in (("q", q), ("k", k)):
        check_float(name, t)
        if tuple(t.shape) != (B, N, D):
            raise ValueError(f"{name} must be (B, N, D) = {(B, N, D)} like v; got {tuple(t.shape)}")
    check_float("alpha", alpha)
    if alpha.dim() != 3 or tuple(alpha.shape[:2]) != (B, N) or alpha.shape[2] < 1:
        raise ValueError(f"alpha must be (B, N, S) with B, N = {(B, N)} and S >= 1; got {tuple(alpha.shape)}")
    S = alpha.shape[2]
    check_float("beta", beta)
    if tuple(beta.shape) != (B, N, S):
        raise ValueError(f"beta must be (B, N, S) = {(B, N, S)} like alpha; got {tuple(beta.shape)}")
    check_float("log_gamma", log_gamma)
    if tuple(log_gamma.shape) != (S,):
        raise ValueError(f"log_gamma must be (S,) = ({S},), one log decay per slot; got {tuple(log_gamma.shape)}")
    F = num_freqs(D)
    if initial_state is not None:
        check_float("initial_state", initial_state)
        if tuple(initial_state.shape) != (B, S, 2 * F):
            raise ValueError(
                f"initial_state must be (B, S, 2F) = {(B, S, 2 * F)} (F = D // 2 + 1 frequencies, real and "
                f"imaginary parts); got {tuple(initial_state.shape)}"
            )
    return B, N, D, S, F


def full_precision(fn):
    """Run ``fn`` with autocast off on the device of its first tensor argument: autocast would run
    the scan's matmuls in bf16, and the memory must accumulate in fp32 (the inputs are cast to
    the accumulation dtype explicitly)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        device = next(a for a in args if isinstance(a, Tensor)).device.type
        if not torch.is_autocast_enabled(device):
            return fn(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return run


def _unit(z: Tensor) -> Tensor:
    """z / |z| per frequency (..., F): unbinding with a unit-modulus key is its exact inverse, where
    the plain HRR inverse 1/K blows up at small |K| (and so does its gradient). Frequencies below
    ``UNIT_FLOOR`` of the token's mean power map to 0, with zero gradient; relative, so scaling a
    key changes nothing."""
    s = z.real.square() + z.imag.square()  # (..., F)
    keep = s > UNIT_FLOOR * s.detach().mean(-1, keepdim=True)
    # the inner where keeps rsqrt (and its derivative) finite on the bins the outer one drops
    return z * torch.where(keep, torch.rsqrt(torch.where(keep, s, 1.0)), 0.0)


def transforms(q: Tensor, k: Tensor, v: Tensor, acc: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """rfft of q, k, v (..., D) in dtype ``acc``: (..., F) complex each (torch has no bf16 FFT)."""
    return tuple(torch.fft.rfft(t.to(acc), dim=-1) for t in (q, k, v))


def spectra(q: Tensor, k: Tensor, v: Tensor, unitary: bool, acc: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """The query and key spectra Q, K (..., F) complex and the bound spectrum B = K ⊙ V as real
    (..., 2F) (real and imaginary parts side by side) from q, k, v (..., D), in dtype ``acc``."""
    Q, K, V = transforms(q, k, v, acc)  # (..., F) × 3
    if unitary:
        Q, K = _unit(Q), _unit(K)
    bound = torch.view_as_real(K * V).flatten(-2)  # (..., 2F)
    return Q, K, bound


def read_out(Q: Tensor, memory: Tensor, D: int) -> Tensor:
    """r = irfft(conj(Q) ⊙ M, n=D): unbind the read memory M (..., 2F) real with the query Q (..., F)."""
    M = torch.complex(memory[..., 0::2], memory[..., 1::2])  # (..., F)
    return torch.fft.irfft(Q.conj() * M, n=D, dim=-1)  # (..., D)


@full_precision
def naive_quadratic(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    alpha: Tensor,
    beta: Tensor,
    log_gamma: Tensor,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    unitary: bool = True,
    recall: bool = False,
) -> tuple[Tensor, ...]:
    """O(N²·S) reference: builds the mixing matrix A_ts = Σ_j β_tj γ_j^{t−s} α_sj explicitly.

    Args: see the module docstring for shapes. unitary: unit-modulus keys and queries. recall:
        also return the recall v̂.
    Returns: r (B, N, D) in v's dtype; final_state (B, S, 2F) in the accumulation dtype, or None;
        with ``recall``, v̂ (B, N, D) in v's dtype as a third element.
    """
    _, N, D, _, _ = check_inputs(q, k, v, alpha, beta, log_gamma, initial_state)
    acc = accumulation_dtype(q, k, v)
    Q, K, bound = spectra(q, k, v, unitary, acc)  # (B, N, F) × 2, (B, N, 2F)
    a, b, lg = alpha.to(acc), beta.to(acc), log_gamma.to(acc)
    t = torch.arange(N, device=v.device)
    lag = (t[:, None] - t[None, :]).to(acc)  # (N, N): t − s
    causal = lag >= 0
    # γ^{t−s} as exp((t−s)·log γ) on the causal triangle only; above it (t−s)·log γ > 0 could
    # overflow, and inf · 0 would be NaN in the backward pass.
    decay = torch.exp(lag.clamp(min=0)[..., None] * lg) * causal[..., None]  # (N, N, S)
    S0 = initial_state.to(acc) if initial_state is not None else None
    from_start = torch.exp((t + 1).to(acc)[:, None] * lg)  # (N, S): γ^{t+1}

    def read(w: Tensor) -> Tensor:  # Σ_j w_tj M^j_t (B, N, 2F) for read weights w (B, N, S)
        memory = torch.einsum("bti,tsi,bsi->bts", w, decay, a) @ bound  # (B, N, N) @ (B, N, 2F)
        return memory if S0 is None else memory + (w * from_start) @ S0  # (B, N, S) @ (B, S, 2F)

    r = read_out(Q, read(b), D).to(v.dtype)  # (B, N, D)

    final_state = None
    if output_final_state:
        to_end = torch.exp((N - 1 - t).to(acc)[:, None] * lg)  # (N, S): γ^{N−1−s}
        final_state = (a * to_end).transpose(1, 2) @ bound  # (B, S, 2F)
        if S0 is not None:
            final_state = final_state + torch.exp(N * lg)[:, None] * S0
    if recall:
        return r, final_state, read_out(K, read(a), D).to(v.dtype)
    return r, final_state


@full_precision
def recurrent_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    alpha_t: Tensor,
    beta_t: Tensor,
    log_gamma: Tensor,
    state: Tensor | None,
    unitary: bool = True,
    recall: bool = False,
) -> tuple[Tensor, ...]:
    """One position: M^j = γ_j M^j + α_j B, r = irfft(conj(Q) ⊙ Σ_j β_j M^j).

    Args:
        q_t, k_t, v_t: (B, D). alpha_t, beta_t: (B, S). log_gamma: (S,).
        state: (B, S, 2F) float32/float64 memory, or None for zeros.

    Returns:
        r_t: (B, D) in v_t's dtype; new_state: (B, S, 2F) in the accumulation dtype (float64 if
        the state or any of q_t, k_t, v_t is float64, else float32), so a bf16 model decodes with
        an fp32 memory; with ``recall``, v̂_t = irfft(conj(K) ⊙ Σ_j α_j M^j) (B, D) third.
    """
    for name, t in (("q_t", q_t), ("k_t", k_t), ("v_t", v_t), ("alpha_t", alpha_t), ("beta_t", beta_t)):
        check_float(name, t)
        if t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor (B, ·), one position; got shape {tuple(t.shape)}")
    # the sequence checks with N = 1
    B, _, D, S, F = check_inputs(q_t[:, None], k_t[:, None], v_t[:, None], alpha_t[:, None], beta_t[:, None],
                                 log_gamma, state)
    acc = accumulation_dtype(q_t, k_t, v_t, state)
    Q, K, bound = spectra(q_t, k_t, v_t, unitary, acc)  # (B, F) × 2, (B, 2F)
    a = alpha_t.to(acc)
    M = torch.zeros(B, S, 2 * F, dtype=acc, device=v_t.device) if state is None else state.to(acc)
    M = M * log_gamma.to(acc).exp()[:, None] + a[..., None] * bound[:, None]  # (B, S, 2F)
    memory = (beta_t.to(acc)[:, None] @ M)[:, 0]  # (B, 1, S) @ (B, S, 2F) -> (B, 2F)
    r = read_out(Q, memory, D).to(v_t.dtype)
    if recall:
        return r, M, read_out(K, (a[:, None] @ M)[:, 0], D).to(v_t.dtype)
    return r, M


def naive_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    alpha: Tensor,
    beta: Tensor,
    log_gamma: Tensor,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    unitary: bool = True,
    recall: bool = False,
) -> tuple[Tensor, ...]:
    """O(N) python loop over ``recurrent_step``: the decoding path, and a second reference.
    Shapes and return values as in ``naive_quadratic``."""
    check_inputs(q, k, v, alpha, beta, log_gamma, initial_state)
    state, rs, recalls = initial_state, [], []
    for t in range(v.shape[1]):
        out = recurrent_step(q[:, t], k[:, t], v[:, t], alpha[:, t], beta[:, t], log_gamma, state, unitary, recall)
        state = out[1]
        rs.append(out[0])  # (B, D)
        recalls += out[2:]
    r, final_state = torch.stack(rs, dim=1), (state if output_final_state else None)
    return (r, final_state, torch.stack(recalls, dim=1)) if recall else (r, final_state)
