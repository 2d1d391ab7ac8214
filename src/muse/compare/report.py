"""results.json / results.csv / results.md of a comparison, and the equal-memory verdict.

Ranking rules (DESIGN.md §2): only *complete* runs (the whole token or time budget) are ranked
against each other; incomplete and failed runs are listed apart with what stopped them. With a
learning-rate sweep, each model is represented by its run with the lowest best validation loss
(the test split never chooses). The Pareto verdict compares, for each compressed (MUSE) model,
the best dense GPT-2-style model whose full-step peak fits in the same memory.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

from muse.compare.run import ppl, write_json, write_text

CSV_COLUMNS = (
    "label", "group", "family", "status", "status_detail", "selected", "seq_len", "lr", "batch_size", "precision",
    "optimizer", "checkpointing", "actual_params", "dense_equivalent_params", "peak_memory_mib",
    "peak_memory_method", "tokens_per_s_median", "tokens_seen", "steps", "train_seconds", "best_val_loss",
    "test_loss", "test_perplexity", "test_word_perplexity", "test_bits_per_byte", "device", "git_sha", "date",
)


def select(rows: list[dict]) -> list[dict]:
    """One row per group (model @ length): its complete run with the lowest best validation loss,
    else its least bad run. Order: the groups' order of appearance."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)

    def val(r):
        v = r.get("best_val_loss")
        return v if isinstance(v, (int, float)) and math.isfinite(v) else math.inf

    out = []
    for runs in groups.values():
        complete = [r for r in runs if r["status"] == "complete"]
        out.append(min(complete or runs, key=val))
    return out


def with_solo_speed(rows: list[dict]) -> list[dict]:
    """Rows whose run shared the device (``muse compare --jobs``: no tokens/s of their own) get the
    tokens/s of the same model's complete run alone at another learning rate, if there is one (the
    step does not depend on the learning rate), with ``tokens_per_s_from`` naming that run's lr,
    device and commit. Other rows are returned as they are."""
    alone = {}
    for r in rows:
        if r.get("tokens_per_s_median") is not None and not r.get("device_shared_by") and r["status"] == "complete":
            alone.setdefault(r["group"], r)
    out = []
    for r in rows:
        donor = alone.get(r["group"]) if r.get("device_shared_by") and r.get("tokens_per_s_median") is None else None
        out.append({**r, "tokens_per_s_median": donor["tokens_per_s_median"],
                    "tokens_per_s_from": {"lr": donor["lr"], "device": donor.get("device"),
                                                  "git_sha": donor.get("git_sha")}} if donor else r)
    return out


def speed_device(r: dict) -> str | None:
    """The device a row's tokens/s were measured on (another run's, see :func:`with_solo_speed`)."""
    return (r.get("tokens_per_s_from") or {}).get("device") or r.get("device")


def lr_at_edge(selected: list[dict], lrs: list[float]) -> dict[str, list[str]]:
    """With a sweep of three or more rates: the models whose chosen (complete) run is at the grid's
    largest or smallest rate, {"largest": [...], "smallest": [...]}; their best rate may lie beyond
    the grid, so a fairer sweep would extend it there."""
    if len(lrs) < 3:
        return {"largest": [], "smallest": []}
    done = [r for r in selected if r["status"] == "complete"]
    return {"largest": [r["group"] for r in done if r["lr"] == max(lrs)],
            "smallest": [r["group"] for r in done if r["lr"] == min(lrs)]}


def lr_edge_text(edge: dict[str, list[str]], models: int) -> str:
    """``lr_at_edge`` as a sentence ('' where no model chose an edge)."""
    parts = [f"{len(g)} of {models} models at the {side} rate tried ({', '.join(f'`{x}`' for x in g)})"
             for side, g in edge.items() if g]
    return ("Chose a rate at the edge of the grid: " + "; ".join(parts)
            + ". Their best rate may lie beyond it: a sweep extended there would tell.") if parts else ""


WIN = "MUSE dominates"
BEYOND = "beyond the dense grid"
OPEN = "open: dense runs not trained yet"
PROVISIONAL = " (provisional)"


def _owed(untrained_dense: Sequence[float | None], budget_mib: float) -> int:
    """How many untrained dense runs may fit in ``budget_mib``: those whose peak is not known, or
    is known to fit."""
    return sum(p is None or p <= budget_mib for p in untrained_dense)


def pareto(selected: list[dict], untrained_dense: Sequence[float | None] = ()) -> dict:
    """For every complete MUSE row: the best complete dense row whose peak fits in its memory,
    and whether MUSE's test perplexity is lower there (MUSE *dominates at budget M*).

    A win counts only where the dense grid reaches the budget: where every dense model of the
    grid fits in MUSE's memory, a dense model as large as that memory allows was never trained,
    so a lower perplexity there is "beyond the dense grid", not a win (a loss is a loss anywhere:
    a dense model in less memory did better). ``untrained_dense``: the peaks of the dense runs of
    the comparison not trained yet (``--only``), None where not measured (``--memory-only``). One
    that may fit in a budget may do better there, so at that budget "no dense model fits" is
    "open" and a win is provisional; one measured above it changes nothing."""
    ok = [r for r in selected if r["status"] == "complete" and r.get("peak_memory_mib") and ppl(r) < math.inf]
    dense = [r for r in ok if r["family"] == "dense"]
    out = []
    for m in sorted((r for r in ok if r["family"] == "muse"), key=lambda r: r["peak_memory_mib"]):
        fits = [d for d in dense if d["peak_memory_mib"] <= m["peak_memory_mib"]]
        best = min(fits, key=ppl) if fits else None
        owed = _owed(untrained_dense, m["peak_memory_mib"])
        if best is None:
            verdict = OPEN if owed else "no dense model fits"
        elif ppl(m) >= ppl(best):
            verdict = "dense wins"
        else:
            verdict = WIN if len(fits) < len(dense) else BEYOND
            verdict += PROVISIONAL if owed else ""
        out.append({  # labels name the runs (with their lr in a sweep), models the groups
            "muse": m["label"], "muse_model": m["group"], "budget_mib": m["peak_memory_mib"], "muse_perplexity": ppl(m),
            "dense": best["label"] if best else None, "dense_model": best["group"] if best else None,
            "dense_perplexity": ppl(best) if best else None,
            "dense_peak_mib": best["peak_memory_mib"] if best else None, "verdict": verdict,
        })
    wins = sum(v["verdict"].startswith(WIN) for v in out)
    losses = sum(v["verdict"] == "dense wins" for v in out)
    alone = sum(v["verdict"] == "no dense model fits" for v in out)
    beyond = sum(v["verdict"].startswith(BEYOND) for v in out)
    opened = sum(v["verdict"] == OPEN for v in out)
    if not out:
        summary = "no complete MUSE row with a peak memory: no equal-memory verdict"
    else:
        summary = (f"MUSE beats the best dense model that fits in the same memory at {wins} of {len(out)} budgets, "
                   f"loses at {losses}" + (f", and no dense model fits at {alone}" if alone else "")
                   + (f"; at {beyond} MUSE is ahead of every dense model of the grid, all of which use less "
                      f"memory (no dense model that large was trained: not a win)" if beyond else "")
                   + (f"; open at {opened}: no trained dense model fits there yet" if opened else "")
                   + _owed_text(untrained_dense, max(v["budget_mib"] for v in out)))
    methods = {r.get("peak_memory_method") for r in ok}
    return {"budgets": out, "summary": summary, "memory": "measured" if methods == {"measured"} else "estimate",
            "frontier": frontier(selected, untrained_dense)}


def _owed_text(untrained_dense: Sequence[float | None], top_mib: float) -> str:
    owed = _owed(untrained_dense, top_mib)
    above = len(untrained_dense) - owed
    text = (f"; provisional: {owed} dense run(s) of the comparison are not trained yet "
            f"(any of them may fit and do better)" if owed else "")
    return text + (f"; {above} dense run(s) not trained yet peak above every MUSE model" if above else "")


NO_MUSE = "no MUSE model fits"


def frontier(selected: list[dict], untrained_dense: Sequence[float | None] = ()) -> list[dict]:
    """The question at every memory level of the grid: the best MUSE model within that memory
    against the best dense model within it (``pareto`` asks it of each MUSE model at its own peak).

    The levels are the peaks of the complete MUSE and dense runs and the measured peaks of the
    untrained dense runs; neighbouring levels with the same two models and verdict are one range,
    [``from_mib``, ``to_mib``) (``to_mib`` None: upwards).
    From the largest dense model's peak up a MUSE lead is "beyond the dense grid" (no dense model
    larger was trained), and while an untrained dense run may fit in a level (``pareto``), a lead
    there is provisional."""
    ok = [r for r in selected if r["status"] == "complete" and r.get("peak_memory_mib") and ppl(r) < math.inf]
    muse = [r for r in ok if r["family"] == "muse"]
    dense = [r for r in ok if r["family"] == "dense"]
    top = max((r["peak_memory_mib"] for r in dense), default=0.0)
    ranges: list[dict] = []
    # an untrained dense run's measured peak is a level too: from there up, it may fit
    known = {p for p in untrained_dense if p is not None} if muse or dense else set()
    for level in sorted({r["peak_memory_mib"] for r in muse + dense} | known):
        m = min((r for r in muse if r["peak_memory_mib"] <= level), key=ppl, default=None)
        d = min((r for r in dense if r["peak_memory_mib"] <= level), key=ppl, default=None)
        if m is None:
            verdict = NO_MUSE
        elif d is None:
            verdict = OPEN if _owed(untrained_dense, level) else "no dense model fits"
        elif ppl(m) >= ppl(d):
            verdict = "dense wins"
        else:
            # from the largest dense model's peak up, a budget has no dense model of its size
            verdict = (WIN if level < top else BEYOND) + (PROVISIONAL if _owed(untrained_dense, level) else "")
        cell = {"muse": m["label"] if m else None, "muse_model": m["group"] if m else None,
                "muse_perplexity": ppl(m) if m else None, "muse_peak_mib": m["peak_memory_mib"] if m else None,
                "dense": d["label"] if d else None, "dense_model": d["group"] if d else None,
                "dense_perplexity": ppl(d) if d else None,
                "dense_peak_mib": d["peak_memory_mib"] if d else None, "verdict": verdict}
        if ranges and all(ranges[-1][k] == v for k, v in cell.items()):
            continue
        if ranges:
            ranges[-1]["to_mib"] = level
        ranges.append({"from_mib": level, "to_mib": None, **cell})
    return ranges


FRONTIER_WORDS = {NO_MUSE: "no MUSE model", "dense wins": "a dense model ahead", OPEN: "open (no dense model trained)",
                  WIN: "MUSE ahead", BEYOND: "beyond the largest dense model: MUSE ahead, not a win"}


def frontier_text(ranges: list[dict], strong: str = "") -> str:
    """``frontier``'s ranges as spans of MiB where one verdict holds, e.g. "485–1,537 MiB: no MUSE
    model; 1,537–1,683 MiB: a dense model ahead; ..."; ``strong`` wraps "MUSE ahead" (Markdown)."""
    spans: list[list] = []  # [words, from, to]
    for f in ranges:
        words = FRONTIER_WORDS.get(f["verdict"].removesuffix(PROVISIONAL), f["verdict"])
        words = f"{strong}{words}{strong}" if f["verdict"].startswith(WIN) else words
        words += " (provisional)" if f["verdict"].endswith(PROVISIONAL) else ""
        if spans and spans[-1][0] == words:
            spans[-1][2] = f["to_mib"]
        else:
            spans.append([words, f["from_mib"], f["to_mib"]])
    # a span narrower than the MiB it is printed in (e.g. 627.26–627.30) would read "627–627"
    spans = [x for x in spans if x[2] is None or f"{x[1]:,.0f}" != f"{x[2]:,.0f}"]
    return "; ".join((f"{lo:,.0f}–{hi:,.0f} MiB" if hi else f"from {lo:,.0f} MiB") + f": {w}" for w, lo, hi in spans)


def fmt(v, spec: str = ",.0f", none: str = "-") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, spec)


def _test(r: dict, key: str):
    return (r.get("test") or {}).get(key)


def csv_text(rows: list[dict], selected: list[dict]) -> str:
    chosen = {id(r) for r in selected}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in rows:
        flat = {**r, "selected": id(r) in chosen, **{f"test_{k}": _test(r, k) for k in
                                                     ("loss", "perplexity", "word_perplexity", "bits_per_byte")}}
        w.writerow([flat.get(c) for c in CSV_COLUMNS])
    return buf.getvalue()


def _table(rows: list[dict], mem_label: str) -> list[str]:
    lines = [
        f"| model | family | parameters | dense-equivalent | {mem_label} | tokens/s | test ppl | word ppl | bits/byte | tokens |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['family']} | {fmt(r.get('actual_params'))} | {fmt(r.get('dense_equivalent_params'))} "
            f"| {fmt(r.get('peak_memory_mib'), ',.1f')} | {_speed(r)} "
            f"| {fmt(_test(r, 'perplexity'), '.2f')} | {fmt(_test(r, 'word_perplexity'), '.2f')} "
            f"| {fmt(_test(r, 'bits_per_byte'), '.4f')} | {fmt(r.get('tokens_seen'))} |"
        )
    return lines


def _speed(r: dict) -> str:
    src = r.get("tokens_per_s_from")
    return fmt(r.get("tokens_per_s_median")) + (f" (lr {src['lr']:g} run)" if src else "")


def markdown(meta: dict, rows: list[dict], selected: list[dict], verdict: dict) -> str:
    complete = sorted((r for r in selected if r["status"] == "complete"), key=ppl)
    apart = [r for r in selected if r["status"] != "complete"]
    est = verdict["memory"] != "measured"
    mem = "full-step peak MiB" + (" (estimate)" if est else "")
    rc = meta["recipe"]
    budget = (f"{rc['max_tokens']:,} tokens" if rc.get("max_tokens") else f"{rc.get('max_minutes'):g} minutes")
    lines = [
        f"# {meta.get('title', 'muse compare')}",
        "",
        f"{meta['dataset']}, {rc['tokenizer']} tokenizer; B={rc['batch_size']}, N={', '.join(map(str, rc['seq_lens']))}, "
        f"{budget} per run, seed {rc['seed']}, lr {', '.join(f'{x:g}' for x in rc['lrs'])} "
        f"(warm-up {rc['warmup_steps']} steps, cosine to {rc['min_lr_ratio']:g}x), identical batches. "
        f"Each model trains with its own memory features (precision, optimizer, checkpointing) unless the command "
        f"set them for all" + (" (set for every model here: " + ", ".join(f"`{k}={v}`" for k, v in rc["set"].items())
                                + ")" if rc.get("set") else "") + "; the best-validation checkpoint is scored on the test split.",
        "",
        "## Ranked (complete runs, by test perplexity)",
        "",
        *_table(complete, mem),
        "",
    ]
    if apart:
        lines += ["## Not ranked: stopped before the budget or failed", "",
                  "| model | status | what happened |", "|---|---|---|"]
        lines += [f"| {r['label']} | {r['status']} | {r['status_detail']} |" for r in apart]
        lines += ["", *_table(apart, mem), ""]
    if meta.get("not_run"):
        lines += ["## Not run yet", "", "Part of this comparison, but not trained yet (`--only` left them out): "
                  + ", ".join(f"`{x}`" for x in meta["not_run"]) + ".", ""]
    if verdict["budgets"]:
        lines += ["## Equal memory: MUSE against the best dense model that fits", "", verdict["summary"] + ".", "",
                  "| MUSE model | its peak MiB | test ppl | best dense within that memory | its peak MiB | test ppl | verdict |",
                  "|---|---:|---:|---|---:|---:|---|"]
        for v in verdict["budgets"]:
            lines.append(
                f"| {v['muse']} | {fmt(v['budget_mib'], ',.1f')} | {fmt(v['muse_perplexity'], '.2f')} | "
                f"{v['dense'] or '-'} | {fmt(v['dense_peak_mib'], ',.1f')} | {fmt(v['dense_perplexity'], '.2f')} | "
                f"{v['verdict']} |"
            )
        lines.append("")
    if verdict.get("frontier"):
        lines += ["## Every memory level: the best MUSE model against the best dense model within it", "",
                  "| memory (MiB) | best MUSE model within | test ppl | best dense model within | test ppl | verdict |",
                  "|---|---|---:|---|---:|---|"]
        for f in verdict["frontier"]:
            span = f"{fmt(f['from_mib'], ',.1f')} – " + (fmt(f["to_mib"], ",.1f") if f["to_mib"] else "")
            lines.append(f"| {span} | {f['muse'] or '-'} | {fmt(f['muse_perplexity'], '.2f')} | {f['dense'] or '-'} | "
                         f"{fmt(f['dense_perplexity'], '.2f')} | {f['verdict']} |")
        lines.append("")
    if len(rc["lrs"]) > 1:
        lines += ["## Learning-rate sweep (best validation loss; the chosen run in bold)", "",
                  "| model | " + " | ".join(f"lr {x:g}" for x in rc["lrs"]) + " |",
                  "|---|" + "---:|" * len(rc["lrs"])]
        chosen = {id(r) for r in selected}
        for group in dict.fromkeys(r["group"] for r in rows):
            cells = []
            for lr in rc["lrs"]:
                r = next((x for x in rows if x["group"] == group and x["lr"] == lr), None)
                v = fmt(r.get("best_val_loss") if r else None, ".4f")
                v += "" if r is None or r["status"] == "complete" else f" ({r['status']})"
                cells.append(f"**{v}**" if r is not None and id(r) in chosen else v)
            lines.append(f"| {group} | " + " | ".join(cells) + " |")
        lines.append("")
        edge = lr_edge_text(lr_at_edge(selected, rc["lrs"]), len(selected))
        lines += [edge, ""] if edge else []
    devices = sorted({r.get("device", "?") for r in selected})
    shas = sorted({r.get("git_sha", "?")[:7] for r in selected})
    dates = sorted({r.get("date", "?")[:10] for r in selected})
    lines += [
        f"Device: {', '.join(devices)}; commit {', '.join(shas)}; {', '.join(dates)}; "
        f"torch {', '.join(sorted({r.get('torch', '?') for r in selected}))}. "
        f"Peak memory is `muse memory`'s full step at the comparison's B and N "
        + ("(an estimate: no CUDA device)." if est else "(measured, `torch.cuda.max_memory_allocated`).")
        + " Tokens/s is the median of the training run's logged windows after warm-up"
        + ("; a run trained beside others on the device (`--jobs`) shows the tokens/s of the same model's run "
           "alone at the learning rate named, or none" if any(r.get("device_shared_by") for r in selected) else "")
        + ".",
        "",
        f"Command that wrote these reports: `{meta.get('command', '')}`"
        + "".join(f"; trained by: `{c}`" for c in dict.fromkeys(r.get("command") for r in selected) if c),
        "",
    ]
    return "\n".join(lines)


def write_reports(out, meta: dict, rows: list[dict]) -> dict:
    """results.json, results.csv, results.md under ``out``; returns the results payload, whose rows
    are ``rows`` with their solo speeds filled in (:func:`with_solo_speed`)."""
    rows = with_solo_speed(rows)
    selected = select(rows)
    verdict = pareto(selected, untrained_dense=[d["peak_memory_mib"] for d in meta.get("not_run_dense", ())])
    chosen = {id(r) for r in selected}
    payload = {**meta, "rows": [{**r, "selected": id(r) in chosen} for r in rows],
               "selected": [r["label"] for r in selected], "pareto": verdict,
               "lr_at_edge": lr_at_edge(selected, meta["recipe"]["lrs"])}
    write_json(out / "results.json", payload)
    for name, text in (("results.csv", csv_text(rows, selected)), ("results.md", markdown(meta, rows, selected, verdict))):
        write_text(out / name, text)
    return payload
