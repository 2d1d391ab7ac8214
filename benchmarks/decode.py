"""Decoding speed of full models: ms per generated token and prompt tokens/s (issue 20).

On one H100 (writes benchmarks/results/decode-gpu.json and .md):

    MUSE_GIT_SHA=$(git rev-parse HEAD) python benchmarks/decode.py

For each preset (default ``baseline`` and ``standard``, B = 1, parameters in --dtype, default
bf16, random initialisation: speed does not depend on the weights' values):

- **decode**: after a --decode-prompt-token prompt, --decode-warmup steps and then --decode-tokens
  timed ones, each fed the previous step's argmax: the median ms of one step (host clock around
  the step and a device sync), for the eager step and for the CUDA-graph replay of
  ``muse.generate.Decoder`` (CUDA only); and ``muse.generate.generate`` end to end (top-k 50,
  temperature 0.8, one host read of each token, as ``muse generate`` runs), its decode seconds
  per new token. ``max_abs_diff`` compares the captured logits with the eager ones, step by step,
  on the eager run's tokens.
- **prefill**: prompts of each of --prompt-lens that fit the model (``baseline``'s learned position
  table stops at 512; ``standard`` has none): ``MuseLM.prefill`` (parallel, --prefill-chunk tokens
  per pass; median of --prefill-repeats after one warm-up) against feeding the prompt one step at
  a time through the decoder that decoding uses (the captured step on CUDA, already captured:
  its capture is not timed; eager elsewhere), timed once over the whole prompt. ``speedup`` is
  the ratio of their tokens/s; ``max_abs_diff`` compares the two last-position logits.

On CPU (tests) it writes decode-cpu.json into --out.
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

from common import DTYPES, add_run_args, sync, environment, error_line, parse_set, pick_device, publish  # noqa: E402
from inference_tables import decode_markdown  # noqa: E402
from muse import build_model  # noqa: E402
from muse.config import load_config, to_dict  # noqa: E402
from muse.generate import Decoder, generate  # noqa: E402
from muse.model import PREFILL_CHUNK  # noqa: E402
from muse.ops import record_paths  # noqa: E402


def _ids(n: int, vocab: int, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, n), generator=g).to(device)


def decode_figures(model, args, device: torch.device) -> tuple[dict, Decoder]:
    """Step ms (eager, captured) and generate() ms per token; returns the captured decoder too."""
    V = model.cfg.vocab_size
    prompt = _ids(args.decode_prompt, V, device, 1)
    n = args.decode_warmup + args.decode_tokens
    out: dict = {"prompt_tokens": args.decode_prompt, "timed_tokens": args.decode_tokens}
    modes = ["eager"] + (["captured"] if device.type == "cuda" else [])
    eager_tokens, eager_logits, decoder = None, [], None
    for mode in modes:
        decoder = Decoder(model, cuda_graph=mode == "captured")
        logits, state = model.prefill(prompt)
        nxt = logits.argmax(-1)
        times, diff = [], 0.0
        for i in range(n):
            if eager_tokens is not None:
                nxt = eager_tokens[i]  # the eager run's tokens: comparable logits
            sync(device)
            t0 = time.perf_counter()
            logits, state = decoder(nxt, state)
            sync(device)
            times.append(time.perf_counter() - t0)
            if eager_tokens is None:
                eager_logits.append(logits.float())
            else:
                diff = max(diff, (logits.float() - eager_logits[i]).abs().max().item())
            nxt = logits.argmax(-1)
        if eager_tokens is None:
            # what step i was fed: the prefill's argmax, then each step's
            first = model.prefill(prompt)[0].argmax(-1)
            eager_tokens = [first] + [lg.argmax(-1) for lg in eager_logits[:-1]]
        timed = times[args.decode_warmup:]
        out[mode] = {"step_ms": 1e3 * statistics.median(timed), "step_ms_mean": 1e3 * statistics.fmean(timed)}
        if mode == "captured":
            out[mode]["captured"] = decoder.captured
            out[mode]["max_abs_diff"] = diff
        stats: dict = {}
        generate(model, prompt, args.decode_tokens, temperature=0.8, top_k=50, seed=0,
                 cuda_graph=mode == "captured", stats=stats)
        out[mode]["generate_ms_per_token"] = 1e3 * stats["decode_s"] / stats["new_tokens"]
        out[mode]["generate_cuda_graph"] = stats["cuda_graph"]
    return out, decoder


def prefill_figures(model, N: int, args, device: torch.device, decoder: Decoder) -> dict:
    prompt = _ids(N, model.cfg.vocab_size, device, 2)
    with record_paths() as paths:
        model.prefill(prompt[:, : min(N, args.prefill_chunk)])  # warm-up (compiles / tunes kernels)
    model.prefill(prompt, chunk=args.prefill_chunk)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.prefill_repeats):
        sync(device)
        t0 = time.perf_counter()
        logits, _ = model.prefill(prompt, chunk=args.prefill_chunk)
        sync(device)
        times.append(time.perf_counter() - t0)
    parallel = N / statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None

    state = model.init_state(1)
    sync(device)
    t0 = time.perf_counter()
    for t in range(N):
        step_logits, state = decoder(prompt[:, t], state)
    sync(device)
    stepwise = N / (time.perf_counter() - t0)
    return {
        "N": N, "parallel_tokens_per_s": parallel, "stepwise_tokens_per_s": stepwise, "speedup": parallel / stepwise,
        "parallel_ms": 1e3 * statistics.median(times), "stepwise_s": N / stepwise,
        "stepwise_path": "captured" if decoder.captured else "eager",
        "max_abs_diff": (logits.float() - step_logits.float()).abs().max().item(),
        "peak_mib": peak, "paths": paths,
    }


def run_preset(preset: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    over = {**parse_set(args.set)}
    row: dict = {"preset": preset}
    try:
        cfg = load_config(preset, over)
        torch.manual_seed(0)
        model = build_model(cfg, device=device, dtype=dtype).eval()
        row.update(mixer=cfg.model.mixer_layout, params=model.num_params(), max_context=model.max_context,
                   config=to_dict(cfg.model))
        t0 = time.perf_counter()
        row["decode"], decoder = decode_figures(model, args, device)
        d = row["decode"]
        print(f"{preset:>10} decode: eager {d['eager']['step_ms']:.2f} ms/token"
              + (f", captured {d['captured']['step_ms']:.2f} ms/token" if "captured" in d else "")
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
        row["prefill"] = []
        for N in args.prompt_lens:
            if model.max_context is not None and N > model.max_context:
                row["prefill"].append({"N": N, "skipped": f"longer than model.max_seq_len={model.max_context}"})
                continue
            t0 = time.perf_counter()
            try:
                r = prefill_figures(model, N, args, device, decoder)
            except Exception as e:  # noqa: BLE001 - an OOM or a failure is recorded per row
                r = {"N": N, "error": error_line(e)}
            row["prefill"].append(r)
            print(f"{preset:>10} prefill N={N:>6}: " + (
                f"parallel {r['parallel_tokens_per_s']:,.0f} tok/s, stepwise ({r['stepwise_path']}) "
                f"{r['stepwise_tokens_per_s']:,.0f} tok/s, {r['speedup']:,.0f}x" if "error" not in r
                else f"FAILED {r['error']}") + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    except Exception as e:  # noqa: BLE001
        row["error"] = error_line(e)
        print(f"{preset:>10}: FAILED {row['error']}", flush=True)
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["baseline", "standard", "compact"])
    p.add_argument("--prompt-lens", type=int, nargs="+", default=[512, 2048, 16384],
                   help="prefill prompt lengths; each preset takes those within its context")
    p.add_argument("--prefill-chunk", type=int, default=PREFILL_CHUNK)
    p.add_argument("--prefill-repeats", type=int, default=3)
    p.add_argument("--decode-prompt", type=int, default=32, help="prompt tokens before the timed decoding")
    p.add_argument("--decode-warmup", type=int, default=20)
    p.add_argument("--decode-tokens", type=int, default=200)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    add_run_args(p)
    args = p.parse_args(argv)
    device = pick_device(args.device, args.out, "decode")
    if device is None:
        return 2
    env = environment(device)
    rows = [run_preset(preset, args, device, DTYPES[args.dtype]) for preset in args.presets]
    res = {
        "benchmark": "decode", **env,
        "config": {"presets": args.presets, "prompt_lens": args.prompt_lens, "prefill_chunk": args.prefill_chunk,
                   "prefill_repeats": args.prefill_repeats, "decode_prompt": args.decode_prompt,
                   "decode_warmup": args.decode_warmup, "decode_tokens": args.decode_tokens, "dtype": args.dtype,
                   "batch": 1, "overrides": parse_set(args.set),
                   "weights": "random initialisation (torch.manual_seed(0)): speed only",
                   "timer": "host clock around each call, a device sync before and after"},
        "figures": rows,
    }
    publish("decode", res, device, args.out, decode_markdown)
    return 0 if all("error" not in r and all("error" not in q for q in r["prefill"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
