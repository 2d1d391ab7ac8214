"""What every benchmark result carries (DESIGN.md §2): git sha, device, torch version, date."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def git_sha() -> str:
    """The commit the run used: MUSE_GIT_SHA when the tree was copied without .git (the GPU box)."""
    if os.environ.get("MUSE_GIT_SHA"):
        return os.environ["MUSE_GIT_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: torch.device | str | None = None) -> dict:
    dev = torch.device(device) if device is not None else None
    on_cuda = dev is not None and dev.type == "cuda"
    return {
        "git_sha": git_sha(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(dev) if on_cuda else f"cpu ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical cores)",
        "device_type": "cuda" if on_cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if on_cuda else None,
        "python": platform.python_version(),
    }


def write_result(name: str, payload: dict, out_dir: str | Path = RESULTS) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path
