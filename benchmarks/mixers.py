"""Forward+backward time and peak memory: causal attention vs the semiseparable scan (issue 5)
and the holographic memory layer (issue 23).

On one H100 (writes benchmarks/results/mixers-gpu.json and mixers-gpu.md; a few minutes):

    MUSE_GIT_SHA=$(git rev-parse HEAD) python benchmarks/mixers.py --impl triton

For every N in ``--seqs`` (default 1K … 64K) with B = max(1, --tokens // N) (B·N >= 8K), in bf16:

- ``sdpa``: ``F.scaled_dot_product_attention(is_causal=True)`` on q, k, v of (B, H=16, N, 64);
- ``scan``: ``semiseparable(u, v, z, log_decay, impl=--impl)`` alone, H=16, r = max_rank of
  ``standard``, p=64, data-dependent log decay (per-head decay times from ~2 to ~4096 tokens);
- ``attention_layer`` / ``semiseparable_layer``: the ``baseline`` / ``standard`` mixer modules at
  d=1024, 16 heads, ``module.to(bfloat16)``;
- ``holographic_layer``: the ``hamt-100m`` mixer (holographic memory, --hcm-dim, --slots, read on
  ``impl=--holo-impl``, the auxiliary loss included) at the same d, ``module.to(bfloat16)``
  (its FFTs and memory run in fp32 inside). ``--holo-impl none`` leaves it out.

Time: median of ``triton.testing.do_bench`` (CUDA events without Triton) after warm-up, inputs
rotated among several fresh random sets, gradients reset to None before every call. Peak:
``torch.cuda.max_memory_allocated`` over one forward+backward, counting that call's inputs (and
the layer's parameters). Check, at every timed shape: the scan's output and du, dv, dz, dℓ on fresh
inputs against ``impl="chunked"`` on float64 copies, ‖a − b‖ / ‖b‖ <= --tol (NaN fails); shapes
with B·N > --check-tokens are checked on a B=1 slice / N prefix (recorded). The holographic read
(``holographic(impl=--holo-impl)`` on fp32 inputs of the layer's shapes) is checked the same way,
its output and the gradients of q, k, v, α, β, log γ, against the float64 ``chunked`` read, on at
most --holo-check-tokens tokens. Exit code 1 if any check fails. On CPU (tests) it writes mixers-cpu.json, and only into an explicit ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import add_run_args, do_bench, error_line, environment, median_ms, pick_device, publish  # noqa: E402
from muse.config import load_config, to_dict  # noqa: E402
from muse.mixers import build_mixer  # noqa: E402
from muse.ops.holographic import holographic, resolve_impl  # noqa: E402
from muse.ops.semiseparable import semiseparable  # noqa: E402
from speed_tables import mixers_markdown  # noqa: E402

ROTATE_BYTES = 256 * 2**20  # rotate among input sets until they add up to this (2 to 8 sets)


def _nbytes(ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def graph_ms(run, inputs, leaves, args) -> dict:
    """Median ms of one fwd+bwd replayed as a CUDA graph: the GPU time without the per-launch
    host overhead of eager PyTorch/Triton (METHOD.md: graphs for many small launches)."""
    try:
        for t in leaves:
            t.grad = None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # capture needs the kernels warm on a side stream
            run(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        for t in leaves:
            t.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run(*inputs)
        if do_bench is not None:
            ms = do_bench(graph.replay, warmup=args.warmup, rep=args.rep, return_mode="median")
        else:
            ms, _ = median_ms(graph.replay, [], torch.device("cuda"), args.warmup, args.rep)
        del graph
        return {"graph_ms": ms}
    except Exception as e:  # noqa: BLE001 - not capturable: record why
        return {"graph_ms": None, "graph_error": error_line(e)}


def bench(make_set, run, params, device, args) -> dict:
    """Time and measure ``run(*make_set())`` (one forward+backward) over rotated fresh input sets."""
    try:
        first = make_set()
        per_set = _nbytes(first)
        sets = [first] + [make_set() for _ in range(min(7, max(1, math.ceil(ROTATE_BYTES / per_set) - 1)))]
        leaves = [t for s in sets for t in s if t.requires_grad] + list(params)
        for t in leaves:
            t.grad = None
        run(*first)  # warm-up: compilation, autotuning, library handles
        for t in leaves:
            t.grad = None
        peak = None
        if device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run(*first)
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base + per_set + _nbytes(params)) / 2**20
        it = itertools.cycle(sets)
        ms, timer = median_ms(lambda: run(*next(it)), leaves, device, args.warmup, args.rep)
        out = {"ms": ms, "peak_mib": peak, "timer": timer, "input_sets": len(sets)}
        if device.type == "cuda":
            out.update(graph_ms(run, first, leaves, args))
        return out
    except Exception as e:  # noqa: BLE001 - OOM or a kernel failure: record, go on
        return {"ms": None, "peak_mib": None, "error": error_line(e)}
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def scan_inputs(B, N, H, r, p, device, dtype=torch.bfloat16):
    """Fresh u, v (B, N, H, r), z (B, N, H, p), log decay (B, N, H) < 0: decay times ~2…4096 tokens."""
    g = lambda *s: torch.randn(*s, device=device)  # noqa: E731
    exps = torch.linspace(1.0, 12.0, H, device=device)
    a0 = torch.log(torch.expm1(-torch.log1p(-(2.0 ** -exps))))  # softplus(a0) = -log(1 - 2^-e)
    ld = -F.softplus(a0 + g(B, N, H))
    ts = (g(B, N, H, r) * r**-0.5, g(B, N, H, r), g(B, N, H, p), ld)
    return tuple(t.to(dtype).requires_grad_() for t in ts)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


def check_against_float64(B, N, limit, args, device, make_inputs, grad_shape, grad_dtype, run, names) -> dict:
    """``run(inputs)`` (the timed implementation) against ``run(inputs, "chunked")`` in float64 on
    copies of the same fresh inputs: relative errors of the output and every input's gradient, at
    the row's shape cut to at most ``limit`` tokens."""
    cb, cn = B, N
    if B * N > limit:
        cb = max(1, limit // N)
        cn = min(N, limit)
    out = {"B": cb, "N": cn, "full_shape": (cb, cn) == (B, N), "reference": "chunked, float64", "tolerance": args.tol}
    try:
        x = make_inputs(cb, cn)
        dy = torch.randn(cb, cn, *grad_shape, device=device).to(grad_dtype)
        y = run(x)
        got = (y, *torch.autograd.grad(y, x, dy))
        del y
        x64 = [t.detach().double().requires_grad_() for t in x]
        y64 = run(x64, "chunked")
        ref = (y64, *torch.autograd.grad(y64, x64, dy.double()))
        errs = {k: rel(a, b) for k, a, b in zip(names, got, ref)}
        out.update(errors=errs, ok=all(math.isfinite(e) and e <= args.tol for e in errs.values()))
    except Exception as e:  # noqa: BLE001
        out.update(errors={}, ok=False, error=error_line(e))
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def check_scan(B, N, H, r, p, device, args) -> dict:
    """The scan in bf16 against impl="chunked" in float64."""
    return check_against_float64(
        B, N, args.check_tokens, args, device, lambda b, n: scan_inputs(b, n, H, r, p, device), (H, p),
        torch.bfloat16, lambda x, impl=None: semiseparable(*x, impl=impl or args.impl, chunk_size=args.chunk_size)[0],
        ("y", "du", "dv", "dz", "dlog_decay"))


def holo_inputs(B, N, D, S, device, dtype=torch.float32):
    """Fresh q, k, v (B, N, D), softmax slot weights α, β (B, N, S) and log γ (S,) spanning the
    decays of hamt-100m's initialisation (memories of ~2 to ~1000 tokens)."""
    g = lambda *s: torch.randn(*s, device=device)  # noqa: E731
    lg = torch.log1p(-torch.logspace(math.log10(0.5), -3, S, device=device))
    ts = (g(B, N, D), g(B, N, D), g(B, N, D), g(B, N, S).softmax(-1), g(B, N, S).softmax(-1), lg)
    return tuple(t.to(dtype).requires_grad_() for t in ts)


def check_holographic(B, N, args, device) -> dict:
    """The holographic read on --holo-impl (fp32) against impl="chunked" in float64."""
    return check_against_float64(
        B, N, args.holo_check_tokens, args, device, lambda b, n: holo_inputs(b, n, args.hcm_dim, args.slots, device),
        (args.hcm_dim,), torch.float32,
        lambda x, impl=None: holographic(*x, impl=impl or args.holo_impl, chunk_size=args.chunk_size)[0],
        ("r", "dq", "dk", "dv", "dalpha", "dbeta", "dlog_gamma"))


def layer_configs(args, N):
    over = {"model.d_model": args.d_model, "model.n_heads": args.heads, "model.max_seq_len": N, "model.dropout": 0.0}
    attn = load_config("baseline", over).model
    ss = load_config("standard", {**over, "model.mixer.semiseparable.impl": args.impl,
                                  "model.mixer.semiseparable.chunk_size": args.chunk_size}).model
    if args.holo_impl == "none":
        return attn, ss, None
    holo = load_config("hamt-100m", {**over, "model.mixer.holographic.impl": args.holo_impl,
                                     "model.mixer.holographic.chunk_size": args.chunk_size,
                                     "model.mixer.holographic.hcm_dim": args.hcm_dim,
                                     "model.mixer.holographic.num_slots": args.slots}).model
    return attn, ss, holo


LAYERS = ("attention_layer", "semiseparable_layer", "holographic_layer")


def layer_step(layer, x, dy) -> None:
    """One forward+backward of a mixer layer: output cotangent dy, and the auxiliary loss (the
    holographic mixer's) with cotangent 1, as in training."""
    y, aux = layer(x)
    outs, grads = [y], [dy]
    if aux is not None:
        outs.append(aux)
        grads.append(torch.ones_like(aux))
    torch.autograd.backward(outs, grads)


def run_shape(N: int, args, device) -> dict:
    B = max(1, args.tokens // N)
    H, p = args.heads, args.d_model // args.heads
    r = load_config("standard").model.mixer.semiseparable.max_rank
    bf = torch.bfloat16
    row = {"N": N, "B": B}

    def sdpa_set():
        q, k, v = (torch.randn(B, H, N, p, device=device, dtype=bf).requires_grad_() for _ in range(3))
        return q, k, v, torch.randn(B, H, N, p, device=device, dtype=bf)

    def sdpa_run(q, k, v, dy):
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(dy)

    def scan_run(u, v, z, ld, dy):
        y, _ = semiseparable(u, v, z, ld, impl=args.impl, chunk_size=args.chunk_size)
        y.backward(dy)

    row["sdpa"] = bench(sdpa_set, sdpa_run, [], device, args)
    row["scan"] = bench(lambda: (*scan_inputs(B, N, H, r, p, device), torch.randn(B, N, H, p, device=device, dtype=bf)),
                        scan_run, [], device, args)
    for name, cfg in zip(LAYERS, layer_configs(args, N)):
        if cfg is None:
            continue
        try:
            torch.manual_seed(0)
            layer = build_mixer(cfg, 0).to(device=device, dtype=bf).train()
        except Exception as e:  # noqa: BLE001
            row[name] = {"ms": None, "peak_mib": None, "error": error_line(e)}
            continue

        def layer_set():
            return (torch.randn(B, N, args.d_model, device=device, dtype=bf).requires_grad_(),
                    torch.randn(B, N, args.d_model, device=device, dtype=bf))

        row[name] = bench(layer_set, lambda x, dy, layer=layer: layer_step(layer, x, dy), list(layer.parameters()),
                          device, args)
        del layer
    ratio = lambda a, b: a["ms"] / b["ms"] if a.get("ms") and b.get("ms") else None  # noqa: E731
    gratio = lambda a, b: a["graph_ms"] / b["graph_ms"] if a.get("graph_ms") and b.get("graph_ms") else None  # noqa: E731
    row["speedup"] = {"sdpa_over_scan": ratio(row["sdpa"], row["scan"]),
                      "attention_over_semiseparable_layer": ratio(row["attention_layer"], row["semiseparable_layer"]),
                      "sdpa_over_scan_graph": gratio(row["sdpa"], row["scan"]),
                      "attention_over_semiseparable_layer_graph": gratio(row["attention_layer"], row["semiseparable_layer"])}
    row["check"] = check_scan(B, N, H, r, p, device, args)
    if "holographic_layer" in row:
        h = row["holographic_layer"]
        row["speedup"].update({
            "attention_over_holographic_layer": ratio(row["attention_layer"], h),
            "holographic_over_semiseparable_layer": ratio(h, row["semiseparable_layer"]),
            "attention_over_holographic_layer_graph": gratio(row["attention_layer"], h),
            "holographic_over_semiseparable_layer_graph": gratio(h, row["semiseparable_layer"])})
        row["holographic_check"] = check_holographic(B, N, args, device)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="+", default=[1024 * 2**i for i in range(7)])
    p.add_argument("--impl", default="triton", help="scan implementation to time (triton, chunked, ...)")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--tokens", type=int, default=8192, help="B = max(1, tokens // N)")
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--warmup", type=float, default=25.0, help="do_bench warm-up, ms")
    p.add_argument("--rep", type=float, default=100.0, help="do_bench repetition time, ms")
    p.add_argument("--tol", type=float, default=2e-2, help="max relative RMS error against float64")
    p.add_argument("--check-tokens", type=int, default=65536, help="larger B·N are checked on a slice")
    p.add_argument("--holo-impl", default="auto", help="holographic read to time (auto, triton, chunked, ...; "
                                                        "none: no holographic layer)")
    p.add_argument("--hcm-dim", type=int, default=2048, help="holographic width D of the holographic layer")
    p.add_argument("--slots", type=int, default=16, help="memory slots S of the holographic layer")
    p.add_argument("--holo-check-tokens", type=int, default=16384,
                   help="larger B·N check the holographic read on a slice (the float64 reference is large)")
    add_run_args(p, with_set=False)
    args = p.parse_args(argv)
    device = pick_device(args.device, args.out, "mixers")
    if device is None:
        return 2
    attn_cfg, ss_cfg, holo_cfg = layer_configs(args, max(args.seqs))  # a bad --impl fails here, before any timing
    torch.manual_seed(0)
    env = environment(device)
    rows = []
    for N in args.seqs:
        t0 = time.perf_counter()
        rows.append(run_shape(N, args, device))
        r = rows[-1]
        names = ("sdpa", "scan", *(k for k in LAYERS if k in r))
        hc = r.get("holographic_check")
        print(f"N={N:>6} B={r['B']:>2}: " + "  ".join(f"{k} {r[k]['ms']:.3f} ms" if r[k].get("ms") else f"{k} FAILED"
              for k in names)
              + f"  check {'ok' if r['check']['ok'] else 'FAIL'} {r['check']['errors']}"
              + (f"  holographic check {'ok' if hc['ok'] else 'FAIL'} {hc['errors']}" if hc else "")
              + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    timers = {r[k].get("timer") for r in rows for k in ("sdpa", "scan", *LAYERS) if k in r}
    res = {
        "benchmark": "mixers", **env,
        "config": {
            "impl": args.impl, "chunk_size": args.chunk_size, "dtype": "bf16", "tokens": args.tokens,
            "seqs": args.seqs, "d_model": args.d_model, "heads": args.heads, "head_dim": args.d_model // args.heads,
            "rank": ss_cfg.mixer.semiseparable.max_rank, "warmup_ms": args.warmup, "rep_ms": args.rep,
            "timer": ", ".join(sorted(t for t in timers if t)) or "none", "tolerance": args.tol,
            "check_tokens": args.check_tokens, "attention_mixer": to_dict(attn_cfg.mixer),
            "semiseparable_mixer": to_dict(ss_cfg.mixer),
            "holographic_mixer": to_dict(holo_cfg.mixer) if holo_cfg is not None else None,
            "holo_impl": args.holo_impl, "holo_check_tokens": args.holo_check_tokens,
            # what --holo-impl runs on this device (auto: triton on CUDA)
            "holo_path": None if holo_cfg is None else resolve_impl(
                args.holo_impl, torch.empty(0, device=device, dtype=torch.bfloat16), args.chunk_size),
            "memory": "peak_mib = max_memory_allocated over one fwd+bwd minus what was allocated before it, "
                      "plus that call's inputs and the layer's parameters",
        },
        "figures": rows,
    }
    publish("mixers", res, device, args.out, mixers_markdown)
    return 0 if all(r["check"]["ok"] and r.get("holographic_check", {"ok": True})["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
