"""Input checks and accumulation dtypes shared by several ops (their references and fast paths).

Every op accumulates in float32 (float64 when given float64, so the references can be checked
to float64 precision), whatever the input dtype; and every op refuses a non-tensor or a
non-floating-point input with a message naming the argument.
"""

from __future__ import annotations

import torch
from torch import Tensor


def accumulation_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any given tensor is float64, else float32 (also for bf16/fp16 inputs)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def check_float(name: str, t: Tensor) -> None:
    """ValueError naming ``name`` unless ``t`` is a floating-point tensor."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {t.dtype}")
