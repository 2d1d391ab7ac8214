"""Batches from a token stream: random training windows and exhaustive evaluation windows.

Training batches are a pure function of (seed, step): nothing is consumed from a stateful
iterator, so resuming at step k reproduces exactly the batches of an uninterrupted run without
saving any data-loader state. Under DDP/FSDP the processes split one global batch, so W processes
of B sequences train on exactly the windows one process of W·B sequences would.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from muse.data.datasets import DataError


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}; got {value!r}")


class BatchSampler:
    """Random (x, y) windows of ``seq_len`` tokens; y is x shifted by one token.

    Args:
        tokens: 1-D token ids (a numpy memmap from :func:`muse.data.prepare_data`).
        batch_size: sequences per batch (per rank).
        seq_len: tokens per sequence.
        seed: the run's seed.
        rank, world_size: this process's data-parallel rank; rank r takes the r-th slice of
            the global batch of ``batch_size · world_size`` windows.
    """

    def __init__(
        self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        _check_int("batch_size", batch_size, 1)
        _check_int("seq_len", seq_len, 1)
        _check_int("seed", seed, 0)
        _check_int("world_size", world_size, 1)
        _check_int("rank", rank, 0)
        if rank >= world_size:
            raise DataError(f"rank {rank} must be < world_size {world_size}")
        if tokens.ndim != 1:
            raise DataError(f"tokens must be 1-D; got shape {tuple(tokens.shape)}")
        if len(tokens) < seq_len + 1:
            raise DataError(
                f"the split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
                "use a shorter --train.seq_len or more data"
            )
        self.tokens = tokens
        self.batch_size, self.seq_len = batch_size, seq_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._offsets = np.arange(seq_len + 1)  # (N+1,)

    def starts(self, step: int) -> np.ndarray:
        """Window start positions of batch ``step``: (B,) int64, each in [0, len - seq_len - 1]."""
        _check_int("step", step, 0)
        # A fresh generator per (seed, step): SeedSequence mixes the numbers, so neighbouring
        # steps give unrelated streams (the 0 keeps the single-process streams of earlier releases).
        rng = np.random.default_rng([self.seed, 0, step])
        B = self.batch_size
        starts = rng.integers(0, len(self.tokens) - self.seq_len, size=B * self.world_size, dtype=np.int64)
        return starts[self.rank * B : (self.rank + 1) * B]

    def get(self, step: int) -> tuple[Tensor, Tensor]:
        """Batch ``step`` as int64 tensors x, y of shape (B, N): x = tokens[start : start + N]
        and y = tokens[start + 1 : start + N + 1], so y[:, t] is the token that follows x[:, t]."""
        idx = self.starts(step)[:, None] + self._offsets  # (B, N+1)
        window = torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))  # (B, N+1)
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()  # (B, N), (B, N)


def eval_windows(tokens: np.ndarray, seq_len: int, max_tokens: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """Non-overlapping (x, y) windows, each (1, n) int64 with n <= seq_len, over a whole split.

    Window i covers x = tokens[i·N : i·N + n] and y = tokens[i·N + 1 : i·N + n + 1], so together
    the windows predict every token after the first exactly once (the last window is shorter).
    Each window starts without context, the usual perplexity protocol (DESIGN §2). With
    ``max_tokens > 0`` iteration stops after the window that brings the predicted tokens to
    ``max_tokens`` or more (so it overshoots by less than one window).
    """
    _check_int("seq_len", seq_len, 1)
    _check_int("max_tokens", max_tokens, 0)
    total = len(tokens) - 1  # predictable tokens
    done = 0
    for start in range(0, max(total, 0), seq_len):
        n = min(seq_len, total - start)
        window = torch.from_numpy(np.asarray(tokens[start : start + n + 1], dtype=np.int64))  # (n+1,)
        yield window[None, :-1], window[None, 1:]  # (1, n), (1, n)
        done += n
        if max_tokens and done >= max_tokens:
            return
