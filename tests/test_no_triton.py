"""`import muse` and the quickstart's commands where Triton cannot be imported (the CPU torch
wheel, macOS): no traceback, exit 0, and no word about Triton off CUDA (the subprocesses see no
GPU, also on a GPU machine).

The test environments have Triton (its interpreter runs the kernel tests), so every command runs
in a fresh interpreter whose first line is ``sys.modules["triton"] = None``: ``import triton``,
``import triton.language`` and every other Triton import then raise ImportError, as on an
install without it. The trained run is the quickstart's preset and dataset (pystdlib, offline),
made small: byte tokens (no BPE training), 2 steps of 2 x 64 tokens.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
NO_TRITON = "import sys; sys.modules['triton'] = None\n"


def _python(code: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_INTERPRET", None)  # a user's machine: no interpreter either
    env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU install on a GPU box too (CUDA without Triton: tests/ops/test_triton.py)
    return subprocess.run([sys.executable, "-c", NO_TRITON + code], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=300)


def muse(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    """``muse ARGS`` without Triton; asserts exit 0 and no traceback."""
    code = f"import runpy; sys.argv = ['muse', *{list(args)!r}]; runpy.run_module('muse.cli', run_name='__main__')"
    res = _python(code, tmp)
    assert res.returncode == 0 and "Traceback" not in res.stderr, (args, res.stdout[-2000:], res.stderr[-4000:])
    assert "Triton" not in res.stderr, res.stderr  # the fallback is silent off CUDA
    return res


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("no-triton")
    res = muse("train", "tiny", "--run-dir", str(tmp / "run"), "--data.cache_dir", str(tmp / "cache"),
               "--data.tokenizer", "bytes", "--model.vocab_size", "257", "--train.batch_size", "2",
               "--train.seq_len", "64", "--train.max_steps", "2", "--train.eval_every", "2",
               "--train.eval_tokens", "512", "--train.progress", "false", "--train.tensorboard", "false", tmp=tmp)
    assert "on pystdlib" in res.stdout and "Done: step 2" in res.stdout
    return tmp / "run"


def test_triton_is_blocked_and_every_module_imports(tmp_path):
    """Every module of the package imports, except the Triton-only helpers of one op's kernel
    files (``_common``), which only those files import, and only where Triton is there."""
    res = _python(
        "import importlib, pkgutil\n"
        "for name in ('triton', 'triton.language', 'triton.runtime.autotuner'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit(name + ' imported')\n"
        "import muse, muse.cli\n"
        "from muse.ops import _triton\n"
        "assert not _triton.HAS_TRITON and _triton.triton is None\n"
        "names = [m.name for m in pkgutil.walk_packages(muse.__path__, 'muse.') if m.name != 'muse.__main__']\n"
        "for name in names:\n"
        "    if not name.endswith('._common'):\n"
        "        importlib.import_module(name)\n"
        "print(len(names), sorted(n for n in names if n.startswith('muse.ops.')))\n",
        tmp_path,
    )
    assert res.returncode == 0 and not res.stderr, res.stderr[-4000:]
    count, ops = res.stdout.split(" ", 1)
    assert int(count) > 40
    for op in ("semiseparable", "linear_ce", "tt_gather", "lowrank_mlp", "gates", "rmsnorm"):
        assert f"'muse.ops.{op}.triton_kernel'" in ops or f"'muse.ops.{op}.triton_chunk'" in ops, op


def test_help_params_memory(tmp_path):
    assert "usage: muse" in muse("--help", tmp=tmp_path).stdout
    assert "dense" in muse("params", "tiny", tmp=tmp_path).stdout
    out = muse("memory", "tiny", "--batch", "2", "--seq", "64", tmp=tmp_path).stdout
    assert "estimate" in out and "peak" in out and "peak reached in" in out


def test_train_and_generate(trained, tmp_path):
    assert (trained / "checkpoints" / "last.json").is_file()
    res = muse("generate", str(trained), "--prompt", "def ", "--max-new-tokens", "8", "--seed", "0", tmp=tmp_path)
    assert res.stdout.startswith("def ")
