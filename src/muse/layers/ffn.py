"""Position-wise feed-forward network with dense, low-rank or tensor-train projections."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from muse.config import FFNConfig
from muse.layers.linear import LowRankLinear, make_linear
from muse.ops import activation_checkpoint
from muse.ops.lowrank_mlp import lowrank_mlp, resolve_impl


class FFN(nn.Module):
    """GELU MLP (GPT-2) or SwiGLU; every projection is built by ``make_linear(ffn.kind)``.

    Low-rank GELU with hidden 4d costs r·(d + 4d) per projection, i.e. 10·d·r in total versus
    8·d² dense (DESIGN §1.3).

    With ``ffn.token_chunk`` = c > 0 the FFN is applied to chunks of c tokens (it is
    position-wise, so the result is the same). Under autograd each chunk is an activation
    checkpoint: the forward keeps only the chunk's input, and the backward recomputes one chunk's
    hidden activations at a time, so the (T, hidden) tensors — the largest in a low-rank FFN,
    whose hidden width stays 4d however small r is — exist for c tokens instead of T. Nested
    inside a checkpointed block this moves the backward peak of ``ultra`` off the FFN.

    A low-rank GELU FFN runs its (T, hidden) middle as ``muse.ops.lowrank_mlp`` (``ffn.impl``):
    on CUDA a fused kernel that keeps those tiles in registers and recomputes them in the
    backward, so there token_chunk is not applied.
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
        self.token_chunk = cfg.token_chunk
        # low-rank GELU: the (T, hidden) middle runs as one op that can skip storing it
        self.fused = not self.swiglu and isinstance(self.up, LowRankLinear) and isinstance(self.down, LowRankLinear)
        self.impl = cfg.impl

    def forward(self, x: Tensor) -> Tensor:  # (B, N, d) -> (B, N, d)
        c = self.token_chunk
        if not c or x.shape[:-1].numel() <= c or self._kernel(x):
            return self._mlp(x)
        chunks = x.reshape(-1, x.size(-1)).split(c)  # views of (T, d), c rows each
        if torch.is_grad_enabled():
            out = [activation_checkpoint(self._mlp, xc, preserve_rng_state=False) for xc in chunks]  # no RNG
        else:
            out = [self._mlp(xc) for xc in chunks]
        return torch.cat(out).view(*x.shape[:-1], -1)

    def _kernel(self, x: Tensor) -> bool:
        """The fused low-rank GELU kernel runs: it stores no (T, hidden) tensor, so token chunks
        (and their recomputation) would buy nothing."""
        return self.fused and resolve_impl(self.impl, x, (self.up.rank, self.down.rank)) == "triton"

    def _mlp(self, x: Tensor) -> Tensor:  # (..., d) -> (..., d)
        if self.swiglu:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        if self.fused:
            up, down = self.up, self.down
            a = (x @ up.A).flatten(0, -2)  # (T, r)
            c = lowrank_mlp(a, up.B, up.bias, down.A, impl=self.impl)  # (T, r); the (T, hidden) GELU inside
            return F.linear(c, down.B.T, down.bias).unflatten(0, x.shape[:-1])
        return self.down(F.gelu(self.up(x), approximate="tanh"))
