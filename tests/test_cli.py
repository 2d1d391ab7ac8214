"""The `muse` command: params table/JSON for the headline presets, derived overrides, clean errors."""

import json
import subprocess
import sys
import time

import pytest

from muse.cli import main


def params_json(capsys, *args):
    assert main(["params", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_params_ultra(capsys):
    r = params_json(capsys, "--preset", "ultra")
    assert {"actual_params", "dense_equivalent_params", "compression", "components"} <= set(r)
    assert 0.5e6 <= r["actual_params"] <= 0.7e6  # the original report: 616 K
    assert 29.0e6 <= r["dense_equivalent_params"] <= 29.5e6  # the original report: 29.16 M
    assert r["compression"] > 0.97
    names = [c["name"] for c in r["components"]]
    assert names == ["embedding", "mixers", "ffns", "norms", "head"]
    assert sum(c["actual"] for c in r["components"]) == r["actual_params"]


def test_params_phase8_max(capsys):
    r = params_json(capsys, "phase8-max")
    assert round(r["dense_equivalent_params"] / 1e9, 2) == 4.84
    assert round(r["actual_params"] / 1e9, 2) == 2.08


def test_params_phase8_max_tt(capsys):
    r = params_json(capsys, "phase8-max-tt")
    assert r["actual_params"] <= 30e6
    assert round(r["dense_equivalent_params"] / 1e9, 2) == 4.84


def test_params_xxl_100b_is_fast(capsys):
    t0 = time.perf_counter()
    r = params_json(capsys, "xxl-100b")
    assert time.perf_counter() - t0 < 20  # meta device: nothing is allocated
    assert r["dense_equivalent_params"] >= 100e9


def test_params_table_and_overrides(capsys):
    assert main(["params", "tiny", "--model.n_layers", "2"]) == 0
    out = capsys.readouterr().out
    assert "embedding" in out and "compression" in out
    r = params_json(capsys, "tiny", "--model.n_layers", "2", "--model.embedding.kind", "dense")
    assert r["components"][0]["actual"] == r["components"][0]["dense_equivalent"] - 256 * 128  # no position table


@pytest.mark.parametrize(
    "args, needle",
    [
        (["params", "tiny", "--model.d_modle", "64"], "--model.d_model"),
        (["params", "tiny", "--model.mixer.kind", "lstm"], "mixer.kind"),
        (["params", "nope"], "unknown preset"),
        (["params", "tiny", "--model.n_heads", "5"], "model.n_heads"),
        (["params", "tiny", "--preset", "ultra"], "not both"),
    ],
)
def test_errors_are_one_line_exit_2(capsys, args, needle):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "muse", "presets"], capture_output=True, text=True, check=True).stdout
    assert "phase8-max" in out and "tiny" in out
