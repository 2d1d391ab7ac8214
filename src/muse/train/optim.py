"""Optimizer and learning-rate schedule: AdamW (fused on CUDA) or torchao's 8-bit AdamW, with
linear warm-up followed by cosine decay.

Weight decay follows the GPT-2/nanoGPT convention: matrices, embedding tables and TT cores
(ndim ≥ 2) are decayed; vectors and scalars (biases, norm weights, bond phases, decay
logits, gate biases) are not, since shrinking them towards zero only fights their purpose.
"""

from __future__ import annotations

import math
import os
import shutil
import sys

import torch
from torch import nn

from muse.config import TrainConfig

AO_HINT = "train.optimizer adamw8bit needs torchao: pip install 'muse[ao]'"


def _no_decay(name: str, p: nn.Parameter) -> bool:
    # Per-head norm gains can be 2-D (the semiseparable mixer's (H, p) ``norm_weight``); they are
    # still gains around 1, not weights, so the name keeps them out of decay as well.
    return p.ndim < 2 or "norm" in name.rsplit(".", 1)[-1]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW parameter groups: ``decay`` (weight_decay) and ``no_decay`` (0).

    ``named_parameters`` yields a shared parameter (tied head, norms shared across blocks)
    once, so every trainable parameter lands in exactly one group. Empty groups are left out.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if _no_decay(name, p) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [g for g in groups if g["params"]]


def _import_adamw8bit():
    try:
        from torchao.optim import AdamW8bit  # torchao >= 0.11
    except ImportError:
        try:
            from torchao.prototype.low_bit_optim import AdamW8bit  # older releases
        except ImportError:
            raise ValueError(AO_HINT) from None
    return AdamW8bit


def _check_cpu_compiler() -> None:
    """AdamW8bit runs every update through ``torch.compile``; on CPU, Inductor emits C++ and
    needs a compiler. Fail now with a clear message rather than inside the first step."""
    cxx = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")  # Inductor's default
    if shutil.which(cxx) is None:
        raise ValueError(
            f"train.optimizer adamw8bit on CPU needs a C++ compiler for torch.compile ({cxx!r} not found); "
            "install one, set CXX, or use train.optimizer adamw"
        )


def build_optimizer(model: nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` as ``cfg.optimizer`` asks.

    ``adamw`` uses the fused CUDA kernel on CUDA and the default (foreach) implementation
    elsewhere. ``adamw8bit`` keeps both moments in 8 bits (block-wise quantised, for tensors of
    ≥ 4096 elements) through torchao; its ``param_groups[i]["lr"]`` is a 0-d tensor, which
    ``LambdaLR`` updates in place. Under ``bf16-pure`` precision it rounds updates
    stochastically, so small steps are not lost to bf16 rounding.
    """
    groups = param_groups(model, cfg.weight_decay)
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        fused = device_type == "cuda" or None  # None: let torch pick foreach/for-loop
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=fused)
    if cfg.optimizer == "adamw8bit":
        AdamW8bit = _import_adamw8bit()  # lazily: importing torchao is slow and noisy on CPU
        if device_type == "cpu":
            _check_cpu_compiler()
        return AdamW8bit(groups, lr=cfg.lr, betas=betas, bf16_stochastic_round=cfg.precision == "bf16-pure")
    raise ValueError(f"train.optimizer must be adamw or adamw8bit; got {cfg.optimizer!r}")


def lr_lambda(step: int, cfg: TrainConfig, total_steps: int | None) -> float:
    """LR multiplier at optimizer step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` (so step 0 already learns), then cosine decay
    from 1 to ``min_lr_ratio`` at ``total_steps``, constant after. ``total_steps=None`` (only a
    time budget, length unknown) keeps the peak LR after warm-up.
    """
    warmup = cfg.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if total_steps is None:
        return 1.0
    if step >= total_steps:
        return cfg.min_lr_ratio
    progress = (step - warmup) / max(1, total_steps - warmup)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int | None
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over :func:`lr_lambda`; call ``.step()`` once after each optimizer step.

    The schedule is a closure rather than a callable object so that ``state_dict()`` holds only
    the step counter and LRs (LambdaLR stores callable objects' ``__dict__``, which would drag
    the config into the checkpoint); a resumed run rebuilds the schedule from its config.
    """
    if total_steps is not None and total_steps < 1:
        raise ValueError(f"total_steps must be >= 1 or None; got {total_steps}")

    def schedule(step: int) -> float:
        return lr_lambda(step, cfg, total_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
