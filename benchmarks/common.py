"""What every benchmark result carries (DESIGN.md §2): git sha, device, torch version, date."""

from __future__ import annotations

import json
from pathlib import Path

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
