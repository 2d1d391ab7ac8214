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
from muse.ops import autocast_once
from muse.ops.gates import gate_inputs
from muse.ops.rmsnorm import rms_norm
from muse.ops.semiseparable import causal_band, recurrent_step, semiseparable


def _inverse_softplus(y: Tensor) -> Tensor:
    return torch.log(torch.expm1(y))


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

        # (z, u, v, gates) widths. Dense projections are fused into one GEMM (a dense map split
        # by output rows is the same map): one launch forward and two backward instead of four
        # and eight; the scan kernels read u, v, z as column slices without copies. Low-rank
        # and TT projections stay separate, since fusing them would share their factors.
        self._widths = [d if s.value_proj == "linear" else 0, H * r, H * r, H * self.n_gated]
        self.in_proj = self.z_proj = self.u_proj = self.v_proj = self.g_proj = None
        if lin.kind == "dense":
            self.in_proj = proj(sum(self._widths))
        else:
            self.z_proj = proj(d) if s.value_proj == "linear" else None
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
        # the fused gating and head-norm kernels wherever the scan runs its kernels
        self._op_impl = "auto" if s.impl in ("auto", "triton") else "naive"

    # ------------------------------------------------------------------ shared by forward and step
    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None, tuple]:
        B, N, _ = x.shape
        H, p, r = self.H, self.p, self.r
        xs = autocast_once(x)  # up to five projections read x: one autocast copy of it, not five
        if self.in_proj is not None:
            z, u, v, gl = self.in_proj(xs()).split(self._widths, dim=-1)
        else:
            z, u, v = (m(xs()) if m is not None else None for m in (self.z_proj, self.u_proj, self.v_proj))
            gl = self.g_proj(xs()) if self.g_proj is not None else None
        z = (x if self._widths[0] == 0 else z).unflatten(-1, (H, p))  # (B, N, H, p)
        u, v = u.unflatten(-1, (H, r)), v.unflatten(-1, (H, r))  # (B, N, H, r)
        scale = r**-0.5
        if self.s.uv_norm == "l2":
            u, v, scale = F.normalize(u, dim=-1), F.normalize(v, dim=-1), 1.0
        gl = gl.unflatten(-1, (H, self.n_gated)) if self.n_gated else None  # (B, N, H, r − min_rank)
        dl = self.decay_proj(xs()) if self.decay_proj is not None else None  # (B, N, H)
        # gates, scale and −softplus in one fused op: (B, N, H, r), (B, N, H) fp32, gate sums
        u, log_decay, gate_sum, gate_open = gate_inputs(u, gl, dl, scale, impl=self._op_impl)
        if self.decay_logit is not None:
            log_decay = -F.softplus(self.decay_logit).to(x.dtype).expand(B, N, H)  # (B, N, H)
        return u, v, z, log_decay, (gate_sum, gate_open)

    def _output(self, y: Tensor) -> Tensor:  # (B, N, H, p) -> (B, N, d)
        if self.norm_weight is not None:
            # the fused kernel wherever the scan runs its kernels; torch with the torch scans
            y = rms_norm(y, self.norm_weight, eps=1e-6, impl=self._op_impl)  # per head: (B, N, H, p)
        return self.o_proj(y.flatten(-2))

    def _aux(self, gates: tuple[Tensor | None, Tensor | None]) -> Tensor | None:
        gate_sum, gate_open = gates  # (B, N, H): sum of the gates and the number open, per head
        if gate_sum is None:
            return None
        per_row = gate_sum.mean()  # the mean gate is this / n_gated, folded into one scale below
        if not torch.compiler.is_compiling():
            # for stats() only; under torch.compile a module attribute set inside a checkpointed
            # block is a side effect dynamo cannot keep, which would break the graph at every block
            self._last = {"gate_sum_per_row": per_row.detach(), "open": gate_open.mean()}
        return per_row * (self.s.gate_l1 / self.n_gated)

    # ------------------------------------------------------------------ Mixer API
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:  # (B, N, d)
        u, v, z, log_decay, gates = self._project(x)
        # The band rides along with the scan: the Triton kernels add it in their output pass.
        y, _ = semiseparable(u, v, z, log_decay, impl=self.s.impl, chunk_size=self.s.chunk_size, band=self.band)
        return self._output(y), self._aux(gates)

    def init_state(self, batch_size: int, device, dtype) -> dict[str, Tensor]:
        acc = torch.float64 if dtype == torch.float64 else torch.float32  # the scan accumulates in fp32
        w = self.s.band_width
        return {
            "S": torch.zeros(batch_size, self.H, self.r, self.p, device=device, dtype=acc),
            "conv": torch.zeros(batch_size, max(w - 1, 0), self.cfg.d_model, device=device, dtype=dtype),
        }

    def prefill(self, x: Tensor, state: dict[str, Tensor], pos: int) -> tuple[Tensor, dict[str, Tensor]]:
        B, T, d = x.shape
        u, v, z, log_decay, _ = self._project(x)  # (B, T, H, ·)
        y, S = semiseparable(u, v, z, log_decay, initial_state=state["S"], output_final_state=True,
                             impl=self.s.impl, chunk_size=self.s.chunk_size)
        state = {"S": S, "conv": state["conv"]}
        if self.band is not None:
            # The band reaches w−1 positions back, into the chunk before (the conv state), where
            # the band inside the scan would see zeros: it runs here on the joined sequence.
            window = torch.cat([state["conv"], z.reshape(B, T, d)], dim=1)  # (B, w−1+T, d)
            band = causal_band(window.view(B, -1, self.H, self.p), self.band)  # (B, w−1+T, H, p)
            y = y + band[:, window.size(1) - T :]
            state["conv"] = window[:, window.size(1) - state["conv"].size(1) :]  # the last w−1 z's
        return self._output(y), state

    def step(self, x_t: Tensor, state: dict[str, Tensor], pos: int | Tensor) -> tuple[Tensor, dict[str, Tensor]]:
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
        """Effective rank = min_rank + mean number of open (> 0.5) gates in the last eager forward
        (none recorded under torch.compile: then {} for a gated mixer)."""
        if not self._last:
            return {"effective_rank": float(self.r)} if self.n_gated == 0 else {}
        fixed = self.r - self.n_gated
        open_, gate_sum = (self._last[k].item() for k in ("open", "gate_sum_per_row"))
        return {"effective_rank": fixed + open_, "gate_mean": gate_sum / self.n_gated}
