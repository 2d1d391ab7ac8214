"""benchmarks/startup.py: the timed lines of a `muse train` process, Triton's autotuning files,
the CPU smoke run (slow), and that CPU figures are never labelled GPU ones."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def startup():
    spec = importlib.util.spec_from_file_location("bench_startup", ROOT / "benchmarks" / "startup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FAKE_TRAIN = textwrap.dedent('''
    import json, os, sys, time
    run = sys.argv[sys.argv.index("--run-dir") + 1]
    os.makedirs(run)
    print("some import noise")
    print("muse train: fake (1 parameter) on nothing, device cpu, run", run, flush=True)
    if os.environ.get("MUSE_TRITON_AUTOTUNE_CACHE") != "0":
        print("muse: tuning Triton kernel fake._k for n=4, float32 (once per GPU and shape; cached in "
              + os.environ["TRITON_CACHE_DIR"] + ")", file=sys.stderr, flush=True)
    time.sleep(0.3)  # compiling and tuning before the first window
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        for step, tps in ((1, 100.0), (2, 400.0), (3, 400.0), (4, 500.0)):
            f.write(json.dumps({"step": step, "loss": 1.0, "tokens": 50 * step, "tokens_per_s": tps}) + "\\n")
            print(f"step {step:>6}  loss 1.0000  lr 1.00e-03  {tps:,.0f} tok/s  peak 0 MiB", flush=True)
    print("Done: step 4")
''')


def test_run_mode_times_the_output_lines(startup, tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    cmd = [sys.executable, str(script), "--run-dir", str(tmp_path / "run")]
    r = startup.run_mode("cold", cmd, tmp_path / "caches", warmup_windows=1)
    assert r["returncode"] == 0 and "error" not in r
    assert r["steps"] == 4 and r["tokens_per_step"] == 50 and r["steady_tokens_per_s"] == 400.0
    assert r["steady_s"] == pytest.approx(4 * 50 / 400.0)
    assert 0 < r["setup_s"] < r["process_s"] and r["to_last_step_s"] >= 0.3
    assert r["overhead_s"] == pytest.approx(r["to_last_step_s"] - r["steady_s"])
    assert r["tuning_notices"] == 1 and r["tuned"] == ["fake._k for n=4, float32"]
    assert r["windows_tokens_per_s"] == [100.0, 400.0, 400.0, 500.0]
    retune = startup.run_mode("retune", cmd, tmp_path / "caches", warmup_windows=1)  # the old run dir is replaced
    assert retune["returncode"] == 0 and retune["tuning_notices"] == 0  # MUSE_TRITON_AUTOTUNE_CACHE=0 reached it

    failing = [sys.executable, "-c", "print('muse train: x'); raise SystemExit(3)", "--run-dir", str(tmp_path / "r2")]
    bad = startup.run_mode("warm", failing, tmp_path / "caches", warmup_windows=1)
    assert bad["error"] == "exit 3" and bad["output_tail"] == ["muse train: x"]


def test_tuning_files(startup, tmp_path):
    d = tmp_path / "triton" / "ab12"
    d.mkdir(parents=True)
    cfg = lambda bt, w: {"kwargs": {"BT": bt}, "num_warps": w, "num_ctas": 1, "num_stages": 1,  # noqa: E731
                         "maxnreg": None, "pre_hook": None, "ir_override": None}
    (d / "_fwd_kernel.autotune.json").write_text(json.dumps({
        "key": [64, "torch.bfloat16", "NVIDIA H100 80GB HBM3 (132 SMs)"],
        "configs_timings": [[cfg(8, 4), [0.30, 0.29, 0.31]], [cfg(32, 4), [0.10, 0.09, 0.11]],
                            [cfg(8, 8), [0.20, 0.19, 0.21]]]}))
    (rows,) = startup.tuning_files(tmp_path / "triton")
    assert rows["kernel"] == "_fwd_kernel" and rows["configs"] == 3 and rows["key"][-1].startswith("NVIDIA H100")
    assert rows["best"] == {"BT": 32, "num_warps": 4, "num_stages": 1} and rows["best_ms"] == 0.10
    assert rows["first_over_best"] == pytest.approx(3.0)
    md = startup.startup_markdown({"config": {"preset": "standard", "steps": 60, "overrides": {}}, "device": "GPU",
                           "git_sha": "abcdef0123", "torch": "2.11", "triton": "3.6",
                           "figures": {"runs": [], "tuning": [rows]}})
    assert "| _fwd_kernel | 64, torch.bfloat16, NVIDIA H100 80GB HBM3 (132 SMs) | 3 |" in md and "| 3.00 |" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal off CUDA")
def test_cpu_figures_are_never_gpu_ones(startup, capsys):
    before = set((ROOT / "benchmarks" / "results").iterdir())
    assert startup.main(["--preset", "tiny", "--steps", "2"]) == 2
    assert "not on CUDA" in capsys.readouterr().err
    assert set((ROOT / "benchmarks" / "results").iterdir()) == before


@pytest.mark.slow
def test_cpu_smoke(startup, tmp_path):
    rc = startup.main([
        "--preset", "tiny", "--steps", "2", "--log-every", "1", "--warmup-windows", "0", "--eval-tokens", "512",
        "--modes", "cold", "warm", "--set", "train.batch_size=2", "--set", "train.seq_len=64",
        "--set", "data.tokenizer=bytes", "--set", "model.vocab_size=257", "--data-cache", str(tmp_path / "data"),
        "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    assert rc == 0
    res = json.loads((tmp_path / "out" / "startup-cpu.json").read_text())
    assert res["benchmark"] == "startup" and res["device_type"] == "cpu" and "triton" in res
    assert {"git_sha", "date", "device", "torch"} <= res.keys()
    assert res["config"]["command"].startswith("python -m muse.cli train tiny --run-dir ")
    assert [r["mode"] for r in res["figures"]["runs"]] == ["cold", "warm"]
    for r in res["figures"]["runs"]:
        assert r["returncode"] == 0 and r["steps"] == 2 and r["steady_tokens_per_s"] > 0 and r["setup_s"] > 0
    assert res["figures"]["tuning"] == []  # the CPU runs no Triton kernel
    assert "| cold |" in (tmp_path / "out" / "startup-cpu.md").read_text()
