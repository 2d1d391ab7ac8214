"""README result tables are generated from benchmarks/results/*.json and must be current."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tables():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_tables_match_results():
    mod = _tables()
    assert mod.main(["--check"]) == 0, "run: python benchmarks/readme_tables.py"


def test_tables_are_rendered_from_json_not_typed():
    mod = _tables()
    blank = "".join(f"<!-- {name}:start -->\n{'stale' if name == 'params-table' else ''}\n<!-- {name}:end -->\n"
                    for name in mod.TABLES)
    out = mod.render(blank)
    assert "stale" not in out and "`xxl-100b`" in out and "`baseline`" in out and "`triton` ms" in out
