"""Shared fixtures: the real WikiText-2 files from ../shared/data and a session-wide token cache."""

import os
from pathlib import Path

import pytest

# One kernel config per shape: autotuning every odd test shape would take minutes on a GPU.
os.environ.setdefault("MUSE_TRITON_AUTOTUNE", "0")
# Without a GPU the Triton kernels run (slowly, exactly) on Triton's CPU interpreter, which
# Triton selects when a kernel is *defined*: set it before any muse module is imported.
if not os.environ.get("TRITON_INTERPRET"):
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except ImportError:  # pragma: no cover
        pass

# ../shared/data beside the checkout; MUSE_SHARED_DATA points elsewhere (e.g. a copy on a GPU box)
SHARED_DATA = Path(os.environ.get("MUSE_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "wikitext-2" / "train.txt").is_file():
        pytest.skip(f"real WikiText-2 not found at {SHARED_DATA} (see DESIGN.md)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory) -> Path:
    """One cache per test session, so WikiText-2 is tokenized once."""
    return tmp_path_factory.mktemp("muse-cache")


@pytest.fixture
def wt2_args(shared_data, token_cache, tmp_path):
    """`muse train` arguments for a small, fast model on real WikiText-2 (BPE 512)."""

    def make(run_dir: Path | None = None, **over) -> list[str]:
        opts = {
            "--dataset": "wikitext-2", "--data-dir": str(shared_data / "wikitext-2"),
            "--data.cache_dir": str(token_cache), "--model.vocab_size": "512", "--model.d_model": "64",
            "--model.n_layers": "2", "--model.max_seq_len": "64", "--train.batch_size": "8",
            "--train.max_steps": "30", "--train.eval_every": "10", "--train.eval_tokens": "4096",
            "--train.warmup_steps": "5", "--train.log_every": "1", "--train.progress": "false",
            "--train.tensorboard": "false", "--train.lr": "3e-3",
        }
        opts.update({k if k.startswith("--") else f"--{k}": str(v) for k, v in over.items()})
        args = ["train", "tiny", "--run-dir", str(run_dir or tmp_path / "run")]
        for k, v in opts.items():
            args += [k, v]
        return args

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, shared_data, token_cache) -> Path:
    """A tiny `muse train` run on WikiText-2 (20 steps), shared by the inference tests."""
    from muse.cli import main

    run = tmp_path_factory.mktemp("trained") / "run"
    args = [
        "train", "tiny", "--run-dir", str(run), "--dataset", "wikitext-2", "--data-dir",
        str(shared_data / "wikitext-2"), "--data.cache_dir", str(token_cache), "--model.vocab_size", "512",
        "--model.d_model", "64", "--model.n_layers", "2", "--model.max_seq_len", "64", "--train.batch_size", "8",
        "--train.max_steps", "20", "--train.eval_every", "20", "--train.eval_tokens", "2048",
        "--train.progress", "false", "--train.tensorboard", "false",
    ]
    assert main(args) == 0
    return run


@pytest.fixture
def interrupted_run(monkeypatch):
    """run(args, after_saves=k): run ``muse train args``, stopped by Ctrl-C right after the k-th
    checkpoint is written; returns the exit code (130 expected)."""
    from muse.cli import main
    from muse.train.trainer import Trainer

    def run(args, after_saves: int) -> int:
        real_save, saves = Trainer.save, {"n": 0}

        def save_then_die(self, *a, **k):
            real_save(self, *a, **k)
            saves["n"] += 1
            if saves["n"] == after_saves:
                raise KeyboardInterrupt

        monkeypatch.setattr(Trainer, "save", save_then_die)
        try:
            return main(args)
        finally:
            monkeypatch.setattr(Trainer, "save", real_save)

    return run
