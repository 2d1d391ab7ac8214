"""The original reports' claims against the committed results: docs/design.md §12's table, and
the README's rows of the holographic mixer's claims (no torch import of its own)."""

from __future__ import annotations

from compare_tables import aux_rows, human, preset_quality, quality
from provenance import is_current
from results_files import fmt_bytes, load, newest, throughput_ratios, verify_sources


def claims_table() -> str:
    """docs/design.md: the original reports' claims and what the committed results say about them."""
    src, q = verify_sources(), quality()[0]
    p = {r["name"]: r for res in load("params.json") for r in res["figures"]}
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
        add("`ultra` parameters", "29.16 M → 616 K (−97.9 %)", f"{human(u['dense_equivalent_params'])} → "
            f"{human(u['actual_params'])} (−{100 * u['compression']:.1f} %)", "`muse params ultra`")
    fm = {r["label"]: r for r in src.get("full_model", (None, {"full_model": []}))[1]["full_model"]}
    if {"ultra", "baseline fp32"} <= fm.keys():
        u, b = fm["ultra"], fm["baseline fp32"]
        add("`ultra` training peak memory", "456.3 MB → 69.1 MB (−84.8 %, fp16, forward+backward only)",
            f"forward+backward {fmt_bytes(b['fwdbwd']['peak'])} → {fmt_bytes(u['fwdbwd']['peak'])} "
            f"(−{100 * u['fwdbwd_reduction']:.1f} %); full step {fmt_bytes(b['train']['peak'])} → "
            f"{fmt_bytes(u['train']['peak'])} (−{100 * u['train_reduction']:.1f} %); against the fp32 AdamW `baseline`, "
            f"B=2, N=512", "`muse verify`")
    both, how = {"baseline", "standard"} <= q.keys(), quality()[2]
    rel = {n: q[n]["test"]["perplexity"] / q["baseline"]["test"]["perplexity"] for n in ("standard", "ultra")
           if both and n in q}
    add("Quality cost", '"1–2 %" (never measured)', both and "; ".join(
        f"`{n}` vs `baseline`: test perplexity ×{x:.2f} ({100 * (x - 1):+.0f} %)" for n, x in rel.items())
        + " at equal training tokens", how)
    speed = [f"×{q['standard']['tokens_per_s_median'] / q['baseline']['tokens_per_s_median']:.2f} tokens/s at N=512 "
             "(the WikiText-2 runs, `standard` / `baseline`)"] if both and all(
        q[n].get("tokens_per_s_median") for n in ("standard", "baseline")) else []
    for name, mode in (("train_throughput-cudagraph-h200.json", "eager + captured"),
                       ("train_throughput-compile-default-cudagraph-gpu.json", "compiled + captured"),
                       ("train_throughput-gpu.json", "eager")):
        ratios, run, other = throughput_ratios(name)
        if ratios:
            speed.append(f"×{min(x for _, x in ratios):.2f}–{max(x for _, x in ratios):.2f} {mode} at "
                         f"N={ratios[0][0]:,}–{ratios[-1][0]:,} ({other} / `baseline`, {run['device']})")
    dec = newest("decode-gpu.json")
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
        return "; ".join([first] + [f"{fmt_bytes(r['peak'])} {r['status']} in 8 GiB with `{r['optimizer']}`"
                                    for r in budget
                                    if r["preset"] == name and r["actual_params"] == p[name]["actual_params"]])

    if "phase8-max" in p:
        add("`phase8-max`", "4.84 B → 2.08 B parameters, 7.82 GB (estimated)", facts("phase8-max", (
            f"{human(p['phase8-max']['dense_equivalent_params'])} → {human(p['phase8-max']['actual_params'])}")),
            "`muse params`, `muse verify`")
    if "phase8-max-tt" in p:
        add("A 30 M-parameter phase8 model", "not reached", facts("phase8-max-tt", (
            f"`phase8-max-tt`: {human(p['phase8-max-tt']['actual_params'])} parameters")),
            "`muse params`, `muse verify`")
    if "xxl-100b" in p:
        r = p["xxl-100b"]
        got = facts("xxl-100b", f"`xxl-100b`: {human(r['dense_equivalent_params'])} dense-equivalent, "
                                f"{human(r['actual_params'])} parameters")
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
    dec = newest("decode_memory-gpu.json")
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
    mix = newest("mixers*-gpu.json",
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
