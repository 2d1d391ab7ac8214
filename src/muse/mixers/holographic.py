"""Holographic associative-memory mixer ("HAMT", DESIGN.md §1.5).

The context is stored in S memory slots of width D (``hcm_dim``): each token binds its value to
its key by circular convolution (in rfft space), writes the result into the slots with softmax
weights α_t, and every slot decays at its own learned rate γ_j, initialised from fast (recent
detail) to slow (long-range consolidation). A token reads the slots with softmax weights β_t and
unbinds the mixture with its learned query. The read runs on ``muse.ops.holographic``'s chunked
scan in training and prefill, and decoding carries only the (S, 2F) memory, F = D // 2 + 1:
constant in the context length.

An auxiliary reconstruction loss keeps the memory faithful: each token unbinds its own value
from the memory with its own key (read with its write weights α_t, where it stored it) and pays
λ_aux · (1 − cos(v̂_t, v_t)). ``stats()`` reports that cosine as the memory fidelity, the share of
slots receiving at least 1/(4S) of the write mass (slot utilisation) and exp(H(ᾱ)), the
effective number of slots written.
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
from muse.ops.holographic import holographic, num_freqs, recurrent_step
from muse.ops.rmsnorm import rms_norm


def initial_decay_logits(num_slots: int, decay_min: float, decay_max: float) -> Tensor:
    """θ (S,) with sigmoid(θ_j) = γ_j, where 1 − γ_j runs log-spaced from 1 − decay_min (slot 0,
    the fastest) to 1 − decay_max (the slowest): memory lengths 1/(1 − γ) spread evenly over
    scales, as RetNet spreads its heads' decays."""
    forget = torch.logspace(math.log10(1 - decay_min), math.log10(1 - decay_max), num_slots, dtype=torch.float64)
    # logit(γ) = log(γ / (1 − γ)), in the default dtype like every other parameter (pure bf16 builds)
    return (torch.log1p(-forget) - torch.log(forget)).to(torch.get_default_dtype())


@register_mixer("holographic")
class HolographicMixer(Mixer):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        h, lin = cfg.mixer.holographic, cfg.mixer.linear
        d, D, S = cfg.d_model, h.hcm_dim, h.num_slots
        self.h, self.D, self.S, self.F = h, D, S, num_freqs(D)
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)

        def proj(n_in: int, n_out: int, std: float = cfg.init_std) -> nn.Module:
            return make_linear(lin.kind, n_in, n_out, rank=lin.rank, bias=lin.bias, init_std=std)

        # (q, k, v, write logits, read logits). Dense projections are one GEMM (a dense map split by
        # output rows is the same map). Low-rank and TT ones stay separate, since fusing them would
        # share their factors; the slot logits are then one small dense d→2S map, which a rank
        # above 2S could not compress.
        self._widths = [D, D, D, S, S]
        self.in_proj = self.q_proj = self.k_proj = self.v_proj = self.slot_proj = None
        if lin.kind == "dense":
            self.in_proj = proj(d, sum(self._widths))
        else:
            self.q_proj, self.k_proj, self.v_proj = proj(d, D), proj(d, D), proj(d, D)
            self.slot_proj = nn.Linear(d, 2 * S)
            nn.init.normal_(self.slot_proj.weight, std=cfg.init_std)
            nn.init.zeros_(self.slot_proj.bias)
        self.decay_logit = nn.Parameter(initial_decay_logits(S, h.decay_min, h.decay_max))  # (S,)
        self.norm_weight = nn.Parameter(torch.ones(D)) if h.out_norm else None
        self.o_proj = proj(D, d, out_std)
        self._last: dict[str, Tensor] = {}
        # the fused norm kernel wherever the read runs its kernels; torch with the torch reads
        self._op_impl = "auto" if h.impl in ("auto", "triton") else "naive"

    # ------------------------------------------------------------------ shared by forward and decoding
    def _project(self, x: Tensor) -> tuple[Tensor, ...]:
        """x (B, N, d) -> q, k, v (B, N, D); alpha, beta (B, N, S) and log γ (S,) in fp32 (fp64
        for an fp64 model): the softmaxes and decays feed a memory that accumulates in fp32."""
        if self.in_proj is not None:
            q, k, v, wl, rl = self.in_proj(x).split(self._widths, dim=-1)
        else:
            xs = autocast_once(x)  # four projections read x: one autocast copy of it, not four
            q, k, v = self.q_proj(xs()), self.k_proj(xs()), self.v_proj(xs())
            wl, rl = self.slot_proj(xs()).split(self.S, dim=-1)
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        alpha, beta = wl.softmax(-1, dtype=acc), rl.softmax(-1, dtype=acc)  # (B, N, S)
        log_gamma = F.logsigmoid(self.decay_logit.to(acc))  # (S,): log γ < 0 for every θ
        return q, k, v, alpha, beta, log_gamma

    def _output(self, r: Tensor) -> Tensor:  # (B, N, D) -> (B, N, d)
        if self.norm_weight is not None:
            r = rms_norm(r, self.norm_weight, eps=1e-6, impl=self._op_impl)
        return self.o_proj(r)

    def _read(self, q, k, v, alpha, beta, log_gamma, state=None, final=False, recall=False):
        h = self.h
        return holographic(q, k, v, alpha, beta, log_gamma, initial_state=state, output_final_state=final,
                           unitary=h.unitary, impl=h.impl, chunk_size=h.chunk_size, recall=recall)

    def _aux(self, v_hat: Tensor, v: Tensor, alpha: Tensor) -> Tensor | None:
        """λ_aux · mean(1 − cos(v̂_t, v_t)) for the recall v̂ (B, N, D): v_t unbound from the memory
        with the token's own key, reading the slots with its own write weights."""
        fidelity = F.cosine_similarity(v_hat.float(), v.float(), dim=-1, eps=1e-8).mean()  # over (B, N)
        if not torch.compiler.is_compiling():
            # for stats() only; under torch.compile a module attribute set inside a checkpointed
            # block is a side effect dynamo cannot keep
            self._last = {"fidelity": fidelity.detach(), "write_mass": alpha.detach().flatten(0, -2).mean(0)}
        return (1.0 - fidelity) * self.h.aux_weight if self.h.aux_weight > 0 else None

    # ------------------------------------------------------------------ Mixer API
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:  # (B, N, d)
        q, k, v, alpha, beta, log_gamma = self._project(x)
        if self.h.aux_weight == 0 and torch.is_grad_enabled():
            # no loss needs the recall, and stats() is read after evaluation (no grad): a training
            # step without the aux loss skips that second read
            r, _ = self._read(q, k, v, alpha, beta, log_gamma)
            return self._output(r), None
        r, _, v_hat = self._read(q, k, v, alpha, beta, log_gamma, recall=True)  # (B, N, D) × 2
        return self._output(r), self._aux(v_hat, v, alpha)

    def init_state(self, batch_size: int, device, dtype) -> dict[str, Tensor]:
        acc = torch.float64 if dtype == torch.float64 else torch.float32  # the memory accumulates in fp32
        return {"memory": torch.zeros(batch_size, self.S, 2 * self.F, device=device, dtype=acc)}  # (B, S, 2F)

    def prefill(self, x: Tensor, state: dict[str, Tensor], pos: int) -> tuple[Tensor, dict[str, Tensor]]:
        r, memory = self._read(*self._project(x), state=state["memory"], final=True)  # (B, T, D), (B, S, 2F)
        return self._output(r), {"memory": memory}

    def step(self, x_t: Tensor, state: dict[str, Tensor], pos: int | Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        q, k, v, alpha, beta, log_gamma = (t[:, 0] if t.dim() == 3 else t for t in self._project(x_t[:, None]))
        r, memory = recurrent_step(q, k, v, alpha, beta, log_gamma, state["memory"], unitary=self.h.unitary)
        return self._output(r[:, None])[:, 0], {"memory": memory}

    def stats(self) -> dict[str, float]:
        """From the last eager forward: memory fidelity (mean cos(v̂_t, v_t)), slot utilisation (share
        of slots with >= 1/(4S) of the write mass) and the effective slot count exp(H(ᾱ)). {} before
        any forward, or when the forwards ran compiled."""
        if not self._last:
            return {}
        mass = self._last["write_mass"].double()  # (S,): mean write weight per slot, sums to 1
        entropy = -(mass * mass.clamp_min(1e-300).log()).sum()
        return {
            "memory_fidelity": self._last["fidelity"].item(),
            "slot_utilisation": (mass >= 1.0 / (4 * self.S)).double().mean().item(),
            "effective_slots": entropy.exp().item(),
        }
