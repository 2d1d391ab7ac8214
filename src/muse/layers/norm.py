"""Normalisation layers chosen by ``norm.kind``."""

from __future__ import annotations

from torch import nn

from muse.config import NormConfig


def make_norm(cfg: NormConfig, dim: int) -> nn.Module:
    if cfg.kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=cfg.eps)
    return nn.LayerNorm(dim, eps=cfg.eps)
