"""What every benchmark result carries (DESIGN.md §2): git sha, device, torch version, date."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from muse.runtime import environment_info as environment  # noqa: F401  (git sha, date, device, torch)

RESULTS = Path(__file__).resolve().parent / "results"

try:
    from triton.testing import do_bench
except ImportError:  # pragma: no cover - no Triton: CUDA events
    do_bench = None


def error_line(e: BaseException) -> str:
    """One line for a failed benchmark row."""
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"


def median_ms(fn, leaves, device: torch.device, warmup_ms: float, rep_ms: float) -> tuple[float, str]:
    """Median ms of fn() (gradients of ``leaves`` set to None before each call) and how it was timed."""
    def reset():
        for t in leaves:
            t.grad = None

    if device.type == "cuda":
        reset()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        est = a.elapsed_time(b)
        # at least ~10 timed calls even where one call outlasts rep_ms (long N)
        warmup_ms, rep_ms = max(warmup_ms, 2 * est), max(rep_ms, 10 * est)
        if do_bench is not None:
            return do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=leaves, return_mode="median"), \
                "triton.testing.do_bench"
        for _ in range(max(1, int(warmup_ms / max(est, 1e-3)))):
            reset()
            fn()
        times = []
        for _ in range(max(10, int(rep_ms / max(est, 1e-3)))):
            reset()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            times.append((a, b))
        torch.cuda.synchronize()
        return statistics.median(x.elapsed_time(y) for x, y in times), "CUDA events"
    times = []
    for i in range(4):  # host clock: one warm-up call, then three
        reset()
        t0 = time.perf_counter()
        fn()
        if i:
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times), "host clock"




def write_result(name: str, payload: dict, out_dir: str | Path = RESULTS) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def sync(device: torch.device) -> None:
    """Wait for the device (host clock timings around GPU work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_run_args(p, with_set: bool = True) -> None:
    """The options every benchmark shares: config overrides, the device, where results go."""
    if with_set:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="config override for every preset, e.g. model.n_layers=2 (tests)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help=f"result folder (default {RESULTS}; required off CUDA)")


def pick_device(name: str, out: str | None, script: str) -> torch.device | None:
    """The device a benchmark runs on, or None (after a message) when it is not CUDA and no
    ``--out`` was given: GPU results only ever come from a GPU run."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type != "cuda" and out is None:
        print(f"{script}: not on CUDA: GPU results come from a GPU run; pass --out DIR for a CPU test run",
              file=sys.stderr)
        return None
    return device


def publish(bench: str, res: dict, device: torch.device, out: str | None, markdown) -> Path:
    """Write BENCH-gpu.json (BENCH-cpu.json off CUDA) and its Markdown table; print the table."""
    name = f"{bench}-{'gpu' if device.type == 'cuda' else 'cpu'}"
    path = write_result(name, res, out if out is not None else RESULTS)
    md = markdown(res)
    path.with_suffix(".md").write_text(md + "\n")
    print(md)
    print(f"-> {path}")
    return path


def parse_set(items: list[str]) -> dict:
    """``--set KEY=VALUE`` options as config overrides, values read as YAML (as `muse train
    --KEY VALUE` reads them)."""
    out = {}
    for it in items:
        key, sep, value = it.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE; got {it!r}")
        out[key] = yaml.safe_load(value)
    return out
