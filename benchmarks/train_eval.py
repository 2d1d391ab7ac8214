"""Train presets on WikiText-2 under one token budget on identical batches, then evaluate the
best-validation checkpoint on the test split (DESIGN.md §2 metrics). One JSON per preset.

    python benchmarks/train_eval.py --data-dir ../shared/data/wikitext-2 --presets baseline standard

Every figure is read from the run itself: throughput is the median of the trainer's logged
tokens/s windows after warm-up (evaluation excluded), peak memory is
``torch.cuda.max_memory_allocated`` over training, test metrics come from ``muse eval``'s code.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import RESULTS, environment, write_result  # noqa: E402
from muse.config import load_config, to_dict  # noqa: E402
from muse.evaluate import evaluate_checkpoint  # noqa: E402
from muse.train.trainer import Trainer  # noqa: E402


def run_one(preset: str, args: argparse.Namespace) -> dict:
    overrides = {
        "data.dataset": "wikitext-2", "data.data_dir": args.data_dir, "data.tokenizer": "bpe",
        "data.cache_dir": args.cache_dir, "model.dropout": args.dropout,
        "train.batch_size": args.batch_size, "train.seq_len": args.seq_len, "train.max_steps": 0,
        "train.max_tokens": args.max_tokens, "train.max_minutes": args.max_minutes, "train.lr": args.lr,
        "train.warmup_steps": args.warmup_steps, "train.precision": args.precision,
        "train.compile": args.compile, "train.eval_every": args.eval_every, "train.eval_tokens": 0,
        "train.log_every": args.log_every, "train.tensorboard": False, "train.progress": True,
        "train.seed": args.seed,
        # one recipe for every preset: presets' own memory settings would change the comparison
        "train.optimizer": args.optimizer, "model.checkpointing": args.checkpointing,
    }
    cfg = load_config(preset, overrides)
    run_dir = Path(args.run_root) / preset
    shutil.rmtree(run_dir, ignore_errors=True)
    trainer = Trainer(cfg, run_dir)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    print(f"== {preset}: {trainer.model.num_params():,} parameters, device {trainer.device}", flush=True)
    summary = trainer.fit()
    peak = torch.cuda.max_memory_allocated(trainer.device) / 2**20 if trainer.device.type == "cuda" else None

    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    timed = windows[args.warmup_windows:] or windows
    test = evaluate_checkpoint(run_dir, split="test", tag="best", batch_size=args.batch_size, device=args.device)
    valid = evaluate_checkpoint(run_dir, split="valid", tag="best", batch_size=args.batch_size, device=args.device)
    env = environment(trainer.device)
    return {
        "benchmark": "train_eval",
        "preset": preset,
        **env,
        "config": to_dict(cfg),
        "figures": {
            "actual_params": trainer.model.num_params(),
            "dense_equivalent_params": trainer.model.dense_equivalent_params(),
            "train_tokens_in_split": trainer.data.stats["train"]["tokens"],
            "steps": summary["step"],
            "tokens_seen": summary["tokens"],
            "train_seconds": summary["seconds"],
            "tokens_per_s_median": statistics.median(timed),
            "tokens_per_s_windows": len(timed),
            "peak_train_memory_mib": peak,
            "final_train_loss": next(r["loss"] for r in reversed(records) if "loss" in r),
            "val_curve": [[r["step"], r["val_loss"]] for r in records if "val_loss" in r],
            "best_val_loss": summary["best_val_loss"],
            "test": test,
            "valid": valid,
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["baseline", "standard"])
    p.add_argument("--data-dir", required=True, help="folder with WikiText-2 train.txt/valid.txt/test.txt")
    p.add_argument("--max-tokens", type=int, default=20_000_000)
    p.add_argument("--max-minutes", type=float, default=0.0, help="safety cap per preset (0: none)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "adamw8bit"))
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--warmup-windows", type=int, default=2, help="logged windows left out of the throughput median")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default="/tmp/muse-cache")
    p.add_argument("--run-root", default="/tmp/muse-bench")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    for preset in args.presets:
        res = run_one(preset, args)
        tag = "gpu" if res["device_type"] == "cuda" else "cpu"
        path = write_result(f"train_eval-{preset}-{tag}", res, args.out)
        f, t = res["figures"], res["figures"]["test"]
        print(
            f"== {preset}: test ppl {t['perplexity']:.2f} (word ppl {t['word_perplexity']:.2f}, "
            f"{t['bits_per_byte']:.4f} bpb), {f['tokens_per_s_median']:,.0f} tok/s, "
            f"peak {f['peak_train_memory_mib'] or float('nan'):,.0f} MiB -> {path}", flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
