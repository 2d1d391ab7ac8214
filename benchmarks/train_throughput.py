"""Training throughput of full models at long sequences: `baseline` vs `standard` (issue 5).

On one H100 (writes benchmarks/results/train_throughput-gpu.json and .md; about 1–2 minutes):

    MUSE_GIT_SHA=$(git rev-parse HEAD) python benchmarks/train_throughput.py --impl triton

For every N in ``--seqs`` (default 2K, 8K, 16K) and each preset (same width and depth; the preset
loaded by name with ``model.max_seq_len`` = ``train.seq_len`` = N), B = max(1, --tokens // N)
sequences of random token ids: full training steps (forward, backward, clipping, optimizer step)
run by ``muse.memory.profile.measure`` — the trainer's own step (``muse.train.step``) — with one
recipe for both presets (default bf16 autocast, fused AdamW, no checkpointing: the presets' own
memory settings would change the comparison). Figures: median step time over --steps timed steps
after --warmup-steps, tokens/s = B·N / median step, peak = ``torch.cuda.max_memory_allocated``
over the timed steps (DESIGN.md §2), and the ratios standard / baseline. An out-of-memory or a
failure is recorded per row. On CPU (tests) it writes train_throughput-cpu.json into ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import add_run_args, environment, error_line, parse_set, pick_device, publish  # noqa: E402
from muse.config import COMPILE_MODES, PRECISIONS, load_config, to_dict  # noqa: E402
from muse.memory.profile import StepPlan, build_plan, kernel_paths, measure, plan_config, plan_step  # noqa: E402
from muse.runtime import autocast_context  # noqa: E402
from speed_tables import throughput_markdown  # noqa: E402


def host_measure(cfg, plan: StepPlan, warmup: int, steps: int) -> dict:
    """The same steps on the CPU (for tests): host-clock median, no peak memory."""
    cpu = torch.device("cpu")
    cfg = plan_config(cfg, plan)
    model, opt = build_plan(cfg, plan, cpu)
    idx = torch.randint(0, cfg.model.vocab_size, (plan.batch, plan.seq + 1))
    paths = kernel_paths(model, autocast_context(plan.precision, cpu), idx)
    step = plan_step(cfg, plan, model, opt, idx)  # the trainer's TrainStep, as `measure` runs it
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"tokens_per_s": plan.batch * plan.seq / statistics.median(times), "timed_steps": steps, "peak": None,
            "paths": paths}


def _median_run(runs: list[dict]) -> dict:
    """The run of median tokens/s (the lower middle one of an even count), with every run's
    tokens/s in ``repeats_tokens_per_s`` when there are several; the first run if all failed."""
    ok = sorted((r for r in runs if r["tokens_per_s"]), key=lambda r: r["tokens_per_s"])
    if not ok:
        return runs[0]
    out = dict(ok[(len(ok) - 1) // 2])
    if len(runs) > 1:
        out["repeats_tokens_per_s"] = [r["tokens_per_s"] for r in runs]
    return out


def run_one(preset: str, N: int, B: int, args, device: torch.device) -> dict:
    over = {**parse_set(args.set), "model.max_seq_len": N, "train.seq_len": N, "train.batch_size": B,
            "train.precision": args.precision, "train.optimizer": args.optimizer,
            "model.checkpointing": args.checkpointing, "model.mixer.semiseparable.impl": args.impl}
    if args.compile:
        over.update({"train.compile": True, "train.compile_mode": args.compile})
    over["train.cuda_graph"] = bool(args.cuda_graph)  # measure() captures only for true; say what ran
    try:
        cfg = load_config(preset, over)
        plan = StepPlan(batch=B, seq=N, precision=args.precision, optimizer=args.optimizer,
                        checkpointing=args.checkpointing, mode="train")
        if device.type == "cuda":
            r = measure(cfg, plan, device, warmup=args.warmup_steps, steps=args.steps)
        else:
            r = host_measure(cfg, plan, args.warmup_steps, args.steps)
    except Exception as e:  # noqa: BLE001 - anything but an OOM (measure records those itself)
        return {"tokens_per_s": None, "step_ms": None, "peak_mib": None, "error": error_line(e)}
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    tps = r.get("tokens_per_s")
    out = {
        "tokens_per_s": tps, "step_ms": 1e3 * B * N / tps if tps else None,
        "peak_mib": r["peak"] / 2**20 if r.get("peak") is not None else None,
        "timed_steps": r.get("timed_steps"), "mixer": cfg.model.mixer_layout,
        "parameter_bytes": r.get("parameters"), "config": to_dict(cfg.model),
        "paths": r.get("paths"),  # the implementation each MUSE op ran ("auto" resolved)
    }
    if r.get("peak_note"):
        out["peak_note"] = r["peak_note"]
    if r.get("error"):
        out.update(error=r["error"], tokens_per_s=None, step_ms=None)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="+", default=[2048, 8192, 16384])
    p.add_argument("--presets", nargs=2, default=["baseline", "standard"], metavar=("REFERENCE", "OTHER"))
    p.add_argument("--impl", default="triton", help="mixer.semiseparable.impl of the semiseparable preset")
    p.add_argument("--tokens", type=int, default=16384, help="B = max(1, tokens // N)")
    p.add_argument("--precision", default="bf16", choices=PRECISIONS)
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "adamw8bit"))
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--compile", default=None, choices=COMPILE_MODES, metavar="MODE",
                   help="torch.compile both models in this mode (CUDA only; results go to "
                        "train_throughput-compile-MODE-gpu.json)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture each whole step as one CUDA graph, as train.cuda_graph does (what `muse train` "
                        "does by default on one GPU where the step can be captured: train.cuda_graph auto); "
                        "without it the steps run uncaptured. CUDA only; results go to "
                        "train_throughput[-compile-MODE]-cudagraph-gpu.json")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1,
                   help="independent runs per row (each builds, compiles and measures afresh); the row reports "
                        "the median run and the range of the paired runs' ratios (results go to ...-xR-gpu.json)")
    add_run_args(p)
    args = p.parse_args(argv)
    device = pick_device(args.device, args.out, "train_throughput")
    if device is None:
        return 2
    for flag, value in (("--compile", args.compile), ("--cuda-graph", args.cuda_graph)):
        if value and device.type != "cuda":
            print(f"{flag} measures GPU steps; it needs a CUDA device", file=sys.stderr)
            return 2
    env = environment(device)
    a, b = args.presets
    rows = []
    for N in args.seqs:
        B = max(1, args.tokens // N)
        row = {"N": N, "B": B}
        runs = {}
        for preset in args.presets:
            t0 = time.perf_counter()
            runs[preset] = [run_one(preset, N, B, args, device) for _ in range(max(1, args.repeats))]
            row[preset] = r = _median_run(runs[preset])
            print(f"N={N:>6} B={B:>2} {preset:>10}: "
                  + (f"{r['tokens_per_s']:,.0f} tokens/s, step {r['step_ms']:.1f} ms" if r["tokens_per_s"]
                     else f"FAILED {r.get('error')}")
                  + (f", peak {r['peak_mib']:,.0f} MiB" if r["peak_mib"] is not None else "")
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
        x, y = row[a], row[b]
        row["ratio_tokens_per_s"] = y["tokens_per_s"] / x["tokens_per_s"] if x["tokens_per_s"] and y["tokens_per_s"] \
            else None
        row["ratio_peak_memory"] = y["peak_mib"] / x["peak_mib"] if x["peak_mib"] and y["peak_mib"] else None
        if args.repeats > 1:  # run i of one preset against run i of the other
            pairs = [q["tokens_per_s"] / p["tokens_per_s"] for p, q in zip(runs[a], runs[b])
                     if p["tokens_per_s"] and q["tokens_per_s"]]
            row["ratio_range"] = [min(pairs), max(pairs)] if pairs else None
        rows.append(row)
    res = {
        "benchmark": "train_throughput", **env,
        "config": {"presets": args.presets, "seqs": args.seqs, "tokens": args.tokens, "impl": args.impl,
                   "precision": args.precision, "optimizer": args.optimizer, "checkpointing": args.checkpointing,
                   "compile": args.compile, "cuda_graph": args.cuda_graph,
                   "warmup_steps": args.warmup_steps, "steps": args.steps, "repeats": args.repeats,
                   "overrides": parse_set(args.set),
                   "timer": "host clock around each step, torch.cuda.synchronize() after it (median)"},
        "figures": rows,
    }
    name = "train_throughput" + (f"-compile-{args.compile}" if args.compile else "") + \
        ("-cudagraph" if args.cuda_graph else "") + (f"-x{args.repeats}" if args.repeats > 1 else "")
    publish(name, res, device, args.out, throughput_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
