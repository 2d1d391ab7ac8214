"""Reading `benchmarks/results/` for the table modules (`readme_tables.py`, `claims_tables.py`):
the files of a pattern, the newest run of a kind, `muse verify`'s sources, and the figures several
tables derive alike. No table is made here."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from speed_tables import short_sha, throughput_label

RESULTS = Path(__file__).resolve().parent / "results"

# `muse verify`'s runs, newest first: each section comes from the first run holding it. A partial
# run (`run_verify(sections=...)`) re-measures some sections without the hour-long rest.
VERIFY_RUNS = ("verify-b2-cublas-16-8-h200.json", "verify-cublas-16-8.json", "verify.json")


def load(pattern: str) -> list[dict]:
    """Every results file matching ``pattern``, by name."""
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob(pattern))]


def newest(pattern: str, keep: Callable[[dict], bool] = lambda r: True) -> dict | None:
    """The most recent run of ``pattern`` that ``keep`` accepts."""
    runs = [r for r in load(pattern) if keep(r)]
    return max(runs, key=lambda r: r["date"]) if runs else None


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def run_note(res: dict) -> str:
    """"DEVICE, torch V, commit `SHA`, DATE" of a run."""
    return f"{res['device']}, torch {res['torch']}, commit `{short_sha(res)}`, {res['date'][:10]}"


def verify_sources() -> dict[str, tuple[str, dict]]:
    """{section: (file name, run)} of `muse verify`'s sections, each from the newest run holding it."""
    found = {}
    for name in VERIFY_RUNS:
        for res in load(name):
            for section in ("full_model", "tt_runtime", "budget_8gib"):
                if section in res and section not in found:
                    found[section] = (name, res)
    return found


def verify_params(row: dict) -> int:
    """The parameter count of a `muse verify` full-model row (older rows record only the bytes)."""
    step = row["train"]
    return row.get("actual_params") or step["parameters"] // (2 if step["precision"] == "bf16-pure" else 4)


def throughput_ratios(results: str) -> tuple[list[tuple[int, float]], dict | None, str]:
    """[(N, other / reference tokens/s)] of one train_throughput results file, the run, and the
    other preset as it is named today (`standard` until it was rebuilt, `compact` since)."""
    runs = load(results)
    if not runs:
        return [], None, ""
    run = runs[0]
    return ([(r["N"], r["ratio_tokens_per_s"]) for r in run["figures"] if r.get("ratio_tokens_per_s")], run,
            throughput_label(run, run["config"]["presets"][1]))
