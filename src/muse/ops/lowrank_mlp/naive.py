"""Reference for the low-rank GELU MLP core: plain torch ops, the (T, H) activations stored."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_inputs", "naive_lowrank_mlp"]


def check_inputs(a: Tensor, w_up: Tensor, b_up: Tensor | None, w_down: Tensor) -> None:
    """Shapes and dtypes of the shared signature; the message names the offending tensor."""
    for name, t in (("a", a), ("w_up", w_up), ("b_up", b_up), ("w_down", w_down)):
        if t is not None and not (isinstance(t, Tensor) and t.is_floating_point()):
            raise ValueError(f"{name} must be a floating-point tensor; got {getattr(t, 'dtype', type(t).__name__)}")
    if a.dim() != 2 or w_up.dim() != 2 or w_down.dim() != 2:
        raise ValueError(f"a must be (T, R), w_up (R, H) and w_down (H, S); got {tuple(a.shape)}, "
                         f"{tuple(w_up.shape)} and {tuple(w_down.shape)}")
    if a.shape[1] != w_up.shape[0]:
        raise ValueError(f"a (T, R) and w_up (R, H) need the same R; got {tuple(a.shape)} and {tuple(w_up.shape)}")
    if w_up.shape[1] != w_down.shape[0]:
        raise ValueError(f"w_up (R, H) and w_down (H, S) need the same H; got {tuple(w_up.shape)} and "
                         f"{tuple(w_down.shape)}")
    if b_up is not None and tuple(b_up.shape) != (w_up.shape[1],):
        raise ValueError(f"b_up must be (H,) = ({w_up.shape[1]},); got {tuple(b_up.shape)}")


def naive_lowrank_mlp(a: Tensor, w_up: Tensor, b_up: Tensor | None, w_down: Tensor) -> Tensor:
    """c = gelu_tanh(a @ w_up + b_up) @ w_down: a (T, R), w_up (R, H), b_up (H,) or None,
    w_down (H, S) -> c (T, S). Autocast applies as to the unfused FFN (F.linear casts the bias)."""
    check_inputs(a, w_up, b_up, w_down)
    return F.gelu(F.linear(a, w_up.T, b_up), approximate="tanh") @ w_down  # (T, H) in between
