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


def _sha(res: dict) -> str:
    """The short commit; a "+wip" suffix (a run of uncommitted changes on top of it) is kept."""
    sha, plus, rest = res["git_sha"].partition("+")
    return sha[:7] + plus + rest


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
                 f"commit `{_sha(res)}`, {res['date'][:10]}.")
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
        f"commit `{_sha(r)}`, {r['date'][:10]} (`benchmarks/train_eval.py`)."
    )
    return "\n".join(lines)


# The memory table's sources, newest first: each section comes from the first run holding it.
# A partial run (`run_verify(sections=...)`) re-measures some sections without the hour-long rest.
VERIFY_RUNS = ("verify-cublas-16-8.json", "verify.json")


def _verify_sources() -> dict[str, tuple[str, dict]]:
    found = {}
    for name in VERIFY_RUNS:
        for res in _load(name):
            for section in ("full_model", "tt_runtime", "budget_8gib"):
                if section in res and section not in found:
                    found[section] = (name, res)
    return found


def memory_table() -> str:
    src = _verify_sources()
    if not src:
        return "_No verify run recorded yet._"
    from_bytes = lambda n: f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"  # noqa: E731
    lines, notes = [], {}

    def table(section: str, title: str, head: str, align: str, row) -> None:
        if section not in src:
            return
        name, res = src[section]
        mark = "¹²³"[list(dict.fromkeys([n for n, _ in src.values()])).index(name)]
        notes[name] = (mark, res)
        if lines:
            lines.append("")
        lines.extend([f"| {title}{mark} {head}", align])
        lines.extend(row(r) for r in res[section])

    def full(r):
        t, f = r["train"], r["fwdbwd"]
        return (f"| {r['label']} | {t['precision']} | {t['optimizer']} | {'yes' if t['checkpointing'] else 'no'} "
                f"| {from_bytes(f['peak'])} | {from_bytes(t['peak'])} | {100 * (1 - r['train_reduction']):.1f} % |")

    table("full_model", "model (V=10 000, d=512, L=6, B=2, N=512)",
          "| precision | optimizer | checkpointing | fwd+bwd peak | full-step peak | of fp32 baseline |",
          "|---|---|---|---|---:|---:|---:|", full)
    table("tt_runtime", "TT embedding (rank 16, B=8, N=512)", "| nn.Embedding fwd+bwd peak | TT fwd+bwd peak | reduction |",
          "|---|---:|---:|---:|", lambda r: f"| V={r['vocab']:,}, d={r['dim']} | {from_bytes(r['nn_embedding_peak'])} "
                    f"| {from_bytes(r['tt_peak'])} | {100 * r['reduction']:.1f} % |")
    table("budget_8gib", "8 GiB check (B=1, N=512, pure bf16, checkpointing; 8-bit AdamW unless the variant names "
          "another optimizer)", "| variant | params | full-step peak | status |", "|---|---|---:|---:|---|",
          lambda r: f"| {r['shape']} | {r['variant']} | {r['actual_params'] / 1e6:,.1f} M | {from_bytes(r['peak'])} "
                    f"| {r['status']} |")
    lines.append("")
    for name, (mark, res) in notes.items():
        ws = next((r["train"].get("workspace") for r in res.get("full_model", [])), None)
        ws = ws if ws is not None else next((r.get("workspace") for r in res.get("budget_8gib", [])), None)
        cublas = res.get("cublas_workspace", "default")
        lines.append(
            f"{mark} {'Measured' if res['method'] == 'measured' else 'Estimated'} by `muse verify"
            + (f" --cublas-workspace {cublas}" if cublas != "default" else "") + f"` on {res['device']}, "
            f"torch {res['torch']}, commit `{_sha(res)}`, {res['date'][:10]}"
            + (f"; every measured peak includes {from_bytes(ws)} of cuBLAS workspace" if ws else "")
            + f" (`benchmarks/results/{name[:-5]}.md`)."
        )
    lines.append("A FAIL row's peak is what was allocated when the allocation that did not fit was refused.")
    return "\n".join(lines)


def _ms(cell: dict) -> str:
    return f"{cell['ms']:,.3f}" if cell.get("ms") is not None else "failed"


def _ratio(x) -> str:
    return f"{x:.2f}×" if x is not None else "–"


def _mib(cell: dict) -> str:
    return f"{cell['peak_mib']:,.0f}" if cell.get("peak_mib") is not None else "–"


def _msg(cell: dict) -> str:
    """Eager ms · CUDA-graph ms (the latter where it was measured)."""
    if cell.get("graph_ms") is None:
        return _ms(cell)
    return f"{_ms(cell)} · {cell['graph_ms']:.3f}"


def _pair(speedup: dict, key: str) -> str:
    graph = speedup.get(f"{key}_graph")
    return _ratio(speedup[key]) + (f" · {_ratio(graph)}" if graph is not None else "")


def mixers_markdown(res: dict) -> str:
    """The `benchmarks/mixers.py` table (also written beside its JSON as mixers-gpu.md)."""
    c = res["config"]
    lines = [
        "| N | B | SDPA ms | scan ms | SDPA / scan | attention layer ms | semiseparable layer ms "
        "| attention / semiseparable | peak MiB: SDPA · scan · attention · semiseparable "
        "| scan vs float64 (max rel. RMS) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    errors = []
    for r in res["figures"]:
        k = r["check"]
        if k.get("error"):
            check = "error"
        else:
            check = f"{max(k['errors'].values()):.1e} {'PASS' if k['ok'] else 'FAIL'}"
            if not k["full_shape"]:
                check += f" (B={k['B']}, N={k['N']:,})"
        lines.append(
            f"| {r['N']:,} | {r['B']} | {_msg(r['sdpa'])} | {_msg(r['scan'])} "
            f"| {_pair(r['speedup'], 'sdpa_over_scan')} "
            f"| {_msg(r['attention_layer'])} | {_msg(r['semiseparable_layer'])} "
            f"| {_pair(r['speedup'], 'attention_over_semiseparable_layer')} "
            f"| {' · '.join(_mib(r[n]) for n in ('sdpa', 'scan', 'attention_layer', 'semiseparable_layer'))} "
            f"| {check} |"
        )
        for name in ("sdpa", "scan", "attention_layer", "semiseparable_layer", "check"):
            if r[name].get("error"):
                errors.append(f"N={r['N']:,} {name}: {r[name]['error']}")
    lines.append("")
    lines.append(
        f"Forward+backward, {c['dtype']}, median ms ({c['timer']}), each cell eager · replayed as one CUDA "
        f"graph (the GPU time without per-launch host overhead); B = max(1, {c['tokens']:,} // N). SDPA: "
        f"`F.scaled_dot_product_attention(is_causal=True)` on (B, {c['heads']}, N, {c['head_dim']}); scan: "
        f"`semiseparable(impl=\"{c['impl']}\")` alone, H={c['heads']}, r={c['rank']}, p={c['head_dim']}, "
        f"data-dependent log decay; layers: the `attention` mixer of `baseline` and the `semiseparable` mixer of "
        f"`standard` at d={c['d_model']}, {c['heads']} heads. Peak: `torch.cuda.max_memory_allocated` over one "
        f"forward+backward, counting its inputs (and the layer's parameters). Check: the scan's output and "
        f"du, dv, dz, dℓ against the float64 `chunked` scan on fresh inputs, ‖a − b‖ / ‖b‖ ≤ {c['tolerance']:g}. "
        f"{res['device']}, torch {res['torch']}, commit `{_sha(res)}`, {res['date'][:10]} "
        f"(`benchmarks/mixers.py`)."
    )
    if errors:
        lines += [""] + [f"- {e}" for e in errors]
    return "\n".join(lines)


def _paths_note(figures: list[dict], presets) -> str:
    """"Kernels run: ..." from the per-preset ``paths`` the benchmark recorded (absent in older
    results): what each MUSE op resolved to, merged over the rows."""
    parts = []
    for name in presets:
        found: dict[str, set] = {}
        for r in figures:
            for op, impls in (r[name].get("paths") or {}).items():
                found.setdefault(op, set()).update(impls)
        if found:
            parts.append(f"`{name}` " + ", ".join(f"{op} {'/'.join(sorted(v))}" for op, v in sorted(found.items())))
    return f"Kernels run: {'; '.join(parts)}. " if parts else ""


def throughput_markdown(res: dict) -> str:
    """The `benchmarks/train_throughput.py` table (also written beside its JSON as .md)."""
    c = res["config"]
    a, b = c["presets"]
    lines = [
        f"| N | B | `{a}` tokens/s | `{b}` tokens/s | `{b}` / `{a}` | `{a}` step ms | `{b}` step ms "
        f"| `{a}` peak | `{b}` peak | memory `{b}` / `{a}` |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    errors = []
    for r in res["figures"]:
        x, y = r[a], r[b]
        tps = lambda e: f"{e['tokens_per_s']:,.0f}" if e.get("tokens_per_s") else "failed"  # noqa: E731
        ms = lambda e: f"{e['step_ms']:,.1f}" if e.get("step_ms") else "–"  # noqa: E731
        mib = lambda e: f"{e['peak_mib']:,.0f} MiB" if e.get("peak_mib") is not None else "–"  # noqa: E731
        spread = r.get("ratio_range")
        ratio = _ratio(r["ratio_tokens_per_s"]) + (f" ({spread[0]:.2f}–{spread[1]:.2f})" if spread else "")
        lines.append(f"| {r['N']:,} | {r['B']} | {tps(x)} | {tps(y)} | {ratio} "
                     f"| {ms(x)} | {ms(y)} | {mib(x)} | {mib(y)} | {_ratio(r['ratio_peak_memory'])} |")
        errors += [f"N={r['N']:,} `{n}`: {r[n]['error']}" for n in (a, b) if r[n].get("error")]
    lines.append("")
    lines.append(
        f"Full training steps (forward, backward, {c['optimizer']} step), {c['precision']}, checkpointing "
        f"{'on' if c['checkpointing'] else 'off'}, "
        f"{'torch.compile mode ' + repr(c['compile']) if c.get('compile') else 'eager'}"
        f"{' + the whole step captured as one CUDA graph (`train.cuda_graph`)' if c.get('cuda_graph') else ''}, "
        f"B = max(1, {c['tokens']:,} // N) sequences of random token "
        f"ids; median of {c['steps']} timed steps after {c['warmup_steps']} warm-up steps"
        + (f"; each row the run of median tokens/s among {c['repeats']} independent runs (each built and compiled "
           "afresh), the ratio's range over the paired runs in brackets" if c.get("repeats", 1) > 1 else "")
        + "; peak = "
        + ("not measured (CUDA-graph replays allocate in a private pool that `max_memory_allocated` does not "
           "count)" if c.get("compile") == "reduce-overhead" or c.get("cuda_graph") else "`torch.cuda.max_memory_allocated` over the "
           "timed steps")
        + f". Scan: `impl=\"{c['impl']}\"`. "
        + "".join(f"`{k}: {v}`. " for k, v in (c.get("overrides") or {}).items())
        + _paths_note(res["figures"], (a, b))
        + f"{res['device']}, torch {res['torch']}, commit `{_sha(res)}`, {res['date'][:10]} "
        f"(`benchmarks/train_throughput.py`)."
    )
    if errors:
        lines += [""] + [f"- {e}" for e in errors]
    return "\n".join(lines)


def lowrank_ffn_markdown(res: dict) -> str:
    """The `benchmarks/lowrank_ffn.py` table (also written beside its JSON as .md)."""
    impls = res["config"]["impls"]
    lines = ["| T | d | r | " + " | ".join(f"`{i}` ms | `{i}` peak" for i in impls) + " |",
             "|---:|---:|---:|" + "---:|---:|" * len(impls)]
    errs = []
    for row in res["figures"]:
        cells = []
        for i in impls:
            f = row.get(i, {})
            cells += [f"{f['ms']:.3f}" if f.get("ms") else "failed",
                      f"{f['peak_mib']:,.1f} MiB" if f.get("peak_mib") is not None else "–"]
        lines.append(f"| {row['T']:,} | {row['d']} | {row['r']} | " + " | ".join(cells) + " |")
        if row.get("triton_rel_err_vs_torch"):
            errs.append(f"{max(row['triton_rel_err_vs_torch'].values()):.1e} at T={row['T']:,}, d={row['d']}")
    lines += ["", "One low-rank GELU FFN (hidden 4d, bias), forward + backward of the input and every parameter, "
              "bf16 autocast over fp32 parameters; median ms (`triton.testing.do_bench`); peak = one step's "
              "`torch.cuda.max_memory_allocated` above the memory held before it. `torch-compiled`: the same "
              "module under `torch.compile`. `triton`: `ffn.impl: triton`, the fused `muse.ops.lowrank_mlp` "
              "kernels (autotuned)"
              + (f"; largest relative error of its output and gradients against `torch`: {'; '.join(errs)}" if errs else "")
              + f". {res['device']}, torch {res['torch']}, commit `{_sha(res)}`, {res['date'][:10]} "
              "(`benchmarks/lowrank_ffn.py`)."]
    return "\n".join(lines)


def lowrank_ffn_table() -> str:
    runs = _load("lowrank_ffn-gpu.json")
    return lowrank_ffn_markdown(runs[0]) if runs else "_No GPU run recorded yet._"


def mixers_table() -> str:
    runs = _load("mixers-gpu.json")
    return mixers_markdown(runs[0]) if runs else "_No GPU run recorded yet._"


def _throughput(results: str):
    """The table of one train_throughput variant's results file."""
    def table() -> str:
        runs = _load(results)
        return throughput_markdown(runs[0]) if runs else "_No GPU run recorded yet._"
    return table


TABLES = {"params-table": params_table, "train-eval-table": train_eval_table, "memory-table": memory_table,
          "mixers-table": mixers_table, "throughput-table": _throughput("train_throughput-gpu.json"),
          "throughput-compiled-table": _throughput("train_throughput-compile-reduce-overhead-gpu.json"),
          "throughput-graph-table": _throughput("train_throughput-compile-default-cudagraph-gpu.json"),
          "throughput-eager-graph-table": _throughput("train_throughput-cudagraph-gpu.json"),
          "throughput-graph-repeats-table": _throughput("train_throughput-compile-default-cudagraph-x3-gpu.json"),
          "lowrank-ffn-table": lowrank_ffn_table}
OPTIONAL: set[str] = set()  # tables rendered only where README.md has their markers


def render(text: str) -> str:
    for name, make in TABLES.items():
        pat = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pat.search(text):
            if name in OPTIONAL:
                continue
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
