"""Decoding memory and speed against context length: attention's KV cache vs the recurrent states
of the semiseparable and holographic mixers (issue 23).

On one H100 (writes benchmarks/results/decode_memory-gpu.json and .md):

    MUSE_GIT_SHA=$(git rev-parse HEAD) python benchmarks/decode_memory.py

For each preset (default ``baseline``: attention, ``standard``: semiseparable, ``hamt-100m``:
holographic; B = 1, parameters in --dtype, default bf16, random initialisation) and each context
length L of --contexts (default 1K, 4K, 16K, 32K), the model is built with ``model.max_seq_len`` =
L + the decoded tokens (a KV cache is allocated at that length, a position table too), a random
L-token prompt is fed by ``MuseLM.prefill``, then --warmup steps and --tokens timed ones are decoded
through ``muse.generate.Decoder`` (the captured CUDA-graph step on CUDA, eager elsewhere), each fed
the previous step's argmax. Per row:

- ``state_mib``: the bytes of the decoding state's tensors (KV cache or recurrent state), all layers;
- ``decode_peak_mib``: ``torch.cuda.max_memory_allocated`` over the timed steps (parameters, state
  and the step's temporaries; CUDA only), ``params_mib``, and ``held_before_mib``: what the
  process held before the row's model was built (anything an earlier row left behind);
- ``step_ms``: the median of the timed steps (host clock, a device sync around each).

Per preset, ``peak_spread`` = (max − min) / min of ``decode_peak_mib`` over the contexts (state size
off CUDA): the issue's target is <= 5 % for the recurrent mixers. On CPU (tests) it writes
decode_memory-cpu.json into --out.
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

from common import DTYPES, add_run_args, sync, error_line, environment, parse_set, pick_device, publish  # noqa: E402
from inference_tables import decode_memory_markdown  # noqa: E402
from muse import build_model  # noqa: E402
from muse.config import load_config, to_dict  # noqa: E402
from muse.generate import Decoder  # noqa: E402
from muse.memory.profile import tensor_bytes  # noqa: E402
from muse.model import PREFILL_CHUNK  # noqa: E402
from muse.ops import record_paths  # noqa: E402


def _mib(tensors) -> float:
    return tensor_bytes(tensors) / 2**20  # distinct storages: a tied head counts once


def measure(preset: str, L: int, args, device: torch.device, dtype: torch.dtype) -> dict:
    steps = args.warmup + args.tokens
    # what the process already holds (earlier rows' leftovers would show here, not vanish)
    held = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
    cfg = load_config(preset, {**parse_set(args.set), "model.max_seq_len": L + steps + 1})
    torch.manual_seed(0)
    model = build_model(cfg, device=device, dtype=dtype).eval()
    row: dict = {"context": L, "mixer": cfg.model.mixer_layout, "params_mib": _mib(model.parameters()),
                 "held_before_mib": held}
    g = torch.Generator().manual_seed(L)
    prompt = torch.randint(0, cfg.model.vocab_size, (1, L), generator=g).to(device)
    with record_paths() as paths:
        logits, state = model.prefill(prompt, chunk=args.prefill_chunk)
    row["state_mib"] = _mib(t for s in state["layers"] for t in s.values())
    decoder = Decoder(model, cuda_graph=device.type == "cuda")
    nxt, times = logits.argmax(-1), []
    for i in range(steps):
        if i == args.warmup and device.type == "cuda":
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        logits, state = decoder(nxt, state)
        sync(device)
        times.append(time.perf_counter() - t0)
        nxt = logits.argmax(-1)
    row["decode_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    row["step_ms"] = 1e3 * statistics.median(times[args.warmup:])
    row["captured"] = decoder.captured
    row["paths"] = paths
    return row


def run_preset(preset: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    # the model measured (max_seq_len is each context's; provenance ignores it)
    out: dict = {"preset": preset, "contexts": [], "config": to_dict(load_config(preset, parse_set(args.set)).model)}
    for L in args.contexts:
        t0 = time.perf_counter()
        try:
            r = measure(preset, L, args, device, dtype)
            print(f"{preset:>10} L={L:>6}: state {r['state_mib']:.2f} MiB"
                  + (f", decode peak {r['decode_peak_mib']:.1f} MiB" if r["decode_peak_mib"] is not None else "")
                  + f", {r['step_ms']:.2f} ms/token ({time.perf_counter() - t0:.0f} s)", flush=True)
        except Exception as e:  # noqa: BLE001 - an OOM or a failure is recorded per row
            r = {"context": L, "error": error_line(e)}
            print(f"{preset:>10} L={L:>6}: FAILED {r['error']}", flush=True)
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        out["contexts"].append(r)
    ok = [r for r in out["contexts"] if "error" not in r]
    if ok:
        out["mixer"] = ok[0]["mixer"]
        key = "decode_peak_mib" if ok[0]["decode_peak_mib"] is not None else "state_mib"
        vals = [r[key] for r in ok]
        out["peak_spread"] = {"of": key, "value": (max(vals) - min(vals)) / min(vals)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["baseline", "standard", "compact", "hamt-100m"])
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    p.add_argument("--prefill-chunk", type=int, default=PREFILL_CHUNK)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    add_run_args(p)
    args = p.parse_args(argv)
    device = pick_device(args.device, args.out, "decode_memory")
    if device is None:
        return 2
    for preset in args.presets:  # a bad preset or override fails here, before any timing
        load_config(preset, parse_set(args.set))
    env = environment(device)
    rows = [run_preset(preset, args, device, DTYPES[args.dtype]) for preset in args.presets]
    res = {
        "benchmark": "decode_memory", **env,
        "config": {"presets": args.presets, "contexts": args.contexts, "prefill_chunk": args.prefill_chunk,
                   "warmup": args.warmup, "tokens": args.tokens, "dtype": args.dtype, "batch": 1,
                   "overrides": parse_set(args.set),
                   "weights": "random initialisation (torch.manual_seed(0)): memory and speed only",
                   "max_seq_len": "context + warmup + tokens + 1 per row (the KV cache's length)"},
        "figures": rows,
    }
    publish("decode_memory", res, device, args.out, decode_memory_markdown)
    return 0 if all("error" not in r for p in rows for r in p["contexts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
