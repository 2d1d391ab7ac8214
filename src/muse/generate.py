"""Sampling with recurrent state (semiseparable) or a KV cache (attention): ``muse generate``."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def sample_next(
    logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """logits (B, V) → next ids (B,). temperature 0 is greedy argmax."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token once the mass before it already reaches top_p (the top token always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(
    model,
    prompt: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    eos_id: int | None = None,
    on_token: Callable[[int], None] | None = None,
) -> list[int]:
    """Continue ``prompt`` (B=1, T ≥ 1) token by token; returns the new ids (stops at eos_id)."""
    if prompt.dim() != 2 or prompt.size(0) != 1 or prompt.size(1) == 0:
        raise ValueError(f"prompt must be a (1, T ≥ 1) tensor of token ids; got shape {tuple(prompt.shape)}")
    if model.max_context is not None and prompt.size(1) + max_new_tokens > model.max_context:
        raise ValueError(
            f"prompt ({prompt.size(1)} tokens) + --max-new-tokens ({max_new_tokens}) exceeds "
            f"model.max_seq_len={model.max_context} of this model"
        )
    was_training = model.training
    model.eval()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=prompt.device).manual_seed(seed)
    logits, state = model.prefill(prompt)
    out: list[int] = []
    for i in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (1,)
        tok = int(nxt.item())
        out.append(tok)
        if on_token is not None:
            on_token(tok)
        if (eos_id is not None and tok == eos_id) or i == max_new_tokens - 1:
            break
        logits, state = model.step(nxt, state)
    model.train(was_training)
    return out
