"""No module of the package or of the benchmarks uses another module's private names
(``from muse.memory.profile import _step``, ``profile._build(...)``): what two modules share is
public, in the module that owns it or in a neutral one. Private *modules* of the package (such
as ``muse.ops._dispatch``, the ops' shared utilities) may be imported; their public names used."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
BENCHMARKS = ROOT / "benchmarks"


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _module_of(path: Path) -> tuple[str, bool]:
    """(dotted name, is a package) of a file under src/ or benchmarks/."""
    if path.is_relative_to(SRC):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        return ".".join(parts[:-1] if package else parts), package
    return path.stem, False


def private_uses(source: str, path: Path) -> list[str]:
    """``line: what`` for every private name that ``source`` (the file at ``path``) takes from
    another of the project's modules."""
    local = {p.stem for p in BENCHMARKS.glob("*.py")} if path.parent == BENCHMARKS else set()
    this, package = _module_of(path)
    own = lambda mod: mod == "muse" or mod.startswith("muse.") or mod in local  # noqa: E731
    private = lambda name: name.startswith("_") and not name.startswith("__")  # noqa: E731
    found, aliases = [], {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative: resolve against this module's package
                base = this.split(".")[: len(this.split(".")) - node.level + package]
                mod = ".".join(base + ([mod] if mod else []))
            if not own(mod):
                continue
            for a in node.names:
                full = f"{mod}.{a.name}"
                if _is_module(full):
                    aliases[a.asname or a.name] = full
                elif private(a.name):
                    found.append(f"{node.lineno}: from {mod} import {a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if own(a.name) and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and private(node.attr) and not _is_module(f"{aliases[node.value.id]}.{node.attr}")):
            found.append(f"{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return found


FILES = sorted(SRC.rglob("*.py")) + sorted(BENCHMARKS.glob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_no_private_names_from_other_modules(path):
    assert private_uses(path.read_text(), path) == []


def test_the_check_finds_what_it_must():
    bench, src = BENCHMARKS / "x.py", SRC / "muse" / "ops" / "semiseparable" / "x.py"
    assert private_uses("from muse.memory.profile import StepPlan, _build, _step\n", bench) == [
        "1: from muse.memory.profile import _build", "1: from muse.memory.profile import _step"]
    assert private_uses("from common import RESULTS, _err\n", bench) == ["1: from common import _err"]
    assert private_uses("from .triton_chunk import HAS_TRITON, _rows\n", src) == [
        "1: from muse.ops.semiseparable.triton_chunk import _rows"]
    assert private_uses("from muse.memory import profile\nprofile._step(1)\n", bench) == ["2: muse.memory.profile._step"]
    assert private_uses("import muse.train.trainer as t\nt.Trainer._update\nt._x\n", bench) == ["3: muse.train.trainer._x"]
    # allowed: private modules and their public names, other packages' private names, dunders
    ok = ("from muse.ops._dispatch import use_op\nfrom muse.ops import _triton\nimport torch._dynamo\n"
          "from torch._subclasses.fake_tensor import FakeTensorMode\nfrom muse import __version__\n"
          "from torch.distributed import _tools\n")
    assert private_uses(ok, src) == []
