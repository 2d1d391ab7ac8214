"""Reference implementations of the causal low-rank semiseparable scan.

The scan ("simple gated linear attention" / Mamba-2 SSD with q=u, k=v, v=z, g=log_decay)
computes, per batch b and head h, with L_t = sum_{k<=t} l_k:

    y_t = sum_{s<=t} (u_t . v_s) * exp(L_t - L_s) * z_s  +  u_t^T (exp(L_t) * S_0)
    S_N = sum_{s<=N} exp(L_N - L_s) * v_s z_s^T           +  exp(L_N) * S_0

Shapes (shared by every implementation in this package):

    u, v          (B, N, H, r)   read / write keys of the rank-r state
    z             (B, N, H, p)   values
    log_decay     (B, N, H)      per-step log decay l_t <= 0, or None for no decay
    initial_state (B, H, r, p)   S_0, or None for zeros
    y             (B, N, H, p)   returned in z's dtype
    final_state   (B, H, r, p)   returned in the accumulation dtype

Accumulation (and the state) is float32, or float64 when any of u, v, z is float64.

``naive_quadratic`` materialises the (B, H, N, N) mixing matrix and is the ground truth the
chunked path and the GPU kernels are tested against; ``naive_recurrent`` is a python loop
over ``recurrent_step``, which is also the token-by-token decoding primitive (constant memory
in the context length).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from muse.ops._inputs import accumulation_dtype, check_float

__all__ = [
    "accumulation_dtype",
    "causal_band",
    "causal_band_matrix",
    "check_inputs",
    "naive_quadratic",
    "naive_recurrent",
    "recurrent_step",
]


def check_inputs(
    u: Tensor,
    v: Tensor,
    z: Tensor,
    log_decay: Tensor | None = None,
    initial_state: Tensor | None = None,
    band: Tensor | None = None,
) -> tuple[int, int, int, int, int]:
    """Validate the scan inputs and return (B, N, H, r, p).

    Raises ValueError naming the offending tensor. The sign of ``log_decay`` is not checked:
    that would force a device synchronisation on every call.
    """
    check_float("u", u)
    if u.dim() != 4:
        raise ValueError(f"u must be a 4-D tensor (B, N, H, r); got shape {tuple(u.shape)}")
    B, N, H, r = u.shape
    if N < 1:
        raise ValueError(f"u must have at least one position (N >= 1); got shape {tuple(u.shape)}")
    check_float("v", v)
    if tuple(v.shape) != tuple(u.shape):
        raise ValueError(
            f"v must be (B, N, H, r) with the same shape as u {tuple(u.shape)}; "
            f"got {tuple(v.shape)}"
        )
    check_float("z", z)
    if z.dim() != 4 or tuple(z.shape[:3]) != (B, N, H):
        raise ValueError(
            f"z must be (B, N, H, p) with the same B, N, H as u ({B}, {N}, {H}); "
            f"got {tuple(z.shape)}"
        )
    p = z.shape[3]
    if log_decay is not None:
        check_float("log_decay", log_decay)
        if tuple(log_decay.shape) != (B, N, H):
            raise ValueError(
                f"log_decay must be (B, N, H) = ({B}, {N}, {H}) matching u; "
                f"got {tuple(log_decay.shape)}"
            )
    if initial_state is not None:
        check_float("initial_state", initial_state)
        if tuple(initial_state.shape) != (B, H, r, p):
            raise ValueError(
                f"initial_state must be (B, H, r, p) = ({B}, {H}, {r}, {p}); "
                f"got {tuple(initial_state.shape)}"
            )
    if band is not None:
        check_float("band", band)
        if band.dim() != 2 or band.shape[0] != H * p or band.shape[1] < 1:
            raise ValueError(
                f"band must be (H*p, w) = ({H * p}, w) with w >= 1; got {tuple(band.shape)}"
            )
    return B, N, H, r, p


def causal_band(z: Tensor, weight: Tensor) -> Tensor:
    """The local part T of the mixing matrix: y_t[c] = sum_j weight[c, w-1-j] z_{t-j}[c].

    z: (B, N, H, p), weight: (H*p, w) -> (B, N, H, p). A depthwise causal convolution.
    """
    B, N, H, p = z.shape
    C, w = weight.shape
    zt = F.pad(z.reshape(B, N, C).transpose(1, 2), (w - 1, 0))  # (B, C, N + w - 1)
    y = F.conv1d(zt, weight[:, None, :].to(z.dtype), groups=C)  # (B, C, N)
    return y.transpose(1, 2).reshape(B, N, H, p)


def causal_band_matrix(z: Tensor, weight: Tensor) -> Tensor:
    """``causal_band`` as an explicit banded Toeplitz matmul: its quadratic reference."""
    B, N, H, p = z.shape
    C, w = weight.shape
    t = torch.arange(N, device=z.device)
    lag = t[:, None] - t[None, :]  # (N, N): t - s
    inside = (lag >= 0) & (lag < w)
    taps = weight[:, (w - 1 - lag).clamp(0, w - 1)] * inside  # (C, N, N)
    y = torch.einsum("cts,bsc->btc", taps.to(z.dtype), z.reshape(B, N, C))
    return y.reshape(B, N, H, p)


def _segment_sums(log_decay: Tensor) -> Tensor:
    """Exact segment sums seg[t, s] = sum_{k=s+1..t} l_k for t >= s, -inf above the diagonal.

    log_decay: (B, H, N) -> (B, H, N, N).
    Summing the segment directly (rather than L_t - L_s) avoids the cancellation of two large
    cumulative sums, so the reference stays accurate even in float32 under strong decay.
    The -inf fill happens before any exp, so the upper triangle never becomes inf * 0 = NaN.
    """
    N = log_decay.shape[-1]
    ones = torch.ones(N, N, dtype=torch.bool, device=log_decay.device)
    strict = torch.tril(ones, diagonal=-1)  # (N, N): row t' > column s
    x = log_decay.unsqueeze(-1).expand(*log_decay.shape, N)  # (B, H, N, N): x[t', s] = l_t'
    x = x.masked_fill(~strict, 0.0)
    seg = torch.cumsum(x, dim=-2)  # (B, H, N, N): sum over s < t' <= t
    return seg.masked_fill(~torch.tril(ones), float("-inf"))


def naive_quadratic(
    u: Tensor,
    v: Tensor,
    z: Tensor,
    log_decay: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """O(N^2) reference: builds the (B, H, N, N) masked mixing matrix explicitly.

    Args:
        u, v: (B, N, H, r). z: (B, N, H, p). log_decay: (B, N, H), values <= 0, or None.
        initial_state: (B, H, r, p) or None. output_final_state: also return S_N.

    Returns:
        y: (B, N, H, p) in z's dtype; final_state: (B, H, r, p) in the accumulation dtype,
        or None.
    """
    check_inputs(u, v, z, log_decay, initial_state)
    acc = accumulation_dtype(u, v, z)
    uh = u.to(acc).transpose(1, 2)  # (B, H, N, r)
    vh = v.to(acc).transpose(1, 2)  # (B, H, N, r)
    zh = z.to(acc).transpose(1, 2)  # (B, H, N, p)
    N = uh.shape[2]

    scores = uh @ vh.transpose(-1, -2)  # (B, H, N, N)
    if log_decay is not None:
        ld = log_decay.to(acc).transpose(1, 2)  # (B, H, N)
        seg = _segment_sums(ld)  # (B, H, N, N), -inf above the diagonal
        mix = scores * seg.exp()
    else:
        causal = torch.ones(N, N, dtype=torch.bool, device=u.device).tril()
        mix = scores.masked_fill(~causal, 0.0)
    y = mix @ zh  # (B, H, N, p)

    S0 = initial_state.to(acc) if initial_state is not None else None
    if S0 is not None:
        # exp(L_t) is a plain prefix sum of non-positive numbers: no cancellation here.
        u_read = uh if log_decay is None else uh * torch.cumsum(ld, dim=-1).exp().unsqueeze(-1)
        y = y + u_read @ S0  # (B, H, N, r) @ (B, H, r, p)

    final_state = None
    if output_final_state:
        if log_decay is not None:
            # Last row of seg is sum_{k=s+1..N} l_k: the decay from each write to the end.
            v_w = vh * seg[..., -1, :].exp().unsqueeze(-1)  # (B, H, N, r)
        else:
            v_w = vh
        final_state = v_w.transpose(-1, -2) @ zh  # (B, H, r, p)
        if S0 is not None:
            total = 1.0 if log_decay is None else ld.sum(-1).exp()[..., None, None]
            final_state = final_state + total * S0
    return y.transpose(1, 2).to(z.dtype), final_state


def recurrent_step(
    u_t: Tensor,
    v_t: Tensor,
    z_t: Tensor,
    log_decay_t: Tensor | None,
    state: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """One step of the recurrence: S_t = exp(l_t) S_{t-1} + v_t z_t^T, y_t = u_t^T S_t.

    Args:
        u_t, v_t: (B, H, r). z_t: (B, H, p). log_decay_t: (B, H), <= 0, or None.
        state: (B, H, r, p) in float32/float64, or None for a zero state.

    Returns:
        y_t: (B, H, p) in z_t's dtype; new_state: (B, H, r, p) in the accumulation dtype
        (float64 if the state or any of u_t, v_t, z_t is float64, else float32), so a
        bf16 model decodes with an fp32 state.
    """
    for name, t in (("u_t", u_t), ("v_t", v_t), ("z_t", z_t)):
        check_float(name, t)
        if t.dim() != 3:
            raise ValueError(f"{name} must be a 3-D tensor (B, H, ·); got {tuple(t.shape)}")
    B, H, r = u_t.shape
    if tuple(v_t.shape) != (B, H, r):
        raise ValueError(f"v_t must be (B, H, r) = {(B, H, r)} like u_t; got {tuple(v_t.shape)}")
    if tuple(z_t.shape[:2]) != (B, H):
        raise ValueError(f"z_t must be (B, H, p) with B, H = {(B, H)}; got {tuple(z_t.shape)}")
    p = z_t.shape[2]
    if log_decay_t is not None:
        check_float("log_decay_t", log_decay_t)
        if tuple(log_decay_t.shape) != (B, H):
            raise ValueError(
                f"log_decay_t must be (B, H) = {(B, H)}; got {tuple(log_decay_t.shape)}"
            )
    if state is not None:
        check_float("state", state)
        if tuple(state.shape) != (B, H, r, p):
            raise ValueError(
                f"state must be (B, H, r, p) = {(B, H, r, p)}; got {tuple(state.shape)}"
            )

    acc = accumulation_dtype(u_t, v_t, z_t, state)
    if state is None:
        S = torch.zeros(B, H, r, p, dtype=acc, device=u_t.device)
    else:
        S = state.to(acc)
    if log_decay_t is not None:
        S = S * log_decay_t.to(acc).exp()[..., None, None]
    S = S + v_t.to(acc).unsqueeze(-1) * z_t.to(acc).unsqueeze(-2)  # (B, H, r, p)
    y_t = (u_t.to(acc).unsqueeze(-2) @ S).squeeze(-2)  # (B, H, 1, r) @ (B, H, r, p)
    return y_t.to(z_t.dtype), S


def naive_recurrent(
    u: Tensor,
    v: Tensor,
    z: Tensor,
    log_decay: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """O(N) python loop over ``recurrent_step``: the decoding path, and a second reference.

    Shapes and return values as in ``naive_quadratic``. The state is multiplied by exp(l_t)
    step by step, so no cumulative sum (and no cancellation) is ever formed.
    """
    B, N, H, r, p = check_inputs(u, v, z, log_decay, initial_state)
    acc = accumulation_dtype(u, v, z)
    # Cast once up front so every step works in the accumulation dtype.
    ua, va, za = u.to(acc), v.to(acc), z.to(acc)
    la = log_decay.to(acc) if log_decay is not None else None
    S = initial_state.to(acc) if initial_state is not None else None
    ys = []
    for t in range(N):
        y_t, S = recurrent_step(
            ua[:, t], va[:, t], za[:, t], None if la is None else la[:, t], S
        )
        ys.append(y_t)  # (B, H, p)
    y = torch.stack(ys, dim=1).to(z.dtype)  # (B, N, H, p)
    return y, (S if output_final_state else None)
