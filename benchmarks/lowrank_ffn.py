"""The low-rank GELU FFN: unfused torch ops (eager and compiled) vs the fused Triton kernel.

On one H100 (writes benchmarks/results/lowrank_ffn-gpu.json and .md; about 2 minutes):

    MUSE_GIT_SHA=$(git rev-parse HEAD) python benchmarks/lowrank_ffn.py

For each (T, d, r) in --shapes: one ``FFN(d, ffn: {kind: lowrank, rank: r})`` (hidden 4d, GELU,
bias) under bf16 autocast on a (T, d) fp32 input, forward + backward (input and every parameter
gradient) with ``ffn.impl`` = torch (eager), torch under ``torch.compile``, and triton (the fused
``muse.ops.lowrank_mlp`` kernels). Figures: median ms (``triton.testing.do_bench``), the peak
memory of one step above the memory held before it (``torch.cuda.max_memory_allocated``: the
activations the backward keeps plus its transients), and the relative error of the triton output
and gradients against the eager torch ones (same weights, same input, both bf16). On CPU (tests)
it runs the torch rows only and writes lowrank_ffn-cpu.json into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import add_run_args, environment, error_line, median_ms, pick_device, publish  # noqa: E402
from muse.config import FFNConfig  # noqa: E402
from muse.layers.ffn import FFN  # noqa: E402
from muse.runtime import autocast_context  # noqa: E402
from speed_tables import lowrank_ffn_markdown  # noqa: E402

IMPLS = ("torch", "torch-compiled", "triton")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def run_shape(T: int, d: int, r: int, device: torch.device, impls: tuple[str, ...]) -> dict:
    torch.manual_seed(0)
    ref = FFN(d, FFNConfig(kind="lowrank", rank=r, impl="torch")).to(device)
    x0 = torch.randn(T, d, device=device)
    dy = torch.randn(T, d, device=device)
    row, grads = {"T": T, "d": d, "r": r}, {}
    for name in impls:
        try:
            ffn = FFN(d, FFNConfig(kind="lowrank", rank=r, impl=name.split("-")[0])).to(device)
            ffn.load_state_dict(ref.state_dict())
            fn = torch.compile(ffn) if name.endswith("compiled") else ffn
            x = x0.clone().requires_grad_(True)
            leaves = [x, *ffn.parameters()]

            def step():
                with autocast_context("bf16", device):
                    y = fn(x)
                y.backward(dy.to(y.dtype))
                return y

            for _ in range(3):  # compile / autotune
                step()
            for t in leaves:
                t.grad = None
            y = step()
            grads[name] = [y.detach().float().clone()] + [t.grad.detach().float().clone() for t in leaves]
            peak = None
            if device.type == "cuda":
                for t in leaves:
                    t.grad = None
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                start = torch.cuda.memory_allocated()
                step()
                torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - start) / 2**20
            ms, timer = median_ms(step, leaves, device, 25, 200)
            row[name] = {"ms": ms, "peak_mib": peak, "timer": timer}
        except Exception as e:  # noqa: BLE001 - recorded per row
            row[name] = {"ms": None, "peak_mib": None, "error": error_line(e)}
        print(f"T={T} d={d} r={r} {name:>15}: " + (f"{row[name]['ms']:.3f} ms" if row[name]["ms"] else
                                                  f"FAILED {row[name].get('error')}")
              + (f", peak {row[name]['peak_mib']:.1f} MiB" if row[name].get("peak_mib") is not None else ""), flush=True)
    if "triton" in grads and "torch" in grads:
        names = ["output", "x", *(n for n, _ in ref.named_parameters())]
        row["triton_rel_err_vs_torch"] = {n: _rel(a, b) for n, a, b in zip(names, grads["triton"], grads["torch"])}
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["16384,512,32"], metavar="T,d,r")
    add_run_args(p, with_set=False)
    args = p.parse_args(argv)
    device = pick_device(args.device, args.out, "lowrank_ffn")
    if device is None:
        return 2
    impls = IMPLS if device.type == "cuda" else ("torch",)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    res = {"benchmark": "lowrank_ffn", **environment(device),
           "config": {"shapes": shapes, "impls": list(impls), "precision": "bf16 autocast, fp32 parameters"},
           "figures": [run_shape(T, d, r, device, impls) for T, d, r in shapes]}
    publish("lowrank_ffn", res, device, args.out, lowrank_ffn_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
