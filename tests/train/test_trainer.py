"""`muse train` end to end on real WikiText-2: learning, exact resume, and every bad input
(failed writes included: one `muse: error:` line, the last good checkpoint kept)."""

import contextlib
import errno
import json
import math
import os
import resource
import signal

import pytest
import torch

from muse.cli import main
from muse.model import MuseLM
from muse.train import checkpoint as ckpt_mod


def read_metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_validation_loss(wt2_args, tmp_path, capsys):
    assert main(wt2_args(tmp_path / "run", **{"train.progress": "true", "train.device": "cpu"})) == 0
    metrics = read_metrics(tmp_path / "run")
    vals = [m["val_loss"] for m in metrics if "val_loss" in m]
    assert len(vals) == 3
    assert vals[-1] < vals[0] - 0.2 and vals[-1] < math.log(512)
    out = capsys.readouterr().out
    assert "muse eval" in out and "muse generate" in out
    # off CUDA the memory figure is the process's peak resident set, in MiB, and the log says so
    assert "peak RSS" in out
    rss = [m["peak_memory_mib"] for m in metrics if "loss" in m]
    assert 50 < rss[-1] < 64 * 1024 and rss == sorted(rss)
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


# ----------------------------------------------------------------------------- failed writes


def _torch_save_out_of_space(obj, f, *args, **kwargs):
    """torch.save on a full disk: part of the file written, then RuntimeError("unexpected pos")
    raised while the OSError of the failed write is being handled."""
    f.write(b"PK\x03\x04 partial zip")
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 378368 vs 378256")


def _fail_on_save(monkeypatch, n, make_failing):
    """Make the n-th checkpoint save of a training run fail: make_failing() is called right before."""
    real, calls = ckpt_mod.save_checkpoint, {"n": 0}

    def save(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            make_failing()
        return real(*a, **k)

    monkeypatch.setattr("muse.train.trainer.save_checkpoint", save)


def assert_one_error_line(err, *needles):
    assert err.startswith("muse: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def assert_last_checkpoint_loads(run, step):
    from muse.runtime import load_for_inference

    _, _, _, ckpt, state = load_for_inference(run, torch.device("cpu"))
    assert ckpt.name == f"step-{step:08d}" and state["step"] == step
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_full_disk_while_torch_save_writes_is_one_line(wt2_args, tmp_path, monkeypatch, capsys):
    """Finding 5 of issue 20: torch.save's RuntimeError on a full disk ended in a traceback."""
    _fail_on_save(monkeypatch, 2, lambda: monkeypatch.setattr(ckpt_mod.torch, "save", _torch_save_out_of_space))
    run = tmp_path / "full"
    assert main(wt2_args(run, **{"train.eval_every": 2, "train.max_steps": 6})) == 2
    ck = run / "checkpoints"
    assert_one_error_line(
        capsys.readouterr().err, f"cannot save checkpoint step 4 to {ck / 'step-00000004'}",
        "writing trainer.pt failed: [Errno 28] No space left on device",
        f"the last good checkpoint (step 2, {ck / 'step-00000002'}) is intact",
    )
    monkeypatch.undo()
    assert_last_checkpoint_loads(run, 2)


@contextlib.contextmanager
def file_size_limit(nbytes):
    """Writes past nbytes fail with EFBIG, as writes to a full disk fail with ENOSPC (real
    kernel errors for every writer, no mock)."""
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
@pytest.mark.parametrize("failing", ["model.safetensors", "trainer.pt"])
def test_real_failed_checkpoint_write_is_one_line(wt2_args, tmp_path, monkeypatch, capsys, failing):
    run, limit = tmp_path / "r", contextlib.ExitStack()

    def limit_below(failing):  # the second save: each file up to the one that must fail fits
        step2 = run / "checkpoints" / "step-00000002"
        w, t = (step2 / "model.safetensors").stat().st_size, (step2 / "trainer.pt").stat().st_size
        assert w < t  # AdamW keeps two states per weight
        limit.enter_context(file_size_limit(w // 2 if failing == "model.safetensors" else (w + t) // 2))

    _fail_on_save(monkeypatch, 2, lambda: limit_below(failing))
    with limit:
        assert main(wt2_args(run, **{"train.eval_every": 2, "train.max_steps": 6, "train.log_every": 100})) == 2
    assert_one_error_line(capsys.readouterr().err, f"writing {failing} failed: [Errno {errno.EFBIG}]",
                          "the last good checkpoint (step 2")
    monkeypatch.undo()
    assert_last_checkpoint_loads(run, 2)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_failed_metrics_write_is_one_line(wt2_args, tmp_path, monkeypatch, capsys):
    run = tmp_path / "r"
    real_save, limit = ckpt_mod.save_checkpoint, contextlib.ExitStack()

    def save_then_limit(*a, **k):  # after the first checkpoint, no further metrics line fits
        out = real_save(*a, **k)
        limit.enter_context(file_size_limit((run / "metrics.jsonl").stat().st_size + 1))
        return out

    monkeypatch.setattr("muse.train.trainer.save_checkpoint", save_then_limit)
    with limit:
        assert main(wt2_args(run, **{"train.eval_every": 2, "train.max_steps": 6})) == 2
    assert_one_error_line(
        capsys.readouterr().err, f"cannot write {run / 'metrics.jsonl'}: [Errno {errno.EFBIG}]", "stopped at step 3",
        f"Last good checkpoint: {run / 'checkpoints' / 'step-00000002'} (step 2)",
    )
    assert_last_checkpoint_loads(run, 2)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_failed_config_write_is_one_line(wt2_args, tmp_path, monkeypatch, capsys):
    """The run's config.yaml is written before training starts: the error names it, nothing more."""
    from muse.train.trainer import Trainer

    real = Trainer._open_metrics

    def open_metrics(self, resume):
        with file_size_limit(100):  # config.yaml is ~1.7 KB
            return real(self, resume)

    monkeypatch.setattr(Trainer, "_open_metrics", open_metrics)
    run = tmp_path / "r"
    assert main(wt2_args(run)) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, f"cannot write {run / 'config.yaml'}: [Errno {errno.EFBIG}] File too large")
    assert "stopped at" not in err


def test_failed_tensorboard_write_is_one_line(wt2_args, tmp_path, monkeypatch, capsys):
    """tensorboard writes from a thread, which printed its own traceback on a full disk."""
    record_writer = pytest.importorskip("tensorboard.summary.writer.record_writer")

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    run = tmp_path / "r"
    assert main(wt2_args(run, **{"train.eval_every": 2, "train.max_steps": 4, "train.tensorboard": "true"})) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, f"cannot write {run / 'tensorboard'}: [Errno 28] No space left on device")
    assert "Exception in thread" not in err


# ----------------------------------------------------------------------------- resume


def test_resume_of_a_finished_run_says_so(wt2_args, tmp_path, capsys):
    """Finding 9 of issue 20: resuming a finished run printed `val loss nan`."""
    run = tmp_path / "r"
    assert main(wt2_args(run, **{"train.eval_every": 2, "train.max_steps": 4})) == 0
    logged = (run / "metrics.jsonl").read_text()
    val = json.loads((run / "checkpoints/last.json").read_text())["val_loss"]
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    # the run's own lines; the trainer's setup notes (train.cuda_graph auto -> ...) come before them
    out = "".join(l for l in capsys.readouterr().out.splitlines(True) if not l.startswith("muse: train.cuda_graph"))
    assert out == (
        f"muse train: {run} already reached train.max_steps=4 (step 4), val loss {val:.4f}; nothing to train. "
        f"Raise --train.max_steps to continue: muse train --resume {run} --train.max_steps 8\n"
    )
    assert (run / "metrics.jsonl").read_text() == logged
    assert json.loads((run / "checkpoints/last.json").read_text())["step"] == 4

    from muse.train.trainer import Trainer, load_run_config

    summary = Trainer(load_run_config(run), run, resume=True).fit()  # the library call alike
    assert summary["steps"] == 0 and summary["val_loss"] == val and summary["limit"][0] == "train.max_steps"


def test_resume_drops_a_torn_metrics_line(wt2_args, tmp_path):
    """A crash or a full disk can cut the last metrics line short; resuming must not choke on it."""
    run = tmp_path / "r"
    assert main(wt2_args(run, **{"train.eval_every": 2, "train.max_steps": 4})) == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 3.1, "l')
    assert main(["train", "--resume", str(run), "--train.max_steps", "6"]) == 0
    assert [m["step"] for m in read_metrics(run) if "loss" in m] == list(range(1, 7))


def test_new_run_starts_a_new_metrics_log(wt2_args, tmp_path):
    """A run that died before its first checkpoint leaves metrics.jsonl; a new run in that
    directory must not append to it."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 99.0}\n{"step": 2, "loss": 98.0}\n')
    assert main(wt2_args(run, **{"train.eval_every": 2, "train.max_steps": 2})) == 0
    assert [m["step"] for m in read_metrics(run) if "loss" in m] == [1, 2]
    assert all(m.get("loss") != 99.0 for m in read_metrics(run))


@pytest.mark.parametrize(
    "make_args, needle",
    [
        (lambda run, tmp: ["--resume", str(run), "--run-dir", str(tmp / "other")], "drop --run-dir"),
        (lambda run, tmp: ["--resume", str(run / "checkpoints")], "--resume takes a run directory"),
        (lambda run, tmp: ["--resume", str(next((run / "checkpoints").glob("step-*")))], "use --resume {run}"),
        (lambda run, tmp: ["--resume", str(tmp / "nope")], "the path does not exist"),
        (lambda run, tmp: ["--resume", str(tmp)], "expected checkpoints/last.json"),
    ],
)
def test_bad_resume_arguments(trained_run, tmp_path, capsys, make_args, needle):
    before = sorted(p.name for p in trained_run.rglob("*"))
    assert main(["train", *make_args(trained_run, tmp_path)]) == 2
    assert_one_error_line(capsys.readouterr().err, needle.format(run=trained_run))
    assert sorted(p.name for p in trained_run.rglob("*")) == before and not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    "budget, state, expected",
    [
        ({"max_steps": 250}, {"step": 250}, ("train.max_steps", "train.max_steps=250 (step 250)", "500")),
        ({"max_steps": 100}, {"step": 250}, ("train.max_steps", "train.max_steps=100 (step 250)", "500")),
        ({"max_steps": 0, "max_tokens": 1000}, {"tokens": 1024},
         ("train.max_tokens", "train.max_tokens=1000 (1,024 tokens)", "2048")),
        ({"max_steps": 0, "max_minutes": 0.05}, {"train_seconds": 3.3},
         ("train.max_minutes", "train.max_minutes=0.05 (0.06 minutes)", "0.11")),
        ({"max_steps": 250, "max_minutes": 4.0}, {"step": 10, "train_seconds": 240.0},
         ("train.max_minutes", "train.max_minutes=4 (4.00 minutes)", "8")),
        ({"max_steps": 250}, {"step": 249}, None),
    ],
)
def test_limit_reached_names_the_budget_and_a_larger_one(budget, state, expected):
    """What a finished (or resumed) run reports, and the value its `continue:` command raises."""
    from types import SimpleNamespace

    from muse.train.trainer import Trainer

    tc = SimpleNamespace(**{"max_steps": 0, "max_tokens": 0, "max_minutes": 0.0, **budget})
    fake = SimpleNamespace(cfg=SimpleNamespace(train=tc), **{"step": 0, "tokens": 0, "train_seconds": 0.0, **state})
    assert Trainer.limit_reached(fake) == expected
