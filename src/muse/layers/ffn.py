"""Position-wise feed-forward network with dense, low-rank or tensor-train projections."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from muse.config import FFNConfig
from muse.layers.linear import make_linear


class FFN(nn.Module):
    """GELU MLP (GPT-2) or SwiGLU; every projection is built by ``make_linear(ffn.kind)``.

    Low-rank GELU with hidden 4d costs r·(d + 4d) per projection, i.e. 10·d·r in total versus
    8·d² dense (DESIGN §1.3).
    """

    def __init__(self, dim: int, cfg: FFNConfig, init_std: float = 0.02, out_std: float | None = None):
        super().__init__()
        hidden = max(1, round(cfg.mult * dim))
        self.hidden = hidden
        self.swiglu = cfg.activation == "swiglu"
        lin = lambda i, o, std: make_linear(cfg.kind, i, o, rank=cfg.rank, bias=cfg.bias, init_std=std)
        # the gate and up projections are separate modules so each can be low-rank/TT on its own
        self.up = lin(dim, hidden, init_std)
        self.gate = lin(dim, hidden, init_std) if self.swiglu else None
        self.down = lin(hidden, dim, out_std or init_std)

    def forward(self, x: Tensor) -> Tensor:  # (B, N, d) -> (B, N, d)
        if self.swiglu:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x), approximate="tanh"))
