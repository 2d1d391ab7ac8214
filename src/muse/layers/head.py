"""Output heads and the memory-bounded cross-entropy.

The loss never holds B×N×V logits: it walks over chunks of tokens and recomputes each chunk's
logits in the backward pass (activation checkpointing on the head alone), so the peak is one
chunk of fp32 logits plus its gradient. At V=50 257, N=2048, B=8 that is the difference between
3.3 GB and ~0.4 GB at the default chunk of 2048 tokens.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from muse.config import HeadConfig
from muse.layers.linear import make_linear


def make_head(cfg: HeadConfig, dim: int, vocab_size: int, init_std: float = 0.02) -> nn.Module | None:
    """The projection d → V, or None for a head tied to the embedding (it uses ``embedding.attend``)."""
    if cfg.kind == "tied":
        return None
    return make_linear(cfg.kind, dim, vocab_size, rank=cfg.rank, bias=cfg.bias, init_std=init_std)


def _chunk_nll(logits_fn: Callable[[Tensor], Tensor], h: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
    # upcast per chunk: a bf16 log-softmax over 50K classes loses ~2 digits of the loss
    return F.cross_entropy(logits_fn(h).float(), targets, ignore_index=ignore_index, reduction="sum")


def chunked_cross_entropy(
    logits_fn: Callable[[Tensor], Tensor],
    h: Tensor,
    targets: Tensor,
    chunk_size: int = 2048,
    ignore_index: int = -100,
) -> Tensor:
    """Mean next-token NLL of ``logits_fn(h)`` against ``targets`` without storing all logits.

    h: (..., d) hidden states, targets: (...) class ids. Returns a float32 scalar.
    """
    h = h.reshape(-1, h.size(-1))  # (T, d)
    targets = targets.reshape(-1)  # (T,)
    recompute = torch.is_grad_enabled()  # head weights may need grads even when h does not
    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.size(0), chunk_size):
        hc, tc = h[i : i + chunk_size], targets[i : i + chunk_size]
        if recompute:
            total = total + checkpoint(_chunk_nll, logits_fn, hc, tc, ignore_index, use_reentrant=False)
        else:
            total = total + _chunk_nll(logits_fn, hc, tc, ignore_index)
    count = (targets != ignore_index).sum().clamp(min=1)
    return total / count
