"""Actual vs dense-equivalent parameters of every shipped preset (`muse params`), one JSON.

Parameter counts are exact integers read off the model built on the ``meta`` device, so this
runs on any machine; the JSON still records where and when it ran.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, write_result  # noqa: E402
from muse.config import list_presets, load_config, to_dict  # noqa: E402
from muse.memory.params import param_report  # noqa: E402


def main() -> int:
    rows = []
    for name in list_presets():
        cfg = load_config(name)
        rows.append({**param_report(cfg), "model": to_dict(cfg.model)})
    path = write_result("params", {"benchmark": "params", **environment("cpu"), "figures": rows})
    print(f"{len(rows)} presets -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
