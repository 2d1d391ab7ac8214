"""What the tests of ``muse compare`` share: a tiny model, a corpus, a recipe, a results row."""

from __future__ import annotations

import math
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


def result_row(label, family, peak, test_ppl, status="complete", val=None, group=None, lr=1e-3) -> dict:
    """A results row as ``muse compare`` writes one, with what the ranking rules read."""
    return {
        "label": label, "group": group or label, "spec_label": group or label, "family": family, "status": status,
        "status_detail": status, "peak_memory_mib": peak, "peak_memory_method": "measured", "lr": lr,
        "best_val_loss": val if val is not None else math.log(test_ppl), "seq_len": 512,
        "test": {"perplexity": test_ppl, "word_perplexity": 2 * test_ppl, "bits_per_byte": 1.0, "loss": math.log(test_ppl)},
        "tokens_seen": 100, "actual_params": 10, "dense_equivalent_params": 20, "tokens_per_s_median": 1.0,
        "device": "d", "git_sha": "abcdef0", "date": "2026-12-06",
    }
