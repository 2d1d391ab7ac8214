"""``muse compare`` and ``muse ablate``: models side by side under one recipe (DESIGN.md §1.9, §2).

- :mod:`muse.compare.spec`: model specs, the shared recipe, ablation grids (no torch);
- :mod:`muse.compare.run`: one run from memory measurement through training to test scores;
- :mod:`muse.compare.report`: results.json / .csv / .md, ranking and the equal-memory verdict;
- :mod:`muse.compare.plots`: the figures (matplotlib, optional).
"""

from __future__ import annotations

import sys

from muse.compare.spec import Recipe, Run, Spec, grid_specs, one_at_a_time, parse_grid, parse_spec, resolve

__all__ = ["Recipe", "Run", "Spec", "compare", "grid_specs", "measure_only", "one_at_a_time", "parse_grid",
           "parse_spec", "resolve"]


def _say(text: str) -> None:
    print(f"muse compare: {text}", flush=True)


def _summary(row: dict) -> str:
    from muse.compare.report import fmt

    t = row.get("test") or {}
    mem = row.get("peak_memory_mib")
    mem = f"{mem:,.1f} MiB {row['peak_memory_method']}" if mem is not None else "no peak"
    return (f"{row['status']} ({row['status_detail']}); test ppl {fmt(t.get('perplexity'), '.2f')}, "
            f"word ppl {fmt(t.get('word_perplexity'), '.2f')}; full-step peak {mem}; "
            f"{fmt(row.get('tokens_per_s_median'))} tok/s")


def compare(runs: list[Run], opts, meta: dict, plots: bool = True) -> dict:
    """Train and score every run not already in ``opts.out`` (resolved by :func:`resolve`),
    then write the reports and plots from all of them; returns results.json's payload."""
    from muse.compare.plots import available, write_plots
    from muse.compare.report import frontier_text, lr_edge_text, select, write_reports
    from muse.compare.run import family, load_row, planned_peak, row_path, selected_now, train_and_score, write_json

    from muse.model import build_model

    todo = [r for r in runs if load_row(opts.out, r) is None and selected_now(opts, r)]
    for run in todo:  # a model that cannot be built (e.g. a missing extra) fails before anything trains
        try:
            build_model(run.config, device="meta")
        except (ValueError, ImportError) as e:
            raise ValueError(f"model {run.label!r}: {e}") from None
    opts.out.mkdir(parents=True, exist_ok=True)
    if opts.jobs > 1 and len(todo) > 1:
        from muse.compare.jobs import run_workers

        _say(f"{len(todo)} runs to train with {opts.jobs} workers sharing the device (their tokens/s are "
             f"kept apart as shared)")
        run_workers(todo, opts)
    rows, not_run, not_run_dense = [], [], []
    for i, run in enumerate(runs, 1):
        head = f"[{i}/{len(runs)}] {run.label}"
        row = load_row(opts.out, run)
        if row is not None and not (opts.retry_failed and row["status"] == "failed"):
            # the same run, perhaps named otherwise by another command: reported under this one's name
            row = {**row, "label": run.label, "group": run.group, "spec_label": run.spec.label}
            _say(f"{head}: kept from an earlier invocation: {_summary(row)}")
        elif not selected_now(opts, run):
            _say(f"{head}: not run now (--only); left out of the reports")
            not_run.append(run.label)
            not_run_dense += [run] if family(run.config) == "dense" else []
            continue
        else:
            _say(f"{head}: measuring the step's memory, then training ({run.config.train.batch_size} x "
                 f"{run.seq_len} tokens per step, lr {run.lr:g})")
            row = train_and_score(run, opts)
            write_json(row_path(opts.out, run), row)
            _say(f"{head}: {_summary(row)}")
        rows.append(row)
    # an untrained dense run with its peak, which tells the budgets it could change: that of its
    # model's run at another rate (the rate changes none), else --memory-only's, else unknown
    trained = {r["group"]: r["peak_memory_mib"] for r in rows if r.get("peak_memory_mib")}
    not_run_dense = [{"label": run.label, "group": run.group,
                      "peak_memory_mib": trained.get(run.group) or planned_peak(opts.out, run)} for run in not_run_dense]
    if not rows:
        _say("no run is done yet: no reports written")
        return {"rows": [], "pareto": {"summary": "no runs"}}
    payload = write_reports(opts.out, {**meta, "not_run": not_run, "not_run_dense": not_run_dense}, rows)
    written = [opts.out / n for n in ("results.json", "results.csv", "results.md")]
    if plots and available():
        written += write_plots(opts.out, select(payload["rows"]), tuple(meta["recipe"]["seq_lens"]), meta.get("title", "compare"))
    elif plots:
        print("muse compare: matplotlib is not installed; plots skipped (pip install 'muse[plot]')", file=sys.stderr)
    _say(payload["pareto"]["summary"])
    if payload["pareto"]["frontier"]:
        _say("at every memory level, the best MUSE model against the best dense model within it: "
             + frontier_text(payload["pareto"]["frontier"]))
    if edge := lr_edge_text(payload["lr_at_edge"], len(payload["selected"])):
        _say(edge)
    _say("wrote " + ", ".join(str(p) for p in written))
    return payload


def measure_only(runs: list[Run], opts, meta: dict) -> dict:
    """Each model's full-step peak at the recipe's B and N with its memory features, without
    training (one measurement per model and length: the learning rate does not change it); for
    planning which models share a memory budget before spending the training time. Writes
    ``OUT/memory.json`` and prints the models from the smallest peak up."""
    from muse.compare.report import fmt
    from muse.compare.run import family, measure_memory, run_device, write_json
    from muse.config import to_dict
    from muse.runtime import environment_info

    firsts = {}
    for run in runs:
        firsts.setdefault(run.group, run)
    rows = []
    for i, (group, run) in enumerate(firsts.items(), 1):
        cfg = run.config
        device = run_device(opts, cfg)
        mem = measure_memory(cfg, str(device))
        rows.append({"model": group, "family": family(cfg), "seq_len": run.seq_len, "batch_size": cfg.train.batch_size,
                     "precision": cfg.train.precision, "optimizer": cfg.train.optimizer,
                     "checkpointing": cfg.model.checkpointing, **environment_info(device), **mem,
                     "config": to_dict(cfg)})  # what was measured, whatever the label means later
        _say(f"[{i}/{len(firsts)}] {group}: full-step peak {fmt(mem['peak_memory_mib'], ',.1f')} MiB "
             f"({mem['peak_memory_method'] or mem['peak_memory_error']})")
    opts.out.mkdir(parents=True, exist_ok=True)
    payload = {**meta, "rows": rows}
    write_json(opts.out / "memory.json", payload)
    width = max(len(r["model"]) for r in rows)
    for r in sorted(rows, key=lambda r: (r["peak_memory_mib"] is None, r["peak_memory_mib"] or 0.0)):
        how = r["peak_memory_method"] or r["peak_memory_error"]
        print(f"{r['model']:<{width}}  {r['family']:<5}  {fmt(r['peak_memory_mib'], ',.1f'):>10} MiB  {how}")
    _say(f"wrote {opts.out / 'memory.json'}")
    return payload
