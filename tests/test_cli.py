"""The `muse` command: params table/JSON for the headline presets, derived overrides, clean errors."""

import json
import shutil
import subprocess
import sys
import time

import pytest
import yaml

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


def test_a_reader_that_leaves_early_ends_quietly():
    # `muse presets | head -0`: the pipe's reader is gone before muse writes; no traceback, no
    # "Exception ignored" from the interpreter's last flush
    p = subprocess.Popen([sys.executable, "-m", "muse", "presets"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 1 and err == ""


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--device", "gpu"], "device must be auto, cpu, cuda or cuda:N; got 'gpu'"),  # was torch's traceback
        (["--batch-size", "0"], "--batch-size must be >= 1"),  # was one batch of the whole split
        (["--dataset", "text:{text}", "--data-dir", "{tmp}"], "data.data_dir (--data-dir) is only read by"),
    ],
)
def test_eval_bad_inputs_are_one_line(trained_run, tmp_path, capsys, args, needle):
    (tmp_path / "t.txt").write_text("".join(f"line {i} of some text\n" for i in range(200)))
    args = [a.format(text=tmp_path / "t.txt", tmp=tmp_path) for a in args]
    assert main(["eval", str(trained_run), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("muse: error: ") and needle in err and err.count("\n") == 1, err


def test_eval_on_another_dataset_leaves_the_runs_data_dir_behind(trained_run, tmp_path, capsys):
    """The run read WikiText-2 from a data_dir; --dataset text:FILE must not carry it over."""
    (tmp_path / "t.txt").write_text("".join(f"line {i} of some text\n" for i in range(200)))
    assert main(["eval", str(trained_run), "--dataset", f"text:{tmp_path / 't.txt'}", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dataset"] == f"text:{tmp_path / 't.txt'}" and res["tokens"] > 0


def test_runs_saved_with_an_unread_directory_still_load(trained_run, tmp_path, capsys):
    """Before DataConfig refused them, an unread data.tokenizer_dir was saved with the run."""
    run = tmp_path / "old"
    shutil.copytree(trained_run, run)
    for cfg_file in run.rglob("config.yaml"):
        cfg = yaml.safe_load(cfg_file.read_text())
        cfg["data"]["tokenizer_dir"] = "/was/never/read"  # the run's tokenizer is bpe
        cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["eval", str(run), "--split", "valid", "--max-tokens", "512", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 20
    assert main(["train", "--resume", str(run)]) == 0  # it is finished: says so, trains nothing
    assert "already reached train.max_steps=20 (step 20)" in capsys.readouterr().out


def test_a_run_that_fails_on_its_data_leaves_no_directory(tmp_path, capsys):
    run = tmp_path / "runs" / "r"
    assert main(["train", "tiny", "--dataset", f"text:{tmp_path / 'missing.txt'}", "--run-dir", str(run)]) == 2
    assert "muse: error:" in capsys.readouterr().err
    assert not run.exists()
