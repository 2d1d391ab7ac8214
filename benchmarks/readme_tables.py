"""Regenerate the result tables of README.md and docs/ from `benchmarks/results/*.json`.

    python benchmarks/readme_tables.py          # rewrite README.md and docs/*.md in place
    python benchmarks/readme_tables.py --check  # exit 1 if any of them is out of date (a test runs this)

Each table lives between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers in one of
``TARGETS``; nothing in them is typed by hand, and every table of ``TABLES`` must appear in at
least one target.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT / "src") not in sys.path:  # the presets of this checkout (configs/), not of another install
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare_tables import (  # noqa: E402
    ablation_table, aux_rows, equal_memory_cells, equal_memory_peaks_table, preset_quality, quality, quality_headline,
    quality_table,
)
from inference_tables import decode_markdown, decode_memory_markdown, startup_markdown  # noqa: E402
from provenance import current_name, is_current, label  # noqa: E402
from speed_tables import lowrank_ffn_markdown, mixers_markdown, short_sha, throughput_markdown  # noqa: E402


def _human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return str(int(n))


def _load(pattern: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob(pattern))]


def _bytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def _run_note(res: dict) -> str:
    return f"{res['device']}, torch {res['torch']}, commit `{short_sha(res)}`, {res['date'][:10]}"


def _quality() -> dict[str, dict]:
    """{preset: figures} of the WikiText-2 quality runs (``compare_tables.quality``)."""
    return quality()[0]


def _throughput_ratios(results: str) -> tuple[list[tuple[int, float]], dict | None, str]:
    """[(N, other / reference tokens/s)] of one train_throughput results file, the run, and the
    other preset as it is named today (`standard` until it was rebuilt, `compact` since)."""
    runs = _load(results)
    if not runs:
        return [], None, ""
    other = runs[0]["config"]["presets"][1]
    model = next((r[other]["config"] for r in runs[0]["figures"] if "config" in r[other]), None)
    return ([(r["N"], r["ratio_tokens_per_s"]) for r in runs[0]["figures"] if r.get("ratio_tokens_per_s")], runs[0],
            label(other, model=model, overrides=runs[0]["config"].get("overrides")))


def _verify_params(row: dict) -> int:
    """The parameter count of a `muse verify` full-model row (older rows record only the bytes)."""
    step = row["train"]
    return row.get("actual_params") or step["parameters"] // (2 if step["precision"] == "bf16-pure" else 4)


# Presets in the order a reader meets them; any others follow alphabetically.
PRESET_ORDER = ("tiny", "baseline", "standard", "compact", "ultra", "extreme", "ultimate", "large", "large-standard",
                "xlarge", "xlarge-standard", "phase8-max", "phase8-max-tt", "xxl-100b", "gpt2-124m", "distilgpt2")


def _own_recipe_peaks() -> tuple[dict[str, int], dict | None]:
    """{preset: full-step peak bytes} from `muse verify`'s full-model rows that ran a preset as it
    ships (its own precision, optimizer and checkpointing, read from configs/), and that run."""
    from muse.config import load_config

    src = _verify_sources().get("full_model")
    if src is None:
        return {}, None
    out = {}
    for r in src[1]["full_model"]:
        name = current_name(r["preset"], params=_verify_params(r))  # the preset it measured, named as today
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
    src = _verify_sources().get("budget_8gib")
    if src is None:
        return {}, None
    cells: dict[str, list[str]] = {}
    for r in src[1]["budget_8gib"]:
        name = current_name(r["preset"], params=r["actual_params"])
        if name is not None and actual.get(name) == r["actual_params"]:
            with_opt = "" if r["optimizer"] == "adamw8bit" else f" with `{r['optimizer']}`"
            cells.setdefault(name, []).append(f"{_bytes(r['peak'])} {r['status']}²{with_opt}")
    return cells, src[1]


def presets_table() -> str:
    """One row per shipped preset: its parts, parameters, measured peak memory, quality, speed."""
    from muse.config import load_config

    (res,) = _load("params.json")
    rows = {r["name"]: r for r in res["figures"]}
    names = [n for n in PRESET_ORDER if n in rows] + sorted(set(rows) - set(PRESET_ORDER))
    own, own_src = _own_recipe_peaks()
    budget, budget_src = _budget_cells({n: r["actual_params"] for n, r in rows.items()})
    quality_rows, quality_note, _ = quality()
    cells = equal_memory_cells()
    lines = [
        "| preset | V · d · L | mixer · embedding · FFN · head | parameters (dense-equivalent) "
        "| full-step peak memory | WikiText-2 test ppl³ | train tokens/s³ | best dense model within its B=32 peak³ |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for n in names:
        r, m = rows[n], rows[n]["model"]
        peak = ([f"{_bytes(own[n])}¹"] if n in own else []) + budget.get(n, [])
        q = quality_rows.get(n)
        lines.append(
            f"| `{n}` | {m['vocab_size']:,} · {m['d_model']} · {m['n_layers']} | {load_config(n).model.mixer_layout} · "
            f"{m['embedding']['kind']} · {m['ffn']['kind']} · {m['head']['kind']} | {_human(r['actual_params'])} "
            f"({_human(r['dense_equivalent_params'])}) | {'; '.join(peak) or '–'} "
            f"| {format(q['test']['perplexity'], '.2f') if q else '–'} "
            f"| {format(q['tokens_per_s_median'], ',.0f') if q else '–'} | {cells.get(n, '–')} |"
        )
    lines += ["", f"- Parameters: exact counts of the models built on the `meta` device (`benchmarks/params.py`, "
                  f"commit `{short_sha(res)}`, {res['date'][:10]})."]
    if own_src:
        ws = own_src.get("cublas_workspace", "default")
        lines.append("- ¹ B=2, N=512, the preset's own precision, optimizer and checkpointing (`muse verify"
                     + (f" --cublas-workspace {ws}" if ws != "default" else "") + f"`; {_run_note(own_src)}).")
    if budget_src:
        lines.append(f"- ² B=1, N=512, pure bf16, 8-bit AdamW unless another optimizer is named, checkpointing, the "
                     f"process capped at 8 GiB: PASS if every step ran (`muse verify`; {_run_note(budget_src)}).")
    if quality_rows:
        lines.append(f"- ³ {quality_note}")
    return "\n".join(lines)


def headline() -> str:
    """The README's answer to "is it worth it?", in sentences computed from the results."""
    parts = []
    text = quality_headline()
    if text:
        parts.append(text)
    src = _verify_sources()
    if "full_model" in src:
        rows = {r["label"]: r["train"] for r in src["full_model"][1]["full_model"]
                if is_current(r["preset"], params=_verify_params(r))}
        if {"baseline fp32", "standard"} <= rows.keys():
            base, std = rows["baseline fp32"]["peak"], rows["standard"]["peak"]
            text = (f"**Memory.** A full `standard` training step (B=2, N=512, with its pure-bf16, 8-bit AdamW and "
                    f"checkpointing recipe) peaks at {_bytes(std)}, {100 * std / base:.1f} % of the fp32 AdamW "
                    f"`baseline`'s {_bytes(base)}")
            if "budget_8gib" in src:
                same = {r["preset"]: r["peak"] for r in src["budget_8gib"][1]["budget_8gib"]
                        if r["preset"] in ("baseline", "standard") and r["status"] == "PASS"
                        and is_current(r["preset"], params=r["actual_params"])}
                if len(same) == 2:
                    text += (f"; with that recipe for both (B=1), the dense model peaks at {_bytes(same['baseline'])} "
                             f"and `standard` at {_bytes(same['standard'])} "
                             f"(×{same['standard'] / same['baseline']:.2f})")
            parts.append(text + ".")
    speed = []
    for results, how in SPEED_RUNS:
        ratios, run, other = _throughput_ratios(results)
        if ratios:
            speed.append(f"{how}, {other} at {ratios[0][1]:.2f}× at N = {ratios[0][0]:,}"
                         + (f" and {ratios[-1][1]:.2f}× at N = {ratios[-1][0]:,}" if len(ratios) > 1 else "")
                         + f" ({run['device']}, commit `{short_sha(run)}`)")
    if speed:
        parts.append("**Speed.** Training tokens/s against `baseline`'s: " + "; ".join(speed) + ".")
    dec = _newest("decode-gpu.json")
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
     "eager with the step captured as one CUDA graph (`train.cuda_graph`, on by default on one CUDA device)"),
    ("train_throughput-compile-default-cudagraph-gpu.json", "compiled and captured"),
    ("train_throughput-cudagraph-gpu.json", "eager and captured"),
    ("train_throughput-gpu.json", "eager and uncaptured (`train.cuda_graph false`), bound by kernel launches on the host"),
)


# The memory table's sources, newest first: each section comes from the first run holding it.
# A partial run (`run_verify(sections=...)`) re-measures some sections without the hour-long rest.
VERIFY_RUNS = ("verify-b2-cublas-16-8-h200.json", "verify-cublas-16-8.json", "verify.json")


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
    from_bytes = _bytes
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
        shown = label(r["preset"], params=_verify_params(r))
        name = r["label"] if shown == f"`{r['preset']}`" else r["label"].replace(r["preset"], shown, 1)
        return (f"| {name} | {t['precision']} | {t['optimizer']} | {'yes' if t['checkpointing'] else 'no'} "
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
            f"- {mark} {'Measured' if res['method'] == 'measured' else 'Estimated'} by `muse verify"
            + (f" --cublas-workspace {cublas}" if cublas != "default" else "") + f"` on {res['device']}, "
            f"torch {res['torch']}, commit `{short_sha(res)}`, {res['date'][:10]}"
            + (f"; every measured peak includes {from_bytes(ws)} of cuBLAS workspace" if ws else "")
            + f" (`benchmarks/results/{name[:-5]}.md`)."
        )
    lines.append("- A FAIL row's peak is what was allocated when the allocation that did not fit was refused.")
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


def claims_table() -> str:
    """docs/design.md: the original reports' claims and what the committed results say about them."""
    src, q = _verify_sources(), _quality()
    p = {r["name"]: r for res in _load("params.json") for r in res["figures"]}
    rows = ["| claim | original figure | measured here | how |", "|---|---|---|---|"]
    def add(claim: str, orig: str, got: str | None, how: str) -> None:
        rows.append(f"| {claim} | {orig} | {got or 'not measured yet'} | {how} |")

    res = src.get("tt_runtime", (None, {}))[1]
    by_shape: dict[tuple, list] = {}
    for r in res.get("tt_compression", []):
        by_shape.setdefault((r["vocab"], r["dim"]), []).append(r)
    add("TT embedding parameter compression", "99.3–99.7 % (V10K/d512, V50K/d1024)", "; ".join(
        f"{100 * min(x['compression'] for x in v):.2f}–{100 * max(x['compression'] for x in v):.2f} % at V={V:,}, "
        f"d={d} (ranks {', '.join(str(x['rank']) for x in v)})" for (V, d), v in by_shape.items()), "`muse verify`")
    add("TT embedding runtime memory", "−46 % (small) / −73 % (large)", "; ".join(
        f"−{100 * r['reduction']:.1f} % forward+backward peak at V={r['vocab']:,}, d={r['dim']} (rank {r['rank']}, "
        f"B={r['batch']}, N={r['seq']})" for r in res.get("tt_runtime", [])), "`muse verify`")
    if "ultra" in p:
        u = p["ultra"]
        add("`ultra` parameters", "29.16 M → 616 K (−97.9 %)", f"{_human(u['dense_equivalent_params'])} → "
            f"{_human(u['actual_params'])} (−{100 * u['compression']:.1f} %)", "`muse params ultra`")
    fm = {r["label"]: r for r in src.get("full_model", (None, {"full_model": []}))[1]["full_model"]}
    if {"ultra", "baseline fp32"} <= fm.keys():
        u, b = fm["ultra"], fm["baseline fp32"]
        add("`ultra` training peak memory", "456.3 MB → 69.1 MB (−84.8 %, fp16, forward+backward only)",
            f"forward+backward {_bytes(b['fwdbwd']['peak'])} → {_bytes(u['fwdbwd']['peak'])} "
            f"(−{100 * u['fwdbwd_reduction']:.1f} %); full step {_bytes(b['train']['peak'])} → "
            f"{_bytes(u['train']['peak'])} (−{100 * u['train_reduction']:.1f} %); against the fp32 AdamW `baseline`, "
            f"B=2, N=512", "`muse verify`")
    both, how = {"baseline", "standard"} <= q.keys(), quality()[2]
    rel = {n: q[n]["test"]["perplexity"] / q["baseline"]["test"]["perplexity"] for n in ("standard", "ultra")
           if both and n in q}
    add("Quality cost", '"1–2 %" (never measured)', both and "; ".join(
        f"`{n}` vs `baseline`: test perplexity ×{x:.2f} ({100 * (x - 1):+.0f} %)" for n, x in rel.items())
        + " at equal training tokens", how)
    speed = [f"×{q['standard']['tokens_per_s_median'] / q['baseline']['tokens_per_s_median']:.2f} tokens/s at N=512 "
             "(the WikiText-2 runs, `standard` / `baseline`)"] if both else []
    for name, mode in (("train_throughput-cudagraph-h200.json", "eager + captured"),
                       ("train_throughput-compile-default-cudagraph-gpu.json", "compiled + captured"),
                       ("train_throughput-gpu.json", "eager")):
        ratios, run, other = _throughput_ratios(name)
        if ratios:
            speed.append(f"×{min(x for _, x in ratios):.2f}–{max(x for _, x in ratios):.2f} {mode} at "
                         f"N={ratios[0][0]:,}–{ratios[-1][0]:,} ({other} / `baseline`, {run['device']})")
    dec = _newest("decode-gpu.json")
    steps = {r["preset"]: r["decode"]["captured"]["step_ms"] for r in (dec or {}).get("figures", [])
             if r.get("decode", {}).get("captured") and is_current(r["preset"], model=r.get("config"))}
    infer = (f"one decoding step {steps['standard']:.2f} ms against `baseline`'s {steps['baseline']:.2f} ms "
             f"(×{steps['baseline'] / steps['standard']:.2f} the speed; B=1, captured, {dec['device']})"
             if {"standard", "baseline"} <= steps.keys() else "inference: not measured yet")
    add("Speed cost", "training 2–3× slower, inference 1.5–2× slower",
        speed and "training: " + "; ".join(speed) + "; " + infer,
        f"{how}, `benchmarks/train_throughput.py`, `benchmarks/decode.py`")
    budget = src.get("budget_8gib", (None, {"budget_8gib": []}))[1]["budget_8gib"]

    def facts(name: str, first: str) -> str:  # the preset's parameters and its 8 GiB check rows
        return "; ".join([first] + [f"{_bytes(r['peak'])} {r['status']} in 8 GiB with `{r['optimizer']}`"
                                    for r in budget
                                    if r["preset"] == name and r["actual_params"] == p[name]["actual_params"]])

    if "phase8-max" in p:
        add("`phase8-max`", "4.84 B → 2.08 B parameters, 7.82 GB (estimated)", facts("phase8-max", (
            f"{_human(p['phase8-max']['dense_equivalent_params'])} → {_human(p['phase8-max']['actual_params'])}")),
            "`muse params`, `muse verify`")
    if "phase8-max-tt" in p:
        add("A 30 M-parameter phase8 model", "not reached", facts("phase8-max-tt", (
            f"`phase8-max-tt`: {_human(p['phase8-max-tt']['actual_params'])} parameters")),
            "`muse params`, `muse verify`")
    if "xxl-100b" in p:
        r = p["xxl-100b"]
        got = facts("xxl-100b", f"`xxl-100b`: {_human(r['dense_equivalent_params'])} dense-equivalent, "
                                f"{_human(r['actual_params'])} parameters")
        add("A ≥ 100 B dense-equivalent shape that trains in 8 GiB", "target",
            got if "8 GiB" in got else got + "; no measured step yet", "`muse params`")
    add("HAMT: O(1) memory, 2–5× speed-up, 100 % slot use", "claimed", _hamt_measured(),
        "`benchmarks/decode_memory.py`, `benchmarks/mixers.py`, slot statistics of `muse eval`")
    hamt = preset_quality("hamt-100m")
    add("HAMT auxiliary loss: +71 % memory fidelity", "claimed", _hamt_aux(),
        "memory fidelity of `muse eval` with and without the aux loss "
        "(`muse ablate @configs/experiments/ablate-hamt-aux.args`)")
    add("HAMT 100 M: perplexity < 28, > 4 000 tok/s, < 10 GB", "targets, never reached", _hamt_quality(hamt),
        "`muse compare` on WikiText-2 with an `hf-gpt2` row")
    return "\n".join(rows)


def hamt_claims_table() -> str:
    """README: the claims table's HAMT rows (the holographic mixer's original claims, measured)."""
    lines = claims_table().split("\n")
    return "\n".join(lines[:2] + [r for r in lines[2:] if r.startswith("| HAMT")])


def _hamt_quality(r: dict | None) -> str | None:
    """`hamt-100m`'s row of the Pareto comparison, against `baseline`'s."""
    if r is None:
        return None
    t, b = r["test"], preset_quality("baseline")
    text = (f"test perplexity {t['perplexity']:.2f} (`baseline` {b['test']['perplexity']:.2f}) with "
            f"{r['actual_params'] / 1e6:.1f} M parameters, {r['tokens_per_s_median']:,.0f} tokens/s, full-step "
            f"peak {r['peak_memory_mib'] / 1024:.1f} GiB at B={r['batch_size']}, N={r['seq_len']}") if b else None
    if text and "slot_utilisation" in t:
        text += (f"; slot use {100 * t['slot_utilisation']:.0f} % ({t['effective_slots']:.1f} effective of 16), "
                 f"memory fidelity {t['memory_fidelity']:.3f}")
    return text and text + f" (WikiText-2, 20 M tokens; {r['device']}, {r['date'][:10]})"


def _hamt_aux() -> str:
    """`hamt-100m` with and without the auxiliary loss (the ablation's two rows)."""
    rows = {r["config"]["model"]["mixer"]["holographic"]["aux_weight"]: r for r in aux_rows()}
    cpu = "; at `hamt-small`'s, +21 % (docs/quality-notes.md §6)"
    if not ({0, 0.1} <= rows.keys() and all("memory_fidelity" in rows[w]["test"] for w in (0, 0.1))):
        return "at `hamt-100m`'s scale not measured yet" + cpu
    off, on = rows[0]["test"], rows[0.1]["test"]
    return (f"fidelity {off['memory_fidelity']:.3f} → {on['memory_fidelity']:.3f} with the loss (weight 0.1) "
            f"(+{100 * (on['memory_fidelity'] / off['memory_fidelity'] - 1):.0f} %), at test perplexity "
            f"{off['perplexity']:.2f} → {on['perplexity']:.2f} and slot use {100 * off['slot_utilisation']:.0f} → "
            f"{100 * on['slot_utilisation']:.0f} % (`hamt-100m`, WikiText-2, 20 M tokens; {rows[0]['device']}, "
            f"{rows[0]['date'][:10]})" + cpu)


def _hamt_measured() -> str | None:
    """The holographic layer's decoding state and speed against attention, from the committed
    decode-memory and mixer benchmarks (their newest GPU runs)."""
    got = []
    dec = _newest("decode_memory-gpu.json")
    rows = {p["preset"]: p for p in dec["figures"]} if dec else {}
    holo = next((p for p in rows.values() if p.get("mixer") == "holographic"), None)
    if holo is not None:
        ok = [r for r in holo["contexts"] if "error" not in r]
        states = sorted({round(r["state_mib"], 2) for r in ok})
        span = f"{ok[0]['context']:,}–{ok[-1]['context']:,}"
        text = f"decoding state {' / '.join(f'{x:.2f}' for x in states)} MiB at every context {span}"
        att = next((p for p in rows.values() if p.get("mixer") == "attention"), None)
        if att is not None:
            a = [r for r in att["contexts"] if "error" not in r]
            text += f" (attention's KV cache {a[0]['state_mib']:.1f} → {a[-1]['state_mib']:.1f} MiB)"
        spread = holo.get("peak_spread", {})
        if spread.get("of") == "decode_peak_mib":
            text += f"; decode peak +{100 * spread['value']:.1f} % over that span (see performance-notes §9)"
        got.append(text + f" ({dec['device']}, {dec['date'][:10]})")
    # the newest mixers run with holographic rows (a run of a few lengths, e.g. mixers-glue-gpu.json,
    # supersedes the full sweep of mixers-gpu.json for the lengths it has)
    mix = _newest("mixers*-gpu.json",
                  lambda r: any(f.get("holographic_layer", {}).get("graph_ms") for f in r.get("figures", [])))
    figs = [f for f in (mix or {}).get("figures", []) if f.get("holographic_layer", {}).get("graph_ms")]
    if figs:
        got.append("layer forward+backward vs attention's (d=1024, bf16, CUDA graph): " + ", ".join(
            f"{f['attention_layer']['graph_ms'] / f['holographic_layer']['graph_ms']:.2f}× at N={f['N']:,}"
            for f in figs if f["N"] in (8192, 32768, 65536)) + f" ({mix['device']}, {mix['date'][:10]})")
    if not got:
        return None
    hamt = preset_quality("hamt-100m")
    if hamt and "slot_utilisation" in hamt.get("test", {}):
        got.append(f"slot use {100 * hamt['test']['slot_utilisation']:.0f} % at `hamt-100m` after training (below)")
    else:
        got.append("slot use not measured yet")
    return "; ".join(got)


def _newest(pattern: str, keep: Callable[[dict], bool] = lambda r: True) -> dict | None:
    runs = [r for r in _load(pattern) if keep(r)]
    return max(runs, key=lambda r: r["date"]) if runs else None


def _titled_table(pattern: str, markdown) -> Callable[[], str]:
    """The newest GPU result of ``pattern`` as its benchmark's Markdown, without the title line,
    with its device, torch, commit and date below."""
    def table() -> str:
        res = _newest(pattern)
        if res is None:
            return "Not measured yet."
        body = markdown(res).split("\n", 2)[2]
        return f"{body}\n\n{res['device']}, torch {res['torch']}, commit `{short_sha(res)}`, {res['date'][:10]}."
    return table


decode_table = _titled_table("decode-gpu.json", decode_markdown)
decode_memory_table = _titled_table("decode_memory-gpu.json", decode_memory_markdown)


def _startup(tuning: bool) -> str:
    res = _newest("startup-gpu.json")
    return startup_markdown(res, tuning=tuning) if res else "Not measured yet."


TABLES = {"presets-table": presets_table, "headline": headline, "claims-table": claims_table,
          "hamt-claims-table": hamt_claims_table,
          "quality-table": quality_table, "ablation-table": ablation_table, "memory-table": memory_table,
          "mixers-table": mixers_table, "throughput-table": _throughput("train_throughput-gpu.json"),
          "throughput-compiled-table": _throughput("train_throughput-compile-reduce-overhead-gpu.json"),
          "throughput-graph-table": _throughput("train_throughput-compile-default-cudagraph-gpu.json"),
          "throughput-eager-graph-table": _throughput("train_throughput-cudagraph-gpu.json"),
          "throughput-standard-graph-table": _throughput("train_throughput-cudagraph-h200.json"),
          "throughput-graph-repeats-table": _throughput("train_throughput-compile-default-cudagraph-x3-gpu.json"),
          "lowrank-ffn-table": lowrank_ffn_table, "decode-table": decode_table,
          "decode-memory-table": decode_memory_table,
          "startup-tuning-table": lambda: _startup(True), "equal-memory-peaks-table": equal_memory_peaks_table}
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
