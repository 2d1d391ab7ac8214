"""README / docs tables from `muse compare` and `muse ablate` results (no torch import).

The committed comparisons live in ``benchmarks/results/<experiment>/results.json``, written by
``muse compare @configs/experiments/<command>-<experiment>.args --out benchmarks/results/<experiment>``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from muse.compare.report import BEYOND, PROVISIONAL, WIN, frontier_text, speed_device

RESULTS = Path(__file__).resolve().parent / "results"
PARETO = "compare-wikitext2-pareto"
TIED = "compare-wikitext2-tied"  # the candidate for `standard` against dense models with tied heads
ABLATION = "ablate-standard-components"
EQUAL_MEMORY = "compare-wikitext2-equal-memory"  # every memory feature for every model (lr sweep owed)
AUX = "ablate-hamt-aux"  # hamt-100m with and without the auxiliary loss
HAMT_KNOBS = "compare-tiny-hamt-knobs-cpu"  # hamt-small's knobs, one at a time, on CPUs


def load(name: str) -> dict | None:
    path = RESULTS / name / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def selected(res: dict) -> list[dict]:
    """The run chosen for each model (with an lr sweep, its best-validation run), labelled by the
    model (``group``); the run's own label, which names its lr, is kept as ``run_label``."""
    chosen = set(res["selected"])
    return [{**r, "label": r["group"], "run_label": r["label"]} for r in res["rows"] if r["label"] in chosen]



def by_label(res: dict | None) -> dict[str, dict]:
    return {r["label"]: r for r in selected(res)} if res else {}


def ppl(r: dict) -> float:
    v = (r.get("test") or {}).get("perplexity")
    return v if isinstance(v, (int, float)) and math.isfinite(v) else math.inf


def human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return str(int(n))


def recipe_note(res: dict) -> str:
    rc, rows = res["recipe"], selected(res)
    sets = ", ".join(f"`{k}={v}`" for k, v in rc.get("set", {}).items())
    borrowed = [r["tokens_per_s_from"] for r in rows if r.get("tokens_per_s_from")]
    devices = ", ".join(sorted({r["device"] for r in rows} | {b["device"] for b in borrowed if b.get("device")}))
    shas = ", ".join(sorted({r["git_sha"][:7] for r in rows} | {b["git_sha"][:7] for b in borrowed if b.get("git_sha")}))
    dates = ", ".join(sorted({r["date"][:10] for r in rows}))
    estimated = {r.get("peak_memory_method") for r in rows} == {"estimate"}
    peak = "estimate (fake tensors, a CUDA step modelled) of the " if estimated else ""
    lrs = ", ".join(f"{x:g}" for x in rc["lrs"])
    lrs = f"lr {lrs}" if len(rc["lrs"]) == 1 else f"each model at lr {lrs}, its best by validation loss shown"
    shared = (" Runs trained side by side on one GPU (`muse compare --jobs`) show the tokens/s of the same model's "
              "run alone at another learning rate." if borrowed else "")
    return (f"WikiText-2, byte-level BPE {rows[0].get('vocab_size', '?'):,} trained on the train split; "
            f"B={rc['batch_size']}, N={', '.join(map(str, rc['seq_lens']))}, {human(rc['max_tokens'])} tokens per "
            f"model on identical batches, {lrs} (warm-up {rc['warmup_steps']}, "
            f"cosine), {sets}; test = the best-validation checkpoint on the whole test split. Peak = `muse memory`'s "
            f"{peak}full step at that B and N with that recipe.{shared} {devices}; commit {shas}; {dates}.")


def _row_cells(r: dict, usual_device: str | None = None) -> str:
    """Parameters, peak, tokens/s, test and word perplexity; tokens/s names its device where it is
    not ``usual_device`` (the comparison's most common one): speeds compare within one device."""
    t = r.get("test") or {}
    peak, speed, dev = r.get("peak_memory_mib"), r.get("tokens_per_s_median"), speed_device(r)
    where = f" ({dev.removeprefix('NVIDIA ')})" if usual_device and dev and dev != usual_device else ""
    return (f"{human(r['actual_params'])} | {f'{peak:,.0f} MiB' if peak else '–'} | "
            f"{f'{speed:,.0f}{where}' if speed else '–'} | {t.get('perplexity', math.nan):.2f} | "
            f"{t.get('word_perplexity', math.nan):.2f}")


def _usual_device(rows: list[dict]) -> str | None:
    devices = [speed_device(r) for r in rows]
    return max(set(devices), key=devices.count) if len(set(devices)) > 1 else None


def pareto_table() -> str:
    res = load(PARETO)
    if res is None:
        return "_Not measured yet: `muse compare @configs/experiments/compare-wikitext2-pareto.args` on a GPU._"
    rows = sorted(selected(res), key=lambda r: (r["status"] != "complete", ppl(r)))
    apart = any(r["status"] != "complete" for r in rows)  # a status column only where one stopped short
    sweep = len(res["recipe"]["lrs"]) > 1  # a column for each model's best learning rate
    lines = ["| model | kind |" + (" best lr |" if sweep else "") + " parameters | full-step peak | train tokens/s "
             "| test ppl | word ppl |" + (" status |" if apart else ""),
             "|---|---|" + ("---:|" if sweep else "") + "---:|---:|---:|---:|---:|" + ("---|" if apart else "")]
    usual = _usual_device(rows)
    for r in rows:
        status = "" if r["status"] == "complete" else f"**{r['status']}**: {r['status_detail']}"
        lr = f" {r['lr']:g} |" if sweep else ""
        lines.append(f"| `{r['label']}` | {r['family']} |{lr} {_row_cells(r, usual)} |" + (f" {status} |" if apart else ""))
    not_run = f" Not run yet: {', '.join(f'`{x}`' for x in res['not_run'])}." if res.get("not_run") else ""
    lines += ["", res["pareto"]["summary"] + "." + not_run, "", recipe_note(res), "",
              f"![test perplexity against full-step peak memory](../benchmarks/results/{PARETO}/ppl_vs_memory.png)"]
    return "\n".join(lines)


def ablation_table() -> str:
    res = load(ABLATION)
    if res is None:
        return "_Not measured yet: `muse ablate @configs/experiments/ablate-standard-components.args` on a GPU._"
    rows = by_label(res)
    base_label, base = next(iter(rows.items()))
    lines = [f"| model | parameters | full-step peak | train tokens/s | test ppl | test ppl vs `{base_label}` |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, r in rows.items():
        rel = ppl(r) / ppl(base) if math.isfinite(ppl(base)) else math.nan
        note = "" if r["status"] == "complete" else f" (**{r['status']}**)"
        lines.append(f"| `{label}`{note} | {_row_cells(r).rsplit(' | ', 1)[0]} | ×{rel:.3f} |")
    lines += ["", recipe_note(res)]
    return "\n".join(lines)


def short(name: str) -> str:
    """A derived dense model's name without the preset and section names: `baseline+d_model=384+
    n_heads=6+n_layers=4+head.kind=tied` -> `d_model=384, h=6, L=4, tied head`."""
    if not name.startswith("baseline+"):
        return f"`{name}`"
    return "`" + (name.removeprefix("baseline+").replace("+n_heads=", ", h=").replace("+n_layers=", ", L=")
                  .replace("+head.kind=tied", ", tied head")) + "`"


def verdict_words(verdict: str) -> str:
    if verdict.startswith(WIN):
        words = "**MUSE wins**"
    elif verdict.startswith(BEYOND):
        words = "beyond the dense grid: not a win"
    else:
        words = verdict
    return words + (" (provisional)" if verdict.endswith(PROVISIONAL) else "")


def _recipe_words(res: dict) -> str:
    rc, s = res["recipe"], res["recipe"].get("set", {})
    opt = {"adamw": "AdamW", "adamw8bit": "8-bit AdamW"}.get(s.get("train.optimizer"), s.get("train.optimizer", "?"))
    lrs = rc["lrs"]
    lr = f"lr {lrs[0]:g}" if len(lrs) == 1 else "best of lr " + "/".join(f"{x:g}" for x in lrs)
    return (f"{s.get('train.precision', '?')} autocast, {opt}, "
            f"{'checkpointing' if s.get('model.checkpointing') else 'no checkpointing'}, {lr}")


# (experiment, what its dense side is): the comparisons the README's verdict table is made of
VERDICT_SOURCES = ((PARETO, "dense models"), (TIED, "dense models with tied heads"),
                   (EQUAL_MEMORY, "dense models, every memory feature for every model"))


def verdict_table(links: str = "benchmarks/results/") -> str:
    """Each MUSE model of the WikiText-2 comparisons beside the best dense model within its
    full-step peak, and the verdict there (``report.pareto``'s); ``links``: the path from the page
    to the result folders."""
    lines = ["| comparison | MUSE model | its peak | test ppl | best dense model within that peak | its peak | test ppl "
             "| verdict |", "|---|---|---:|---:|---|---:|---:|---|"]
    for name, against in VERDICT_SOURCES:
        res = load(name)
        if res is None:
            continue
        how = f"[{against}]({links}{name}/results.md); {_recipe_words(res)}"
        for i, v in enumerate(res["pareto"]["budgets"]):
            how = how if i == 0 else ""  # once per comparison
            dense = ("none trained" if v["dense"] is None else
                     f"{short(v['dense_model'])} | {v['dense_peak_mib']:,.0f} MiB | {v['dense_perplexity']:.2f}")
            lines.append(f"| {how} | {short(v['muse_model'])} | {v['budget_mib']:,.0f} MiB | {v['muse_perplexity']:.2f} | "
                         + (dense if v["dense"] else f"{dense} | – | –") + f" | {verdict_words(v['verdict'])} |")
    return "\n".join(lines)


def frontier_sentence(name: str) -> str:
    """Where in memory each side leads in comparison ``name``: the best MUSE model against the best
    dense model within every memory level (``report.frontier``), as spans of MiB."""
    res = load(name)
    if res is None:
        return ""
    text = frontier_text(res["pareto"].get("frontier", []), strong="**")
    return f"- `{name}`: {text}." if text else ""


def quality_headline() -> str | None:
    """The README's answer on quality: `standard` against `baseline` at equal tokens, then the
    verdict table at equal memory and what is still owed."""
    res = load(PARETO)
    rows = by_label(res)
    if res is None:
        return _legacy_headline()
    if not {"baseline", "standard"} <= rows.keys():
        return None
    b, s = rows["baseline"], rows["standard"]
    text = (f"**Quality.** On WikiText-2, each trained on the same {human(res['recipe']['max_tokens'])} tokens with one "
            f"recipe, `standard` has {b['actual_params'] / s['actual_params']:.1f}× fewer parameters than the dense "
            f"`baseline` of the same shape and **×{ppl(s) / ppl(b):.2f} its test perplexity** ({ppl(s):.2f} against "
            f"{ppl(b):.2f}). At equal memory (B=32, N=512; full-step peaks; test perplexity of the best-validation "
            f"checkpoint):\n\n" + verdict_table() + "\n\n")
    levels = [x for x in (frontier_sentence(PARETO), frontier_sentence(EQUAL_MEMORY)) if x]
    if levels:
        text += "At every memory level, the best MUSE model against the best dense model within it:\n\n"
        text += "\n".join(levels) + "\n\n"
    owed = []
    if res.get("not_run"):
        owed.append(f"in `{PARETO}`, {', '.join(f'`{x}`' for x in res['not_run'])}")
    eqm = load(EQUAL_MEMORY)
    if eqm is not None:
        total = len(eqm["rows"]) + len(eqm.get("not_run", []))
        fits = [f for v in eqm["pareto"]["budgets"] for f in _owed_fits(eqm, v["budget_mib"])]
        n = len(eqm["recipe"]["lrs"])
        owed.append(f"in `{EQUAL_MEMORY}`, {total - len(eqm['rows'])} of its {total} runs"
                    + (f", {sum(n - k for _, _, k in set(fits))} of them of dense models that fit in a MUSE "
                       f"model's memory there ({', '.join(short(m) for m, _, _ in sorted(set(fits)))}; "
                       f"docs/quality-notes.md §5)" if fits else ""))
    if owed:
        text += "Not trained yet: " + "; ".join(owed) + ". "
    return text + "The comparisons in full: below."


def equal_memory_peaks_table() -> str:
    """The equal-memory recipe's peaks (`muse compare --memory-only`), before its training runs."""
    path = RESULTS / EQUAL_MEMORY / "memory.json"
    if not path.exists():
        return "_Not measured yet: `muse compare @configs/experiments/compare-wikitext2-equal-memory.args --memory-only`._"
    res = json.loads(path.read_text())
    rows = sorted(res["rows"], key=lambda r: r["peak_memory_mib"] or math.inf)
    lines = ["| model | kind | full-step peak |", "|---|---|---:|"]
    lines += [f"| `{r['model']}` | {r['family']} | {r['peak_memory_mib']:,.1f} MiB ({r['peak_memory_method']}) |"
              for r in rows]
    r0, rc = rows[0], res["recipe"]
    sets = ", ".join(f"`{k}={v}`" for k, v in rc.get("set", {}).items())
    lines += ["", f"B={rc['batch_size']}, N={', '.join(map(str, rc['seq_lens']))}, {sets}; `{res['command']}`; "
                  f"{r0['device']}, torch {r0['torch']}, commit `{r0['git_sha'][:7]}`, {r0['date'][:10]}."]
    return "\n".join(lines)


def lr_groups(res: dict) -> dict[str, dict[float, dict]]:
    """{model: {learning rate: row}} of a comparison's runs."""
    groups: dict[str, dict[float, dict]] = {}
    for r in res["rows"]:
        groups.setdefault(r["group"], {})[r["lr"]] = r
    return groups


def val_loss_cells(runs: dict[float, dict], pick: dict, lrs: list[float]) -> list[str]:
    """One model's best validation loss at each learning rate of the sweep, the chosen run's bold."""
    return [("–" if (r := runs.get(x)) is None else
             (f"**{r['best_val_loss']:.4f}**" if r is pick else f"{r['best_val_loss']:.4f}")) for x in lrs]


def _owed_fits(res: dict, budget_mib: float) -> list[tuple[str, float, int]]:
    """Dense models of the equal-memory grid whose measured peak (``memory.json``) fits in
    ``budget_mib`` and whose learning-rate sweep is not complete: (model, peak MiB, runs done)."""
    path = RESULTS / EQUAL_MEMORY / "memory.json"
    done = {g: len(runs) for g, runs in lr_groups(res).items()}
    lrs = len(res["recipe"]["lrs"])
    peaks = json.loads(path.read_text())["rows"] if path.exists() else []
    return sorted(((r["model"], r["peak_memory_mib"], done.get(r["model"], 0)) for r in peaks
                   if r["family"] == "dense" and done.get(r["model"], 0) < lrs
                   and (r["peak_memory_mib"] or math.inf) <= budget_mib), key=lambda x: -x[1])


def _owed_text(res: dict, m: dict) -> str:
    fits = _owed_fits(res, m["peak_memory_mib"])
    if not fits:
        return ""
    n = len(res["recipe"]["lrs"])
    return (f"Dense models that fit in `{m['group']}`'s {m['peak_memory_mib']:,.0f} MiB with learning rates not "
            f"trained yet: " + ", ".join(f"`{g}` ({p:,.0f} MiB, {k} of {n})" for g, p, k in fits) + ".")


def equal_memory_table() -> str:
    """The equal-memory sweep so far: every trained model with its validation loss at each
    learning rate, the test perplexity of its best-validation run, and the dense models that fit
    in the best MUSE model's memory but are not trained yet."""
    res = load(EQUAL_MEMORY)
    if res is None:
        return "_Not run yet: `muse compare @configs/experiments/compare-wikitext2-equal-memory.args` on a GPU._"
    lrs, chosen = res["recipe"]["lrs"], set(res["selected"])
    lines = ["| model | kind | full-step peak | " + " | ".join(f"val loss, lr {x:g}" for x in lrs) + " | test ppl |",
             "|---|---|---:|" + "---:|" * (len(lrs) + 1)]
    best = {}
    for group, runs in sorted(lr_groups(res).items(), key=lambda g: min(r["peak_memory_mib"] or math.inf
                                                                                      for r in g[1].values())):
        pick = next(r for r in runs.values() if r["label"] in chosen)
        best[group] = pick
        cells = val_loss_cells(runs, pick, lrs)
        lines.append(f"| `{group}` | {pick['family']} | {pick['peak_memory_mib']:,.1f} MiB | " + " | ".join(cells)
                     + f" | {ppl(pick):.2f} |")
    total = len(res["rows"]) + len(res.get("not_run", []))
    lines += ["", f"{len(res['rows'])} of {total} runs trained. {res['pareto']['summary']}."]
    muse = [r for r in best.values() if r["family"] == "muse" and r["status"] == "complete"]
    for m in sorted(muse, key=ppl)[:1]:
        lines[-1] = " ".join(x for x in (lines[-1], _owed_text(res, m)) if x)
    lines += ["", recipe_note(res)]
    return "\n".join(lines)


def hamt_knobs_table() -> str:
    """HAMT's knobs at CPU scale: each model's validation loss at every learning rate, the test
    perplexity of its best-validation run against `hamt-small`'s, and the memory statistics
    `muse eval` reports for it (fidelity, slot use, effective slots). No peak column: the reused
    rows' estimates come from an older estimate than the new rows'."""
    res = load(HAMT_KNOBS)
    if res is None:
        return f"_Not run yet: `muse compare @configs/experiments/{HAMT_KNOBS}.args`._"
    lrs, chosen = res["recipe"]["lrs"], set(res["selected"])
    groups = lr_groups(res)
    picks = {g: next(r for r in runs.values() if r["label"] in chosen) for g, runs in groups.items()}
    ref = ppl(picks["hamt-small"]) if "hamt-small" in picks else math.nan
    lines = ["| model | " + " | ".join(f"val loss, lr {x:g}" for x in lrs) + " | test ppl | vs `hamt-small` "
             "| fidelity | slot use | effective slots |",
             "|---|" + "---:|" * (len(lrs) + 5)]
    for group, pick in sorted(picks.items(), key=lambda g: ppl(g[1])):
        runs, t = groups[group], pick.get("test") or {}
        cells = val_loss_cells(runs, pick, lrs)
        slots = pick["config"]["model"]["mixer"]["holographic"]["num_slots"]
        stats = (f"{t['memory_fidelity']:.3f} | {100 * t['slot_utilisation']:.0f} % | "
                 f"{t['effective_slots']:.2f} of {slots}" if "memory_fidelity" in t else "– | – | –")
        name = (f"`{group.removeprefix('hamt-small+').replace('mixer.holographic.', '').replace('+', ', ')}`"
                if group.startswith("hamt-small") else f"dense {short(group)}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ppl(pick):.2f} | ×{ppl(pick) / ref:.3f} | {stats} |")
    r0 = res["rows"][0]
    lines += ["", f"{len(res['rows'])} runs; " + recipe_note(res).split(" Peak = ")[0] + f" {r0['device']}, torch "
              f"{r0['torch']}; commit " + ", ".join(sorted({r["git_sha"][:7] for r in res["rows"]})) + "; "
              + ", ".join(sorted({r["date"][:10] for r in res["rows"]})) + "."]
    return "\n".join(lines)


def aux_rows() -> list[dict]:
    res = load(AUX)
    return [r for r in selected(res) if r["status"] == "complete"] if res else []


def preset_quality(name: str) -> dict | None:
    return by_label(load(PARETO)).get(name)


def equal_memory_cells() -> dict[str, str]:
    """The presets table's equal-memory cells, by MUSE preset: the best dense model of the Pareto
    comparison within the preset's B=32 peak, and the verdict there (dense presets have none)."""
    cells = {}
    for v in ((load(PARETO) or {}).get("pareto", {}).get("budgets", [])):
        if v["dense"] is None:
            cells[v["muse_model"]] = f"none fits in {v['budget_mib']:,.0f} MiB"
            continue
        cells[v["muse_model"]] = (f"{short(v['dense_model'])}: {v['dense_perplexity']:.2f} at {v['dense_peak_mib']:,.0f} of "
                            f"{v['budget_mib']:,.0f} MiB ({v['verdict']})")
    return cells


# ----------------------------------------------------------------------------- legacy runs
# Before `muse compare`, benchmarks/train_eval.py (since replaced by it) wrote one
# train_eval-PRESET-gpu.json per preset; they are shown until the comparison has been run.
LEGACY = "train_eval-*-gpu.json"
LEGACY_HOW = "`benchmarks/train_eval.py` (since replaced by `muse compare`)"


def _legacy() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob(LEGACY))]


def quality() -> tuple[dict[str, dict], str, str]:
    """({preset: row with test, tokens_per_s_median, actual_params, tokens_seen}, a footnote, how
    it was measured), from the Pareto comparison, else the legacy runs."""
    res = load(PARETO)
    if res is not None:
        from muse.config import list_presets

        presets = set(list_presets())
        rows = {k: v for k, v in by_label(res).items() if k in presets and v["status"] == "complete"}
        return rows, "WikiText-2, " + recipe_note(res).split("; ", 1)[1] + " See the comparison below.", "`muse compare`"
    runs = _legacy()
    rows = {r["preset"]: r["figures"] for r in runs}
    if not runs:
        return {}, "", LEGACY_HOW
    r = runs[0]
    return rows, (f"WikiText-2, {human(r['figures']['tokens_seen'])} training tokens per model on identical batches "
                  f"({LEGACY_HOW}; {r['device']}, torch {r['torch']}, commit `{r['git_sha'][:7]}`, {r['date'][:10]}): "
                  f"see the quality table below."), LEGACY_HOW


def quality_table() -> str:
    if load(PARETO) is not None:
        return pareto_table()
    runs = _legacy()
    if not runs:
        return pareto_table()
    lines = [
        "| preset | actual params | train tokens | test loss | test ppl | word ppl | bits/byte "
        "| train tokens/s (median) | peak train memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        f, t = r["figures"], r["figures"]["test"]
        lines.append(
            f"| `{r['preset']}` | {human(f['actual_params'])} | {human(f['tokens_seen'])} | {t['loss']:.3f} "
            f"| {t['perplexity']:.2f} | {t['word_perplexity']:.2f} | {t['bits_per_byte']:.4f} "
            f"| {f['tokens_per_s_median']:,.0f} | {f['peak_train_memory_mib']:,.0f} MiB |"
        )
    r, c = runs[0], runs[0]["config"]
    lines += ["", (
        f"WikiText-2 (tokenized files), byte-level BPE {c['model']['vocab_size']:,} trained on the train split; "
        f"B={c['train']['batch_size']}, N={c['train']['seq_len']}, {c['train']['precision']} autocast, "
        f"AdamW lr {c['train']['lr']:g} (warm-up {c['train']['warmup_steps']}, cosine), dropout "
        f"{c['model']['dropout']:g}, identical batches; test = best-validation checkpoint, whole test split. "
        f"{r['device']}, torch {r['torch']}, commit `{r['git_sha'][:7]}`, {r['date'][:10]} ({LEGACY_HOW}). "
        "The `standard` row ran the mixer on its plain PyTorch scan, before the GPU kernels existed. The "
        "comparison against smaller dense models (`muse compare @configs/experiments/compare-wikitext2-pareto.args`) "
        "has not been run on a GPU yet.")]
    return "\n".join(lines)


def _legacy_headline() -> str | None:
    q = {r["preset"]: r["figures"] for r in _legacy()}
    if not {"baseline", "standard"} <= q.keys():
        return None
    b, s = q["baseline"], q["standard"]
    bp, sp = b["test"]["perplexity"], s["test"]["perplexity"]
    return (f"**Quality.** On WikiText-2, each trained on the same {human(s['tokens_seen'])} tokens, `standard` has "
            f"{b['actual_params'] / s['actual_params']:.1f}× fewer parameters than the dense `baseline` of the same "
            f"shape and **×{sp / bp:.2f} its test perplexity** ({sp:.2f} against {bp:.2f}). By the one quality "
            f"comparison measured so far, the dense model is the better language model for the same training "
            f"tokens; MUSE has not yet been compared with smaller dense models at equal memory on a GPU.")
