"""Chunked causal semiseparable scan: the default CPU path and the reference for GPU kernels.

The sequence is cut into chunks of C positions. Inside a chunk the mixing matrix is small
(C x C) and built explicitly; across chunks the contribution of the past is carried by the
rank-r state S (r x p per head), exactly as in Mamba-2's SSD / fla's ``chunk_simple_gla``:

    y = intra-chunk masked matmul  +  (u * exp(b)) @ S_enter
    S_exit = exp(b_last) * S_enter + (v * exp(b_last - b))^T @ z

where b is the cumulative log decay *within* the chunk (b_last - b_s is formed as an exact
suffix sum). Work is O(N * C * (r + p)) and memory O(N * C) per head. Every exponent is
non-positive (b_t - b_s for s < t, b_last - b_s, b_t, b_last), so nothing overflows however
strong the decay; there is no exp(-b) factorisation. Because b restarts at every chunk, the
cancellation error of b_t - b_s is bounded by the decay accumulated inside one chunk, not
along the whole sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .naive import accumulation_dtype, check_inputs

__all__ = ["chunk_semiseparable"]


def chunk_semiseparable(
    u: Tensor,
    v: Tensor,
    z: Tensor,
    log_decay: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """Causal low-rank semiseparable scan in chunks of ``chunk_size`` positions.

    Args:
        u, v: (B, N, H, r) read / write keys. z: (B, N, H, p) values.
        log_decay: (B, N, H) per-step log decay, values <= 0, or None for no decay.
        initial_state: (B, H, r, p) or None (zeros).
        output_final_state: also return the state after the last position.
        chunk_size: C, a positive int; any N is accepted (the tail is zero-padded).

    Returns:
        y: (B, N, H, p) in z's dtype; final_state: (B, H, r, p) in the accumulation dtype
        (float32, float64 for float64 inputs), or None.
    """
    B, N, H, r, p = check_inputs(u, v, z, log_decay, initial_state)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
    acc = accumulation_dtype(u, v, z)
    # A chunk longer than the sequence would only multiply zeros.
    C = min(chunk_size, N)
    nC = -(-N // C)
    pad = nC * C - N

    def to_chunks(x: Tensor) -> Tensor:
        """(B, N, H, d) -> (B, H, nC, C, d) in the accumulation dtype.

        Padded positions have u = v = z = 0 and log decay 0: they write nothing to the
        state and do not decay it, so outputs and the final state are unchanged.
        """
        x = x.to(acc)
        if pad:
            x = F.pad(x, (0, 0, 0, 0, 0, pad))
        return x.reshape(B, nC, C, H, x.shape[-1]).permute(0, 3, 1, 2, 4)

    uc = to_chunks(u)  # (B, H, nC, C, r)
    vc = to_chunks(v)  # (B, H, nC, C, r)
    zc = to_chunks(z)  # (B, H, nC, C, p)
    causal = torch.ones(C, C, dtype=torch.bool, device=u.device).tril()  # (C, C): s <= t

    # Intra-chunk part for all chunks at once: one batched (C x C) matmul per chunk.
    scores = uc @ vc.transpose(-1, -2)  # (B, H, nC, C, C)
    if log_decay is not None:
        lc = to_chunks(log_decay.unsqueeze(-1)).squeeze(-1)  # (B, H, nC, C)
        b = lc.cumsum(-1)  # (B, H, nC, C): b_t = sum_{k<=t} l_k within the chunk
        # Fill -inf before exp: above the diagonal b_t - b_s > 0 can be huge, and exp of it
        # times a zero mask would be inf * 0 = NaN (also in the backward pass). The diagonal
        # is the constant 1 rather than exp(b_t - b_t): the latter sends +g and -g to b_t,
        # whose rounding (at the O(1) scale of the scores) swamps the true log-decay
        # gradient when decays are strong (it is then ~exp(l) ~ 1e-13 for l = -30).
        strict = torch.tril(causal, diagonal=-1)  # (C, C): s < t
        seg = (b.unsqueeze(-1) - b.unsqueeze(-2)).masked_fill(~strict, float("-inf"))
        eye = torch.eye(C, dtype=acc, device=u.device)
        scores = scores * (seg.exp() + eye)  # (B, H, nC, C, C)
        # Decay from each write to the chunk end, sum_{k=s+1..C} l_k, as an exclusive suffix
        # sum rather than b_last - b_s: exact, and exactly 0 (no gradient) at s = C for the
        # same reason as the diagonal above.
        suffix = lc.flip(-1).cumsum(-1).flip(-1)  # (B, H, nC, C): sum_{k=s..C} l_k
        to_end = F.pad(suffix[..., 1:], (0, 1))  # (B, H, nC, C): sum_{k=s+1..C} l_k
        v_write = vc * to_end.exp().unsqueeze(-1)  # (B, H, nC, C, r)
        u_read = uc * b.exp().unsqueeze(-1)  # (B, H, nC, C, r)
        chunk_decay = suffix[..., :1].exp().unsqueeze(-1)  # (B, H, nC, 1, 1): exp(b_last)
    else:
        scores = scores.masked_fill(~causal, 0.0)
        v_write, u_read, chunk_decay = vc, uc, None
    y = scores @ zc  # (B, H, nC, C, p)

    # What each chunk adds to the state, as if it started from zero.
    dS = v_write.transpose(-1, -2) @ zc  # (B, H, nC, r, p)
    S0 = initial_state.to(acc) if initial_state is not None else None

    if chunk_decay is None:
        # Without decay the state pass is a plain exclusive prefix sum over chunks (shifted,
        # not cumsum - dS, which would cancel).
        S_enter = torch.cat([torch.zeros_like(dS[:, :, :1]), dS[:, :, :-1].cumsum(2)], dim=2)
        if S0 is not None:
            S_enter = S_enter + S0.unsqueeze(2)
        final_state = S_enter[:, :, -1] + dS[:, :, -1] if output_final_state else None
    else:
        # Sequential over chunks only (nC = N / C steps, each an r x p update). A closed
        # cumulative form would need exp(-b) factors or an (nC x nC) matrix; the loop keeps
        # the work linear in N and every exponent non-positive.
        S = S0 if S0 is not None else torch.zeros(B, H, r, p, dtype=acc, device=u.device)
        states = []
        for c in range(nC):
            states.append(S)
            S = chunk_decay[:, :, c] * S + dS[:, :, c]  # (B, H, r, p)
        S_enter = torch.stack(states, dim=2)  # (B, H, nC, r, p)
        final_state = S if output_final_state else None

    # Inter-chunk read of the state entering each chunk, decayed to each position.
    y = y + u_read @ S_enter  # (B, H, nC, C, r) @ (B, H, nC, r, p)
    y = y.permute(0, 2, 3, 1, 4).reshape(B, nC * C, H, p)[:, :N]  # (B, N, H, p)
    return y.to(z.dtype), final_state
