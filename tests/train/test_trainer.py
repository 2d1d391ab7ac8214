"""`muse train` end to end on real WikiText-2: learning, exact resume, and every bad input."""

import errno
import json
import math

import pytest

from muse.cli import main
from muse.model import MuseLM
from muse.train import checkpoint as ckpt_mod


def read_metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_validation_loss(wt2_args, tmp_path, capsys):
    assert main(wt2_args(tmp_path / "run")) == 0
    vals = [m["val_loss"] for m in read_metrics(tmp_path / "run") if "val_loss" in m]
    assert len(vals) == 3
    assert vals[-1] < vals[0] - 0.2 and vals[-1] < math.log(512)
    out = capsys.readouterr().out
    assert "muse eval" in out and "muse generate" in out
    ck = tmp_path / "run" / "checkpoints"
    assert (ck / "last.json").is_file() and (ck / "best.json").is_file()
    for name in ("model.safetensors", "config.yaml", "tokenizer.json"):
        assert any(ck.glob(f"step-*/{name}")), name


def test_resume_equals_uninterrupted(wt2_args, tmp_path, interrupted_run):
    # exactness is a CPU promise: CUDA's atomic-add kernels (embedding/index backward) reorder sums
    over = {"train.max_steps": 12, "train.eval_every": 4, "model.dropout": 0.1, "train.device": "cpu"}
    assert main(wt2_args(tmp_path / "full", **over)) == 0
    full = [m for m in read_metrics(tmp_path / "full") if "loss" in m]

    # the same run, killed right after its second checkpoint (step 8) ...
    assert interrupted_run(wt2_args(tmp_path / "cut", **over), after_saves=2) == 130
    # ... and resumed
    assert main(["train", "--resume", str(tmp_path / "cut"), "--train.progress", "false"]) == 0
    cut = [m for m in read_metrics(tmp_path / "cut") if "loss" in m]
    assert [m["step"] for m in cut] == list(range(1, 13))
    assert [m["loss"] for m in cut] == [m["loss"] for m in full]  # bit-for-bit
    a = (tmp_path / "full/checkpoints").glob("step-00000012/model.safetensors")
    b = (tmp_path / "cut/checkpoints").glob("step-00000012/model.safetensors")
    assert next(a).read_bytes() == next(b).read_bytes()


def test_resume_with_different_config_is_refused(wt2_args, tmp_path, capsys):
    assert main(wt2_args(tmp_path / "r", **{"train.max_steps": 2, "train.eval_every": 2})) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "r"), "--model.d_model", "32"]) == 2
    err = capsys.readouterr().err
    assert "disagrees" in err and "model.d_model" in err and err.count("\n") == 1


def test_nan_loss_stops_and_keeps_last_checkpoint(wt2_args, tmp_path, monkeypatch, capsys):
    real = MuseLM.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None, **kw):
        out = real(self, idx, targets, **kw)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 5:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MuseLM, "forward", poisoned)
    run = tmp_path / "nan"
    assert main(wt2_args(run, **{"train.eval_every": 2})) == 2
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "step 5" in err and "step-00000004" in err and "Traceback" not in err
    assert json.loads((run / "checkpoints/last.json").read_text())["step"] == 4


def test_full_disk_keeps_previous_checkpoint(wt2_args, tmp_path, monkeypatch, capsys):
    real = ckpt_mod.save_checkpoint
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            monkeypatch.setattr(ckpt_mod.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
        return real(*a, **k)

    monkeypatch.setattr("muse.train.trainer.save_checkpoint", flaky)
    run = tmp_path / "full"
    assert main(wt2_args(run, **{"train.eval_every": 2, "train.max_steps": 6})) == 2
    err = capsys.readouterr().err
    assert "No space left" in err and err.count("\n") == 1
    assert json.loads((run / "checkpoints/last.json").read_text())["step"] == 2
    assert not list((run / "checkpoints").glob(".tmp*"))


@pytest.mark.parametrize(
    "over, needle",
    [
        ({"--data-dir": "/nonexistent-dir"}, "/nonexistent-dir"),
        ({"train.seq_len": 1000}, "train.seq_len"),
        ({"model.vocab_sise": 10}, "--model.vocab_size"),
        ({"data.tokenizer": "gpt2"}, "tokenizer_dir"),
    ],
)
def test_bad_inputs_are_one_line_errors(wt2_args, tmp_path, capsys, over, needle):
    assert main(wt2_args(tmp_path / "bad", **over)) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_tokenizer_larger_than_model_vocab(wt2_args, tmp_path, capsys, shared_data):
    args = wt2_args(tmp_path / "bad", **{"data.tokenizer": "gpt2", "data.tokenizer_dir": str(shared_data / "gpt2")})
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "50257" in err and "model.vocab_size" in err and err.count("\n") == 1


def test_empty_data_dir(wt2_args, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(wt2_args(tmp_path / "bad", **{"--data-dir": str(tmp_path / "empty")})) == 2
    assert "expected" in capsys.readouterr().err


def test_unwritable_run_dir(wt2_args, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(wt2_args(tmp_path / "afile" / "run")) == 2
    err = capsys.readouterr().err
    assert "cannot create run directory" in err and err.count("\n") == 1


def test_existing_run_dir_is_not_overwritten(wt2_args, tmp_path, capsys):
    assert main(wt2_args(tmp_path / "r", **{"train.max_steps": 2, "train.eval_every": 2})) == 0
    assert main(wt2_args(tmp_path / "r", **{"train.max_steps": 2, "train.eval_every": 2})) == 2
    assert "--resume" in capsys.readouterr().err


def test_grad_accum_and_bf16_autocast_run(wt2_args, tmp_path):
    args = wt2_args(tmp_path / "acc", **{"train.max_steps": 3, "train.grad_accum": 2, "train.precision": "bf16",
                                          "train.eval_every": 3})
    assert main(args) == 0
    assert read_metrics(tmp_path / "acc")[-1]["step"] == 3
