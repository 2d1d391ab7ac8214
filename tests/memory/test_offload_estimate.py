"""The estimate of a step with the CPU-offloaded AdamW (`adamw-offload`): optimizer states and
gradients of the large tensors in host memory, hand-checked on a tiny model; verify's 8 GiB rows."""

import json

import pytest

import muse
from muse.cli import main
from muse.memory import verify
from muse.memory.profile import OFFLOAD_MIN_NUMEL, StepPlan, estimate

ENV = "CUBLAS_WORKSPACE_CONFIG"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.setenv(ENV, "")
    monkeypatch.delenv(ENV)


def _tiny(**over):
    base = {"model.vocab_size": 512, "model.d_model": 64, "model.n_layers": 2, "model.n_heads": 4,
            "model.max_seq_len": 64}
    return muse.load_config("tiny", {**base, **over})


@pytest.mark.parametrize("precision", ["fp32", "bf16-pure"])
def test_offload_estimate_matches_hand_counts(precision):
    cfg = _tiny()
    es = 2 if precision == "bf16-pure" else 4
    numels = [p.numel() for p in muse.build_model(cfg).parameters()]
    small = [n for n in numels if n < OFFLOAD_MIN_NUMEL]
    big = [n for n in numels if n >= OFFLOAD_MIN_NUMEL]
    assert small and big  # the tiny model has both kinds

    off = estimate(cfg, StepPlan(2, 64, precision=precision, optimizer="adamw-offload"))
    ref = estimate(cfg, StepPlan(2, 64, precision=precision, optimizer="adamw"))
    assert off["optimizer"] == "adamw-offload"
    assert off["parameters"] == ref["parameters"] == sum(numels) * es  # the weights stay on the GPU
    # on the GPU: only the small tensors' gradients and AdamW states (exp_avg, exp_avg_sq, a 4-byte step)
    assert off["gradients"] == sum(small) * es
    assert off["optimizer_state"] == sum(2 * n * es + 4 for n in small)
    host = off["offload"]
    assert host["min_numel"] == OFFLOAD_MIN_NUMEL and host["offloaded_tensors"] == len(big)
    assert host["host_parameters"] == host["host_gradients"] == sum(big) * es
    assert host["host_optimizer_state"] == sum(2 * n * es + 4 for n in big)
    assert host["largest_offloaded_gradient"] == max(big) * es
    # what moved to the host is gone from the peak: at least the large tensors' AdamW states
    assert off["peak"] <= ref["peak"] - host["host_optimizer_state"]
    # ... and the largest gradient is on the GPU at some moment, beside every parameter
    assert off["peak"] >= off["parameters"] + host["largest_offloaded_gradient"] + off["workspace"]
    assert off["parameters"] + off["gradients"] + off["optimizer_state"] + off["workspace"] + off["activations"] \
        == off["peak"]
    assert "offload" not in ref


def test_offload_only_changes_the_full_step():
    cfg = _tiny()
    fb = estimate(cfg, StepPlan(2, 64, optimizer="adamw-offload", mode="fwdbwd"))
    fb_ref = estimate(cfg, StepPlan(2, 64, optimizer="adamw", mode="fwdbwd"))
    assert fb["peak"] == fb_ref["peak"] and "offload" not in fb  # no optimizer, no offloading


def test_memory_cli_offload_estimate_on_cpu(capsys):
    assert main(["memory", "tiny", "--model.n_layers", "2", "--seq", "64", "--device", "cpu",
                 "--optimizer", "adamw-offload", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["method"] == "estimate" and r["optimizer"] == "adamw-offload" and r["offload"]["host_optimizer_state"] > 0
    assert main(["memory", "tiny", "--model.n_layers", "2", "--seq", "64", "--device", "cpu",
                 "--optimizer", "adamw-offload"]) == 0
    out = capsys.readouterr().out
    assert "host memory (not in the peak)" in out and "kept on the GPU" in out


def test_budget_rows_keep_8bit_and_add_offload():
    rows = {(r[1], r[2]): r for r in verify.BUDGET_RUNS}
    assert ("phase8-max", "phase8-max") in rows  # the 8-bit AdamW row stays as it was
    assert len(rows[("phase8-max", "phase8-max")]) == 4
    off = rows[("phase8-max + adamw-offload", "phase8-max")]
    assert off[4] == {"optimizer": "adamw-offload"}


def test_verify_json_offload_row_in_estimate_mode(tmp_path, monkeypatch):
    small = {"model.vocab_size": 512, "model.d_model": 64, "model.n_layers": 1, "model.n_heads": 4}  # dense: fast
    monkeypatch.setattr(verify, "BUDGET_RUNS", [
        ("small", "dense", "baseline", small),
        ("small", "dense + adamw-offload", "baseline", small, {"optimizer": "adamw-offload"}),
    ])
    res = verify.run_verify(tmp_path, device="cpu", sections=(4,))
    eight, off = res["budget_8gib"]
    assert eight["optimizer"] == "adamw8bit" and "offload" not in eight
    assert off["optimizer"] == "adamw-offload" and off["precision"] == "bf16-pure" and off["checkpointing"]
    assert off["status"] == "PASS (estimate)" and off["budget"] == 8 * 2**30
    assert off["offload"]["host_optimizer_state"] > 0
    assert off["optimizer_state"] < eight["optimizer_state"] and off["gradients"] < eight["gradients"]
    saved = json.loads((tmp_path / "verify.json").read_text())
    assert saved["budget_8gib"][1]["offload"] == off["offload"]
    md = (tmp_path / "verify.md").read_text()
    assert "| dense + adamw-offload | adamw-offload |" in md and "| dense | adamw8bit |" in md


@pytest.mark.slow
def test_phase8_max_fits_8gib_only_with_offload():
    # the original reports' phase8-max: bf16 weights 3.88 GiB + 8-bit AdamW states 3.97 GiB do not fit
    # beside gradients; with the states and gradients in host memory the estimate is far below 8 GiB
    cfg = muse.load_config("phase8-max")
    eight = estimate(cfg, StepPlan(1, 512, precision="bf16-pure", optimizer="adamw8bit", checkpointing=True))
    off = estimate(cfg, StepPlan(1, 512, precision="bf16-pure", optimizer="adamw-offload", checkpointing=True))
    assert eight["peak"] > 8 * 2**30 > off["peak"]
    assert off["peak"] < 5 * 2**30 and off["offload"]["host_optimizer_state"] > 7 * 2**30
