"""Regenerate the result tables of README.md and docs/ from `benchmarks/results/*.json`.

    python benchmarks/readme_tables.py          # rewrite README.md and docs/*.md in place
    python benchmarks/readme_tables.py --check  # exit 1 if any of them is out of date (a test runs this)

Each table lives between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers in one of
``TARGETS``; nothing in them is typed by hand, and every table of ``TABLES`` must appear in at
least one target.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # the presets of this checkout (configs/), not of another install
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from claims_tables import claims_table  # noqa: E402
from compare_tables import (  # noqa: E402
    ablation_table, equal_memory_cells, equal_memory_peaks_table, equal_memory_table, hamt_knobs_table, human, quality,
    quality_headline, quality_table,
)
from inference_tables import decode_markdown, decode_memory_markdown, startup_markdown  # noqa: E402
from provenance import current_name, is_current, label  # noqa: E402
from results_files import (  # noqa: E402
    fmt_bytes, load, newest, run_note, throughput_ratios, verify_params, verify_sources,
)
from speed_tables import lowrank_ffn_markdown, mixers_markdown, short_sha, throughput_markdown  # noqa: E402


# Presets in the order a reader meets them; any others follow alphabetically.
PRESET_ORDER = ("tiny", "baseline", "standard", "compact", "ultra", "extreme", "ultimate", "large", "large-standard",
                "xlarge", "xlarge-standard", "phase8-max", "phase8-max-tt", "xxl-100b", "gpt2-124m", "distilgpt2")


def _own_recipe_peaks() -> tuple[dict[str, int], dict | None]:
    """{preset: full-step peak bytes} from `muse verify`'s full-model rows that ran a preset as it
    ships (its own precision, optimizer and checkpointing, read from configs/), and that run."""
    from muse.config import load_config

    src = verify_sources().get("full_model")
    if src is None:
        return {}, None
    out = {}
    for r in src[1]["full_model"]:
        name = current_name(r["preset"], params=verify_params(r))  # the preset it measured, named as today
        if name is None:  # a config no preset ships any more
            continue
        cfg = load_config(name)
        t = r["train"]
        if (t["precision"], t["optimizer"], t["checkpointing"]) == (
                cfg.train.precision, cfg.train.optimizer, cfg.model.checkpointing):
            out.setdefault(name, t["peak"])
    return out, src[1]


def _budget_cells(actual: dict[str, int]) -> tuple[dict[str, list[str]], dict | None]:
    """{preset: ["7.77 GiB FAIL", ...]} from the 8 GiB check's rows of that preset's model (its
    parameter count: the check's dense rows of a compressed preset's shape are other models)."""
    src = verify_sources().get("budget_8gib")
    if src is None:
        return {}, None
    cells: dict[str, list[str]] = {}
    for r in src[1]["budget_8gib"]:
        name = current_name(r["preset"], params=r["actual_params"])
        if name is not None and actual.get(name) == r["actual_params"]:
            with_opt = "" if r["optimizer"] == "adamw8bit" else f" with `{r['optimizer']}`"
            cells.setdefault(name, []).append(f"{fmt_bytes(r['peak'])} {r['status']}²{with_opt}")
    return cells, src[1]


def _ppl_cell(test: dict) -> str:
    """Token-level and word-level test perplexity: the second compares across tokenizers."""
    word = test.get("word_perplexity")
    return f"{test['perplexity']:.2f} · {word:.2f}" if word else f"{test['perplexity']:.2f}"


def presets_table() -> str:
    """One row per shipped preset: its parts, parameters, measured peak memory, quality, speed."""
    from muse.config import load_config

    (res,) = load("params.json")
    rows = {r["name"]: r for r in res["figures"]}
    names = [n for n in PRESET_ORDER if n in rows] + sorted(set(rows) - set(PRESET_ORDER))
    own, own_src = _own_recipe_peaks()
    budget, budget_src = _budget_cells({n: r["actual_params"] for n, r in rows.items()})
    quality_rows, quality_note, _ = quality()
    cells = equal_memory_cells()
    lines = [
        "| preset | V · d · L | mixer · embedding · FFN · head | parameters (dense-equivalent) "
        "| full-step peak memory | WikiText-2 test ppl · word ppl³ | train tokens/s³ | best dense model within its B=32 peak³ |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for n in names:
        r, m = rows[n], rows[n]["model"]
        peak = ([f"{fmt_bytes(own[n])}¹"] if n in own else []) + budget.get(n, [])
        q = quality_rows.get(n)
        lines.append(
            f"| `{n}` | {m['vocab_size']:,} · {m['d_model']} · {m['n_layers']} | {load_config(n).model.mixer_layout} · "
            f"{m['embedding']['kind']} · {m['ffn']['kind']} · {m['head']['kind']} | {human(r['actual_params'])} "
            f"({human(r['dense_equivalent_params'])}) | {'; '.join(peak) or '–'} "
            f"| {_ppl_cell(q['test']) if q else '–'} "
            f"| {format(q['tokens_per_s_median'], ',.0f') if q and q.get('tokens_per_s_median') else '–'} "
            f"| {cells.get(n, '–')} |"
        )
    lines += ["", f"- Parameters: exact counts of the models built on the `meta` device (`benchmarks/params.py`, "
                  f"commit `{short_sha(res)}`, {res['date'][:10]})."]
    if own_src:
        ws = own_src.get("cublas_workspace", "default")
        lines.append("- ¹ B=2, N=512, the preset's own precision, optimizer and checkpointing (`muse verify"
                     + (f" --cublas-workspace {ws}" if ws != "default" else "") + f"`; {run_note(own_src)}).")
    if budget_src:
        lines.append(f"- ² B=1, N=512, pure bf16, 8-bit AdamW unless another optimizer is named, checkpointing, the "
                     f"process capped at 8 GiB: PASS if every step ran (`muse verify`; {run_note(budget_src)}).")
    if quality_rows:
        lines.append(f"- ³ {quality_note}")
    return "\n".join(lines)


def headline() -> str:
    """The README's answer to "is it worth it?", in sentences computed from the results."""
    parts = []
    text = quality_headline()
    if text:
        parts.append(text)
    src = verify_sources()
    if "full_model" in src:
        rows = {r["label"]: r["train"] for r in src["full_model"][1]["full_model"]
                if is_current(r["preset"], params=verify_params(r))}
        if {"baseline fp32", "standard"} <= rows.keys():
            base, std = rows["baseline fp32"]["peak"], rows["standard"]["peak"]
            text = (f"**Memory.** A full `standard` training step (B=2, N=512, with its pure-bf16, 8-bit AdamW and "
                    f"checkpointing recipe) peaks at {fmt_bytes(std)}, {100 * std / base:.1f} % of the fp32 AdamW "
                    f"`baseline`'s {fmt_bytes(base)}")
            if "budget_8gib" in src:
                same = {r["preset"]: r["peak"] for r in src["budget_8gib"][1]["budget_8gib"]
                        if r["preset"] in ("baseline", "standard") and r["status"] == "PASS"
                        and is_current(r["preset"], params=r["actual_params"])}
                if len(same) == 2:
                    text += (f"; with that recipe for both (B=1), the dense model peaks at {fmt_bytes(same['baseline'])} "
                             f"and `standard` at {fmt_bytes(same['standard'])} "
                             f"(×{same['standard'] / same['baseline']:.2f})")
            parts.append(text + ".")
    speed = []
    for results, how in SPEED_RUNS:
        ratios, run, other = throughput_ratios(results)
        if ratios:
            speed.append(f"| {how} | {other} | " + " | ".join(f"{r:.2f}× at {n:,}" for n, r in (ratios[0], ratios[-1]))
                         + f" | {run['device']}, `{short_sha(run)}` |")
    if speed:
        parts.append("**Speed.** Training tokens/s against `baseline`'s (one GPU, B·N tokens per step fixed):\n\n"
                     "| step | model | shortest N | longest N | device, commit |\n|---|---|---:|---:|---|\n"
                     + "\n".join(speed))
    dec = newest("decode-gpu.json")
    if dec:
        rows = {r["preset"]: r for r in dec["figures"] if "decode" in r}
        steps = [f"{label(n, model=r.get('config'))} {r['decode']['captured']['step_ms']:.2f} ms" for n, r in rows.items()
                 if r["decode"].get("captured")]
        longest = max(((n, p) for n, r in rows.items() for p in r.get("prefill", []) if "speedup" in p),
                      key=lambda x: x[1]["N"], default=None)
        if steps:
            text = f"**Generation.** One decoding step (B=1, bf16, captured as a CUDA graph): {', '.join(steps)}"
            if longest:
                n, p = longest
                text += (f"; {label(n, model=rows[n].get('config'))} reads a {p['N']:,}-token prompt in one parallel "
                         f"pass at {p['parallel_tokens_per_s']:,.0f} tokens/s, {p['speedup']:.0f}× feeding it token "
                         f"by token")
            parts.append(text + f" ({dec['device']}).")
    return "\n\n".join(parts) if parts else "_No results recorded yet._"


# The headline's training-speed runs (train_throughput.py results, `baseline` against another
# preset): the current `standard`'s first, then older runs under the names their presets have now.
SPEED_RUNS = (
    ("train_throughput-cudagraph-h200.json",
     "eager, captured as one CUDA graph (`train.cuda_graph`, the default on one GPU)"),
    ("train_throughput-compile-default-cudagraph-gpu.json", "compiled and captured"),
    ("train_throughput-cudagraph-gpu.json", "eager and captured"),
    ("train_throughput-gpu.json", "eager, not captured (`train.cuda_graph false`): bound by launches on the host"),
)


def memory_table() -> str:
    src = verify_sources()
    if not src:
        return "_No verify run recorded yet._"
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
        shown = label(r["preset"], params=verify_params(r))
        name = r["label"] if shown == f"`{r['preset']}`" else r["label"].replace(r["preset"], shown, 1)
        return (f"| {name} | {t['precision']} | {t['optimizer']} | {'yes' if t['checkpointing'] else 'no'} "
                f"| {fmt_bytes(f['peak'])} | {fmt_bytes(t['peak'])} | {100 * (1 - r['train_reduction']):.1f} % |")

    table("full_model", "model (V=10 000, d=512, L=6, B=2, N=512)",
          "| precision | optimizer | checkpointing | fwd+bwd peak | full-step peak | of fp32 baseline |",
          "|---|---|---|---|---:|---:|---:|", full)
    table("tt_runtime", "TT embedding (rank 16, B=8, N=512)", "| nn.Embedding fwd+bwd peak | TT fwd+bwd peak | reduction |",
          "|---|---:|---:|---:|", lambda r: f"| V={r['vocab']:,}, d={r['dim']} | {fmt_bytes(r['nn_embedding_peak'])} "
                    f"| {fmt_bytes(r['tt_peak'])} | {100 * r['reduction']:.1f} % |")
    table("budget_8gib", "8 GiB check (B=1, N=512, pure bf16, checkpointing; 8-bit AdamW unless the variant names "
          "another optimizer)", "| variant | params | full-step peak | status |", "|---|---|---:|---:|---|",
          lambda r: f"| {r['shape']} | {r['variant']} | {r['actual_params'] / 1e6:,.1f} M | {fmt_bytes(r['peak'])} "
                    f"| {r['status']} |")
    lines.append("")
    for name, (mark, res) in notes.items():
        ws = next((r["train"].get("workspace") for r in res.get("full_model", [])), None)
        ws = ws if ws is not None else next((r.get("workspace") for r in res.get("budget_8gib", [])), None)
        cublas = res.get("cublas_workspace", "default")
        lines.append(
            f"- {mark} {'Measured' if res['method'] == 'measured' else 'Estimated'} by `muse verify"
            + (f" --cublas-workspace {cublas}" if cublas != "default" else "") + f"` on {res['device']}, "
            f"torch {res['torch']}, commit `{short_sha(res)}`, {res['date'][:10]}"
            + (f"; every measured peak includes {fmt_bytes(ws)} of cuBLAS workspace" if ws else "")
            + f" (`benchmarks/results/{name[:-5]}.md`)."
        )
    lines.append("- A FAIL row's peak is what was allocated when the allocation that did not fit was refused.")
    return "\n".join(lines)




def lowrank_ffn_table() -> str:
    runs = load("lowrank_ffn-gpu.json")
    return lowrank_ffn_markdown(runs[0]) if runs else "_No GPU run recorded yet._"


def mixers_table() -> str:
    runs = load("mixers-gpu.json")
    return mixers_markdown(runs[0]) if runs else "_No GPU run recorded yet._"


def _throughput(results: str):
    """The table of one train_throughput variant's results file."""
    def table() -> str:
        runs = load(results)
        return throughput_markdown(runs[0]) if runs else "_No GPU run recorded yet._"
    return table


def _titled_table(pattern: str, markdown) -> Callable[[], str]:
    """The newest GPU result of ``pattern`` as its benchmark's Markdown, without the title line,
    with its device, torch, commit and date below."""
    def table() -> str:
        res = newest(pattern)
        if res is None:
            return "Not measured yet."
        body = markdown(res).split("\n", 2)[2]
        return f"{body}\n\n{res['device']}, torch {res['torch']}, commit `{short_sha(res)}`, {res['date'][:10]}."
    return table


decode_table = _titled_table("decode-gpu.json", decode_markdown)
decode_memory_table = _titled_table("decode_memory-gpu.json", decode_memory_markdown)


def _startup(tuning: bool) -> str:
    res = newest("startup-gpu.json")
    return startup_markdown(res, tuning=tuning) if res else "Not measured yet."


TABLES = {"presets-table": presets_table, "headline": headline, "claims-table": claims_table,
          "quality-table": quality_table, "ablation-table": ablation_table, "memory-table": memory_table,
          "mixers-table": mixers_table, "throughput-table": _throughput("train_throughput-gpu.json"),
          "throughput-compiled-table": _throughput("train_throughput-compile-reduce-overhead-gpu.json"),
          "throughput-graph-table": _throughput("train_throughput-compile-default-cudagraph-gpu.json"),
          "throughput-eager-graph-table": _throughput("train_throughput-cudagraph-gpu.json"),
          "throughput-standard-graph-table": _throughput("train_throughput-cudagraph-h200.json"),
          "throughput-graph-repeats-table": _throughput("train_throughput-compile-default-cudagraph-x3-gpu.json"),
          "lowrank-ffn-table": lowrank_ffn_table, "decode-table": decode_table,
          "decode-memory-table": decode_memory_table,
          "startup-tuning-table": lambda: _startup(True), "equal-memory-peaks-table": equal_memory_peaks_table,
          "equal-memory-table": equal_memory_table, "hamt-knobs-table": hamt_knobs_table}
# The files holding the tables; each table of TABLES sits in one (or more) of them.
TARGETS = ("README.md", "docs/performance-notes.md", "docs/design.md", "docs/quality-notes.md")


def render(text: str) -> str:
    """``text`` with every table whose markers it holds regenerated."""
    for name, make in TABLES.items():
        pat = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if pat.search(text):
            text = pat.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    files = {name: (ROOT / name).read_text() for name in TARGETS}
    missing = [n for n in TABLES if not any(f"<!-- {n}:start -->" in t and f"<!-- {n}:end -->" in t
                                           for t in files.values())]
    if missing:
        print(f"no file of {', '.join(TARGETS)} holds the markers of: {', '.join(missing)}", file=sys.stderr)
        return 1
    stale = []
    for name, old in files.items():
        new = render(old)
        if new != old:
            stale.append(name)
            if not args.check:
                (ROOT / name).write_text(new)
    if args.check and stale:
        print(f"{', '.join(stale)}: tables out of date: run python benchmarks/readme_tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
