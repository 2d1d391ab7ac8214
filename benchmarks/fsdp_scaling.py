"""FSDP2 training across GPUs (issue 24): tokens/s and per-GPU peak memory of ``train.parallel fsdp``.

One launch of N processes writes one result; launch it for N = 1, 2, 4, ... for the scaling (the
one-GPU baseline comes from this script too, as a world of one sharded over itself):

    for n in 1 2; do MUSE_GIT_SHA=$(git rev-parse HEAD) torchrun --standalone --nproc-per-node $n \\
        benchmarks/fsdp_scaling.py --preset large --steps 30 --data-dir ../shared/data/wikitext-2; done

Each process builds the run as ``muse train`` does, through the trainer itself
(:class:`muse.train.trainer.Trainer`: data, model, FSDP2 sharding, optimizer on the shards, the
step and the batch sampler that splits one global batch over the processes), then runs
``--warmup`` untimed and ``--steps`` timed training steps (``Trainer.train_step``: no evaluation,
no checkpoint). Figures: step time synchronised on the device, the median over the timed steps
(rank 0's; every rank's in ``ranks``); tokens/s = tokens per global step (``--batch`` sequences
per process x N x seq) / median step; per-rank peak = ``torch.cuda.max_memory_allocated`` over
the timed steps (the peak of the build, before, separately as ``startup_peak``); per-rank bytes of
the parameter shards and optimizer states beside one process's (``one_process``: what sharding
divides); the loss of the global batch at every step (falling from the first to the last).
Rank 0 writes ``fsdp_scaling-PRESET-xN-gpu.json`` (and .md) to benchmarks/results/.

On CPU (tests; gloo, tiny models) it runs the same way and needs ``--out``: no memory figures.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import environment, parse_set, pick_device, publish, sync  # noqa: E402

from muse.config import OPTIMIZERS, PRECISIONS, ConfigError, load_config, to_dict  # noqa: E402
from muse.data import DataError  # noqa: E402
from muse.distributed import all_reduce_sum  # noqa: E402
from muse.memory.accounting import (  # noqa: E402
    expected_optimizer_bytes,
    optimizer_state_bytes,
    tensor_bytes,
)
from muse.memory.budget import fmt_bytes  # noqa: E402
from muse.memory.profile import StepPlan  # noqa: E402
from muse.memory.sharded import one_process_bytes  # noqa: E402
from muse.train.trainer import Trainer  # noqa: E402


def build_config(args, device: torch.device):
    over = {**parse_set(args.set), "train.parallel": "fsdp", "train.device": str(device),
            "train.max_steps": args.warmup + args.steps, "train.max_minutes": 0, "train.max_tokens": 0,
            "train.warmup_steps": args.lr_warmup, "train.progress": False, "train.tensorboard": False,
            "train.wandb": False, "train.cuda_graph": False, "train.grad_accum": args.grad_accum}
    for key, value in (("train.batch_size", args.batch), ("train.precision", args.precision),
                       ("train.optimizer", args.optimizer), ("model.checkpointing", args.checkpointing)):
        if value is not None:
            over[key] = value
    if args.seq:
        over["train.seq_len"] = args.seq  # at most model.max_seq_len (the config says so otherwise)
    if args.compile:
        over.update({"train.compile": True, "train.compile_mode": args.compile})
    if args.data_dir:
        over.update({"data.dataset": args.dataset or "wikitext-2", "data.data_dir": args.data_dir})
    elif args.dataset:
        over["data.dataset"] = args.dataset
    if args.cache_dir:
        over["data.cache_dir"] = args.cache_dir
    return load_config(args.preset, over)


def timed_steps(trainer: Trainer, warmup: int, steps: int) -> dict:
    """``warmup`` + ``steps`` training steps; this rank's step times, peaks and losses (the loss
    of the global batch: the mean over the processes)."""
    device = trainer.device
    cuda = device.type == "cuda"
    losses, times = [], []
    startup_peak = None
    for i in range(warmup + steps):
        if i == warmup and cuda:  # the timed steps' peak, not the build's
            sync(device)
            startup_peak = torch.cuda.max_memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        losses.append(trainer.train_step())
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    world = trainer.dist.world_size
    mean = all_reduce_sum(torch.stack(losses).float()) / world  # (warmup + steps,)
    return {
        "losses": mean.tolist(), "step_s": times, "startup_peak": startup_peak,
        "peak": torch.cuda.max_memory_allocated(device) if cuda else None,
        "resident": torch.cuda.memory_allocated(device) if cuda else None,
    }


def gather(obj) -> list:
    """``obj`` of every process, by rank."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def summarise(args, argv: list[str], trainer: Trainer, mine: dict, ranks: list[dict]) -> dict:
    """Rank 0's result: the configuration, its timings and losses, every rank's memory."""
    cfg, world = trainer.cfg, trainer.dist.world_size
    tc = cfg.train
    step_s = statistics.median(mine["step_s"])  # rank 0's; a synchronous data-parallel step takes as long on each
    plan = StepPlan(batch=tc.batch_size, seq=cfg.seq_len, precision=tc.precision, optimizer=tc.optimizer)
    losses = mine["losses"]
    return {
        "benchmark": "fsdp_scaling", **environment(trainer.device), "world_size": world, "preset": args.preset,
        "command": " ".join(["torchrun --nproc-per-node", str(world), "benchmarks/fsdp_scaling.py", *argv]),
        "config": {"batch_per_process": tc.batch_size, "seq_len": cfg.seq_len, "grad_accum": tc.grad_accum,
                   "precision": tc.precision, "optimizer": tc.optimizer, "checkpointing": cfg.model.checkpointing,
                   "compile": tc.compile_mode if tc.compile else None, "parallel": "fsdp",
                   "dataset": cfg.data.dataset, "lr_warmup_steps": tc.warmup_steps, "full": to_dict(cfg)},
        "steps": {"warmup": args.warmup, "timed": args.steps},
        "tokens_per_step": trainer.tokens_per_step, "step_s_median": step_s,
        "tokens_per_s": trainer.tokens_per_step / step_s,
        "tokens_per_s_per_process": trainer.tokens_per_step / step_s / world,
        "step_s": mine["step_s"],
        "loss": {"first": losses[0], "last": losses[-1], "per_step": losses, "falling": bool(losses[-1] < losses[0]),
                 "finite": all(math.isfinite(v) for v in losses)},
        "peak_max": max((r["peak"] for r in ranks if r["peak"] is not None), default=None),
        "ranks": ranks,
        "one_process": one_process_bytes(cfg, plan),  # what sharding divides, for one process
    }


def markdown(res: dict) -> str:
    c = res["config"]
    lines = [
        f"# FSDP2 scaling: {res['preset']} on {res['world_size']} x {res['device']}",
        "",
        f"{c['batch_per_process']} sequences of {c['seq_len']} tokens per process (x{c['grad_accum']} micro-batches), "
        f"{c['precision']}, {c['optimizer']}, checkpointing {'on' if c['checkpointing'] else 'off'}"
        f"{', compile ' + c['compile'] if c['compile'] else ''}; {res['steps']['timed']} timed steps after "
        f"{res['steps']['warmup']}; {res['git_sha'][:10]}, torch {res['torch']}, {res['date']}",
        "",
        f"tokens/s {res['tokens_per_s']:,.0f} ({res['tokens_per_s_per_process']:,.0f} per process), median step "
        f"{1e3 * res['step_s_median']:.1f} ms; loss {res['loss']['first']:.4f} -> {res['loss']['last']:.4f}",
        "",
        "| rank | peak | startup peak | parameter shards | gradient shards | optimizer-state shards "
        "| median step ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["ranks"]:
        lines.append(f"| {r['rank']} | {fmt_bytes(r['peak'])} | {fmt_bytes(r['startup_peak'])} | "
                     f"{fmt_bytes(r['parameters'])} | {fmt_bytes(r['gradients'])} | "
                     f"{fmt_bytes(r['optimizer_state'])} | "
                     f"{1e3 * r['step_s_median']:.1f} |")
    one = res["one_process"]
    lines += ["", f"one process would hold {fmt_bytes(one['parameters'])} of parameters, "
                  f"{fmt_bytes(one['gradients'])} of gradients and {fmt_bytes(one['optimizer_state'])} "
                  "of optimizer state"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="large")
    p.add_argument("--steps", type=int, default=30, help="timed training steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--batch", type=int, help="sequences per process and micro-batch (default: the preset's)")
    p.add_argument("--seq", type=int, default=0, help="tokens per sequence (default: the preset's)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--precision", choices=PRECISIONS, help="default: the preset's (fp16 does not combine with FSDP)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default: the preset's")
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", metavar="MODE", help="train.compile with this mode (default: off)")
    p.add_argument("--lr-warmup", type=int, default=10, help="train.warmup_steps, short so the loss falls")
    p.add_argument("--data-dir", help="WikiText-2 files (train/valid/test.txt); default: the preset's dataset")
    p.add_argument("--dataset", help="data.dataset (default: wikitext-2 with --data-dir, else the preset's)")
    p.add_argument("--cache-dir", help="data.cache_dir (tokenized splits)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. model.n_layers=2 (tests)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="result folder (default benchmarks/results; required off CUDA)")
    p.add_argument("--tag", default="", help="suffix of the result's name")
    args = p.parse_args(argv)
    if args.steps < 2 or args.warmup < 0:
        raise SystemExit("--steps must be >= 2 and --warmup >= 0")
    device = pick_device(args.device, args.out, "fsdp_scaling.py")
    if device is None:
        return 2
    with tempfile.TemporaryDirectory(prefix="fsdp_scaling-", ignore_cleanup_errors=True) as run_dir:
        try:  # a bad setting: one line per process, as `muse train` says it
            # rank 0 writes the run's config and metrics.jsonl there (no checkpoint: no evaluation)
            trainer = Trainer(build_config(args, device), Path(run_dir) / "run")
        except (ConfigError, DataError, ValueError) as e:
            print(f"fsdp_scaling.py: error: {e}", file=sys.stderr)
            return 2
        try:
            mine = timed_steps(trainer, args.warmup, args.steps)
            model, opt = trainer.model, trainer.optimizer
            rank = {
                "rank": trainer.dist.rank, "peak": mine["peak"], "startup_peak": mine["startup_peak"],
                "resident": mine["resident"], "step_s_median": statistics.median(mine["step_s"]),
                "parameters": tensor_bytes([*model.parameters(), *model.buffers()]),
                # what each step's gradients are reduce-scattered into: the trainable parameter shards
                "gradients": tensor_bytes(p for p in model.parameters() if p.requires_grad),
                "optimizer_state": optimizer_state_bytes(opt),
                "optimizer_state_formula": expected_optimizer_bytes(model, trainer.cfg.train.optimizer,
                                                                    trainer.device.type),
            }
            ranks = gather(rank)
        finally:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        if trainer.dist.rank != 0:
            return 0
        res = summarise(args, sys.argv[1:] if argv is None else argv, trainer, mine, ranks)
        name = f"fsdp_scaling-{args.preset}-x{res['world_size']}" + (f"-{args.tag}" if args.tag else "")
        publish(name, res, trainer.device, args.out, markdown)
    return 0 if res["loss"]["finite"] else 1


if __name__ == "__main__":
    from muse.distributed import exit_process, under_torchrun

    code = main()
    if under_torchrun():
        exit_process(code)
    sys.exit(code)
