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
- **Fused attention.** CUDA's SDPA runs a fused kernel (FlashAttention in half precision, the
  memory-efficient one otherwise) that keeps one log-sum-exp per row; CPU SDPA with dropout or a
  mask takes the math path and keeps the (N, N) scores (it tripled `baseline`'s estimate at B=32,
  N=512 with dropout 0.1). On fake tensors the policy calls the fused kernel's op, whose fake
  implementation has its shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import is_fake
from torch.overrides import TorchFunctionMode

__all__ = ["CudaStepPolicy"]

_FP32 = (F.layer_norm, F.group_norm)  # the members of CUDA autocast's fp32 list MUSE's models call
_LOW = (torch.bfloat16, torch.float16)


def _fp32(a):
    return a.float() if isinstance(a, torch.Tensor) and a.dtype in _LOW else a


class CudaStepPolicy(TorchFunctionMode):
    """Inside: CUDA autocast's fp32 normalisations (while CPU autocast is on), CUDA's fused
    dropout, and (on fake tensors) CUDA's fused attention."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FP32 and torch.is_autocast_enabled("cpu") and args and _fp32(args[0]) is not args[0]:
            args, kwargs = tuple(_fp32(a) for a in args), {k: _fp32(v) for k, v in kwargs.items()}
        elif func is F.dropout:
            x, p, training, inplace = _dropout_args(*args, **kwargs)
            if training and not inplace and 0 < p < 1:
                return torch.native_dropout(x, p, True)[0]
        elif func is F.scaled_dot_product_attention and is_fake(args[0]):
            return _fused_sdpa(*args, **kwargs)
        return func(*args, **kwargs)


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """SDPA as CUDA runs it, on fake tensors (B, H, N, p): the fused kernel's op."""
    if enable_gqa and query.size(-3) != key.size(-3):
        key = key.repeat_interleave(query.size(-3) // key.size(-3), -3)
        value = value.repeat_interleave(query.size(-3) // value.size(-3), -3)
    if attn_mask is None and query.dtype in _LOW and query.size(-1) <= 256:
        return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal,
                                                                  scale=scale)[0]
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # as SDPA turns a bool mask into a bias
        attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype).masked_fill(~attn_mask, float("-inf"))
    return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, attn_mask, True, dropout_p,
                                                                  is_causal, scale=scale)[0]


def _dropout_args(input, p=0.5, training=True, inplace=False):  # noqa: A002 - F.dropout's names
    return input, p, training, inplace
