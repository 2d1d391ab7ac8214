"""Regenerate the README's result tables from `benchmarks/results/*.json`.

    python benchmarks/readme_tables.py          # rewrite README.md in place
    python benchmarks/readme_tables.py --check  # exit 1 if README.md is out of date (a test runs this)

Each table lives between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers; nothing in
them is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return str(int(n))


def _load(pattern: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob(pattern))]


def params_table() -> str:
    (res,) = _load("params.json")
    lines = [
        "| preset | V | d | L | mixer | embedding | FFN | head | actual | dense-equivalent | compression |",
        "|---|---:|---:|---:|---|---|---|---|---:|---:|---:|",
    ]
    for r in res["figures"]:
        m = r["model"]
        lines.append(
            f"| `{r['name']}` | {m['vocab_size']:,} | {m['d_model']} | {m['n_layers']} | {m['mixer']['kind']} "
            f"| {m['embedding']['kind']} | {m['ffn']['kind']} | {m['head']['kind']} | {_human(r['actual_params'])} "
            f"| {_human(r['dense_equivalent_params'])} | {100 * r['compression']:.1f} % |"
        )
    lines.append("")
    lines.append(f"Exact counts from `benchmarks/params.py` (models built on the `meta` device), "
                 f"commit `{res['git_sha'][:7]}`, {res['date'][:10]}.")
    return "\n".join(lines)


def train_eval_table() -> str:
    runs = _load("train_eval-*-gpu.json")
    if not runs:
        return "_No GPU run recorded yet._"
    lines = [
        "| preset | actual params | train tokens | test loss | test ppl | word ppl | bits/byte "
        "| train tokens/s (median) | peak train memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        f, t = r["figures"], r["figures"]["test"]
        lines.append(
            f"| `{r['preset']}` | {_human(f['actual_params'])} | {_human(f['tokens_seen'])} | {t['loss']:.3f} "
            f"| {t['perplexity']:.2f} | {t['word_perplexity']:.2f} | {t['bits_per_byte']:.4f} "
            f"| {f['tokens_per_s_median']:,.0f} | {f['peak_train_memory_mib']:,.0f} MiB |"
        )
    by = {r["preset"]: r["figures"] for r in runs}
    if "baseline" in by and len(by) > 1:
        b = by["baseline"]
        lines.append("")
        for name, f in by.items():
            if name == "baseline":
                continue
            lines.append(
                f"`{name}` vs `baseline`: {b['actual_params'] / f['actual_params']:.1f}× fewer parameters, "
                f"test perplexity ×{f['test']['perplexity'] / b['test']['perplexity']:.2f}, "
                f"training throughput ×{f['tokens_per_s_median'] / b['tokens_per_s_median']:.2f}, "
                f"peak training memory ×{f['peak_train_memory_mib'] / b['peak_train_memory_mib']:.2f}."
            )
    r = runs[0]
    c = r["config"]
    lines.append("")
    lines.append(
        f"WikiText-2 (tokenized files), byte-level BPE {c['model']['vocab_size']:,} trained on the train split; "
        f"B={c['train']['batch_size']}, N={c['train']['seq_len']}, {c['train']['precision']} autocast, "
        f"AdamW lr {c['train']['lr']:g} (warm-up {c['train']['warmup_steps']}, cosine), dropout "
        f"{c['model']['dropout']:g}, identical batches; test = best-validation checkpoint, whole test split, "
        f"non-overlapping {c['train']['seq_len']}-token windows. {r['device']}, torch {r['torch']}, "
        f"commit `{r['git_sha'][:7]}`, {r['date'][:10]} (`benchmarks/train_eval.py`)."
    )
    return "\n".join(lines)


def memory_table() -> str:
    runs = _load("verify.json")
    if not runs:
        return "_No verify run recorded yet._"
    (res,) = runs
    from_bytes = lambda n: f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"  # noqa: E731
    lines = [
        "| model (V=10 000, d=512, L=6, B=2, N=512) | precision | optimizer | checkpointing | fwd+bwd peak "
        "| full-step peak | of fp32 baseline |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in res["full_model"]:
        t, f = r["train"], r["fwdbwd"]
        lines.append(
            f"| {r['label']} | {t['precision']} | {t['optimizer']} | {'yes' if t['checkpointing'] else 'no'} "
            f"| {from_bytes(f['peak'])} | {from_bytes(t['peak'])} | {100 * (1 - r['train_reduction']):.1f} % |"
        )
    ws = res["full_model"][0]["train"].get("workspace")
    lines += ["", "| TT embedding (rank 16, B=8, N=512) | nn.Embedding fwd+bwd peak | TT fwd+bwd peak | reduction |",
              "|---|---:|---:|---:|"]
    for r in res["tt_runtime"]:
        lines.append(f"| V={r['vocab']:,}, d={r['dim']} | {from_bytes(r['nn_embedding_peak'])} "
                     f"| {from_bytes(r['tt_peak'])} | {100 * r['reduction']:.1f} % |")
    lines += ["", "| 8 GiB check (B=1, N=512, pure bf16, 8-bit AdamW, checkpointing) | variant | params "
              "| full-step peak | status |", "|---|---|---:|---:|---|"]
    for r in res["budget_8gib"]:
        lines.append(f"| {r['shape']} | {r['variant']} | {r['actual_params'] / 1e6:,.1f} M | {from_bytes(r['peak'])} "
                     f"| {r['status']} |")
    lines += ["", f"{'Measured' if res['method'] == 'measured' else 'Estimated'} by `muse verify` on {res['device']}, "
              f"torch {res['torch']}, commit `{res['git_sha'][:7]}`, {res['date'][:10]}"
              + (f"; every measured peak includes {from_bytes(ws)} of cuBLAS workspace." if ws else ".")
              + " A FAIL row's peak is what was allocated when the allocation that did not fit was refused."
              " Full tables: `benchmarks/results/verify.md`."]
    return "\n".join(lines)


TABLES = {"params-table": params_table, "train-eval-table": train_eval_table, "memory-table": memory_table}


def render(text: str) -> str:
    for name, make in TABLES.items():
        pat = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pat.search(text):
            raise SystemExit(f"README.md lacks the <!-- {name}:start/end --> markers")
        text = pat.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    readme = ROOT / "README.md"
    old = readme.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("README.md tables are out of date: run python benchmarks/readme_tables.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
