"""`muse verify`: the original reports' verification suite in one command (DESIGN.md §1.8, §4).

On CUDA every memory figure is measured (``torch.cuda.max_memory_allocated``, CUDA context
excluded); without CUDA the same figures are estimated on fake tensors and labelled
``estimate``. Sections:

1. TT-embedding parameter compression at (10 000, 512) and (50 000, 1024), ranks 4/8/16;
2. TT-embedding forward+backward peak vs ``nn.Embedding`` at those shapes (B=8, N=512);
3. full-model peaks at the benchmark shape (V=10 000, d=512, L=6, B=2, N=512): the dense
   baseline in four settings and the compressed presets as configured, forward+backward and
   full step, with the reduction vs the fp32 AdamW baseline of the same run;
4. the 8 GiB check: real budget-capped steps (B=1, N=512) for four shapes, dense and compressed
   (pure bf16, 8-bit AdamW, checkpointing), and phase8-max once more with the CPU-offloaded AdamW.

``--cublas-workspace`` sets CUBLAS_WORKSPACE_CONFIG once for the whole run, so the baseline and
every preset run under the same cuBLAS workspace (it is per process, not per model); the
setting in effect is recorded in the JSON and the Markdown.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from muse.config import load_config
from muse.layers.embedding import TTEmbedding
from muse.memory.budget import fmt_bytes
from muse.memory.params import param_report
from muse.memory.profile import StepPlan, estimate, measure, tensor_bytes, workspace_bytes

TT_SHAPES = [(10_000, 512), (50_000, 1024)]
TT_RANKS = [4, 8, 16]
TT_RUNTIME_RANK = 16
BUDGET = 8 * 2**30

# section 3: (label, preset, overrides, plan fields); None fields follow the preset's train section
FULL_MODEL = [
    ("baseline fp32", "baseline", {}, dict(precision="fp32", optimizer="adamw", checkpointing=False)),
    ("baseline fp32 + checkpointing", "baseline", {}, dict(precision="fp32", optimizer="adamw", checkpointing=True)),
    ("baseline bf16 autocast", "baseline", {}, dict(precision="bf16", optimizer="adamw", checkpointing=False)),
    ("baseline pure bf16 + checkpointing", "baseline", {}, dict(precision="bf16-pure", optimizer="adamw",
                                                                checkpointing=True)),
    ("standard", "standard", {}, {}),
    ("compact", "compact", {}, {}),
    ("ultra", "ultra", {}, {}),
    ("extreme", "extreme", {}, {}),
]
DENSE_PHASE8 = {"model.embedding.kind": "dense", "model.ffn.kind": "dense"}
# section 4: (shape, variant, preset, overrides[, plan fields]); plan: pure bf16, 8-bit AdamW,
# checkpointing unless the fields say otherwise
BUDGET_RUNS = [
    ("small (10K, 512, 6)", "dense", "baseline", {}),
    ("small (10K, 512, 6)", "compressed", "standard", {}),
    ("large (50K, 1024, 12)", "dense", "large", {}),
    ("large (50K, 1024, 12)", "compressed", "large-standard", {}),
    ("xlarge (50K, 2048, 24)", "dense", "xlarge", {}),
    ("xlarge (50K, 2048, 24)", "compressed", "xlarge-standard", {}),
    ("phase8 (50 257, 3072, 40)", "dense", "phase8-max", DENSE_PHASE8),
    ("phase8 (50 257, 3072, 40)", "phase8-max", "phase8-max", {}),
    ("phase8 (50 257, 3072, 40)", "phase8-max-tt", "phase8-max-tt", {}),
    ("phase8 (50 257, 3072, 40)", "phase8-max + adamw-offload", "phase8-max", {}, {"optimizer": "adamw-offload"}),
]


def tt_compression() -> list[dict]:
    rows = []
    for V, d in TT_SHAPES:
        for r in TT_RANKS:
            with torch.device("meta"):
                n = sum(p.numel() for p in TTEmbedding(V, d, r).parameters())
            rows.append({"vocab": V, "dim": d, "rank": r, "dense_params": V * d, "tt_params": n,
                         "compression": 1 - n / (V * d)})
    return rows


def _embedding_peak(make, V: int, d: int, B: int, N: int, device: torch.device | None) -> int:
    """Forward+backward peak of one embedding module: its parameters and gradients, its output
    and its temporaries; the ids and the upstream gradient belong to the caller and are excluded."""
    if device is not None:  # measured
        gc.collect()
        torch.cuda.empty_cache()
        idx = torch.randint(0, V, (B, N), device=device)
        g = torch.randn(B, N, d, device=device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.device(device):
            m = make()
        m(idx).backward(g)  # warm-up: library workspaces (cuBLAS) are allocated once, here
        m.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device) - tensor_bytes(m.parameters())
        torch.cuda.reset_peak_memory_stats(device)
        m(idx).backward(g)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del m, idx, g
        return peak
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    with FakeTensorMode():
        idx = torch.randint(0, V, (B, N))
        g = torch.randn(B, N, d)
        tracker = MemTracker()
        with tracker:
            m = make()
            m(idx).backward(g)
        return sum(v["Total"] for v in tracker.get_tracker_snapshot("peak").values())


def tt_runtime(device: torch.device | None, B: int = 8, N: int = 512) -> list[dict]:
    rows = []
    for V, d in TT_SHAPES:
        dense = _embedding_peak(lambda: nn.Embedding(V, d), V, d, B, N, device)
        tt = _embedding_peak(lambda: TTEmbedding(V, d, TT_RUNTIME_RANK), V, d, B, N, device)
        rows.append({"vocab": V, "dim": d, "rank": TT_RUNTIME_RANK, "batch": B, "seq": N,
                     "nn_embedding_peak": dense, "tt_peak": tt, "reduction": 1 - tt / dense})
    return rows


def _plan(cfg, fields: dict, mode: str, batch: int, seq: int) -> StepPlan:
    return StepPlan(
        batch=batch, seq=seq, mode=mode,
        precision=fields.get("precision", cfg.train.precision),
        optimizer=fields.get("optimizer", cfg.train.optimizer),
        checkpointing=fields.get("checkpointing"),
    )


def _load(preset: str, over: dict, cublas: str):
    return load_config(preset, {**over, "train.cublas_workspace": cublas})


def _progress(section: int, what: str, r: dict, t0: float) -> None:
    """One stderr line per measured row: a full run takes many minutes on a GPU."""
    status = f" {r['status']}" if r.get("status") else ""
    print(f"muse verify [{section}] {what}:{status} peak {fmt_bytes(r['peak'])} ({r['method']}, "
          f"{time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)


def full_model(device: torch.device | None, B: int = 2, N: int = 512, cublas: str = "default") -> list[dict]:
    rows, ref = [], {}
    for label, preset, over, fields in FULL_MODEL:
        cfg = _load(preset, over, cublas)
        row = {"label": label, "preset": preset, "actual_params": param_report(cfg)["actual_params"]}
        for mode in ("fwdbwd", "train"):
            plan = _plan(cfg, fields, mode, B, N)
            t0 = time.perf_counter()
            r = measure(cfg, plan, device) if device is not None else estimate(cfg, plan)
            _progress(3, f"{label} {mode}", r, t0)
            row[mode] = r
            if device is not None:  # the CPU estimate of the same step, to check it against the measurement
                e = estimate(cfg, plan)
                row[f"{mode}_estimate"] = e["peak"]
                row[f"{mode}_estimate_error"] = e["peak"] / r["peak"] - 1
            ref.setdefault(mode, r["peak"])  # the first row is the fp32 AdamW baseline
            row[f"{mode}_reduction"] = 1 - r["peak"] / ref[mode]
        rows.append(row)
    return rows


def budget_check(device: torch.device | None, B: int = 1, N: int = 512, cublas: str = "default") -> list[dict]:
    rows = []
    for shape, variant, preset, over, *rest in BUDGET_RUNS:
        fields = {"precision": "bf16-pure", "optimizer": "adamw8bit", "checkpointing": True, **(rest[0] if rest else {})}
        cfg = _load(preset, over, cublas)
        plan = StepPlan(batch=B, seq=N, **fields)
        t0 = time.perf_counter()
        if device is not None:
            r = measure(cfg, plan, device, budget=BUDGET, warmup=2, steps=2)
        else:
            r = estimate(cfg, plan)
            r["budget"] = BUDGET
            r["status"] = "PASS (estimate)" if r["peak"] <= BUDGET else "FAIL (estimate)"
        _progress(4, f"{shape} {variant}", r, t0)
        rows.append({"shape": shape, "variant": variant, "preset": preset,
                     "actual_params": param_report(cfg)["actual_params"], **r})
    return rows


def run_verify(out_dir: str | Path, device: str = "auto", sections: tuple[int, ...] = (1, 2, 3, 4),
               cublas_workspace: str = "default") -> dict:
    from muse.runtime import apply_cublas_workspace, environment_info

    cublas = apply_cublas_workspace(cublas_workspace)  # before the first CUDA use: one setting for every row
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda" if device == "auto" else device) if use_cuda else None
    sm90 = True  # the estimate's assumption
    if dev is not None:
        props = torch.cuda.get_device_properties(dev)
        sm90 = (props.major, props.minor) == (9, 0)
    res = {"method": "measured" if dev is not None else "estimate", **environment_info(dev),
           "cublas_workspace": cublas, "cublas_workspace_requested": cublas_workspace,
           "cublas_workspace_formula": workspace_bytes(cublas, "train", sm90)}
    if 1 in sections:
        res["tt_compression"] = tt_compression()
    if 2 in sections:
        res["tt_runtime"] = tt_runtime(dev)
    if 3 in sections:
        res["full_model"] = full_model(dev, cublas=cublas)
    if 4 in sections:
        res["budget_8gib"] = budget_check(dev, cublas=cublas)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "verify.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "verify.md").write_text(to_markdown(res))
    return res


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def to_markdown(res: dict) -> str:
    est = res["method"] == "estimate"
    tag = " (estimate)" if est else ""
    lines = [
        f"# muse verify{tag}",
        "",
        f"{'Estimated on fake tensors (no GPU)' if est else 'Measured'} on {res['device']}, torch {res['torch']}, "
        f"commit `{res['git_sha'][:7]}`, {res['date'][:10]}.",
        "",
        f"cuBLAS workspace: CUBLAS_WORKSPACE_CONFIG={res.get('cublas_workspace', 'default')} for every row "
        f"(modelled: {fmt_bytes(res.get('cublas_workspace_formula'))} per training step"
        + (", sm90 sizes, included in every full-model estimate)." if est else ")."),
    ]
    if "tt_compression" in res:
        lines += ["", "## 1. TT-embedding parameter compression", "",
                  "| V | d | rank | nn.Embedding | TT | compression |", "|---:|---:|---:|---:|---:|---:|"]
        for r in res["tt_compression"]:
            lines.append(f"| {r['vocab']:,} | {r['dim']} | {r['rank']} | {r['dense_params']:,} | {r['tt_params']:,} "
                         f"| {_pct(r['compression'])} |")
    if "tt_runtime" in res:
        lines += ["", f"## 2. TT-embedding forward+backward peak{tag}", "",
                  "| V | d | TT rank | B×N | nn.Embedding | TT | reduction |", "|---:|---:|---:|---|---:|---:|---:|"]
        for r in res["tt_runtime"]:
            lines.append(f"| {r['vocab']:,} | {r['dim']} | {r['rank']} | {r['batch']}×{r['seq']} "
                         f"| {fmt_bytes(r['nn_embedding_peak'])} | {fmt_bytes(r['tt_peak'])} | {_pct(r['reduction'])} |")
    if "full_model" in res:
        lines += ["", f"## 3. Full-model peak at V=10 000, d=512, L=6, B=2, N=512{tag}", "",
                  "| model | precision | optimizer | checkpointing | params | fwd+bwd peak | reduction "
                  "| full-step peak | reduction | of baseline |" + ("" if est else " CPU estimate (error) |"),
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|" + ("" if est else "---:|")]
        for r in res["full_model"]:
            t, f = r["train"], r["fwdbwd"]
            check = "" if est else f" {fmt_bytes(r['train_estimate'])} ({100 * r['train_estimate_error']:+.1f} %) |"
            lines.append(
                f"| {r['label']} | {t['precision']} | {t['optimizer']} | {'yes' if t['checkpointing'] else 'no'} "
                f"| {fmt_bytes(t['parameters'])} | {fmt_bytes(f['peak'])} | {_pct(r['fwdbwd_reduction'])} "
                f"| {fmt_bytes(t['peak'])} | {_pct(r['train_reduction'])} | {_pct(1 - r['train_reduction'])} |" + check
            )
        if not est:
            ws = res["full_model"][0]["train"].get("workspace")
            if ws:
                lines += ["", f"Measured peaks include {fmt_bytes(ws)} of cuBLAS workspace per model "
                          "(allocated through PyTorch's caching allocator, so part of max_memory_allocated)."]
    if "budget_8gib" in res:
        lines += ["", f"## 4. The 8 GiB check (B=1, N=512, pure bf16, checkpointing){tag}", "",
                  "| shape | variant | optimizer | actual params | full-step peak | host memory | status |",
                  "|---|---|---|---:|---:|---:|---|"]
        for r in res["budget_8gib"]:
            off = r.get("offload")
            host = fmt_bytes(off["host_parameters"] + off["host_gradients"] + off["host_optimizer_state"]) if off else "-"
            lines.append(f"| {r['shape']} | {r['variant']} | {r['optimizer']} | {r['actual_params']:,} "
                         f"| {fmt_bytes(r['peak'])} | {host} | {r['status']}{' (OOM)' if r.get('error') else ''} |")
    return "\n".join(lines) + "\n"
