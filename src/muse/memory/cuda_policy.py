"""What a CUDA step keeps that the estimate's CPU step would not: a mode for ``estimate``.

``muse memory``'s estimate runs the training step on fake CPU tensors under CPU autocast (with
``assume_cuda``, so MUSE's ops take their GPU paths). Two CUDA behaviours outside MUSE's ops
change what the step saves for its backward, and :class:`CudaStepPolicy` gives them to it:

- **Normalisations in fp32.** CUDA autocast runs ``layer_norm`` and ``group_norm`` in fp32 (its
  fp32 list); CPU autocast leaves them in their input's dtype. Where the residual stream is bf16
  (a TT embedding gathers its rows in bf16 under autocast), each LayerNorm then keeps an fp32
  input, and each projection that reads its fp32 output keeps its own bf16 copy (autocast caches
  the casts of weights, not of activations): `ultra` at B=32, N=512 peaked 520 MiB above the
  estimate until the estimate did the same (docs/design.md, "Fake tensors and the memory
  estimate").
- **Fused dropout.** CUDA's dropout is one kernel that keeps a bool mask (``native_dropout``);
  the CPU's keeps a noise tensor in the input's dtype, 2 to 4 times the bytes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["CudaStepPolicy"]

_FP32 = (F.layer_norm, F.group_norm)  # the members of CUDA autocast's fp32 list MUSE's models call
_LOW = (torch.bfloat16, torch.float16)


def _fp32(a):
    return a.float() if isinstance(a, torch.Tensor) and a.dtype in _LOW else a


class CudaStepPolicy(TorchFunctionMode):
    """Inside: CUDA autocast's fp32 normalisations (while CPU autocast is on) and CUDA's fused
    dropout, on whatever tensors run (the estimate's fake ones)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FP32 and torch.is_autocast_enabled("cpu") and args and _fp32(args[0]) is not args[0]:
            args, kwargs = tuple(_fp32(a) for a in args), {k: _fp32(v) for k, v in kwargs.items()}
        elif func is F.dropout:
            x, p, training, inplace = _dropout_args(*args, **kwargs)
            if training and not inplace and 0 < p < 1:
                return torch.native_dropout(x, p, True)[0]
        return func(*args, **kwargs)


def _dropout_args(input, p=0.5, training=True, inplace=False):  # noqa: A002 - F.dropout's names
    return input, p, training, inplace
