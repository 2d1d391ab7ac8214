"""Data: text sources, tokenizers, the tokenized-split cache and batching (DESIGN §1.9).

Typical use::

    data = prepare_data(cfg.data, cfg.model.vocab_size)   # tokenizer + cached memmaps
    sampler = BatchSampler(data.tokens["train"], batch_size, seq_len, seed)
    x, y = sampler.get(step)                               # (B, N) int64 each
    for x, y in eval_windows(data.tokens["valid"], seq_len): ...
"""

from muse.data.batches import BatchSampler, eval_windows
from muse.data.cache import PreparedData, prepare_data
from muse.data.datasets import SPLITS, DataError, TextSplits, count_bytes, count_words, load_text_splits
from muse.data.tokenizer import (
    EOS_TOKEN,
    Tokenizer,
    build_tokenizer,
    bytes_tokenizer,
    gpt2_tokenizer,
    train_bpe,
)

__all__ = [
    "EOS_TOKEN",
    "SPLITS",
    "BatchSampler",
    "DataError",
    "PreparedData",
    "TextSplits",
    "Tokenizer",
    "build_tokenizer",
    "bytes_tokenizer",
    "count_bytes",
    "count_words",
    "eval_windows",
    "gpt2_tokenizer",
    "load_text_splits",
    "prepare_data",
    "train_bpe",
]
