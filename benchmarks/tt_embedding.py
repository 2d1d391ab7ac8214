"""Forward+backward of a token embedding: nn.Embedding vs TT (torch path) vs TT (fused Triton).

On one H100 (writes benchmarks/results/tt_embedding-gpu.json and .md; a few minutes, mostly the
autotuner compiling every kernel config once per shape and dtype):

    MUSE_GIT_SHA=$(git rev-parse HEAD) python benchmarks/tt_embedding.py

For every (V, d) in ``--shapes`` (default 10000x512, 50000x1024), rank in ``--ranks`` (4, 16)
and dtype in ``--dtypes`` (bf16, fp32), over L = ``--tokens`` (8·2048) uniform random ids:

- ``embedding``: ``nn.Embedding(V, d)`` (dense gradient);
- ``tt_torch`` / ``tt_triton``: ``TTEmbedding(V, d, rank)`` with ``gather_impl`` "torch"
  (unique ids, chunked core-by-core bmm) and "triton" (the fused kernels), same cores.

Time: median of ``triton.testing.do_bench`` of one forward + ``backward(grad)``, parameter
gradients reset to None before each call, ids rotated among several fresh sets. Peak:
``torch.cuda.max_memory_allocated`` over one fwd+bwd minus what was allocated before it (the
output, the parameter gradients and every temporary; not the parameters, ids or upstream grad).
Floor: the bytes any implementation must move — the (L, d) output written, the (L, d) gradient
read, the ids read twice, the TT cores read twice and their gradients written — over the
device-to-device copy bandwidth measured in the same run ((read + written bytes) / time of a
large ``copy_``); ``x_floor`` = time / floor. Check, at every shape: tt_triton's output and
core gradients against the torch path in float64 on the same cores, ‖a − b‖ / ‖b‖ <= tolerance
(2e-2 bf16, 1e-3 fp32); exit code 1 if any fails. On CPU (tests) it runs only with an explicit
``--out``, fp32, the kernels on Triton's interpreter (TRITON_INTERPRET=1), and writes
tt_embedding-cpu.json.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from common import add_run_args, do_bench, error_line, environment, median_ms, pick_device, publish  # noqa: E402
from muse.layers.embedding import TTEmbedding  # noqa: E402
from muse.ops.tt_gather import triton_kernel  # noqa: E402


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
TOL = {"bf16": 2e-2, "fp32": 1e-3}
IMPLS = ("embedding", "tt_torch", "tt_triton")


def copy_bandwidth(device: torch.device, nbytes: int, args) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms, _ = median_ms(lambda: dst.copy_(src), [], device, args.warmup, args.rep)
    return 2 * nbytes / (ms * 1e-3)


def bench(module: nn.Module, id_sets, grad, device, args) -> dict:
    params = list(module.parameters())
    it = iter(range(10**9))

    def step():
        out = module(id_sets[next(it) % len(id_sets)])
        out.backward(grad)

    try:
        step()  # warm-up: compilation, autotuning, library handles
        for p in params:
            p.grad = None
        peak = None
        if device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        return {"ms": median_ms(step, params, device, args.warmup, args.rep)[0], "peak_mib": peak}
    except Exception as e:  # noqa: BLE001 - OOM or a kernel failure: record, go on
        return {"ms": None, "peak_mib": None, "error": error_line(e)}
    finally:
        for p in params:
            p.grad = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


def check(fast: TTEmbedding, ids, grad, dname: str, args) -> dict:
    """tt_triton's output and core gradients against the torch path in float64 (same cores)."""
    out = {"reference": "TT torch path, float64", "tolerance": TOL[dname]}
    try:
        params = list(fast.parameters())
        y = fast(ids)
        got = (y, *torch.autograd.grad(y, params, grad))
        del y
        ref_mod = copy.deepcopy(fast).to(torch.float64)
        ref_mod.tt.gather_impl = "torch"
        y64 = ref_mod(ids)
        ref = (y64, *torch.autograd.grad(y64, list(ref_mod.parameters()), grad.double()))
        errs = {name: rel(a, b) for name, a, b in zip(["out"] + [f"core{i}" for i in range(len(params))], got, ref)}
        out.update(errors=errs, ok=all(math.isfinite(e) and e <= TOL[dname] for e in errs.values()))
    except Exception as e:  # noqa: BLE001
        out.update(errors={}, ok=False, error=error_line(e))
    return out


def run_case(V: int, d: int, rank: int, dname: str, bw: float, device, args) -> dict:
    dtype, L = DTYPES[dname], args.tokens
    torch.manual_seed(0)
    id_sets = [torch.randint(0, V, (L,), device=device) for _ in range(4)]
    grad = torch.randn(L, d, device=device).to(dtype)
    row = {"vocab": V, "dim": d, "rank": rank, "dtype": dname, "tokens": L,
           "unique_ids": int(torch.unique(id_sets[0]).numel())}
    emb = nn.Embedding(V, d).to(device, dtype)
    row["embedding"] = bench(emb, id_sets, grad, device, args)
    del emb
    tt = TTEmbedding(V, d, rank, gather_impl="torch").to(device, dtype)
    row.update(vocab_factors=tt.tt.row_factors, dim_factors=tt.tt.col_factors, ranks=tt.tt.ranks,
               tt_params=tt.num_params())
    row["tt_torch"] = bench(tt, id_sets, grad, device, args)
    try:
        # the same cores on the fused kernel (its constructor checks the impl can run here)
        fused = TTEmbedding(V, d, rank, gather_impl="triton").to(device, dtype)
        fused.load_state_dict(tt.state_dict())
        tt = fused
        row["tt_triton"] = bench(tt, id_sets, grad, device, args)
        row["triton_configs"] = {k: str(v) for k, v in triton_kernel.best_configs().items()}
        row["check"] = check(tt, id_sets[0], grad, dname, args)
    except Exception as e:  # noqa: BLE001 - e.g. a shape the kernels do not take
        row["tt_triton"] = {"ms": None, "peak_mib": None, "error": error_line(e)}
        row["check"] = {"ok": False, "errors": {}, "error": error_line(e)}
    elem = torch.empty(0, dtype=dtype).element_size()
    floor_bytes = 2 * L * d * elem + 2 * L * 8 + 3 * row["tt_params"] * elem
    row["floor_bytes"], row["floor_ms"] = floor_bytes, 1e3 * floor_bytes / bw
    for k in IMPLS:
        row[k]["x_floor"] = row[k]["ms"] / row["floor_ms"] if row[k].get("ms") else None
    a, b = row["tt_torch"].get("ms"), row["tt_triton"].get("ms")
    row["speedup_triton_over_torch"] = a / b if a and b else None
    del tt
    gc.collect()
    return row


def _cell(c: dict, key: str, fmt: str) -> str:
    v = c.get(key)
    return "FAILED" if c.get("error") else ("—" if v is None else format(v, fmt))


def markdown(res: dict) -> str:
    lines = [
        f"Copy bandwidth {res['copy_bandwidth_gbs']:.0f} GB/s; L = {res['config']['tokens']} tokens; "
        "ms = median fwd+bwd; ×floor = ms / memory-traffic floor; peak = MiB over one fwd+bwd.",
        "",
        "| V | d | r | dtype | nn.Embedding ms | TT torch ms | TT triton ms | triton speedup | floor ms "
        "| ×floor (emb / torch / triton) | peak MiB (emb / torch / triton) | check |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in res["figures"]:
        e, t, f = (r[k] for k in IMPLS)
        sp = r["speedup_triton_over_torch"]
        xf = " / ".join(_cell(c, "x_floor", ".1f") for c in (e, t, f))
        pk = " / ".join(_cell(c, "peak_mib", ".0f") for c in (e, t, f))
        err = max(r["check"]["errors"].values(), default=float("nan"))
        ok = f"{'PASS' if r['check']['ok'] else 'FAIL'} ({err:.1e})"
        lines.append(f"| {r['vocab']} | {r['dim']} | {r['rank']} | {r['dtype']} | {_cell(e, 'ms', '.3f')} | "
                     f"{_cell(t, 'ms', '.3f')} | {_cell(f, 'ms', '.3f')} | {'—' if sp is None else f'{sp:.1f}×'} | "
                     f"{r['floor_ms']:.3f} | {xf} | {pk} | {ok} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["10000x512", "50000x1024"], help="VxD pairs")
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 16])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    p.add_argument("--tokens", type=int, default=8 * 2048, help="L = B·N ids per step")
    p.add_argument("--copy-mib", type=int, default=1024, help="size of the bandwidth-probe copy")
    p.add_argument("--warmup", type=float, default=25.0, help="do_bench warm-up, ms")
    p.add_argument("--rep", type=float, default=100.0, help="do_bench repetition time, ms")
    add_run_args(p, with_set=False)
    args = p.parse_args(argv)
    device = pick_device(args.device, args.out, "tt_embedding")
    if device is None:
        return 2
    shapes = [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes]
    bw = copy_bandwidth(device, args.copy_mib * 2**20, args)
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)
    rows = []
    for (V, d) in shapes:
        for rank in args.ranks:
            for dname in args.dtypes:
                t0 = time.perf_counter()
                r = run_case(V, d, rank, dname, bw, device, args)
                rows.append(r)
                print(f"V={V} d={d} r={rank} {dname}: " + "  ".join(
                    f"{k} {r[k]['ms']:.3f} ms" if r[k].get("ms") else f"{k} FAILED ({r[k].get('error')})"
                    for k in IMPLS) + f"  floor {r['floor_ms']:.3f} ms  check {'ok' if r['check']['ok'] else 'FAIL'}"
                    f" {r['check'].get('errors') or r['check'].get('error')}  ({time.perf_counter() - t0:.0f} s)",
                    flush=True)
    res = {
        "benchmark": "tt_embedding", **environment(device),
        "config": {
            "shapes": args.shapes, "ranks": args.ranks, "dtypes": args.dtypes, "tokens": args.tokens,
            "ids": "uniform random, 4 rotated sets", "warmup_ms": args.warmup, "rep_ms": args.rep,
            "timer": "triton.testing.do_bench" if device.type == "cuda" and do_bench else
            ("CUDA events" if device.type == "cuda" else "host clock"),
            "memory": "peak_mib = max_memory_allocated over one fwd+bwd minus what was allocated before it",
            "floor": "(2·L·d·elem + 2·L·8 + 3·TT params·elem) bytes / copy bandwidth",
        },
        "copy_bandwidth_gbs": bw / 1e9,
        "figures": rows,
    }
    publish("tt_embedding", res, device, args.out, markdown)
    return 0 if all(r["check"]["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
