"""Where a mixer layer's forward+backward spends its GPU time: torch.profiler, kernels grouped.

On one H100 (writes benchmarks/results/profile_mixer-gpu.json and .md; under a minute):

    MUSE_GIT_SHA=$(git rev-parse HEAD) python benchmarks/profile_mixer.py --seq 8192

The layers are ``benchmarks/mixers.py``'s (its ``layer_configs``: the ``baseline`` attention,
``standard`` semiseparable and ``hamt-100m`` holographic mixers at d=1024, bf16 weights), at
B = max(1, --tokens // N). Each is run --warmup times (Triton autotuning, cuFFT plans), then
--steps forward+backward calls are recorded with ``torch.profiler`` (CUDA activity; CPU activity
off CUDA). Device kernels are grouped by name (their total time, calls, share of the layer's
kernel time); the ``--top`` largest groups are kept, and the rest summed in one line. Kernel
time is GPU busy time: launch gaps and host overhead are not in it (``mixers.py``'s graph
column is the time with them removed, its eager column the time with them).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from common import add_run_args, environment, error_line, pick_device, publish  # noqa: E402
from mixers import LAYERS, layer_configs, layer_step  # noqa: E402
from muse.config import to_dict  # noqa: E402
from muse.mixers import build_mixer  # noqa: E402


def _kernel_times(prof, device: torch.device) -> dict[str, tuple[float, int]]:
    """Kernel name -> (total µs, calls) of the device's events (CPU ops off CUDA)."""
    out: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if device.type == "cuda":
            if e.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
        else:
            if e.cpu_parent is not None:  # top-level CPU ops only: children are inside them
                continue
            us = e.cpu_time_total
        out[e.name][0] += us
        out[e.name][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def profile_layer(cfg, B: int, N: int, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    bf = torch.bfloat16 if device.type == "cuda" else torch.float32
    layer = build_mixer(cfg, 0).to(device=device, dtype=bf).train()
    x = torch.randn(B, N, args.d_model, device=device, dtype=bf, requires_grad=True)
    dy = torch.randn(B, N, args.d_model, device=device, dtype=bf)

    def step():
        layer_step(layer, x, dy)
        for t in (x, *layer.parameters()):
            t.grad = None

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    times = sorted(_kernel_times(prof, device).items(), key=lambda kv: -kv[1][0])
    total = sum(us for us, _ in (t for _, t in times))
    top = [{"kernel": name, "ms_per_step": us / 1e3 / args.steps, "calls_per_step": calls / args.steps,
            "share": us / total if total else None} for name, (us, calls) in times[: args.top]]
    rest = times[args.top:]
    return {"kernel_ms_per_step": total / 1e3 / args.steps, "kernels": len(times), "top": top,
            "rest": {"kernels": len(rest), "ms_per_step": sum(t[0] for _, t in rest) / 1e3 / args.steps}}


def profile_markdown(res: dict) -> str:
    c = res["config"]
    lines = []
    for name, row in res["figures"].items():
        if "error" in row:
            lines += [f"### {name}: failed", "", f"`{row['error']}`", ""]
            continue
        lines += [f"### {name}: {row['kernel_ms_per_step']:.3f} ms of kernels per forward+backward "
                  f"({row['kernels']} distinct kernels)", "",
                  "| kernel | ms / step | calls / step | share |", "|---|---:|---:|---:|"]
        for t in row["top"]:
            lines.append(f"| `{t['kernel'][:90]}` | {t['ms_per_step']:.3f} | {t['calls_per_step']:g} | "
                         f"{100 * t['share']:.1f} % |")
        lines += [f"| {row['rest']['kernels']} others | {row['rest']['ms_per_step']:.3f} | | |", ""]
    lines.append(f"B={c['B']}, N={c['N']}, d={c['d_model']}, {c['dtype']}, {c['steps']} profiled steps after "
                 f"{c['warmup']} warm-up; {res.get('device')}, torch {res.get('torch')}, "
                 f"commit `{res.get('git_sha')}`, {res.get('date')} (`benchmarks/profile_mixer.py`).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, default=8192, help="sequence length N")
    p.add_argument("--tokens", type=int, default=8192, help="B = max(1, tokens // N)")
    p.add_argument("--layers", nargs="+", default=list(LAYERS), choices=LAYERS)
    p.add_argument("--impl", default="auto", help="semiseparable scan implementation")
    p.add_argument("--holo-impl", default="auto", help="holographic read implementation")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--hcm-dim", type=int, default=2048)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=20)
    add_run_args(p, with_set=False)
    args = p.parse_args(argv)
    device = pick_device(args.device, args.out, "profile_mixer")
    if device is None:
        return 2
    B, N = max(1, args.tokens // args.seq), args.seq
    cfgs = dict(zip(LAYERS, layer_configs(args, N)))
    env = environment(device)
    rows = {}
    for name in args.layers:
        if cfgs[name] is None:
            continue
        try:
            rows[name] = profile_layer(cfgs[name], B, N, args, device)
        except Exception as e:  # noqa: BLE001
            rows[name] = {"error": error_line(e)}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    res = {"benchmark": "profile_mixer", **env,
           "config": {"B": B, "N": N, "d_model": args.d_model, "heads": args.heads,
                      "dtype": "bf16" if device.type == "cuda" else "fp32", "warmup": args.warmup,
                      "steps": args.steps, "top": args.top,
                      "mixers": {k: to_dict(v.mixer) for k, v in cfgs.items() if v is not None and k in rows}},
           "figures": rows}
    publish("profile_mixer", res, device, args.out, profile_markdown)
    return 0 if all("error" not in r for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
