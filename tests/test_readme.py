"""README result tables are generated from benchmarks/results/*.json and must be current; the
quickstart shows the commands `muse train` prints."""

import importlib.util
import re
from pathlib import Path
from types import SimpleNamespace

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


def _normalise(command: str) -> str:
    """A printed or README command with the run directory and budget numbers as placeholders."""
    command = re.sub(r"runs/tiny-\d{8}-\d{6}", "RUN", command.strip())
    return re.sub(r"(--train\.max_\w+) \d+", r"\1 N", command)


def test_commands_printed_after_training_are_the_readmes(tmp_path, monkeypatch, capsys):
    """`muse train` ends with the commands to run next; the README's quickstart shows the same
    ones (the run directory and budget differ, so they are compared as placeholders)."""
    from muse.cli import main
    from muse.data import datasets

    stdlib = tmp_path / "stdlib"  # a small stand-in for the machine's stdlib: same code path, seconds
    for i in range(12):
        (stdlib / f"mod{i}.py").parent.mkdir(exist_ok=True)
        (stdlib / f"mod{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x + {j}\n\n" for j in range(80)))
    monkeypatch.setattr(datasets, "sysconfig", SimpleNamespace(get_paths=lambda: {"stdlib": str(stdlib)}))
    monkeypatch.chdir(tmp_path)  # the default run directory, runs/tiny-DATE-TIME, as a user gets it
    args = ["train", "--data.tokenizer", "bytes", "--data.cache_dir", str(tmp_path / "cache"),
            "--train.max_steps", "2", "--train.eval_every", "2", "--train.eval_tokens", "512",
            "--train.batch_size", "2", "--train.progress", "false", "--train.tensorboard", "false"]
    assert main(args) == 0
    printed = [m.group(1) for m in re.finditer(r"^ +\w+: +(muse .+)$", capsys.readouterr().out, re.M)]
    assert [c.split()[:2] for c in printed] == [["muse", "eval"], ["muse", "generate"], ["muse", "train"]]
    assert all(re.search(r"runs/tiny-\d{8}-\d{6}", c) for c in printed), printed
    readme = {_normalise(line) for line in (ROOT / "README.md").read_text().splitlines()}
    missing = [c for c in printed if _normalise(c) not in readme]
    assert not missing, f"README.md's quickstart must show these commands as `muse train` prints them: {missing}"
