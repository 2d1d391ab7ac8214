"""What a user pays before training runs at full speed: compiling and autotuning the Triton
kernels (issue 20, finding 13).

On one H100 (writes benchmarks/results/startup-gpu.json and .md; about 4 minutes for `standard`):

    MUSE_GIT_SHA=$(git rev-parse HEAD) python benchmarks/startup.py --preset standard --steps 60

`muse train PRESET` runs as a subprocess for --steps steps (logged every --log-every, evaluated
once at the end on --eval-tokens), once per mode, all over one fresh cache root:

- cold:   a fresh TRITON_CACHE_DIR and TORCHINDUCTOR_CACHE_DIR: the first run on a machine;
- warm:   the same folders again: every later run (compiled kernels and tuning choices on disk);
- retune: the same folders with MUSE_TRITON_AUTOTUNE_CACHE=0: what every process paid while
          Triton kept its compiled kernels but not its tuning choices.

The data are tokenized into --data-cache before the first run, so no mode pays for that. Per run:
the process's wall time; setup (start to the trainer's header line: imports, data, model); the
time from the header to the last logged step; the steady tokens/s (median of the logged windows
after --warmup-windows; metrics.jsonl) and the time the steps would take at that rate; their
difference (``overhead_s``: compiling, tuning, first-call work); and the tuning notices the run
printed. The autotuning files the cold run left in its TRITON_CACHE_DIR give, per kernel and
key, the configs benchmarked and the first config's time over the best one's (what tuning gains
over the untuned default). Off CUDA (tests) it writes startup-cpu.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import muse  # noqa: E402
from common import add_run_args, environment, parse_set, pick_device, publish  # noqa: E402
from inference_tables import startup_markdown  # noqa: E402
from muse.config import load_config  # noqa: E402
from muse.data import prepare_data  # noqa: E402

MODES = ("cold", "warm", "retune")
_STEP = re.compile(r"^step\s+(\d+)\s+loss ")
_TUNING = "muse: tuning Triton kernel "


def _overrides(args) -> dict:
    out = parse_set(args.set)
    if args.dataset:
        out["data.dataset"] = args.dataset
    if args.data_dir:
        out["data.data_dir"] = args.data_dir
    return {**out, "data.cache_dir": args.data_cache}


def train_command(args, device: torch.device, run_dir: Path, overrides: dict) -> list[str]:
    cmd = [sys.executable, "-m", "muse.cli", "train", args.preset, "--run-dir", str(run_dir),
           "--train.device", str(device), "--train.max_steps", str(args.steps), "--train.max_minutes", "0",
           "--train.log_every", str(args.log_every), "--train.eval_every", str(args.steps),
           "--train.eval_tokens", str(args.eval_tokens), "--train.progress", "true", "--train.tensorboard", "false"]
    for key, value in overrides.items():
        cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return cmd


def run_mode(mode: str, cmd: list[str], caches: Path, warmup_windows: int) -> dict:
    """One `muse train` process: its output lines timed as they arrive (stderr merged)."""
    env = {**os.environ, "TRITON_CACHE_DIR": str(caches / "triton"),
           "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(muse.__file__).resolve().parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    env.pop("MUSE_TRITON_AUTOTUNE", None)  # what a user runs: autotuning on
    if mode == "retune":
        env["MUSE_TRITON_AUTOTUNE_CACHE"] = "0"
    else:
        env.pop("MUSE_TRITON_AUTOTUNE_CACHE", None)
    run_dir = Path(cmd[cmd.index("--run-dir") + 1])
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = [(time.perf_counter() - t0, line.rstrip("\n")) for line in proc.stdout]
    rc = proc.wait()
    process_s = time.perf_counter() - t0
    ready = next((t for t, line in lines if line.startswith("muse train:")), None)
    steps = [(int(m.group(1)), t) for t, line in lines if (m := _STEP.match(line))]
    tuned = [line.removeprefix(_TUNING).split(" (", 1)[0] for _, line in lines if line.startswith(_TUNING)]
    out = {"mode": mode, "returncode": rc, "process_s": process_s, "setup_s": ready, "tuning_notices": len(tuned),
           "tuned": tuned}
    records = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()] \
        if (run_dir / "metrics.jsonl").is_file() else []
    windows = [r for r in records if "tokens_per_s" in r]
    if rc or ready is None or not steps or not windows:
        out["error"] = f"exit {rc}"
        out["output_tail"] = [line for _, line in lines[-30:]]
        return out
    last_step, t_last = steps[-1]
    steady = statistics.median(r["tokens_per_s"] for r in (windows[warmup_windows:] or windows[-1:]))
    tokens_per_step = windows[-1]["tokens"] / windows[-1]["step"]
    steady_s = last_step * tokens_per_step / steady
    out.update({
        "steps": last_step, "tokens_per_step": tokens_per_step, "to_last_step_s": t_last - ready,
        "steady_tokens_per_s": steady, "steady_s": steady_s, "overhead_s": t_last - ready - steady_s,
        "windows_tokens_per_s": [r["tokens_per_s"] for r in windows],
    })
    return out


def tuning_files(triton_dir: Path) -> list[dict]:
    """Triton's autotuning results on disk: per kernel and key, what benchmarking found."""
    rows = []
    for path in sorted(triton_dir.rglob("*.autotune.json")):
        data = json.loads(path.read_text())
        timings = [(cfg, t[0] if isinstance(t, list) else t) for cfg, t in data["configs_timings"]]
        best_cfg, best = min(timings, key=lambda ct: ct[1])
        first = timings[0][1]
        rows.append({
            "kernel": path.name.removesuffix(".autotune.json"), "key": data.get("key"), "configs": len(timings),
            "best": {**best_cfg.get("kwargs", {}), "num_warps": best_cfg.get("num_warps"),
                     "num_stages": best_cfg.get("num_stages")},
            "best_ms": best, "first_ms": first, "first_over_best": first / best if best > 0 else None,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="standard")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--warmup-windows", type=int, default=2, help="logged windows left out of the steady rate")
    p.add_argument("--eval-tokens", type=int, default=16384, help="the one evaluation at the end")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                   help="in this order; warm and retune reuse the folders the runs before them filled")
    p.add_argument("--dataset", default=None, help="data.dataset (default: the preset's, pystdlib: offline)")
    p.add_argument("--data-dir", default=None, help="data.data_dir (wikitext-* files)")
    p.add_argument("--data-cache", default="~/.cache/muse", help="data.cache_dir: tokenized once, before the runs")
    p.add_argument("--work-dir", default=None, help="fresh caches and runs go here (default: a temp folder)")
    add_run_args(p)
    args = p.parse_args(argv)
    device = pick_device(args.device, args.out, "startup")
    if device is None:
        return 2
    overrides = _overrides(args)
    cfg = load_config(args.preset, overrides)
    t0 = time.perf_counter()
    prepare_data(cfg.data, cfg.model.vocab_size)
    print(f"startup: data ready in {time.perf_counter() - t0:.0f} s", flush=True)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="muse-startup-"))
    caches = work / "caches"
    shutil.rmtree(caches, ignore_errors=True)  # cold means cold
    cmd = train_command(args, device, work / "run", overrides)
    runs = []
    for mode in args.modes:
        r = run_mode(mode, cmd, caches, args.warmup_windows)
        runs.append(r)
        print(f"startup: {mode:>6}: " + (f"FAILED {r['error']}\n" + "\n".join(r["output_tail"]) if "error" in r else
              f"{r['process_s']:.1f} s in all, {r['to_last_step_s']:.1f} s from the header to step {r['steps']} "
              f"({r['steady_s']:.1f} s at the steady {r['steady_tokens_per_s']:,.0f} tok/s), "
              f"{r['tuning_notices']} tuning notices"), flush=True)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    res = {
        "benchmark": "startup", **environment(device), "triton": triton_version,
        "config": {"preset": args.preset, "steps": args.steps, "log_every": args.log_every,
                   "warmup_windows": args.warmup_windows, "eval_tokens": args.eval_tokens, "modes": args.modes,
                   "overrides": {k: v for k, v in overrides.items() if k != "data.cache_dir"},
                   "command": shlex.join(["python", *cmd[1:]])},
        "figures": {"runs": runs, "tuning": tuning_files(caches / "triton") if "cold" in args.modes else []},
    }
    publish("startup", res, device, args.out, startup_markdown)
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
