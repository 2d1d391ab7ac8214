"""Checkpoints: exact round trips, resumable optimizer and RNG state, and crash safety."""

import errno
import json
import os
import random
import resource
import signal

import numpy as np
import pytest
import torch
from torch import nn

from muse.train import checkpoint as ck
from muse.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_file,
    read_meta,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


class Shared(nn.Module):
    """Two blocks that share one LayerNorm, plus a head tied to the embedding."""

    def __init__(self, vocab=11, d=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        norm = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(nn.Sequential(norm, nn.Linear(d, d)) for _ in range(2))
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        x = self.emb(idx)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def make_model(seed=0):
    torch.manual_seed(seed)
    return Shared()


def batches(n, seed=123):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 11, (4, 6), generator=g) for _ in range(n)]


def train_steps(model, opt, sched, data):
    for idx in data:
        logits = model(idx[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), idx[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def make_training(seed=0):
    model = make_model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def save(run, step, model=None, tags=("last",), **meta):
    model = model or make_model(step)
    return save_checkpoint(run, model, {"step": step}, {"config.yaml": b"a: 1\n"}, tags=tags, meta=meta or None)


def checkpoint_dirs(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())


# ----------------------------------------------------------------------------- round trips


def test_weights_round_trip_bit_exact_with_shared_modules(tmp_path):
    model = make_model(1)
    path = save_checkpoint(tmp_path, model, {"step": 7}, {"config.yaml": b"x: 1\n", "tokenizer.json": b"{}"})
    assert path == tmp_path / "checkpoints" / "step-00000007"
    assert sorted(os.listdir(path)) == ["config.yaml", "meta.json", "model.safetensors", "tokenizer.json", "trainer.pt"]

    fresh = make_model(2)
    ckpt_dir, state = load_checkpoint(tmp_path, fresh)
    assert ckpt_dir == path and state == {"step": 7}
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    # sharing is structural and survives: one tensor, two names
    assert fresh.head.weight is fresh.emb.weight
    assert fresh.blocks[0][0] is fresh.blocks[1][0]
    assert read_file(path, "tokenizer.json") == b"{}"
    assert read_file(tmp_path, "config.yaml") == b"x: 1\n"


def test_real_model_with_shared_norms_and_tied_head(tmp_path):
    from muse import build_model
    from muse.config import ModelConfig, NormConfig, HeadConfig

    cfg = ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, max_seq_len=8,
                      norm=NormConfig(shared=True), head=HeadConfig(kind="tied"))
    torch.manual_seed(0)
    model = build_model(cfg)
    save_checkpoint(tmp_path, model, {"step": 1})
    torch.manual_seed(1)
    fresh = build_model(cfg)
    load_checkpoint(tmp_path, fresh, trainer=False)
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name


def test_optimizer_resume_is_bit_exact(tmp_path):
    data = batches(5)
    model, opt, sched = make_training()
    train_steps(model, opt, sched, data)  # 5 uninterrupted steps

    model1, opt1, sched1 = make_training()
    train_steps(model1, opt1, sched1, data[:3])
    state = {"step": 3, "optimizer": opt1.state_dict(), "scheduler": sched1.state_dict(), "rng": rng_state()}
    save_checkpoint(tmp_path, model1, state)

    model2, opt2, sched2 = make_training(seed=99)  # different init: everything must come from disk
    _, state = load_checkpoint(tmp_path, model2)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    train_steps(model2, opt2, sched2, data[3:])

    for (name, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), name
    for p, q in zip(model.parameters(), model2.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], opt2.state[q][key])
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_rng_state_restores_every_generator(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    random.random(), np.random.randn(), torch.randn(1)  # move away from a seed-only state
    np.random.standard_normal()  # leaves a cached Gaussian in some numpy versions
    save_checkpoint(tmp_path, make_model(), {"step": 1, "rng": rng_state()})
    expected = (random.random(), np.random.randn(3).tolist(), torch.randn(3).tolist())

    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    _, state = load_checkpoint(tmp_path)  # through torch.load(weights_only=True)
    set_rng_state(state["rng"])
    assert (random.random(), np.random.randn(3).tolist(), torch.randn(3).tolist()) == expected


def test_meta_and_pointers(tmp_path):
    save(tmp_path, 10, tags=("last", "best"), val_loss=2.5)
    pointer = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert pointer["dir"] == "step-00000010" and pointer["step"] == 10 and pointer["val_loss"] == 2.5
    meta = read_meta(tmp_path)
    assert meta["step"] == 10 and meta["val_loss"] == 2.5 and "config.yaml" in meta["files"]


def test_bad_arguments_write_nothing(tmp_path):
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path, make_model(), {})
    with pytest.raises(ValueError, match="plain name"):
        save_checkpoint(tmp_path, make_model(), {"step": 1}, {"../x": b""})
    with pytest.raises(ValueError, match="tag"):
        save_checkpoint(tmp_path, make_model(), {"step": 1}, tags=("a/b",))
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, make_model(), {"step": 1}, meta={"x": object()})
    assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


# ----------------------------------------------------------------------------- resolving


def test_resolve_accepts_run_checkpoints_and_step_dirs(tmp_path):
    save(tmp_path, 5, tags=("last", "best"))
    save(tmp_path, 9)
    step9, step5 = tmp_path / "checkpoints" / "step-00000009", tmp_path / "checkpoints" / "step-00000005"
    assert resolve_checkpoint(tmp_path) == step9
    assert resolve_checkpoint(tmp_path, "best") == step5
    assert resolve_checkpoint(tmp_path / "checkpoints") == step9
    assert resolve_checkpoint(step5) == step5


def test_resolve_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .*: expected checkpoints/last\.json"):
        resolve_checkpoint(tmp_path)
    save(tmp_path, 3)
    with pytest.raises(CheckpointError, match=r"expected checkpoints/best\.json"):
        resolve_checkpoint(tmp_path, "best")
    (tmp_path / "checkpoints" / "last.json").write_text(json.dumps({"dir": "step-00000042", "step": 42}))
    with pytest.raises(CheckpointError, match="step-00000042, which is missing"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "last.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        resolve_checkpoint(tmp_path)


def test_load_into_wrong_model_is_a_clear_error(tmp_path):
    save(tmp_path, 1)
    with pytest.raises(CheckpointError, match="cannot load weights"):
        load_checkpoint(tmp_path, nn.Linear(3, 3))


# ----------------------------------------------------------------------------- garbage collection


def test_gc_keeps_only_dirs_referenced_by_pointers(tmp_path):
    save(tmp_path, 100, tags=("last", "best"))
    save(tmp_path, 200)
    save(tmp_path, 300)
    assert checkpoint_dirs(tmp_path) == ["step-00000100", "step-00000300"]
    save(tmp_path, 400, tags=("last", "best"))
    assert checkpoint_dirs(tmp_path) == ["step-00000400"]


def test_same_step_overwrite_replaces_contents(tmp_path):
    save(tmp_path, 100, model=make_model(1))
    save(tmp_path, 100, model=make_model(2), tags=("last", "best"))
    fresh = make_model(3)
    load_checkpoint(tmp_path, fresh)
    assert torch.equal(fresh.emb.weight, make_model(2).emb.weight)
    assert checkpoint_dirs(tmp_path) == ["step-00000100"]


# ----------------------------------------------------------------------------- failures


def assert_previous_intact(run, step=100, seed=100):
    """`last` still resolves to the step-100 checkpoint with its original weights; no temp dirs."""
    fresh = make_model(999)
    ckpt_dir, state = load_checkpoint(run, fresh)
    assert ckpt_dir.name == f"step-{step:08d}" and state["step"] == step
    assert torch.equal(fresh.emb.weight, make_model(seed).emb.weight)
    assert not [p for p in os.listdir(run / "checkpoints") if p.startswith(".")]


def assert_one_line(err: CheckpointError, *parts):
    msg = str(err)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, (part, msg)


def test_disk_full_while_writing_weights(tmp_path, monkeypatch):
    save(tmp_path, 100)

    def full(model, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ck, "save_model", full)
    with pytest.raises(CheckpointError) as exc:
        save(tmp_path, 200)
    assert_one_line(exc.value, "step-00000200", "No space left on device", "last good checkpoint (step 100")
    monkeypatch.undo()
    assert_previous_intact(tmp_path)
    assert checkpoint_dirs(tmp_path) == ["step-00000100"]


def test_disk_full_while_writing_trainer_state(tmp_path, monkeypatch):
    save(tmp_path, 100)

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ck.torch, "save", full)
    with pytest.raises(CheckpointError, match="No space left"):
        save(tmp_path, 200)
    monkeypatch.undo()
    assert_previous_intact(tmp_path)


def _torch_save_out_of_space(obj, f, *args, **kwargs):
    """What torch.save does on a full disk: part of the file is written, the OSError of the
    failed write is caught inside torch, and RuntimeError("... unexpected pos ...") is raised."""
    f.write(b"PK\x03\x04 partial zip")
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 378368 vs 378256")


def _torch_save_broken(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 partial zip")
    raise RuntimeError("basic_ios::clear: iostream error")


def _safetensors_out_of_space(model, filename, *args, **kwargs):
    with open(filename, "wb") as f:
        f.write(b"partial")
    raise ck.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize(
    "target, writer, needles",
    [
        ("torch.save", _torch_save_out_of_space, ["writing trainer.pt failed: [Errno 28] No space left on device"]),
        ("torch.save", _torch_save_broken, ["writing trainer.pt failed: RuntimeError: basic_ios::clear"]),
        ("save_model", _safetensors_out_of_space, ["writing model.safetensors failed: [Errno 28] No space left"]),
    ],
)
def test_any_writer_failure_is_a_checkpoint_error(tmp_path, monkeypatch, target, writer, needles):
    """torch.save and safetensors do not raise OSError for a failed write; every writer's
    failure must still be one CheckpointError line naming the file, the cause and what is kept."""
    save(tmp_path, 100)
    monkeypatch.setattr(ck.torch if target == "torch.save" else ck, target.split(".")[-1], writer)
    with pytest.raises(CheckpointError) as exc:
        save(tmp_path, 200)
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    assert_one_line(exc.value, str(root / "step-00000200"), *needles,
                    f"the last good checkpoint (step 100, {root / 'step-00000100'}) is intact")
    assert_previous_intact(tmp_path)  # loads, and no temporary directory or file is left
    assert checkpoint_dirs(tmp_path) == ["step-00000100"]


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
@pytest.mark.parametrize("failing", ["model.safetensors", "trainer.pt"])
def test_real_failed_write_of_each_writer(tmp_path, failing):
    """The real writers hitting a real write error (a file-size limit stands in for a full
    disk: the kernel refuses the write with EFBIG where a full disk gives ENOSPC)."""
    save(tmp_path, 100)
    model = nn.Linear(64, 64 if failing == "trainer.pt" else 512)  # 16 KiB or 128 KiB of weights
    state = {"step": 200, "big": torch.zeros(64 * 1024)}  # 256 KiB in trainer.pt
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of killing the process
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(CheckpointError) as exc:
            save_checkpoint(tmp_path, model, state)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert_one_line(exc.value, f"writing {failing} failed: [Errno {errno.EFBIG}] {os.strerror(errno.EFBIG)}",
                    "last good checkpoint (step 100")
    assert_previous_intact(tmp_path)


def test_read_only_directory(tmp_path, monkeypatch):
    save(tmp_path, 100)
    root = tmp_path / "checkpoints"
    if os.geteuid() != 0:  # chmod does not stop root, so there the refusal is simulated
        os.chmod(root, 0o555)
    else:
        def refuse(path, *args, **kwargs):
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        monkeypatch.setattr(os, "mkdir", refuse)
    try:
        with pytest.raises(CheckpointError) as exc:
            save(tmp_path, 200)
    finally:
        os.chmod(root, 0o755)
        monkeypatch.undo()
    assert_one_line(exc.value, str(root / "step-00000200"), "Errno", "step 100")
    assert_previous_intact(tmp_path)


def test_failed_rename_keeps_previous(tmp_path, monkeypatch):
    save(tmp_path, 100)

    def fail(*args):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "rename", fail)
    with pytest.raises(CheckpointError, match="Input/output error"):
        save(tmp_path, 200)
    monkeypatch.undo()
    assert_previous_intact(tmp_path)


def test_failed_pointer_replace_keeps_previous(tmp_path, monkeypatch):
    save(tmp_path, 100)

    def fail(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(CheckpointError, match="last good checkpoint"):
        save(tmp_path, 200)
    monkeypatch.undo()
    assert_previous_intact(tmp_path)
    assert checkpoint_dirs(tmp_path) == ["step-00000100"]  # the unreferenced new dir was rolled back


def test_failed_overwrite_of_same_step_keeps_previous(tmp_path, monkeypatch):
    save(tmp_path, 100)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "boom")))
    with pytest.raises(CheckpointError):
        save(tmp_path, 100, model=make_model(5))
    monkeypatch.undo()
    assert_previous_intact(tmp_path)


def test_exception_after_temp_write_propagates_and_keeps_previous(tmp_path, monkeypatch):
    save(tmp_path, 100)

    def interrupted(tmp, final):
        assert (tmp / "meta.json").exists()  # everything was written, but not yet committed
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "_commit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 200)
    monkeypatch.undo()
    assert_previous_intact(tmp_path)


def test_hard_crash_leftovers_are_ignored_then_collected(tmp_path):
    """A killed process cannot clean up: its temp dir must not be mistaken for a checkpoint."""
    save(tmp_path, 100)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-00000200-99999").mkdir()
    (root / ".tmp-step-00000200-99999" / "model.safetensors").write_bytes(b"half")
    (root / ".last.json.tmp-99999").write_text('{"dir": "step-00000200"')
    assert resolve_checkpoint(tmp_path).name == "step-00000100"
    save(tmp_path, 300)
    assert sorted(os.listdir(root)) == ["last.json", "step-00000300"]


def test_crash_between_the_two_renames_of_an_overwrite(tmp_path):
    """Killed after moving the old same-step dir aside but before renaming the new one in."""
    save(tmp_path, 100)
    root = tmp_path / "checkpoints"
    os.rename(root / "step-00000100", root / ".old-step-00000100-99999")
    assert resolve_checkpoint(tmp_path).name == ".old-step-00000100-99999"
    fresh = make_model(0)
    load_checkpoint(tmp_path, fresh)
    assert torch.equal(fresh.emb.weight, make_model(100).emb.weight)
    save(tmp_path, 200, tags=("best",))  # the next save puts it back first
    assert_previous_intact(tmp_path)
    assert checkpoint_dirs(tmp_path) == ["step-00000100", "step-00000200"]
