"""Chunked holographic read: the default path, and the reference for a GPU kernel.

The memory read Σ_j β_tj M^j_t is linear attention with the S slot weights as features and a
fixed per-feature decay γ_j over the bound spectra (real and imaginary parts as 2F real
channels). The sequence is cut into chunks of C positions; with i, i' positions inside a chunk:

    intra:  A[i, i'] = Σ_j β_ij γ_j^{i−i'} α_i'j   (i' <= i),   read_i = Σ_i' A[i, i'] B_i'
    inter:  read_i += Σ_j β_ij γ_j^{i+1} M^j_enter
    state:  M^j_exit = γ_j^C M^j_enter + Σ_i' γ_j^{C−1−i'} α_i'j B_i'

Work is O(N·C·(S + 2F)) and memory O(N·C·S); the state (S, 2F) is carried across chunks in
fp32 (fp64 for fp64 inputs). Every power of γ is formed as exp(n·log γ) with n >= 0, so it lies
in (0, 1]: no γ^{−s} factorisation, which overflows for fast slots (γ = 0.5 over 2048 positions
is 2^2048). The decay table (C, C, S) is the same for every chunk, since γ does not depend on
the token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F_
from torch import Tensor

from .naive import accumulation_dtype, check_inputs, full_precision, read_out, spectra

__all__ = ["chunk_holographic"]


@full_precision
def chunk_holographic(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    alpha: Tensor,
    beta: Tensor,
    log_gamma: Tensor,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    unitary: bool = True,
    chunk_size: int = 64,
    recall: bool = False,
) -> tuple[Tensor, ...]:
    """Holographic read in chunks of ``chunk_size`` positions (any N: the tail is zero-padded).

    Args: q, k, v (B, N, D); alpha, beta (B, N, S); log_gamma (S,); initial_state (B, S, 2F) or
        None; output_final_state: also return the memory after the last position; unitary:
        unit-modulus keys and queries; recall: also return the recall v̂ (``naive.py``), a second
        read of the same memory.
    Returns: r (B, N, D) in v's dtype; final_state (B, S, 2F) in the accumulation dtype, or None;
        with ``recall``, v̂ (B, N, D) third.
    """
    B, N, D, S, F = check_inputs(q, k, v, alpha, beta, log_gamma, initial_state)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
    acc = accumulation_dtype(q, k, v)
    Q, K, bound = spectra(q, k, v, unitary, acc)  # (B, N, F) × 2, (B, N, 2F)
    lg = log_gamma.to(acc)  # (S,)
    C = min(chunk_size, N)  # a chunk longer than the sequence would only multiply zeros
    nC = -(-N // C)
    last = N - (nC - 1) * C  # real positions in the last chunk

    def to_chunks(x: Tensor) -> Tensor:
        """(B, N, X) -> (B, nC, C, X). Padded positions have α = β = 0 and B = 0: they write and
        read nothing. They would still decay the memory, so the final state is taken at the last
        real position below, not at the padded chunk end."""
        return F_.pad(x.to(acc), (0, 0, 0, nC * C - N)).view(B, nC, C, x.shape[-1])

    xc, ac, bc = to_chunks(bound), to_chunks(alpha), to_chunks(beta)  # (B, nC, C, 2F | S | S)
    i = torch.arange(C, device=v.device)
    lag = (i[:, None] - i[None, :]).to(acc)  # (C, C): i − i'
    # exp only on the causal triangle: above it lag·log γ > 0 could overflow, and inf · 0 = NaN
    decay = torch.exp(lag.clamp(min=0)[..., None] * lg) * (lag >= 0)[..., None]  # (C, C, S)

    # What each chunk adds to the memory as if it started from zero: γ^{C−1−i'} α_i'
    to_end = torch.exp((C - 1 - i).to(acc)[:, None] * lg)  # (C, S)
    dM = (ac * to_end).transpose(-1, -2) @ xc  # (B, nC, S, 2F)
    chunk_decay = torch.exp(C * lg)[:, None]  # (S, 1): γ^C
    # Sequential over chunks only (N / C steps of an (S, 2F) update): a closed form over chunks
    # would need γ^{−c·C} factors.
    M = initial_state.to(acc) if initial_state is not None else torch.zeros(B, S, 2 * F, dtype=acc, device=v.device)
    entering = []
    for c in range(nC):
        entering.append(M)
        M = chunk_decay * M + dM[:, c]  # (B, S, 2F)
    M_enter = torch.stack(entering, dim=1)  # (B, nC, S, 2F)
    from_enter = torch.exp((i + 1).to(acc)[:, None] * lg)  # (C, S): γ^{i+1}

    def read(wc: Tensor) -> Tensor:
        """Σ_j w_ij M^j_i (B, N, 2F) for read weights wc (B, nC, C, S): the writes inside the
        chunk, then the memory carried into it."""
        mix = torch.einsum("bcis,ijs,bcjs->bcij", wc, decay, ac)  # (B, nC, C, C)
        memory = mix @ xc + (wc * from_enter) @ M_enter  # (B, nC, C, 2F)
        return memory.view(B, nC * C, 2 * F)[:, :N]

    r = read_out(Q, read(bc), D).to(v.dtype)  # (B, N, D)

    final_state = None
    if output_final_state:
        if last == C:
            final_state = M
        else:  # the last chunk ends at position `last`, not at C: γ^{last−1−i'} on its real writes
            real = i < last
            w = torch.exp((last - 1 - i).clamp(min=0).to(acc)[:, None] * lg) * real[:, None]  # (C, S)
            final_state = torch.exp(last * lg)[:, None] * entering[-1] + (ac[:, -1] * w).transpose(-1, -2) @ xc[:, -1]
    if recall:
        return r, final_state, read_out(K, read(ac), D).to(v.dtype)
    return r, final_state
