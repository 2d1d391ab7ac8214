"""Adaptive-rank semiseparable mixer ("AR-SSM", DESIGN.md §1.2).

Per head the N×N mixing matrix is H = T + (U Vᵀ ⊙ causal decay mask): a causal band T of width w
(a depthwise convolution over the values) plus a rank-r semiseparable part evaluated by the
chunked scan in ``muse.ops.semiseparable`` in O(N·C·r) time. Rank gates close unused ranks under
an L1 penalty, so the effective rank is learned (reported by ``stats()``). Decoding carries an
(r × p) state per head plus the last w−1 values, constant in the context length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from muse.config import ModelConfig
from muse.layers.linear import make_linear
from muse.mixers.base import Mixer, register_mixer
from muse.ops.semiseparable import naive_quadratic, recurrent_step, semiseparable


def _inverse_softplus(y: Tensor) -> Tensor:
    return torch.log(torch.expm1(y))


def causal_band_conv(z: Tensor, weight: Tensor) -> Tensor:
    """Depthwise causal convolution: y_t[c] = Σ_j weight[c, w−1−j]·z_{t−j}[c].  z (B, N, C), weight (C, w)."""
    C, w = weight.shape
    zt = F.pad(z.transpose(1, 2), (w - 1, 0))  # (B, C, N + w − 1)
    return F.conv1d(zt, weight[:, None, :].to(z.dtype), groups=C).transpose(1, 2)  # (B, N, C)


def causal_band_matrix(z: Tensor, weight: Tensor) -> Tensor:
    """The same band as an explicit (C, N, N) banded Toeplitz matmul: the quadratic reference."""
    C, w = weight.shape
    N = z.size(1)
    t = torch.arange(N, device=z.device)
    lag = t[:, None] - t[None, :]  # (N, N): t − s
    inside = (lag >= 0) & (lag < w)
    taps = weight[:, (w - 1 - lag).clamp(0, w - 1)] * inside  # (C, N, N)
    return torch.einsum("cts,bsc->btc", taps.to(z.dtype), z)


@register_mixer("semiseparable")
class SemiseparableMixer(Mixer):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        s, lin = cfg.mixer.semiseparable, cfg.mixer.linear
        d, H, p, r = cfg.d_model, cfg.n_heads, cfg.head_dim, s.max_rank
        self.s, self.H, self.p, self.r = s, H, p, r
        self.n_gated = (r - s.min_rank) if s.gates else 0
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)

        def proj(out: int, std: float = cfg.init_std) -> nn.Module:
            return make_linear(lin.kind, d, out, rank=lin.rank, bias=lin.bias, init_std=std)

        self.z_proj = proj(d) if s.value_proj == "linear" else nn.Identity()
        self.u_proj = proj(H * r)
        self.v_proj = proj(H * r)
        self.g_proj = proj(H * self.n_gated) if self.n_gated else None

        # Initial decays span memories of ~32 to ~4096 tokens across heads (RetNet-style), so some
        # heads start local and some global; ℓ = −softplus(a) keeps every log-decay ≤ 0.
        exps = torch.linspace(5.0, 12.0, H) if H > 1 else torch.tensor([5.0])
        a0 = _inverse_softplus(-torch.log1p(-(2.0**-exps)))  # (H,)
        self.decay_logit = self.decay_proj = None
        if s.decay == "fixed":
            self.decay_logit = nn.Parameter(a0)
        elif s.decay == "data":
            self.decay_proj = nn.Linear(d, H)  # d→H is tiny: always dense
            nn.init.normal_(self.decay_proj.weight, std=cfg.init_std)
            with torch.no_grad():
                self.decay_proj.bias.copy_(a0)

        self.band = nn.Parameter(torch.randn(d, s.band_width) / math.sqrt(max(s.band_width, 1))) if s.band_width else None
        self.norm_weight = nn.Parameter(torch.ones(H, p)) if s.head_norm else None
        self.o_proj = proj(d, out_std) if s.out_proj == "linear" else nn.Identity()
        self._last: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ shared by forward and step
    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        B, N, _ = x.shape
        H, p, r = self.H, self.p, self.r
        z = self.z_proj(x).view(B, N, H, p)  # (B, N, H, p)
        u = self.u_proj(x).view(B, N, H, r)  # (B, N, H, r)
        v = self.v_proj(x).view(B, N, H, r)
        if self.s.uv_norm == "l2":
            u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
        else:
            u = u * r**-0.5
        g = None
        if self.g_proj is not None:
            g = torch.sigmoid(self.g_proj(x).view(B, N, H, self.n_gated))  # (B, N, H, r − min_rank)
            u = torch.cat([u[..., : r - self.n_gated], u[..., r - self.n_gated :] * g], dim=-1)
        log_decay = None
        if self.decay_logit is not None:
            log_decay = -F.softplus(self.decay_logit).to(x.dtype).expand(B, N, H)  # (B, N, H)
        elif self.decay_proj is not None:
            log_decay = -F.softplus(self.decay_proj(x))
        return u, v, z, log_decay, g

    def _output(self, y: Tensor) -> Tensor:  # (B, N, H, p) -> (B, N, d)
        if self.norm_weight is not None:
            y = F.rms_norm(y, (self.p,), eps=1e-6) * self.norm_weight.to(y.dtype)
        return self.o_proj(y.flatten(-2))

    def _aux(self, g: Tensor | None) -> Tensor | None:
        if g is None:
            return None
        self._last = {"gate_mean": g.detach().mean(), "open": (g.detach() > 0.5).float().sum(-1).mean()}
        return self.s.gate_l1 * g.mean()

    # ------------------------------------------------------------------ Mixer API
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:  # (B, N, d)
        B, N, d = x.shape
        u, v, z, log_decay, g = self._project(x)
        if self.s.impl == "quadratic":
            y, _ = naive_quadratic(u, v, z, log_decay)
        else:
            y, _ = semiseparable(u, v, z, log_decay, impl=self.s.impl, chunk_size=self.s.chunk_size)
        if self.band is not None:
            band = causal_band_matrix if self.s.impl == "quadratic" else causal_band_conv
            y = y + band(z.reshape(B, N, d), self.band).view_as(y)
        return self._output(y), self._aux(g)

    def init_state(self, batch_size: int, device, dtype) -> dict[str, Tensor]:
        acc = torch.float64 if dtype == torch.float64 else torch.float32  # the scan accumulates in fp32
        w = self.s.band_width
        return {
            "S": torch.zeros(batch_size, self.H, self.r, self.p, device=device, dtype=acc),
            "conv": torch.zeros(batch_size, max(w - 1, 0), self.cfg.d_model, device=device, dtype=dtype),
        }

    def step(self, x_t: Tensor, state: dict[str, Tensor], pos: int) -> tuple[Tensor, dict[str, Tensor]]:
        B, d = x_t.shape
        u, v, z, log_decay, _ = self._project(x_t[:, None])  # (B, 1, H, ·)
        ld = None if log_decay is None else log_decay[:, 0]
        y, S = recurrent_step(u[:, 0], v[:, 0], z[:, 0], ld, state["S"])  # (B, H, p)
        state = {"S": S, "conv": state["conv"]}
        if self.band is not None:
            window = torch.cat([state["conv"], z.reshape(B, 1, d)], dim=1)  # (B, w, d): z_{t−w+1} … z_t
            y = y + torch.einsum("bkc,ck->bc", window, self.band.to(window.dtype)).view_as(y)
            state["conv"] = window[:, 1:]
        return self._output(y[:, None])[:, 0], state

    def stats(self) -> dict[str, float]:
        """Effective rank = min_rank + mean number of open (> 0.5) gates in the last forward."""
        if not self._last:
            return {"effective_rank": float(self.r)}
        fixed = self.r - self.n_gated
        return {"effective_rank": fixed + self._last["open"].item(), "gate_mean": self._last["gate_mean"].item()}
