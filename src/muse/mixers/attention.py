"""Causal multi-head softmax attention (GPT-2 style), SDPA / FlashAttention on GPU."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from muse.config import ModelConfig
from muse.layers.linear import make_linear
from muse.mixers.base import Mixer, register_mixer

# Backends for prefill and decoding. cuDNN attention (which SDPA prefers on an H100) builds a
# plan on the host for every new shape: for every prompt length in a prefill, and (before the
# decoding step had a fixed shape) for every step. The others need no plan; the memory-efficient
# one takes the decoding step's mask.
_DECODE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """SDPA of q (B, H, T, p) over k, v (B, H, S, p) with a boolean mask (True: visible)."""
    if not q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    with sdpa_kernel(_DECODE_BACKENDS):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


class RotaryEmbedding(nn.Module):
    """RoPE with the rotate-half convention; tables are rebuilt lazily for longer inputs."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, offset: int | Tensor = 0) -> Tensor:  # (B, H, N, p)
        """Rotate positions offset … offset+N−1; ``offset`` may be a 0-d device tensor (decoding)."""
        n = x.size(-2)
        if isinstance(offset, Tensor):
            t = (offset + torch.arange(n, device=x.device)).to(torch.float32)  # exact below 2^24
        else:
            t = torch.arange(offset, offset + n, device=x.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.to(x.device))  # (N, p/2)
        cos, sin = freqs.cos().to(x.dtype), freqs.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        # interleaved pairs keep the layout identical for any head_dim
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


@register_mixer("attention")
class AttentionMixer(Mixer):
    bounded_context = True

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        d, lin = cfg.d_model, cfg.mixer.linear
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)  # GPT-2: residual projections scaled down
        self.qkv = make_linear(lin.kind, d, 3 * d, rank=lin.rank, bias=lin.bias, init_std=cfg.init_std)
        self.proj = make_linear(lin.kind, d, d, rank=lin.rank, bias=lin.bias, init_std=out_std)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.mixer.attention.rope_base) if cfg.positions == "rope" else None
        self.dropout = cfg.dropout

    def _qkv(self, x: Tensor, offset: int | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 × (B, H, N, p)
        if self.rope is not None:
            q, k = self.rope(q, offset), self.rope(k, offset)
        return q, k, v

    def forward(self, x: Tensor) -> tuple[Tensor, None]:  # (B, N, d)
        B, N, d = x.shape
        q, k, v = self._qkv(x, 0)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)  # (B, H, N, p)
        return self.proj(y.transpose(1, 2).reshape(B, N, d)), None

    def init_state(self, batch_size: int, device, dtype) -> dict[str, Tensor]:
        shape = (batch_size, self.n_heads, self.cfg.max_seq_len, self.head_dim)
        return {"k": torch.zeros(shape, device=device, dtype=dtype), "v": torch.zeros(shape, device=device, dtype=dtype)}

    @staticmethod
    def _check_room(state: dict[str, Tensor], end: int) -> None:
        if end > state["k"].size(2):
            raise ValueError(f"KV cache holds model.max_seq_len={state['k'].size(2)} positions; position {end - 1} "
                             "is past it")

    def prefill(self, x: Tensor, state: dict[str, Tensor], pos: int) -> tuple[Tensor, dict[str, Tensor]]:
        B, T, d = x.shape
        self._check_room(state, pos + T)
        q, k, v = self._qkv(x, pos)  # (B, H, T, p)
        state["k"][:, :, pos : pos + T] = k
        state["v"][:, :, pos : pos + T] = v
        keys, values = state["k"][:, :, : pos + T], state["v"][:, :, : pos + T]  # (B, H, pos + T, p)
        if pos == 0:
            y = _attend(q, keys, values, is_causal=True)
        else:
            # query i sits at position pos + i: is_causal would align it with key i instead
            visible = torch.arange(pos + T, device=x.device) <= torch.arange(pos, pos + T, device=x.device)[:, None]
            y = _attend(q, keys, values, mask=visible)  # mask (T, pos + T)
        return self.proj(y.transpose(1, 2).reshape(B, T, d)), state

    def step(self, x_t: Tensor, state: dict[str, Tensor], pos: int | Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        B, d = x_t.shape
        q, k, v = self._qkv(x_t[:, None], pos)  # (B, H, 1, p)
        if isinstance(pos, Tensor):  # a device position: written without a host read
            index = pos.reshape(1)
            state["k"].index_copy_(2, index, k)
            state["v"].index_copy_(2, index, v)
        else:
            self._check_room(state, pos + 1)
            state["k"][:, :, pos] = k[:, :, 0]
            state["v"][:, :, pos] = v[:, :, 0]
        # The query attends over the whole cache with the positions after it masked: every step
        # has the same shapes, so no backend plans per cache length, and the step can be captured.
        visible = torch.arange(state["k"].size(2), device=x_t.device)[None] <= pos  # (1, L)
        y = _attend(q, state["k"], state["v"], mask=visible)  # (B, H, 1, p)
        return self.proj(y.reshape(B, d)), state
