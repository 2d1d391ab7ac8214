"""Tokenized splits cached as numpy memmaps (DESIGN §1.9).

Layout under ``expanduser(data.cache_dir)``::

    <dataset-slug>-<hash16>/        hash = sha256(source fingerprint + tokenizer fingerprint)
        train.bin valid.bin test.bin  token ids, uint16 (vocab <= 65,535) or uint32
        meta.json                     lengths, dtype, word/byte counts, fingerprints
    tokenizers/<dataset-slug>-bpe<V>-<hash16>/tokenizer.json
                                    a BPE tokenizer trained on that source's train split

A cache entry is written into a temporary folder and renamed into place in one ``os.replace``,
so an entry either exists complete or not at all: a crash (or a concurrent writer) never leaves
half a cache behind. Trained BPE tokenizers are cached the same way, so a second run neither
retrains nor re-tokenizes; it only reads the source text to check its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from muse.config import DataConfig
from muse.data.datasets import SPLITS, DataError, TextSplits, count_bytes, count_words, load_text_splits
from muse.data.tokenizer import Tokenizer, build_tokenizer, check_vocab

CACHE_VERSION = 1  # bump when the file layout or the document joining changes


@dataclass
class PreparedData:
    """A dataset ready for training: tokenizer, token memmaps and per-split statistics."""

    name: str
    tokenizer: Tokenizer
    tokens: dict[str, np.ndarray]  # split -> 1-D memmap of token ids
    stats: dict[str, dict]  # split -> {"tokens", "words", "bytes", "documents"}
    cache_path: Path | None = None
    fingerprint: str = ""  # the cache key (sha256 of source + tokenizer fingerprints)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per preparation stage

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def dataset_slug(name: str) -> str:
    """A file-name-safe label: ``text:/a/b/corpus.txt`` -> ``text-corpus.txt``."""
    if name.startswith("text:"):
        name = "text-" + (Path(name[5:].rstrip("/")).name or "root")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "data"


def _atomic_dir(final: Path, fill) -> Path:
    """Create ``final`` by filling a temporary sibling folder and renaming it in one step.

    If another process renamed its copy first, ours is discarded and theirs is used: both hold
    the same content since the folder name is a content hash.
    """
    tmp = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        fill(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file() and not (final / "tokenizer.json").is_file():
                raise
    except OSError as e:  # a full disk or a read-only cache: say where, and how to go elsewhere
        raise DataError(
            f"cannot write the data cache {final}: {' '.join(str(e).split())}; --data.cache_dir DIR puts it elsewhere"
        ) from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _tokenizer_for(cfg: DataConfig, vocab_size: int, text: TextSplits, root: Path) -> Tokenizer:
    """Build the configured tokenizer; a trained BPE is cached per (source, vocab size)."""
    if cfg.tokenizer != "bpe":
        return build_tokenizer(cfg, vocab_size, [])
    if "train" not in text.docs:
        raise DataError("tokenizer bpe is trained on the train split; pass a saved tokenizer to use other splits only")
    key = hashlib.sha256(f"bpe-v1\0{vocab_size}\0{text.fingerprint}".encode()).hexdigest()[:16]
    path = root / "tokenizers" / f"{dataset_slug(text.name)}-bpe{vocab_size}-{key}"
    if (path / "tokenizer.json").is_file():
        tok = Tokenizer.load(path)
        check_vocab(tok, vocab_size)
        return tok
    tok = build_tokenizer(cfg, vocab_size, text.docs["train"])
    _atomic_dir(path, tok.save)
    return tok


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65_535 else np.uint32)


def _tokenize_split(tokenizer: Tokenizer, docs: list[str], dtype: np.dtype, path: Path) -> int:
    """Write all documents of a split to ``path`` as one id stream, consecutive documents
    separated by eos; return the number of tokens. Streams piece by piece, so memory does not
    grow with the split."""
    eos = np.array([tokenizer.eos_id], dtype=dtype).tobytes()
    n, last = 0, 0
    with open(path, "wb") as f:
        for i, ids in tokenizer.iter_encode(docs):
            if i != last:  # first piece of the next document (every document yields a piece)
                f.write(eos)
                n, last = n + 1, i
            f.write(np.asarray(ids, dtype=dtype).tobytes())
            n += len(ids)
    return n


def _open_tokens(path: Path, dtype: str, length: int) -> np.ndarray:
    if length == 0:  # numpy cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(length,))


def _load_entry(path: Path, tokenizer: Tokenizer, name: str, key: str) -> PreparedData:
    meta = json.loads((path / "meta.json").read_text())
    tokens = {s: _open_tokens(path / f"{s}.bin", meta["dtype"], st["tokens"]) for s, st in meta["splits"].items()}
    return PreparedData(name, tokenizer, tokens, meta["splits"], path, key)


def prepare_data(
    cfg: DataConfig,
    vocab_size: int,
    tokenizer: Tokenizer | None = None,
    splits: tuple[str, ...] = SPLITS,
) -> PreparedData:
    """Load ``cfg.dataset``, build (or take) the tokenizer and return cached token memmaps.

    Args:
        cfg: the data section of the config.
        vocab_size: the model's vocabulary size: BPE is trained to it, other tokenizers must fit.
        tokenizer: a saved tokenizer to use instead of building one (resume, evaluation).
        splits: which splits to prepare (e.g. ``("test",)`` to evaluate with a given tokenizer).
    """
    timings = {}
    t0 = time.perf_counter()
    text = load_text_splits(cfg, splits)
    timings["load_text"] = time.perf_counter() - t0
    root = Path(cfg.cache_dir).expanduser()

    t0 = time.perf_counter()
    if tokenizer is None:
        tokenizer = _tokenizer_for(cfg, vocab_size, text, root)
    else:
        check_vocab(tokenizer, vocab_size)
    timings["tokenizer"] = time.perf_counter() - t0

    key = hashlib.sha256(f"v{CACHE_VERSION}\0{text.fingerprint}\0{tokenizer.fingerprint()}".encode()).hexdigest()
    path = root / f"{dataset_slug(text.name)}-{key[:16]}"
    t0 = time.perf_counter()
    if not (path / "meta.json").is_file():
        dtype = _token_dtype(tokenizer.vocab_size)

        def fill(tmp: Path) -> None:
            stats = {}
            for s in splits:
                docs = text.docs[s]
                stats[s] = {
                    "tokens": _tokenize_split(tokenizer, docs, dtype, tmp / f"{s}.bin"),
                    "words": sum(count_words(d) for d in docs),
                    "bytes": sum(count_bytes(d) for d in docs),
                    "documents": len(docs),
                }
            meta = {
                "version": CACHE_VERSION,
                "name": text.name,
                "dtype": dtype.name,
                "splits": stats,
                "source_fingerprint": text.fingerprint,
                "tokenizer": {
                    "kind": tokenizer.kind,
                    "vocab_size": tokenizer.vocab_size,
                    "eos_id": tokenizer.eos_id,
                    "fingerprint": tokenizer.fingerprint(),
                },
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))

        _atomic_dir(path, fill)
    timings["tokenize"] = time.perf_counter() - t0
    data = _load_entry(path, tokenizer, text.name, key)
    data.timings = timings
    return data
