"""benchmarks/fsdp_scaling.py on the CPU: 2 gloo processes under torchrun, and the same global
batch in one process, which must train the same losses."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "fsdp_scaling.py"


def _args(shared_data, token_cache, out, batch):
    return ["--preset", "tiny", "--device", "cpu", "--steps", "4", "--warmup", "1", "--batch", str(batch),
            "--lr-warmup", "2", "--data-dir", str(shared_data / "wikitext-2"), "--cache-dir", str(token_cache),
            "--out", str(out), "--set", "model.vocab_size=512", "--set", "model.d_model=64",
            "--set", "model.n_layers=2", "--set", "model.max_seq_len=64"]


def test_fsdp_scaling_two_processes_and_one(shared_data, token_cache, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", str(SCRIPT),
           *_args(shared_data, token_cache, tmp_path / "x2", batch=4)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=280)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "x2" / "fsdp_scaling-tiny-x2-cpu.json").read_text())
    assert r["benchmark"] == "fsdp_scaling" and r["world_size"] == 2 and r["device_type"] == "cpu"
    assert {"git_sha", "date", "device", "torch"} <= r.keys() and r["device"].startswith("cpu")
    assert r["config"]["batch_per_process"] == 4 and r["config"]["parallel"] == "fsdp"
    assert r["tokens_per_step"] == 2 * 4 * 64 and r["tokens_per_s"] > 0 and len(r["step_s"]) == 4
    loss = r["loss"]
    assert len(loss["per_step"]) == 5 and loss["finite"] and loss["falling"] and loss["last"] < loss["first"]
    assert r["peak_max"] is None  # no GPU, no memory claim
    one = r["one_process"]
    assert [q["rank"] for q in r["ranks"]] == [0, 1]
    for q in r["ranks"]:  # each process holds about half of every sharded figure
        assert q["peak"] is None and q["step_s_median"] > 0
        assert q["optimizer_state"] == q["optimizer_state_formula"]
        for key in ("parameters", "gradients", "optimizer_state"):
            assert 0.45 * one[key] <= q[key] <= 0.55 * one[key]
    assert "| 1 |" in (tmp_path / "x2" / "fsdp_scaling-tiny-x2-cpu.md").read_text()

    # one process of the same global batch (8 sequences), sharded over itself: the same losses
    spec = importlib.util.spec_from_file_location("bench_fsdp_scaling", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(_args(shared_data, token_cache, tmp_path / "x1", batch=8)) == 0
    r1 = json.loads((tmp_path / "x1" / "fsdp_scaling-tiny-x1-cpu.json").read_text())
    assert r1["world_size"] == 1 and r1["tokens_per_step"] == r["tokens_per_step"]
    assert r1["loss"]["per_step"] == pytest.approx(loss["per_step"], rel=1e-4)
    assert {k: r1["ranks"][0][k] for k in one} == one


def test_fsdp_scaling_needs_out_off_cuda(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_fsdp_scaling", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--preset", "tiny", "--device", "cpu"]) == 2
    assert "pass --out DIR for a CPU test run" in capsys.readouterr().err
