"""Markdown tables of the speed benchmarks (`mixers.py`, `train_throughput.py`, `lowrank_ffn.py`),
shared by those scripts (the .md beside each JSON) and `readme_tables.py` (README and docs/), so
both print the same table from the same results. Presets are named as they ship today
(`provenance.label`).
"""

from __future__ import annotations

from provenance import label


def short_sha(res: dict) -> str:
    """The short commit; a "+wip" suffix (a run of uncommitted changes on top of it) is kept."""
    sha, plus, rest = res["git_sha"].partition("+")
    return sha[:7] + plus + rest



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
        f"{res['device']}, torch {res['torch']}, commit `{short_sha(res)}`, {res['date'][:10]} "
        f"(`benchmarks/mixers.py`)."
    )
    holo = [r for r in res["figures"] if "holographic_layer" in r]
    if holo:
        lines += ["", _holographic_markdown(res, holo)]
    if errors:
        lines += [""] + [f"- {e}" for e in errors]
    return "\n".join(lines)


def _holographic_markdown(res: dict, rows: list[dict]) -> str:
    """The holographic layer beside the two others, from the same `benchmarks/mixers.py` rows."""
    c, m = res["config"], res["config"]["holographic_mixer"]["holographic"]
    lines = [
        "| N | B | attention layer ms | semiseparable layer ms | holographic layer ms | attention / holographic "
        "| holographic / semiseparable | holographic peak MiB | holographic read vs float64 (max rel. RMS) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        k = r["holographic_check"]
        if k.get("error"):
            check = f"error: {k['error']}"
        else:
            check = f"{max(k['errors'].values()):.1e} {'PASS' if k['ok'] else 'FAIL'}"
            if not k["full_shape"]:
                check += f" (B={k['B']}, N={k['N']:,})"
        h = r["holographic_layer"]
        lines.append(
            f"| {r['N']:,} | {r['B']} | {_msg(r['attention_layer'])} | {_msg(r['semiseparable_layer'])} | {_msg(h)} "
            f"| {_pair(r['speedup'], 'attention_over_holographic_layer')} "
            f"| {_pair(r['speedup'], 'holographic_over_semiseparable_layer')} | {_mib(h)} | {check} |"
            + (f" error: {h['error']}" if h.get("error") else "")
        )
    lines += ["", (
        f"The holographic memory layer (`hamt-100m`'s mixer at d={c['d_model']}: hcm_dim {m['hcm_dim']}, "
        f"{m['num_slots']} slots, read on `{c['holo_path']}`, the auxiliary loss included) beside the two layers "
        "above, same cells (eager · CUDA graph). Check: the read's output and the gradients of q, k, v, α, β, "
        f"log γ in fp32 against the float64 `chunked` read, ‖a − b‖ / ‖b‖ ≤ {c['tolerance']:g}.")]
    return "\n".join(lines)


def _paths_note(figures: list[dict], presets) -> str:
    """"Kernels run: ..." from the per-preset ``paths`` the benchmark recorded (absent in older
    results): what each MUSE op resolved to, merged over the rows."""
    parts = []
    for name, shown in presets:
        found: dict[str, set] = {}
        for r in figures:
            for op, impls in (r[name].get("paths") or {}).items():
                found.setdefault(op, set()).update(impls)
        if found:
            parts.append(f"{shown} " + ", ".join(f"{op} {'/'.join(sorted(v))}" for op, v in sorted(found.items())))
    return f"Kernels run: {'; '.join(parts)}. " if parts else ""


def throughput_label(res: dict, preset: str) -> str:
    """``preset`` of a train_throughput run as named today (:func:`provenance.label` on the model
    the run recorded, with its overrides)."""
    model = next((r[preset]["config"] for r in res["figures"] if "config" in r[preset]), None)
    return label(preset, model=model, overrides=res["config"].get("overrides"))


def throughput_markdown(res: dict) -> str:
    """The `benchmarks/train_throughput.py` table (also written beside its JSON as .md)."""
    c = res["config"]
    a, b = c["presets"]
    na, nb = throughput_label(res, a), throughput_label(res, b)
    lines = [
        f"| N | B | {na} tokens/s | {nb} tokens/s | {nb} / {na} | {na} step ms | {nb} step ms "
        f"| {na} peak | {nb} peak | memory {nb} / {na} |",
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
        errors += [f"N={r['N']:,} {m}: {r[n]['error']}" for n, m in ((a, na), (b, nb)) if r[n].get("error")]
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
        + _paths_note(res["figures"], ((a, na), (b, nb)))
        + f"{res['device']}, torch {res['torch']}, commit `{short_sha(res)}`, {res['date'][:10]} "
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
              + f". {res['device']}, torch {res['torch']}, commit `{short_sha(res)}`, {res['date'][:10]} "
              "(`benchmarks/lowrank_ffn.py`)."]
    return "\n".join(lines)
