"""One autocast cast of an input that several projections read."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["autocast_once"]


class _Alias(torch.autograd.Function):
    """An alias of ``low`` (the cast of ``x``) whose gradient reaches ``x`` cast back to its dtype,
    as the backward of autocast's own cast does."""

    @staticmethod
    def forward(ctx, x: Tensor, low: Tensor) -> Tensor:
        ctx.dtype = x.dtype
        return low.view_as(low)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad.to(ctx.dtype), None


def autocast_once(x: Tensor) -> Callable[[], Tensor]:
    """A function giving ``x`` to each of several projections: call it once per projection.

    Under autocast each matmul casts an fp32 input to the autocast dtype and saves its own copy
    for the backward (autocast caches its casts of leaves that need grad, the weights, only), so
    k projections of one fp32 activation keep k identical low-precision copies. Here ``x`` is cast
    once and every call returns an alias of that one copy, each its own autograd node: the matmuls
    see the values autocast would give them, and the gradients reach ``x`` cast to its dtype one
    by one and are summed there, in ``x``'s dtype, as autocast's casts do. Outputs and gradients
    are unchanged bit for bit; the saved copies are one. Outside autocast, or for an input not in
    fp32 (which autocast does not cast), ``x`` itself."""
    device = x.device.type
    if not torch.is_autocast_enabled(device) or x.dtype != torch.float32:
        return lambda: x
    low = x.detach().to(torch.get_autocast_dtype(device))
    if not x.requires_grad:
        return lambda: low
    return lambda: _Alias.apply(x, low)
