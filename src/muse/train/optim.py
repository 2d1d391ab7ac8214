"""Optimizer and learning-rate schedule: AdamW (fused on CUDA), torchao's 8-bit AdamW or
torchao's CPU-offloaded AdamW, with linear warm-up followed by cosine decay.

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

from muse.config import ConfigError, TrainConfig

AO_HINT = "train.optimizer adamw8bit needs torchao: pip install 'muse[ao]'"
OFFLOAD_MIN_NUMEL = 4096  # parameters with fewer values stay on the GPU with a fused AdamW there


def _no_decay(name: str, p: nn.Parameter) -> bool:
    # Per-head norm gains can be 2-D (the semiseparable mixer's (H, p) ``norm_weight``); they are
    # still gains around 1, not weights, so the name keeps them out of decay as well.
    return p.ndim < 2 or "norm" in name.rsplit(".", 1)[-1]


def factor_params(model: nn.Module) -> set[int]:
    """ids of the factor parameters of factorised layers (those marking themselves ``factorized``:
    low-rank A and B, TT cores), which ``train.factor_lr_scale`` trains at a scaled learning rate.
    Their biases and bond phases (ndim < 2) are not factors."""
    return {id(p) for m in model.modules() if getattr(m, "factorized", False) for p in m.parameters() if p.ndim >= 2}


def param_groups(model: nn.Module, weight_decay: float, factor_lr: float | None = None) -> list[dict]:
    """AdamW parameter groups: ``decay`` (weight_decay) and ``no_decay`` (0); with ``factor_lr``
    also ``decay_factor``, the factors of factorised layers (:func:`factor_params`) at that
    learning rate (the others take the optimizer's). The LR schedule scales every group alike.

    ``named_parameters`` yields a shared parameter (tied head, norms shared across blocks)
    once, so every trainable parameter lands in exactly one group. Empty groups are left out.
    """
    factors = factor_params(model) if factor_lr is not None else set()
    decay, no_decay, decay_factor = [], [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            if _no_decay(name, p):
                no_decay.append(p)
            else:
                (decay_factor if id(p) in factors else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
        {"params": decay_factor, "weight_decay": weight_decay, "name": "decay_factor", "lr": factor_lr},
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


def _import_cpu_offload():
    try:
        from torchao.optim import CPUOffloadOptimizer
    except ImportError:
        raise ValueError("train.optimizer adamw-offload needs torchao: pip install 'muse[ao]'") from None
    return CPUOffloadOptimizer


def check_offload_device(device_type: str) -> None:
    if device_type != "cuda":
        raise ConfigError(
            f"train.optimizer adamw-offload needs a CUDA device (it keeps a GPU model's AdamW states in host "
            f"memory); on {device_type} use train.optimizer adamw"
        )


def is_offloaded(opt) -> bool:
    """True for torchao's CPUOffloadOptimizer (duck-typed: it is not a regular Optimizer inside)."""
    return hasattr(opt, "param_d2h_map") and hasattr(opt, "optim_dict")


def sync_offloaded_params(opt) -> None:
    """Copy the GPU parameters into an offloading optimizer's host copies.

    CPUOffloadOptimizer copies each parameter to the host once, when it is built, and from then
    on updates the host copy and copies it back. Weights loaded into the model afterwards (a
    resumed run) must be pushed to the host copies too, or the first step would overwrite them
    with the stale initial values."""
    if not is_offloaded(opt):
        return
    with torch.no_grad():
        for p_dev, p_host in opt.param_d2h_map.items():
            p_host.copy_(p_dev.detach())


def load_optimizer_state(opt, state: dict) -> None:
    """``opt.load_state_dict(state)``, and for an offloading optimizer one repair: torchao's
    ``param_groups`` serves its own list of the on-device (small-parameter) groups, whose dicts
    ``Optimizer.load_state_dict`` has just replaced inside ``d_opt``. Re-point it, or the LR
    scheduler would from then on write to the stale dicts and the small parameters would keep the
    checkpoint's learning rate for the rest of the run."""
    opt.load_state_dict(state)
    if is_offloaded(opt) and opt.d_opt is not None:
        opt.d_param_groups = opt.d_opt.param_groups


@torch.no_grad()
def clip_grad_norm(model: nn.Module, opt, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over every gradient of the step, wherever it lives; returns the total norm.

    With an offloading optimizer the gradients of the large parameters are already on the host
    when backward returns (and gone from the GPU): wait for their copies, take the 2-norm over
    the host gradients and the on-GPU ones (small parameters) together, and scale both in place
    by the same ``max_norm / (norm + 1e-6)`` capped at 1, as ``torch.nn.utils.clip_grad_norm_``
    does. Other optimizers: ``torch.nn.utils.clip_grad_norm_`` itself.
    """
    if not is_offloaded(opt):
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    host = []
    for p_dev, event in opt.queue.items():  # the parameters that got a gradient this step
        event.synchronize()  # its device-to-host copy has finished
        host.append(opt.param_d2h_map[p_dev].grad)
    dev = []
    if opt.d_opt is not None:
        dev = [p.grad for g in opt.d_opt.param_groups for p in g["params"] if p.grad is not None]
    if not host and not dev:
        return torch.zeros(())
    sq = torch.zeros((), dtype=torch.float64)
    for g in host:
        sq += torch.linalg.vector_norm(g, dtype=torch.float32).double() ** 2
    if dev:
        dev_norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in dev])
        sq += (dev_norms.double() ** 2).sum().cpu()
    total = sq.sqrt().float()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in host:
        g.mul_(coef)
    if dev:
        torch._foreach_mul_(dev, coef.to(dev[0].device))
    return total


def build_optimizer(model: nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` as ``cfg.optimizer`` asks.

    ``adamw`` uses the fused CUDA kernel on CUDA and the default (foreach) implementation
    elsewhere. ``adamw8bit`` keeps both moments in 8 bits (block-wise quantised, for tensors of
    ≥ 4096 elements) through torchao; its ``param_groups[i]["lr"]`` is a 0-d tensor, which
    ``LambdaLR`` updates in place. Under ``bf16-pure`` precision it rounds updates
    stochastically, so small steps are not lost to bf16 rounding.

    ``adamw-offload`` (CUDA only) is torchao's ``CPUOffloadOptimizer`` around a fused CPU AdamW:
    for every parameter of >= 4096 values the gradient is copied to pinned host memory as soon
    as backward has accumulated it and freed on the GPU, the AdamW states live in host memory
    (in the parameter's dtype) and the update runs on the CPU before the new values are copied
    back; smaller parameters keep a fused AdamW on the GPU. So gradients cannot be accumulated
    over micro-batches (the config refuses ``grad_accum > 1``), clipping needs
    :func:`clip_grad_norm`, and a resumed run must load the state with :func:`load_optimizer_state`
    and call :func:`sync_offloaded_params` after loading weights. Under ``bf16-pure`` the host states and update are bf16, rounded to nearest.
    """
    groups = param_groups(model, cfg.weight_decay, cfg.lr * cfg.factor_lr_scale if cfg.factor_lr_scale != 1 else None)
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        fused = device_type == "cuda" or None  # None: let torch pick foreach/for-loop
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=fused)
    if cfg.optimizer == "adamw8bit":
        AdamW8bit = _import_adamw8bit()  # lazily: importing torchao is slow and noisy on CPU
        if device_type == "cpu":
            _check_cpu_compiler()
        return AdamW8bit(groups, lr=cfg.lr, betas=betas, bf16_stochastic_round=cfg.precision == "bf16-pure")
    if cfg.optimizer == "adamw-offload":
        check_offload_device(device_type)
        CPUOffloadOptimizer = _import_cpu_offload()
        return CPUOffloadOptimizer(
            groups, torch.optim.AdamW, offload_gradients=True, minimal_size=OFFLOAD_MIN_NUMEL,
            lr=cfg.lr, betas=betas, fused=True,
        )
    raise ValueError(f"train.optimizer must be adamw, adamw8bit or adamw-offload; got {cfg.optimizer!r}")


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
