"""What every benchmark result carries (DESIGN.md §2): git sha, device, torch version, date."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from muse.runtime import environment_info as environment  # noqa: F401  (git sha, date, device, torch)

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(name: str, payload: dict, out_dir: str | Path = RESULTS) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def pick_device(name: str, out: str | None, script: str) -> torch.device | None:
    """The device a benchmark runs on, or None (after a message) when it is not CUDA and no
    ``--out`` was given: GPU results only ever come from a GPU run."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type != "cuda" and out is None:
        print(f"{script}: not on CUDA: GPU results come from a GPU run; pass --out DIR for a CPU test run",
              file=sys.stderr)
        return None
    return device


def publish(bench: str, res: dict, device: torch.device, out: str | None, markdown) -> Path:
    """Write BENCH-gpu.json (BENCH-cpu.json off CUDA) and its Markdown table; print the table."""
    name = f"{bench}-{'gpu' if device.type == 'cuda' else 'cpu'}"
    path = write_result(name, res, out if out is not None else RESULTS)
    md = markdown(res)
    path.with_suffix(".md").write_text(md + "\n")
    print(md)
    print(f"-> {path}")
    return path
