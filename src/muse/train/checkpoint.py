"""Atomic, self-contained training checkpoints.

Layout of a run directory::

    RUN/checkpoints/
        step-00000100/          one complete checkpoint
            model.safetensors   weights (shared tensors stored once), or instead
            dcp/                weights and optimizer states sharded by the processes of an FSDP
                                run (torch.distributed.checkpoint; muse.distributed.checkpoint)
            trainer.pt          optimizer, scheduler, scaler, RNG, step, data position, ...
            meta.json           step, time, versions, caller metadata
            config.yaml, ...    caller-given files, so the directory stands on its own
        last.json               {"dir": "step-00000100", "step": 100, ...}
        best.json               same format; any tag name works

Crash safety comes from two atomic operations: a checkpoint is written completely into a
hidden temporary directory and then renamed to ``step-…``; a tag is moved by replacing its
small JSON pointer. Until the pointer is replaced, readers keep seeing the previous
checkpoint, so a crash, a full disk or a read-only directory at any moment leaves ``last``
loadable and unchanged. Step directories that no pointer references are deleted after a
successful save. One process writes a run directory at a time (rank 0 under DDP/FSDP).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

CHECKPOINTS = "checkpoints"
WEIGHTS = "model.safetensors"
SHARDS = "dcp"  # the folder of a sharded checkpoint (torch.distributed.checkpoint)
TRAINER = "trainer.pt"
META = "meta.json"
_RESERVED = (WEIGHTS, SHARDS, TRAINER, META)
_STEP_DIR = re.compile(r"^step-\d{8,}$")
_TAG = re.compile(r"^[A-Za-z0-9_-]+$")
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, found or read. The message is one line naming the path."""


class _WriteFailed(Exception):
    """One file of a new checkpoint could not be written; the message names it and the cause."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"writing {name} failed: {reason}")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


# ----------------------------------------------------------------------------- low-level I/O


def _fsync_dir(path: Path) -> None:
    """Make a rename or file creation inside ``path`` durable (POSIX only; a no-op elsewhere)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    """fsync a file written by a library that does not do it (safetensors)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _torch_save(obj: Any, path: Path) -> None:
    # Through a Python file object, so the OSError (with errno) of a failed write is raised or
    # chained: for a path, torch reports only "unexpected pos" or "iostream error".
    with open(path, "wb") as f:
        torch.save(obj, f)


# safetensors (Rust) reports an OS error only in its message: "... (os error 28)"
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _write_failure(e: BaseException) -> str:
    """Why a write failed, in one line, from the OS error behind ``e`` where there is one.

    torch.save reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc]
    unexpected pos ...`` with the OSError only in its ``__context__``, and safetensors raises its
    own error type, so the exception itself often does not say what happened.
    """
    err: BaseException | None = e
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            return one_line(err)
        m = _RUST_OS_ERROR.search(str(err))
        if m:
            code = int(m.group(1))
            return f"[Errno {code}] {os.strerror(code)}"
        err = err.__cause__ or err.__context__
    return one_line(e) if isinstance(e, OSError) else f"{type(e).__name__}: {one_line(e)}"


def _write_file(path: Path, write: Callable[[Path], None]) -> None:
    """Write one file of a checkpoint with ``write(path)`` and make it durable. Every failure
    becomes :class:`_WriteFailed` naming the file and the cause: the writers (torch.save,
    safetensors) raise RuntimeError or their own types, not only OSError."""
    try:
        write(path)
        _fsync_file(path)
    except Exception as e:
        raise _WriteFailed(path.name, _write_failure(e)) from e


def _write_pointer(root: Path, tag: str, record: dict) -> None:
    """Atomically point ``tag`` at a checkpoint: temp file + fsync + os.replace."""
    tmp = root / f".{tag}.json.tmp-{os.getpid()}"
    try:
        _write_bytes(tmp, (json.dumps(record, indent=2) + "\n").encode())
        os.replace(tmp, root / f"{tag}.json")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(root)


def _read_pointer(root: Path, tag: str) -> dict | None:
    """The pointer record of ``tag``, or None when there is none (or it cannot be parsed)."""
    try:
        record = json.loads((root / f"{tag}.json").read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and isinstance(record.get("dir"), str) and "/" not in record["dir"]
    return record if ok else None


def _pointer_tags(root: Path) -> list[str]:
    return sorted(p.stem for p in root.glob("*.json") if _TAG.match(p.stem))


def _describe_previous(root: Path) -> str:
    prev = _read_pointer(root, "last")
    if prev is None:
        return "no previous checkpoint exists"
    return f"the last good checkpoint (step {prev.get('step')}, {root / prev['dir']}) is intact"


def one_line(err: BaseException) -> str:
    """An error's message on one line (its type name when it has none)."""
    return " ".join(str(err).split()) or type(err).__name__


# ----------------------------------------------------------------------------- save


def _commit(tmp: Path, final: Path) -> Path | None:
    """Rename the finished ``tmp`` to ``final``; returns where an older ``final`` was moved aside.

    ``os.rename`` cannot replace a non-empty directory, so an existing same-step checkpoint is
    first renamed to ``.old-step-…-PID``. Until the caller has moved the pointers and deleted
    it, :func:`_recover` (and :func:`resolve_checkpoint`) can still find it there.
    """
    if not final.exists():
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        return None
    aside = final.parent / f".old-{final.name}-{os.getpid()}"
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(final, aside)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(aside, final)
        raise
    _fsync_dir(final.parent)
    return aside


def _recover(root: Path) -> None:
    """Undo a crash between the two renames of :func:`_commit`: put ``.old-step-…`` back."""
    for aside in root.glob(".old-step-*"):
        target = root / aside.name[len(".old-"):].rsplit("-", 1)[0]
        if aside.is_dir() and not target.exists():
            os.rename(aside, target)


def _collect_garbage(root: Path) -> None:
    """Delete step directories no pointer references, and leftovers of interrupted saves."""
    referenced = set()
    for tag in _pointer_tags(root):
        record = _read_pointer(root, tag)
        if record is None:  # an unreadable pointer: we cannot tell what it protects, keep everything
            return
        referenced.add(record["dir"])
    for entry in root.iterdir():
        stale_temp = entry.name.startswith((".tmp-", ".old-"))
        unreferenced = _STEP_DIR.match(entry.name) and entry.name not in referenced
        if entry.is_dir() and (stale_temp or unreferenced):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_file() and re.match(r"^\..+\.json\.tmp-\d+$", entry.name):
            entry.unlink(missing_ok=True)


def _write_contents(tmp: Path, model: nn.Module | None, trainer_state: dict, files: dict[str, bytes], meta_json: str,
                    write_model: Callable[[Path], None] | None) -> None:
    if write_model is not None:
        write_model(tmp)
    else:
        # save_model drops the duplicate names of shared tensors (tied head, shared norms) and
        # load_model restores them, so sharing survives the round trip.
        _write_file(tmp / WEIGHTS, lambda p: save_model(model, str(p)))
    _write_file(tmp / TRAINER, lambda p: _torch_save(trainer_state, p))
    for name, data in [*files.items(), (META, meta_json.encode())]:
        _write_file(tmp / name, lambda p, data=data: p.write_bytes(data))
    _fsync_dir(tmp)


def _check_args(trainer_state: dict, files: dict[str, bytes], tags: Iterable[str]) -> tuple[int, list[str]]:
    if "step" not in trainer_state:
        raise ValueError("trainer_state must hold the optimizer step under 'step'")
    step = int(trainer_state["step"])
    if step < 0:
        raise ValueError(f"trainer_state['step'] must be >= 0; got {step}")
    tags = list(tags)
    if not tags:
        raise ValueError("save_checkpoint needs at least one tag, or the new checkpoint would be deleted at once")
    for tag in tags:
        if not _TAG.match(tag):
            raise ValueError(f"checkpoint tag must match {_TAG.pattern}; got {tag!r}")
    for name in files:
        if name in _RESERVED or not name or name.startswith(".") or "/" in name or "\\" in name:
            raise ValueError(f"extra checkpoint file must be a plain name other than {', '.join(_RESERVED)}; got {name!r}")
    return step, tags


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: nn.Module | None,
    trainer_state: dict,
    files: dict[str, bytes] | None = None,
    tags: Iterable[str] = ("last",),
    meta: dict | None = None,
    *,
    write_model: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``RUN/checkpoints/step-NNNNNNNN/`` atomically and point each of ``tags`` at it.

    Args:
        run_dir: the run directory; ``checkpoints/`` is created inside it.
        model: the plain single-device module (unwrap DDP; FSDP callers gather first).
        trainer_state: everything else needed to resume, saved with ``torch.save``. Must hold
            ``step``; keep it to tensors, numbers, strings and containers so that it loads with
            ``torch.load(weights_only=True)`` (state dicts and :func:`rng_state` qualify).
        files: extra files written verbatim into the checkpoint (``config.yaml``, tokenizer).
        tags: pointers to move to the new checkpoint, e.g. ``("last", "best")``.
        meta: JSON-serialisable facts (val loss, tokens seen) copied into ``meta.json`` and
            the pointers.
        write_model: instead of ``model.safetensors``, ``write_model(tmp)`` writes the model
            into the new checkpoint's temporary directory (a sharded checkpoint's ``dcp/``, which
            every process writes: :func:`muse.distributed.checkpoint.save_sharded`); ``model``
            is then unused.

    Returns the checkpoint directory. Raises :class:`CheckpointError` when the file system
    refuses (full disk, read-only, permissions) or a file cannot be written for any other
    reason; the message names the cause and the last good checkpoint, which stays intact.
    """
    files = dict(files or {})
    step, tags = _check_args(trainer_state, files, tags)
    root = Path(run_dir).expanduser() / CHECKPOINTS
    name = step_dir_name(step)
    final, tmp = root / name, root / f".tmp-{name}-{os.getpid()}"
    record = {**(meta or {}), "dir": name, "step": step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    meta_json = json.dumps(
        {**record, "format": FORMAT_VERSION, "tags": tags, "torch": torch.__version__,
         "files": sorted([SHARDS if write_model else WEIGHTS, TRAINER, META, *files])},
        indent=2,
    ) + "\n"  # serialise before touching the disk: a TypeError here must not leave anything behind

    written: list[str] = []
    try:
        root.mkdir(parents=True, exist_ok=True)
        _recover(root)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write_contents(tmp, model, trainer_state, files, meta_json, write_model)
        aside = _commit(tmp, final)
        try:
            for tag in tags:
                _write_pointer(root, tag, record)
                written.append(tag)
        except BaseException:
            if not written:  # nothing points at the new directory yet: roll it back
                shutil.rmtree(final, ignore_errors=True)
                if aside is not None:
                    os.rename(aside, final)
            raise
    except (OSError, _WriteFailed) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if written:
            state = f"{final.name} was saved and {', '.join(written)} points to it, the other tags were not moved"
        else:
            state = _describe_previous(root)
        raise CheckpointError(f"cannot save checkpoint step {step} to {final}: {one_line(e)}; {state}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _collect_garbage(root)
    return final


# ----------------------------------------------------------------------------- load


def is_sharded(path: Path) -> bool:
    """The checkpoint directory ``path`` holds DCP shards (it may also hold an exported
    ``model.safetensors``)."""
    return (path / SHARDS / ".metadata").is_file()


def _is_checkpoint_dir(path: Path) -> bool:
    return ((path / WEIGHTS).is_file() or is_sharded(path)) and (path / TRAINER).is_file()


def resolve_checkpoint(path: str | os.PathLike, tag: str = "last") -> Path:
    """The checkpoint directory meant by ``path``: a run dir or ``checkpoints/`` dir (through
    the ``tag`` pointer) or a ``step-…`` dir itself."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the path does not exist")
    if _is_checkpoint_dir(path):
        return path
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}: expected a run, checkpoints/ or step-… directory")
    if (path / WEIGHTS).exists() or (path / SHARDS).exists() or (path / TRAINER).exists():
        raise CheckpointError(f"incomplete checkpoint {path}: expected {TRAINER} and {WEIGHTS} or {SHARDS}/")
    if path.name == CHECKPOINTS or (path / f"{tag}.json").exists():
        root, shown = path, f"{tag}.json"
    else:
        root, shown = path / CHECKPOINTS, f"{CHECKPOINTS}/{tag}.json"
    record = _read_pointer(root, tag)
    if record is None:
        if (root / f"{tag}.json").exists():
            raise CheckpointError(f"unreadable checkpoint pointer {root / f'{tag}.json'}")
        raise CheckpointError(f"no checkpoint in {path}: expected {shown}")
    ckpt = root / record["dir"]
    if _is_checkpoint_dir(ckpt):
        return ckpt
    # A save that crashed between its two renames leaves the previous same-step checkpoint here.
    for aside in sorted(root.glob(f".old-{record['dir']}-*")):
        if _is_checkpoint_dir(aside):
            return aside
    raise CheckpointError(f"{root / f'{tag}.json'} points to {record['dir']}, which is missing or incomplete")


def _load_trainer_state(path: Path, map_location: Any) -> dict:
    """torch.load with ``weights_only=True`` (checkpoints may come from elsewhere)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        # 8-bit optimizer state is a torchao tensor subclass that torchao allow-lists on import.
        if "torchao" not in str(e):
            raise CheckpointError(f"cannot read {path}: {one_line(e)}") from e
    try:
        import torchao.optim  # noqa: F401  (registers OptimState8bit with torch.serialization)
    except ImportError as e:
        raise CheckpointError(f"{path} holds torchao optimizer state: pip install 'muse[ao]'") from e
    return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    tag: str = "last",
    map_location: str | torch.device = "cpu",
    *,
    trainer: bool = True,
) -> tuple[Path, dict | None]:
    """Load a checkpoint: weights into ``model`` (strict) when given, and the trainer state.

    ``path`` is anything :func:`resolve_checkpoint` accepts. Returns ``(checkpoint_dir,
    trainer_state)``; ``trainer=False`` skips reading ``trainer.pt`` (evaluation, generation)
    and returns ``None`` in its place. A sharded checkpoint without an exported
    ``model.safetensors`` is read through DCP into the whole single-device ``model``; its
    optimizer states are not in ``trainer.pt`` (:func:`muse.distributed.checkpoint.load_sharded`).
    """
    ckpt = resolve_checkpoint(path, tag)
    if model is not None and not (ckpt / WEIGHTS).is_file():
        from muse.distributed.checkpoint import load_sharded

        load_sharded(ckpt, model)
    elif model is not None:
        try:
            load_model(model, ckpt / WEIGHTS, strict=True, device=str(map_location))
        except (RuntimeError, SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot load weights from {ckpt / WEIGHTS}: {one_line(e)}") from e
    state = _load_trainer_state(ckpt / TRAINER, map_location) if trainer else None
    return ckpt, state


def read_file(path: str | os.PathLike, name: str) -> bytes:
    """The bytes of an extra file (``config.yaml``, ``tokenizer.json``) saved with a checkpoint."""
    ckpt = resolve_checkpoint(path)
    try:
        return (ckpt / name).read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {ckpt} has no readable {name}: {one_line(e)}") from e


def read_meta(path: str | os.PathLike, tag: str = "last") -> dict:
    """``meta.json`` of a checkpoint: step, time, versions and the caller's metadata."""
    return json.loads(read_file(resolve_checkpoint(path, tag), META))


# ----------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    """All global RNG states: Python, NumPy, torch CPU and every CUDA device.

    Only tensors, numbers and tuples, so the result survives ``torch.load(weights_only=True)``.
    """
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (CUDA devices beyond those present are ignored)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    keys = keys.cpu().numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        for device, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), device)
