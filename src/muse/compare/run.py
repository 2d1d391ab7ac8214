"""Train, measure and score each run of a comparison; one JSON row per run, resumable.

Per run, in this order:

1. full-step peak memory at the comparison's B and N, with the model's own memory features
   (``muse memory``'s measurement on CUDA, its estimate elsewhere, labelled so). On a GPU this
   also runs the step once before training, so Triton's autotuning is paid here and not out of
   a time budget;
2. training through :class:`~muse.train.trainer.Trainer` (the same step as ``muse train``), on
   batches that depend only on the seed, so every model sees the same ones;
3. the best-validation checkpoint scored on the test split (and the validation split) with
   ``muse eval``'s code.

A run's row is written to ``OUT/rows/`` atomically when it is done, keyed by a hash of its
config; a later invocation with the same folder skips those runs, and a run interrupted during
training resumes from its last checkpoint. A run that stops before its budget (time cap,
non-finite loss, out of memory, crash) still gets a row, marked, so it is never ranked beside
complete ones as if it had seen as many tokens.
"""

from __future__ import annotations

import gc
import json
import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from muse.compare.spec import Run
from muse.config import Config, to_dict



@dataclass
class Options:
    out: Path
    runs_dir: Path | None = None  # training runs (checkpoints); default OUT/runs
    device: str = "auto"
    retry_failed: bool = False
    warmup_windows: int = 2  # logged throughput windows left out of the median (compilation, capture)
    eval_batch_size: int = 0  # 0: the training batch size
    only: tuple[str, ...] = ()  # shell patterns: train only matching runs now (empty: all)
    command: str = ""  # the invocation that trains: each row records it
    jobs: int = 1  # worker processes sharing the device (muse.compare.jobs)
    shared_by: int = 0  # set in a worker: processes this one shares the device with, itself included

    def __post_init__(self):
        if self.jobs < 1:
            raise ValueError(f"--jobs must be >= 1; got {self.jobs}")
        self.out = Path(self.out)
        self.runs_dir = Path(self.runs_dir) if self.runs_dir else self.out / "runs"


def selected_now(opts: Options, run: Run) -> bool:
    import fnmatch

    return not opts.only or any(fnmatch.fnmatchcase(run.label, p) for p in opts.only)


def family(cfg: Config) -> str:
    """``hf`` (transformers' GPT-2), ``dense`` (MUSE's GPT-2-style model) or ``muse`` (any
    compressed or non-attention part)."""
    m = cfg.model
    if getattr(m, "kind", "muse") != "muse":
        return "hf"
    dense = (
        m.embedding.kind == "dense" and m.mixer.kind == "attention" and m.mixer.linear.kind == "dense"
        and m.ffn.kind == "dense" and m.head.kind in ("dense", "tied")
    )
    return "dense" if dense else "muse"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "run"


def row_path(out: Path, run: Run) -> Path:
    return out / "rows" / f"{slug(run.label)}-{run.key[:8]}.json"


def load_row(out: Path, run: Run) -> dict | None:
    """The row of an earlier invocation that made this run (the same config up to volatile keys
    and fields added since at their defaults: :func:`muse.compare.spec.same_run`), or None."""
    from muse.compare.spec import same_run

    for p in sorted((out / "rows").glob("*.json")):
        row = json.loads(p.read_text())
        if "config" in row and same_run(row["config"], run.config):
            return row
    return None


def planned_peak(out: Path, run: Run) -> float | None:
    """The full-step peak that ``--memory-only`` measured in ``out/memory.json`` for this run's model
    at its recipe (B, N, precision, optimizer, checkpointing), or None: how a run not trained yet
    can be told apart from the budgets it cannot fit in."""
    path = out / "memory.json"
    if not path.exists():
        return None
    cfg = run.config
    want = {"model": run.group, "seq_len": run.seq_len, "batch_size": cfg.train.batch_size,
            "precision": cfg.train.precision, "optimizer": cfg.train.optimizer,
            "checkpointing": cfg.model.checkpointing}
    for row in json.loads(path.read_text()).get("rows", []):
        if all(row.get(k) == v for k, v in want.items()):
            return row.get("peak_memory_mib")
    return None


def write_text(path: Path, text: str) -> None:
    """Temp file, then rename: a crash never leaves half a file where a whole one was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2) + "\n")


def measure_memory(cfg: Config, device: str) -> dict:
    """Full-step peak at the run's B and N with its memory features: measured on CUDA, estimated
    elsewhere (``muse memory``); the error, in one line, where neither works."""
    import copy

    from muse.memory.profile import StepPlan, run as memory_run

    tc = cfg.train
    plan = StepPlan(batch=tc.batch_size, seq=cfg.seq_len, precision=tc.precision, optimizer=tc.optimizer)
    c = copy.deepcopy(cfg)
    c.train.cuda_graph = False  # a captured step's pool is invisible to max_memory_allocated; same tensors
    try:
        res = memory_run(c, plan, device=device)
    except Exception as e:  # noqa: BLE001 - a row without a peak is still a row
        return {"peak_memory_mib": None, "peak_memory_method": None, "peak_memory_error": _one_line(e)}
    peak = res.get("peak")
    return {
        "peak_memory_mib": peak / 2**20 if peak is not None else None,
        "peak_memory_method": res["method"],  # measured | estimate
        "peak_memory_device": res["device"],
        "peak_memory_error": res.get("error"),
        "peak_memory_cublas_workspace": res.get("cublas_workspace"),  # part of the peak (DESIGN §2)
        "step_tokens_per_s": res.get("tokens_per_s"),
    }


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _status(cfg: Config, steps: int, tokens: int, limit: tuple | None, error: str | None) -> tuple[str, str]:
    """complete: the run used up the budget the comparison set (tokens, else steps, else time)."""
    tc = cfg.train
    if error:
        return "failed", error
    if tc.max_tokens:
        if tokens >= tc.max_tokens:
            return "complete", f"{tokens:,} tokens"
        return "incomplete", f"{limit[1] if limit else 'stopped early'}: {tokens:,} of {tc.max_tokens:,} tokens"
    if tc.max_steps:
        if steps >= tc.max_steps:
            return "complete", f"{steps:,} steps, {tokens:,} tokens"
        return "incomplete", f"{limit[1] if limit else 'stopped early'}: {steps:,} of {tc.max_steps:,} steps"
    if limit and limit[0] == "train.max_minutes":
        return "complete", f"{tc.max_minutes:g} minutes, {tokens:,} tokens"
    return "incomplete", f"stopped before the time budget: {tokens:,} tokens"


def run_device(opts: Options, cfg: Config):
    """The device a run uses: ``--device``, else the config's ``train.device``."""
    from muse.runtime import resolve_device

    return resolve_device(opts.device if opts.device != "auto" else cfg.train.device)


def train_and_score(run: Run, opts: Options) -> dict:
    """One run, start to row (see the module docstring)."""
    import torch

    from muse.evaluate import evaluate_checkpoint
    from muse.runtime import environment_info
    from muse.train.checkpoint import CheckpointError, resolve_checkpoint
    from muse.train.trainer import Trainer, TrainingError

    cfg, tc = run.config, run.config.train
    device = run_device(opts, cfg)
    cfg.train.device = str(device) if device.type == "cuda" else "cpu"
    row = {
        "label": run.label, "group": run.group, "spec_label": run.spec.label, "key": run.key, "family": family(cfg),
        "spec": {"source": run.spec.source, "overrides": run.spec.overrides},
        "seq_len": run.seq_len, "batch_size": tc.batch_size, "lr": run.lr,
        "precision": tc.precision, "optimizer": tc.optimizer, "checkpointing": cfg.model.checkpointing,
        "budget": {"max_tokens": tc.max_tokens, "max_minutes": tc.max_minutes}, "command": opts.command,
        **environment_info(device),
    }
    row.update(measure_memory(cfg, str(device)))
    run_dir = opts.runs_dir / f"{slug(run.label)}-{run.key[:8]}"
    try:
        resume = resolve_checkpoint(run_dir) is not None
    except CheckpointError:
        resume = False
    error, limit, trainer = None, None, None
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        trainer = Trainer(cfg, run_dir, resume=resume)
        model = trainer.model
        row.update(actual_params=model.num_params(), dense_equivalent_params=model.dense_equivalent_params(),
                   train_tokens_in_split=trainer.data.stats["train"]["tokens"],
                   tokenizer=trainer.data.tokenizer.kind, vocab_size=trainer.data.tokenizer.vocab_size,
                   cuda_graph=bool(trainer.cuda_graph), resumed=resume)
        summary = trainer.fit()
        limit = summary["limit"]
        # train_seconds holds what a resumed run had trained before this call
        row.update(steps=trainer.step, tokens_seen=trainer.tokens, best_val_loss=summary["best_val_loss"],
                   train_seconds=trainer.train_seconds + summary["seconds"])
    except TrainingError as e:  # a non-finite loss: kept, marked
        error = str(e)
    except (torch.OutOfMemoryError, RuntimeError) as e:
        error = _one_line(e)
    finally:
        if trainer is not None:
            row.setdefault("steps", trainer.step)
            row.setdefault("tokens_seen", trainer.tokens)
        row["wall_seconds"] = time.perf_counter() - t0
        if device.type == "cuda":
            row["train_run_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        del trainer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    row["status"], row["status_detail"] = _status(cfg, row.get("steps", 0), row.get("tokens_seen", 0), limit, error)

    records = _records(run_dir)
    tokens_per_step = tc.batch_size * cfg.seq_len * tc.grad_accum
    windows = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    timed = windows[opts.warmup_windows:] or windows
    row["tokens_per_s_median"] = statistics.median(timed) if timed else None
    row["tokens_per_s_windows"] = len(timed)
    if opts.shared_by > 1:  # the device's share this run got, not the model's speed (muse.compare.jobs)
        row["device_shared_by"] = opts.shared_by
        for k in ("tokens_per_s_median", "step_tokens_per_s"):
            row[k.replace("tokens_per_s", "tokens_per_s_shared")] = row.pop(k, None)
        row["tokens_per_s_median"] = None
    row["val_curve"] = [[r["step"] * tokens_per_step, r["val_loss"]] for r in records if "val_loss" in r]
    if "best_val_loss" not in row and row["val_curve"]:
        row["best_val_loss"] = min(v for _, v in row["val_curve"])
    bs = opts.eval_batch_size or tc.batch_size
    row["test"] = row["valid"] = None
    if row["val_curve"]:  # a best checkpoint exists
        try:
            row["test"] = evaluate_checkpoint(run_dir, split="test", tag="best", batch_size=bs, device=str(device))
            row["valid"] = evaluate_checkpoint(run_dir, split="valid", tag="best", batch_size=bs, device=str(device))
        except (CheckpointError, RuntimeError, ValueError) as e:
            row["eval_error"] = _one_line(e)
    row["run_dir"] = str(run_dir)
    row["config"] = to_dict(cfg)
    return row


def ppl(row: dict) -> float:
    t = row.get("test") or {}
    v = t.get("perplexity")
    return v if isinstance(v, (int, float)) and math.isfinite(v) else math.inf
