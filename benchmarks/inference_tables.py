"""Markdown tables of the inference-side benchmarks (`decode.py`, `decode_memory.py`, `startup.py`),
shared by those scripts (the .md beside each JSON) and `readme_tables.py` (README and docs/).
Each preset is named as it ships today (`provenance.label`): a row of a config since renamed or
changed says so."""

from __future__ import annotations

from provenance import label


def _title(what: str, res: dict) -> str:
    """The first line of a decoding benchmark's table: the run and its fixed settings."""
    return (f"# {what}: {res['device']} (commit {res['git_sha'][:7]}, {res['date'][:10]}, torch {res['torch']}, "
            f"{res['config']['dtype']}, B=1, random weights)")


def decode_markdown(res: dict) -> str:
    """The `benchmarks/decode.py` tables (also written beside its JSON as decode-gpu.md)."""
    c = res["config"]
    lines = [
        _title("Decoding", res),
        "",
        "| preset | eager step ms/token | captured step ms/token | `generate` ms/token |",
        "|---|---:|---:|---:|",
    ]
    name = {r["preset"]: label(r["preset"], model=r.get("config"), overrides=c.get("overrides")) for r in res["figures"]}
    for r in res["figures"]:
        if "error" in r:
            lines.append(f"| {name[r['preset']]} | FAILED: {r['error']} | | |")
            continue
        d = r["decode"]
        cap = d.get("captured")
        gen = cap or d["eager"]
        lines.append(f"| {name[r['preset']]} | {d['eager']['step_ms']:.2f} | {cap['step_ms']:.2f} |" if cap
                     else f"| {name[r['preset']]} | {d['eager']['step_ms']:.2f} | - |")
        lines[-1] += f" {gen['generate_ms_per_token']:.2f} |"
    lines += ["", "| preset | prompt tokens | parallel prefill tok/s | stepwise tok/s (path) | speedup |",
              "|---|---:|---:|---:|---:|"]
    for r in res["figures"]:
        for p in r.get("prefill", []):
            if "skipped" in p or "error" in p:
                lines.append(f"| {name[r['preset']]} | {p['N']:,} | {p.get('skipped') or 'FAILED: ' + p['error']} | | |")
            else:
                lines.append(f"| {name[r['preset']]} | {p['N']:,} | {p['parallel_tokens_per_s']:,.0f} | "
                             f"{p['stepwise_tokens_per_s']:,.0f} ({p['stepwise_path']}) | {p['speedup']:,.0f}x |")
    lines += ["", f"Decode: median of {c['decode_tokens']} timed steps after {c['decode_warmup']} "
              f"(a {c['decode_prompt']}-token prompt). Prefill: median of {c['prefill_repeats']} "
              f"(chunks of {c['prefill_chunk']} tokens); stepwise timed once. `generate`: sampling included, the "
              "step captured where the device is CUDA. `python benchmarks/decode.py`."]
    return "\n".join(lines)


def startup_markdown(res: dict, tuning: bool = True) -> str:
    """The `benchmarks/startup.py` table, and with ``tuning`` the per-kernel autotuning table (both
    written beside its JSON as startup-gpu.md)."""
    c = res["config"]
    lines = [
        f"`muse train {c['preset']}` for {c['steps']} steps, {res['device']} ({res['git_sha'][:7]}, "
        f"torch {res['torch']}, triton {res['triton']}); overrides: {c['overrides'] or 'none'}",
        "",
        "| run | process s | setup s | header to step K s | steady tok/s | steps at steady rate s | overhead s "
        "| tuning notices |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["figures"]["runs"]:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['process_s']:.1f} | FAILED ({r['error']}) | | | | | |")
            continue
        lines.append(f"| {r['mode']} | {r['process_s']:.1f} | {r['setup_s']:.1f} | {r['to_last_step_s']:.1f} "
                     f"| {r['steady_tokens_per_s']:,.0f} | {r['steady_s']:.1f} | {r['overhead_s']:.1f} "
                     f"| {r['tuning_notices']} |")
    if tuning and res["figures"]["tuning"]:
        lines += ["", "Autotuning of the cold run (Triton's files): first config's time over the best one's", "",
                  "| kernel | key | configs | best | best ms | first / best |", "|---|---|---:|---|---:|---:|"]
        for t in res["figures"]["tuning"]:
            gain = f"{t['first_over_best']:.2f}" if t["first_over_best"] else "–"
            lines.append(f"| {t['kernel']} | {', '.join(map(str, t['key'] or []))} | {t['configs']} "
                         f"| {t['best']} | {t['best_ms']:.4f} | {gain} |")
    return "\n".join(lines)


def _fmt_mib(mib: float) -> str:
    return f"{mib:,.2f}" if mib >= 0.1 else f"{mib:.2g}"


def decode_memory_markdown(res: dict) -> str:
    c = res["config"]
    lines = [
        _title("Decoding memory vs context", res),
        "",
        "| preset | mixer | context | state MiB | decode peak MiB | ms/token |",
        "|---|---|---:|---:|---:|---:|",
    ]
    name = {p["preset"]: label(p["preset"], model=p.get("config"), mixer=p.get("mixer"), overrides=c.get("overrides"))
            for p in res["figures"]}
    for p in res["figures"]:
        for r in p["contexts"]:
            if "error" in r:
                lines.append(f"| {name[p['preset']]} | | {r['context']:,} | FAILED: {r['error']} | | |")
                continue
            peak = _fmt_mib(r["decode_peak_mib"]) if r["decode_peak_mib"] is not None else "–"
            lines.append(f"| {name[p['preset']]} | {r['mixer']} | {r['context']:,} | {_fmt_mib(r['state_mib'])} | {peak} "
                         f"| {r['step_ms']:.2f} |")
    spreads = [f"{name[p['preset']]} {100 * p['peak_spread']['value']:.1f} % ({p['peak_spread']['of']})"
               for p in res["figures"] if "peak_spread" in p]
    lines += ["", f"Spread over the contexts, (max − min) / min: {', '.join(spreads) or '–'}. State: the decoding "
              "state's tensors (KV cache or recurrent state), all layers. Decode peak: "
              f"`torch.cuda.max_memory_allocated` over {c['tokens']} timed steps after {c['warmup']} (parameters "
              "included). ms/token: median step (the captured CUDA-graph step on CUDA). "
              "`python benchmarks/decode_memory.py`."]
    return "\n".join(lines)
