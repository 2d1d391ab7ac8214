"""The mixer interface and registry.

Every sequence mixer has the same constructor ``Mixer(cfg: ModelConfig, layer_idx: int)`` and the
same three entry points, so a Block never needs to know which kind it holds:

- ``forward(x (B, N, d)) -> (y (B, N, d), aux_loss scalar tensor or None)``
- ``init_state(batch_size, device, dtype) -> state`` for token-by-token decoding
- ``step(x_t (B, d), state, pos: int) -> (y_t (B, d), state)``

``stats()`` returns detached diagnostics from the last forward (e.g. effective rank).
"""

from __future__ import annotations

import abc
from typing import Any, Callable

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
    def init_state(self, batch_size: int, device, dtype) -> Any:
        ...

    @abc.abstractmethod
    def step(self, x_t: Tensor, state: Any, pos: int) -> tuple[Tensor, Any]:
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
    try:
        cls = MIXERS[cfg.mixer.kind]
    except KeyError:
        raise ValueError(f"mixer.kind must be one of {', '.join(sorted(MIXERS))}; got {cfg.mixer.kind!r}") from None
    return cls(cfg, layer_idx)
