"""Reference linear + cross-entropy: the (T, V) logits in full, then ``F.cross_entropy``.

Shapes (shared by every implementation in this package):

    x        (T, K)   hidden states (any float dtype)
    weight   (V, K)   the projection, ``nn.Linear.weight``'s layout: logits = x @ weight^T + bias
    bias     (V,)     or None
    targets  (T,)     integer class ids in [0, V), or ``ignore_index``
    result   ()       the SUM of the NLL over the non-ignored tokens (0 when every target is
                      ignored), float32 (float64 for float64 inputs); the caller divides by
                      ``(targets != ignore_index).sum()`` for the mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from muse.ops._inputs import accumulation_dtype

__all__ = [
    "AUTOCAST_CASTABLE", "accumulation_dtype", "autocast_operands", "check_inputs", "naive_linear_cross_entropy",
]

# the float dtypes autocast casts (every one but float64); also the Triton kernels' low-precision set
AUTOCAST_CASTABLE = (torch.float32, torch.bfloat16, torch.float16)


def autocast_operands(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """What ``F.linear`` would see under autocast on x's device: x, weight and bias in the
    autocast dtype (float64 stays float64); unchanged outside autocast. The casts are recorded
    by autograd, so the gradients come back in the callers' dtypes."""
    dev = x.device.type
    if dev == "meta" or not torch.is_autocast_enabled(dev):  # meta: no autocast to ask
        return x, weight, bias
    dt = torch.get_autocast_dtype(dev)
    cast = lambda t: t.to(dt) if t is not None and t.dtype in AUTOCAST_CASTABLE else t  # noqa: E731
    return cast(x), cast(weight), cast(bias)


def check_inputs(x: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None) -> None:
    """Shapes and dtypes of the shared signature; the message names the offending tensor."""
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor; got {getattr(t, 'dtype', type(t).__name__)}")
    if x.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"x must be (T, K) and weight (V, K); got {tuple(x.shape)} and {tuple(weight.shape)}")
    if x.shape[1] != weight.shape[1] or x.shape[1] < 1 or weight.shape[0] < 1:
        raise ValueError(f"x (T, K) and weight (V, K) need the same K >= 1 and V >= 1; got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be (V,) = ({weight.shape[0]},); got {tuple(bias.shape)}")
    if not isinstance(targets, Tensor) or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets must be an int64/int32 tensor; got {getattr(targets, 'dtype', type(targets))}")
    if tuple(targets.shape) != (x.shape[0],):
        raise ValueError(f"targets must be (T,) = ({x.shape[0]},); got {tuple(targets.shape)}")


def naive_linear_cross_entropy(
    x: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None, ignore_index: int = -100
) -> Tensor:
    """Summed NLL of ``x @ weight^T + bias`` (upcast to the accumulation dtype) against targets."""
    logits = F.linear(x, weight, bias).to(accumulation_dtype(x))  # (T, V): the whole thing
    return F.cross_entropy(logits, targets.long(), reduction="sum", ignore_index=ignore_index)
