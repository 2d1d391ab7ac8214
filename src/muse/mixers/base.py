"""The mixer interface and registry.

Every sequence mixer has the same constructor ``Mixer(cfg: ModelConfig, layer_idx: int)`` and the
same entry points, so a Block never needs to know which kind it holds:

- ``forward(x (B, N, d)) -> (y (B, N, d), aux_loss scalar tensor or None)``: training.
- ``init_state(batch_size, device, dtype) -> state``: the decoding state at position 0, a dict
  of tensors whose shapes and dtypes never change while decoding (a KV cache is allocated at
  ``model.max_seq_len``), so a decoding step can be captured as a CUDA graph over them.
- ``prefill(x (B, T, d), state, pos: int) -> (y (B, T, d), state)``: positions pos … pos+T−1
  in one parallel pass, continuing from ``state`` (the state after ``pos`` positions). It returns
  what T calls of ``step`` would: the same outputs and the same state, so a prompt is fed in
  chunks of bounded memory, and a prompt may follow tokens already decoded.
- ``step(x_t (B, d), state, pos: int | Tensor) -> (y_t (B, d), state)``: one position. ``pos``
  may be a 0-d int64 tensor on x_t's device, which a captured step reads from a buffer: then
  ``step`` must not read it on the host. The returned state has the given one's keys, shapes
  and dtypes; its tensors may be the given ones updated in place (a KV cache) or new ones.

Without gradients, ``prefill`` and ``step`` agree with ``forward`` at every position.
``stats()`` returns detached diagnostics from the last forward (e.g. effective rank).
"""

from __future__ import annotations

import abc
from typing import Callable

from torch import Tensor, nn

from muse.config import ModelConfig


class Mixer(nn.Module, abc.ABC):
    # True when decoding state grows with the context (a KV cache sized by model.max_seq_len)
    bounded_context: bool = False

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx

    @abc.abstractmethod
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        ...

    @abc.abstractmethod
    def init_state(self, batch_size: int, device, dtype) -> dict[str, Tensor]:
        ...

    @abc.abstractmethod
    def prefill(self, x: Tensor, state: dict[str, Tensor], pos: int) -> tuple[Tensor, dict[str, Tensor]]:
        ...

    @abc.abstractmethod
    def step(self, x_t: Tensor, state: dict[str, Tensor], pos: int | Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        ...

    def stats(self) -> dict[str, float]:
        return {}


MIXERS: dict[str, type[Mixer]] = {}


def register_mixer(name: str) -> Callable[[type[Mixer]], type[Mixer]]:
    def wrap(cls: type[Mixer]) -> type[Mixer]:
        MIXERS[name] = cls
        return cls

    return wrap


def build_mixer(cfg: ModelConfig, layer_idx: int) -> Mixer:
    kind = cfg.mixer_kind(layer_idx)  # mixer.kind, or attention for a hybrid's attention layers
    try:
        cls = MIXERS[kind]
    except KeyError:
        raise ValueError(f"mixer.kind must be one of {', '.join(sorted(MIXERS))}; got {kind!r}") from None
    return cls(cfg, layer_idx)
