"""The cuBLAS workspace cap: config validation, applying CUBLAS_WORKSPACE_CONFIG, the estimate's
workspace line, and the setting recorded by `muse memory` and `muse verify`."""

import json
import warnings

import pytest
import torch

import muse
from muse import runtime
from muse.cli import main
from muse.config import ConfigError, TrainConfig
from muse.memory import verify
from muse.memory.profile import (
    StepPlan, cublas_workspace_bytes, cublaslt_workspace_bytes, estimate, workspace_bytes,
)
from muse.train.trainer import config_differences

MiB, KiB = 2**20, 2**10
ENV = "CUBLAS_WORKSPACE_CONFIG"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No CUBLAS* variable from outside, and whatever a test sets is undone afterwards."""
    for name in (ENV, "CUBLASLT_WORKSPACE_SIZE", "TORCH_CUBLASLT_UNIFIED_WORKSPACE"):
        monkeypatch.setenv(name, "")  # records the original value for teardown ...
        monkeypatch.delenv(name)  # ... then starts from "unset"
    monkeypatch.setattr(runtime, "_cublas_warned", set())


def _tiny(**over):
    base = {"model.vocab_size": 512, "model.d_model": 64, "model.n_layers": 2, "model.n_heads": 4,
            "model.max_seq_len": 64}
    return muse.load_config("tiny", {**base, **over})


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("value", ["default", ":16:8", ":4096:1", ":4096:8", ":4096:2:16:8", ":0:0"])
def test_valid_settings(value):
    assert TrainConfig(cublas_workspace=value).cublas_workspace == value
    assert muse.load_config("tiny", {"train.cublas_workspace": value}).train.cublas_workspace == value


@pytest.mark.parametrize("value", ["16:8", ":16", ":16:8:", "auto", "", " :16:8", ":16:8x", ":a:b", "none"])
def test_invalid_settings_name_the_field_and_the_forms(value):
    with pytest.raises(ConfigError) as e:
        TrainConfig(cublas_workspace=value)
    msg = str(e.value)
    assert "train.cublas_workspace" in msg and "'default'" in msg and ":SIZE_KiB:COUNT" in msg and ":16:8" in msg


def test_invalid_setting_on_the_command_line_is_one_line(capsys):
    assert main(["memory", "tiny", "--device", "cpu", "--cublas-workspace", "16:8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.cublas_workspace" in err and "\n" not in err and "Traceback" not in err
    assert main(["verify", "--device", "cpu", "--cublas-workspace", "big"]) == 2
    assert "train.cublas_workspace" in capsys.readouterr().err


def test_changing_it_on_resume_is_allowed():
    a, b = _tiny(), _tiny(**{"train.cublas_workspace": ":16:8"})
    assert config_differences(a, b) == []


# ----------------------------------------------------------------------------- sizes


def test_workspace_sizes_follow_torch():
    assert cublas_workspace_bytes("default") == 32 * MiB  # sm90 (Hopper)
    assert cublas_workspace_bytes("default", sm90=False) == 8 * MiB + 128 * KiB  # :4096:2:16:8
    assert cublas_workspace_bytes(":4096:1") == 4 * MiB
    assert cublas_workspace_bytes(":16:8") == 128 * KiB
    assert cublas_workspace_bytes(":4096:2:16:8") == 8 * MiB + 128 * KiB
    assert cublas_workspace_bytes(":0:0") == 0
    # cuBLASLt: 1 MiB by default, never more than the cuBLAS workspace
    assert cublaslt_workspace_bytes("default") == 1 * MiB
    assert cublaslt_workspace_bytes(":16:8") == 128 * KiB


def test_workspace_per_step_matches_the_h100_measurements():
    # H100, torch 2.11: 66-69 MiB unset, 10-14 MiB at :4096:1, 0.5-6 MiB at :16:8 (training steps)
    assert workspace_bytes("default", "train") == 66 * MiB
    assert workspace_bytes(":4096:1", "train") == 10 * MiB
    assert workspace_bytes(":16:8", "train") == 512 * KiB
    assert workspace_bytes("default", "fwdbwd") == 66 * MiB
    assert workspace_bytes("default", "infer") == 33 * MiB  # one handle: no autograd thread


def test_cublaslt_environment_is_respected(monkeypatch):
    monkeypatch.setenv("CUBLASLT_WORKSPACE_SIZE", "4096")
    assert cublaslt_workspace_bytes("default") == 4 * MiB
    assert cublaslt_workspace_bytes(":16:8") == 128 * KiB
    monkeypatch.setenv("TORCH_CUBLASLT_UNIFIED_WORKSPACE", "1")
    assert cublaslt_workspace_bytes("default") == 0 and workspace_bytes("default") == 64 * MiB


# ----------------------------------------------------------------------------- applying it


def test_apply_sets_the_variable_before_cuda(monkeypatch):
    monkeypatch.setattr(runtime.torch.cuda, "is_initialized", lambda: False)
    assert runtime.apply_cublas_workspace("default") == "default"
    assert ENV not in runtime.os.environ  # default changes nothing
    assert runtime.apply_cublas_workspace(":16:8") == ":16:8"
    assert runtime.os.environ[ENV] == ":16:8"
    with pytest.raises(ConfigError, match="train.cublas_workspace"):
        runtime.apply_cublas_workspace("lots")


def test_default_keeps_an_exported_variable(monkeypatch):
    monkeypatch.setenv(ENV, ":4096:8")
    assert runtime.apply_cublas_workspace("default") == ":4096:8"
    assert runtime.effective_cublas_workspace("default") == ":4096:8"
    assert runtime.effective_cublas_workspace(":16:8") == ":16:8"


def test_after_cuda_init_a_different_setting_warns_once_and_changes_nothing(monkeypatch):
    monkeypatch.setattr(runtime.torch.cuda, "is_initialized", lambda: True)
    with pytest.warns(RuntimeWarning, match="cannot take effect") as rec:
        assert runtime.apply_cublas_workspace(":16:8") == "default"
    assert ":16:8" in str(rec[0].message) and ENV not in runtime.os.environ
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.apply_cublas_workspace(":16:8") == "default"  # once
        monkeypatch.setenv(ENV, ":4096:1")
        assert runtime.apply_cublas_workspace(":4096:1") == ":4096:1"  # already in effect: silent
        assert runtime.apply_cublas_workspace("default") == ":4096:1"


# ----------------------------------------------------------------------------- the estimate


def test_estimate_has_a_workspace_line_that_follows_the_setting():
    plan = StepPlan(2, 64)
    d = estimate(_tiny(), plan)
    c = estimate(_tiny(**{"train.cublas_workspace": ":16:8"}), plan)
    assert d["cublas_workspace"] == "default" and c["cublas_workspace"] == ":16:8"
    assert d["workspace"] == 66 * MiB and c["workspace"] == 512 * KiB
    assert d["peak"] - c["peak"] == 66 * MiB - 512 * KiB  # nothing else moves
    for key in ("parameters", "gradients", "optimizer_state", "activations"):
        assert d[key] == c[key], key
    inf = estimate(_tiny(), StepPlan(2, 64, mode="infer"))
    assert inf["workspace"] == 33 * MiB


def test_estimate_with_default_reads_an_exported_variable(monkeypatch):
    monkeypatch.setenv(ENV, ":4096:1")
    r = estimate(_tiny(), StepPlan(2, 64))
    assert r["cublas_workspace"] == ":4096:1" and r["workspace"] == 10 * MiB


# ----------------------------------------------------------------------------- commands


def _needs_fresh_cuda():
    """torch reads the setting once, at the first cuBLAS use: on a GPU box where earlier tests
    already used CUDA it cannot apply (the warning for that case has its own test)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        pytest.skip("CUDA is already initialised in this test process")


@pytest.mark.parametrize("flag", ["--cublas-workspace", "--train.cublas_workspace"])
def test_memory_json_records_the_setting_and_applies_it(flag, capsys):
    _needs_fresh_cuda()
    assert main(["memory", "tiny", "--model.n_layers", "2", "--seq", "64", "--device", "cpu", "--json",
                 flag, ":4096:1"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["cublas_workspace"] == ":4096:1" and r["workspace"] == 10 * MiB
    assert r["parameters"] + r["gradients"] + r["optimizer_state"] + r["workspace"] + r["activations"] == r["peak"]
    assert runtime.os.environ[ENV] == ":4096:1"  # set for the process, before any CUDA use


def test_memory_table_labels_the_workspace(capsys):
    assert main(["memory", "tiny", "--seq", "64", "--device", "cpu", "--cublas-workspace", ":16:8"]) == 0
    out = capsys.readouterr().out
    assert "cuBLAS workspace" in out and "512.00 KiB" in out and ":16:8" in out


def test_verify_applies_one_setting_to_every_row(tmp_path, monkeypatch, capsys):
    _needs_fresh_cuda()
    # small dense rows (few ops, fast on fake tensors): what is checked is that every row shares the setting
    small = {"model.vocab_size": 512, "model.d_model": 64, "model.n_layers": 1, "model.n_heads": 4}
    monkeypatch.setattr(verify, "TT_SHAPES", [(10_000, 512)])
    monkeypatch.setattr(verify, "TT_RANKS", [4])
    monkeypatch.setattr(verify, "FULL_MODEL", [
        ("small fp32", "baseline", small, dict(precision="fp32", optimizer="adamw")),
        ("small bf16-pure", "baseline", small, dict(precision="bf16-pure", optimizer="adamw8bit")),
    ])
    monkeypatch.setattr(verify, "BUDGET_RUNS", [("small", "dense", "baseline", small)])
    out = tmp_path / "v"
    assert main(["verify", "--out", str(out), "--device", "cpu", "--cublas-workspace", ":16:8"]) == 0
    res = json.loads((out / "verify.json").read_text())
    assert res["cublas_workspace"] == ":16:8" and res["cublas_workspace_requested"] == ":16:8"
    assert res["cublas_workspace_formula"] == 512 * KiB
    rows = [r[m] for r in res["full_model"] for m in ("train", "fwdbwd")] + res["budget_8gib"]
    assert all(r["cublas_workspace"] == ":16:8" and r["workspace"] == 512 * KiB for r in rows)
    assert "CUBLAS_WORKSPACE_CONFIG=:16:8" in (out / "verify.md").read_text()
    assert runtime.os.environ[ENV] == ":16:8"
