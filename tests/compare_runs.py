"""What the whole-run tests of ``muse compare`` share: a tiny model, a corpus, a recipe."""

from __future__ import annotations

import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny+model.d_model=32+model.n_layers=1+model.n_heads=2"


def write_corpus(root: Path) -> Path:
    """A small text corpus (documents of random words) that trains a BPE tokenizer in a blink."""
    rng = random.Random(0)
    words = [w.strip(",.") for w in (ROOT / "README.md").read_text().split() if w.isalpha()][:400]
    for i in range(40):
        (root / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words) for _ in range(300)) + "\n")
    return root


def common_args(corpus: Path, cache: Path, out: Path) -> list[str]:
    """A recipe of seconds on CPU: 4,096 tokens of B=8, N=32, a 384-token vocabulary."""
    return [
        "--dataset", f"text:{corpus}", "--max-tokens", "4096", "--seq-len", "32", "--batch-size", "8",
        "--eval-every", "8", "--eval-tokens", "2048", "--warmup-steps", "2", "--out", str(out),
        "--set", "model.vocab_size=384", "--set", "model.max_seq_len=64", "--set", f"data.cache_dir={cache}",
        "--set", "train.progress=false", "--set", "train.tensorboard=false", "--set", "train.log_every=2",
    ]
