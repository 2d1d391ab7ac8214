"""Reference for the semiseparable mixer's input gating: plain torch ops, any device and dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_inputs(u: Tensor, gate_logits: Tensor | None, decay_logits: Tensor | None) -> tuple[int, int]:
    """(r, n): u's rank and the number of gated ranks; ValueError naming a bad input."""
    if u.dim() != 4:
        raise ValueError(f"u must be (B, N, H, r); got shape {tuple(u.shape)}")
    r = u.shape[-1]
    n = 0
    if gate_logits is not None:
        n = gate_logits.shape[-1]
        if gate_logits.dim() != 4 or tuple(gate_logits.shape[:3]) != tuple(u.shape[:3]) or n > r:
            raise ValueError(
                f"gate_logits must be (B, N, H, n) with n <= r and u's (B, N, H) = {tuple(u.shape[:3])}; "
                f"got {tuple(gate_logits.shape)}"
            )
    if decay_logits is not None and tuple(decay_logits.shape) != tuple(u.shape[:3]):
        raise ValueError(f"decay_logits must be (B, N, H) = {tuple(u.shape[:3])}; got {tuple(decay_logits.shape)}")
    return r, n


def naive_gate_inputs(u: Tensor, gate_logits: Tensor | None, decay_logits: Tensor | None, scale: float = 1.0):
    """(u_eff, log_decay, gate_sum, gate_open) for the scan, from the mixer's projections.

    u (B, N, H, r); gate_logits (B, N, H, n) gate the last n ranks: u_eff = scale · u with
    u_eff[..., r-n:] *= σ(gate_logits); decay_logits (B, N, H) give log_decay = −softplus(·) ≤ 0
    (fp32, fp64 for fp64). gate_sum = Σ σ (fp32, differentiable: the L1 penalty's input) and
    gate_open = #{σ > 0.5} (no gradient), both (B, N, H); None without gates.
    """
    r, n = check_inputs(u, gate_logits, decay_logits)
    u = u * scale
    gate_sum = gate_open = None
    if n:
        g = torch.sigmoid(gate_logits)  # (B, N, H, n)
        u = torch.cat([u[..., : r - n], u[..., r - n :] * g.to(u.dtype)], dim=-1)
        acc = torch.float64 if g.dtype == torch.float64 else torch.float32
        gate_sum = g.to(acc).sum(-1)
        gate_open = (g.detach() > 0.5).to(acc).sum(-1)
    log_decay = None
    if decay_logits is not None:
        acc = torch.float64 if decay_logits.dtype == torch.float64 else torch.float32
        log_decay = -F.softplus(decay_logits.to(acc))
    return u, log_decay, gate_sum, gate_open
