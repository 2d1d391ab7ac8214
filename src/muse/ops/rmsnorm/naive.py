"""Reference RMS normalisation with per-group weights: the torch form the kernel is tested against."""

from __future__ import annotations

import torch
from torch import Tensor


def check_inputs(x: Tensor, weight: Tensor) -> tuple[int, int]:
    """(G, D) for x (..., G, D) with weight (G, D), or x (..., D) with weight (D,)."""
    if not (x.is_floating_point() and weight.is_floating_point()):
        raise ValueError(f"rms_norm: x and weight must be floating point; got {x.dtype} and {weight.dtype}")
    if weight.dim() not in (1, 2) or tuple(x.shape[x.dim() - weight.dim():]) != tuple(weight.shape):
        raise ValueError(
            f"rms_norm: weight must be (D,) or (G, D) matching x's trailing dimensions; "
            f"got x {tuple(x.shape)} and weight {tuple(weight.shape)}"
        )
    return (1, weight.shape[0]) if weight.dim() == 1 else tuple(weight.shape)


def naive_rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(mean(x², -1) + eps) * weight, computed in fp32 (fp64 stays fp64), in x's dtype.

    x: (..., D) with weight (D,), or (..., G, D) with weight (G, D): group g of every row uses
    its own weight row (per-head norms).
    """
    check_inputs(x, weight)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(acc)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(acc)
    return y.to(x.dtype)
