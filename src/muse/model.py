"""MuseLM: embedding → blocks (mixer + FFN, pre-norm) → norm → head, assembled from a config.

Single-device by design: distribution (DDP/FSDP) wraps this module from the outside.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from muse.config import Config, ModelConfig
from muse.layers.embedding import DenseEmbedding, LowRankEmbedding, TTEmbedding
from muse.layers.ffn import FFN
from muse.layers.head import head_logits, lm_loss, make_head
from muse.layers.norm import make_norm
from muse.mixers import build_mixer
from muse.ops import activation_checkpoint
from muse.ops._dispatch import check_range

# Prompt tokens per parallel prefill pass: long enough to keep a GPU busy, short enough that the
# activations of one pass stay small next to the model.
PREFILL_CHUNK = 2048


def make_embedding(cfg: ModelConfig) -> nn.Module:
    e, V, d = cfg.embedding, cfg.vocab_size, cfg.d_model
    if e.kind == "tt":
        return TTEmbedding(
            V, d, e.rank, num_cores=e.num_cores, vocab_factors=e.vocab_factors,
            dim_factors=e.dim_factors, phase=e.phase, init_std=cfg.init_std, gather_impl=e.gather_impl,
        )
    if e.kind == "lowrank":
        return LowRankEmbedding(V, d, e.rank, init_std=cfg.init_std)
    return DenseEmbedding(V, d, init_std=cfg.init_std)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, norms: tuple[nn.Module, nn.Module] | None = None):
        super().__init__()
        self.norm1, self.norm2 = norms or (make_norm(cfg.norm, cfg.d_model), make_norm(cfg.norm, cfg.d_model))
        self.mixer = build_mixer(cfg, layer_idx)
        self.ffn = FFN(cfg.d_model, cfg.ffn, cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:  # (B, N, d)
        h, aux = self.mixer(self.norm1(x))
        x = x + self.drop(h)
        x = x + self.drop(self.ffn(self.norm2(x)))
        return x, aux

    def prefill(self, x: Tensor, state: dict[str, Tensor], pos: int) -> tuple[Tensor, dict[str, Tensor]]:  # (B, T, d)
        h, state = self.mixer.prefill(self.norm1(x), state, pos)
        x = x + h
        return x + self.ffn(self.norm2(x)), state

    def step(self, x_t: Tensor, state: dict[str, Tensor], pos: int | Tensor) -> tuple[Tensor, dict[str, Tensor]]:  # (B, d)
        h, state = self.mixer.step(self.norm1(x_t), state, pos)
        x_t = x_t + h
        return x_t + self.ffn(self.norm2(x_t)), state


@dataclass
class LMOutput:
    logits: Tensor | None  # (B, N, V), None when only the loss was asked for
    loss: Tensor | None  # mean next-token NLL (float32), without the auxiliary losses
    aux_loss: Tensor | None  # sum of the mixers' auxiliary losses (rank-gate L1, ...)


class MuseLM(nn.Module):
    def __init__(self, cfg: ModelConfig | Config):
        super().__init__()
        cfg = cfg.model if isinstance(cfg, Config) else cfg
        self.cfg = cfg
        self.embed = make_embedding(cfg)
        self.pos = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.positions == "learned" else None
        if self.pos is not None:
            nn.init.normal_(self.pos.weight, std=cfg.init_std)
        self.drop = nn.Dropout(cfg.dropout)
        shared = (make_norm(cfg.norm, cfg.d_model), make_norm(cfg.norm, cfg.d_model)) if cfg.norm.shared else None
        self.blocks = nn.ModuleList(Block(cfg, i, shared) for i in range(cfg.n_layers))
        self.norm = make_norm(cfg.norm, cfg.d_model)
        self.head = make_head(cfg.head, cfg.d_model, cfg.vocab_size, cfg.init_std)
        if cfg.factor_init == "spectral":
            for m in self.modules():  # low-rank and TT factors (layers that have the method)
                if hasattr(m, "spectral_init_"):
                    m.spectral_init_()
        # a learned position table or a KV cache caps the context; recurrent mixers do not
        bounded = self.pos is not None or any(b.mixer.bounded_context for b in self.blocks)
        self.max_context: int | None = cfg.max_seq_len if bounded else None

    # ------------------------------------------------------------------ forward
    def logits(self, h: Tensor) -> Tensor:
        """(..., d) → (..., V); a tied head contracts with the (possibly TT) embedding directly."""
        return head_logits(self.head, self.embed, h)

    def _check_ids(self, idx: Tensor, offset: int = 0) -> None:
        if idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"token ids must be an integer tensor; got {idx.dtype}")
        V = self.cfg.vocab_size
        check_range(idx, V, lambda lo, hi: f"token ids must lie in the vocabulary [0, {V}) (model.vocab_size)"
                    if lo is None else f"token id {hi if hi >= V else lo} is outside the vocabulary [0, {V}) "
                    "(model.vocab_size)")
        if self.max_context is not None and idx.size(-1) + offset > self.max_context:
            raise ValueError(f"sequence length {idx.size(-1) + offset} exceeds model.max_seq_len={self.max_context}")

    def hidden(self, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """Final-norm hidden states (B, N, d) and the summed auxiliary loss."""
        self._check_ids(idx)
        x = self.embed(idx)  # (B, N, d)
        if self.pos is not None:
            x = x + self.pos(torch.arange(idx.size(1), device=idx.device))
        x = self.drop(x)
        aux = None
        for block in self.blocks:
            if self.cfg.checkpointing and self.training and torch.is_grad_enabled():
                # nothing random to replay without dropout; saving the CUDA RNG state would
                # also be a host read that a captured step (train.cuda_graph) cannot make
                x, a = activation_checkpoint(block, x, preserve_rng_state=self.cfg.dropout > 0)
            else:
                x, a = block(x)
            if a is not None:
                aux = a if aux is None else aux + a
        return self.norm(x), aux

    def forward(self, idx: Tensor, targets: Tensor | None = None, return_logits: bool | None = None) -> LMOutput:
        """idx, targets: (B, N) token ids. With targets, logits are only built when asked for."""
        h, aux = self.hidden(idx)
        loss = None
        if targets is not None:
            loss = lm_loss(self.cfg.head, self.head, self.embed, h, targets)
        want_logits = targets is None if return_logits is None else return_logits
        return LMOutput(self.logits(h) if want_logits else None, loss, aux)

    # ------------------------------------------------------------------ decoding
    def init_state(self, batch_size: int, device=None, dtype=None) -> dict[str, Any]:
        """Per-layer recurrent state (semiseparable) or KV cache (attention), at position 0."""
        p = next(self.parameters())
        device, dtype = device or p.device, dtype or p.dtype
        return {"pos": 0, "layers": [b.mixer.init_state(batch_size, device, dtype) for b in self.blocks]}

    @torch.no_grad()
    def step(self, idx_t: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """One decoding step: idx_t (B,) → logits (B, V); equals the last row of a full forward."""
        pos = state["pos"]
        self._check_ids(idx_t[:, None], offset=pos)
        logits, layers = self.decode_step(idx_t, state["layers"], pos)
        return logits, {"pos": pos + 1, "layers": layers}

    @torch.no_grad()
    def decode_step(self, idx_t: Tensor, layers: list, pos: int | Tensor) -> tuple[Tensor, list]:
        """``step`` without its checks: idx_t (B,) at position ``pos`` → (logits (B, V), layer states).

        ``pos`` may be a 0-d int64 tensor on the model's device: nothing is then read on the host,
        and every call has the same shapes, so a CUDA graph can capture it (``muse.generate``).
        """
        x = self.embed(idx_t)  # (B, d)
        if self.pos is not None:
            x = x + (self.pos.weight[pos] if isinstance(pos, int) else self.pos.weight.index_select(0, pos.reshape(1)))
        out = []
        for block, s in zip(self.blocks, layers):
            x, s = block.step(x, s, pos)
            out.append(s)
        return self.logits(self.norm(x)), out

    @torch.no_grad()
    def prefill(
        self, idx: Tensor, state: dict[str, Any] | None = None, chunk: int = PREFILL_CHUNK
    ) -> tuple[Tensor, dict[str, Any]]:
        """Feed a prompt idx (B, T) in parallel: the last logits (B, V) and the state after it.

        Continues from ``state`` (a fresh one at position 0 when None) and returns what T calls of
        ``step`` would: each mixer runs its parallel form (``Mixer.prefill``) over ``chunk``
        tokens at a time, so memory is bounded by the chunk, not the prompt.
        """
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError(f"a prompt must be a (B, T >= 1) tensor of token ids; got shape {tuple(idx.shape)}")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"the prefill chunk must be a positive int; got {chunk!r}")
        state = self.init_state(idx.size(0)) if state is None else state
        pos = state["pos"]
        self._check_ids(idx, offset=pos)
        layers = list(state["layers"])
        for ids in idx.split(chunk, dim=1):
            n = ids.size(1)
            x = self.embed(ids)  # (B, n, d)
            if self.pos is not None:
                x = x + self.pos.weight[pos : pos + n]
            for i, block in enumerate(self.blocks):
                x, layers[i] = block.prefill(x, layers[i], pos)
            pos += n
        return self.logits(self.norm(x[:, -1])), {"pos": pos, "layers": layers}

    # ------------------------------------------------------------------ accounting
    def num_params(self) -> int:
        """Actual parameters (shared tensors counted once)."""
        return sum(p.numel() for p in self.parameters())

    def dense_equivalent_params(self) -> int:
        from muse.memory.params import dense_equivalent

        return dense_equivalent(self.cfg)["total"]

    def component_modules(self) -> dict[str, list[nn.Module | None]]:
        """The modules of each ``muse.memory.params.COMPONENTS`` entry (``muse params``)."""
        return {
            "embedding": [self.embed, self.pos],
            "mixers": [b.mixer for b in self.blocks],
            "ffns": [b.ffn for b in self.blocks],
            "norms": [m for b in self.blocks for m in (b.norm1, b.norm2)] + [self.norm],
            "head": [self.head],
        }

    def shard_units(self) -> list[nn.Module]:
        """The modules FSDP shards one by one (``muse.distributed``): the blocks, unless they share
        parameters (``norm.shared``), which one FSDP group cannot hand to another; the embedding,
        the final norm and the head (tied or not) always stay in the root's group."""
        return [] if self.cfg.norm.shared else list(self.blocks)

    def mixer_stats(self) -> dict[str, float]:
        stats = [b.mixer.stats() for b in self.blocks]
        keys = {k for s in stats for k in s}
        return {k: sum(s[k] for s in stats if k in s) / sum(1 for s in stats if k in s) for k in sorted(keys)}


def build_model(
    cfg: Config | ModelConfig, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> nn.Module:
    """Build the model ``model.kind`` names: a ``MuseLM``, or for ``hf-gpt2`` transformers'
    ``GPT2LMHeadModel`` of the same shape behind ``muse.hf.HFCausalLM`` (same interface for
    training and evaluation). ``device='meta'`` allocates nothing (parameter accounting of 100 B
    shapes).

    ``dtype`` builds the parameters in that dtype directly (pure bf16 training): casting an fp32
    model afterwards would briefly hold both copies.
    """
    m = cfg.model if isinstance(cfg, Config) else cfg
    if m.kind == "hf-gpt2":
        from muse.hf import build_hf_gpt2, import_transformers

        import_transformers("model.kind hf-gpt2")  # fail before touching the default dtype
    old = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            return build_hf_gpt2(m) if m.kind == "hf-gpt2" else MuseLM(m)
    finally:
        torch.set_default_dtype(old)
