"""Sharded checkpoints of FSDP runs, through ``torch.distributed.checkpoint`` (DCP).

A sharded checkpoint is an ordinary MUSE checkpoint directory (``muse.train.checkpoint``: written
whole into a temporary directory, renamed to ``step-…``, then its pointers swapped) whose weights
are a ``dcp/`` folder instead of ``model.safetensors``: every process writes its own shards of the
model and of the optimizer states there, and rank 0 writes the rest (``trainer.pt`` without the
optimizer, ``meta.json``, config and tokenizer), renames and moves the pointers. All processes
must see the same file system (one machine, or a shared one across machines).

DCP stores each tensor with its global shape, so a checkpoint written by N processes loads into M
processes, sharded or not, and into a single process with no process group at all (which is how
``muse eval`` / ``generate`` and ``--resume`` with one process read it). ``export_weights``
consolidates one into the single ``model.safetensors`` other tools read.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from muse.distributed.env import broadcast_object
from muse.train.checkpoint import SHARDS, WEIGHTS, CheckpointError, one_line, resolve_checkpoint, save_checkpoint

__all__ = ["export_weights", "load_full_into_sharded", "load_sharded", "save_sharded"]


@contextmanager
def _quiet():
    # DCP warns on every single-process load that it runs without a process group, which is
    # exactly the single-process case it supports
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*process group.*")
        warnings.filterwarnings("ignore", message=".*torch.distributed.*disabled.*")
        yield


def _states(model: nn.Module, optimizer) -> dict:
    """The model's (and optimizer's) state dicts keyed by parameter name, sharded as the model is:
    DTensor shards under FSDP, whole tensors otherwise. The values are the live tensors."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    states = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        states["optim"] = get_optimizer_state_dict(model, optimizer)
    return states


def _local(value):
    return value.to_local() if hasattr(value, "to_local") else value


def _quantized(value) -> bool:
    """An optimizer state held quantized (torchao's 8-bit ``OptimState8bit``, sharded or not)."""
    return isinstance(value, torch.Tensor) and hasattr(_local(value), "dequantize")


def _dequantized(value):
    """``value`` as a plain fp32 tensor of the same shape and sharding (a new tensor)."""
    local = _local(value).dequantize()
    if local is _local(value) or not hasattr(value, "to_local"):
        return local
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local, value.device_mesh, value.placements, run_check=False,
                              shape=value.shape, stride=value.stride())


def _plain_optimizer(optim_state: dict) -> dict:
    """The optimizer state dict with every quantized state replaced by a dequantized copy.

    Sharded checkpoints store optimizer states as plain tensors: which parameters torchao keeps in
    8 bits depends on the size of each process's shard, so a checkpoint must not depend on it to
    load into another number of processes (or into one, unsharded)."""
    return {
        "state": {name: {k: _dequantized(v) if _quantized(v) else v for k, v in st.items()}
                  for name, st in optim_state["state"].items()},
        "param_groups": optim_state["param_groups"],
    }


def save_sharded(run_dir: str | os.PathLike, model: nn.Module, optimizer, trainer_state: dict,
                 files: dict[str, bytes] | None, tags, meta: dict | None, *, is_main: bool) -> Path:
    """Save a sharded checkpoint; every process calls it at the same step with its own shards.

    ``trainer_state`` (rank 0's is the one kept) must not hold the optimizer: its states go into
    ``dcp/`` with the model's. Returns the checkpoint directory on every process. If any part
    fails, every process raises :class:`CheckpointError` with rank 0's one-line reason, and the
    last good checkpoint stays as it was.
    """
    states = _states(model, optimizer)
    if optimizer is not None:
        states["optim"] = _plain_optimizer(states["optim"])

    def write(tmp: Path) -> None:
        import torch.distributed.checkpoint as dcp

        with _quiet():
            dcp.save(states, checkpoint_id=str(tmp / SHARDS))

    if not is_main:
        tmp = broadcast_object(None)  # rank 0's temporary directory, or None if it failed first
        if tmp is not None:
            try:
                write(Path(tmp))
            except Exception:  # noqa: BLE001 - DCP raises on every rank; rank 0 reports it
                pass
        ok, where = broadcast_object(None)
        if not ok:
            raise CheckpointError(where)
        return Path(where)

    handed_over = False

    def write_model(tmp: Path) -> None:
        nonlocal handed_over
        broadcast_object(str(tmp))
        handed_over = True
        try:
            write(tmp)
        except Exception as e:  # noqa: BLE001 - DCP's CheckpointException lists every rank's failure
            raise OSError(f"writing {SHARDS}/ failed: {one_line(e)}") from e

    try:
        ckpt = save_checkpoint(run_dir, None, trainer_state, files, tags=tags, meta=meta, write_model=write_model)
    except BaseException as e:
        if not handed_over:
            broadcast_object(None)
        broadcast_object((False, one_line(e)))
        raise
    broadcast_object((True, str(ckpt)))
    return ckpt


def load_sharded(ckpt: str | os.PathLike, model: nn.Module, optimizer=None) -> None:
    """Load the ``dcp/`` of a sharded checkpoint into ``model`` (and ``optimizer``), whichever way
    they are distributed now: FSDP-sharded over any number of processes, DDP, or a single process
    without a process group. All processes of a group call it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    where = Path(ckpt) / SHARDS
    states = _states(model, optimizer)
    live = states["optim"]["state"] if optimizer is not None else {}
    if optimizer is not None:
        states["optim"] = _plain_optimizer(states["optim"])
    try:
        with _quiet():
            dcp.load(states, checkpoint_id=str(where))
            set_model_state_dict(model, states["model"])
            if optimizer is not None:
                set_optimizer_state_dict(model, optimizer, states["optim"])
                _requantize(model, optimizer, live, states["optim"]["state"])
    except Exception as e:  # noqa: BLE001 - DCP and the state-dict helpers raise many types
        raise CheckpointError(f"cannot load the sharded checkpoint {where}: {one_line(e)}") from e


def _requantize(model: nn.Module, optimizer, live: dict, loaded: dict) -> None:
    """Give back to ``optimizer`` its own quantized states (``live``, by parameter name), now
    holding the ``loaded`` plain values: ``load_state_dict`` has put plain tensors in their place."""
    params = dict(model.named_parameters())
    for name, st in live.items():
        for k, v in st.items():
            if _quantized(v):
                v.copy_(loaded[name][k])  # torchao quantizes on copy
                optimizer.state[params[name]][k] = v


def load_full_into_sharded(ckpt: str | os.PathLike, model: nn.Module, optimizer, optimizer_state: dict) -> None:
    """Load a single-file checkpoint (``model.safetensors`` and the optimizer state of
    ``trainer.pt``, as a run without FSDP writes them) into an FSDP-sharded ``model`` and its
    ``optimizer``: each process reads the whole file and keeps its shards.

    The optimizer state of ``torch.optim`` is keyed by each parameter's position in the param
    groups; FSDP's optimizer lists the same parameters in the same order (FSDP2 replaces them one
    for one), which maps the positions to parameter names.
    """
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
    )

    ckpt = Path(ckpt)
    full = StateDictOptions(full_state_dict=True)
    try:
        saved = load_file(str(ckpt / WEIGHTS))
        weights = {}
        # safetensors keeps one name of a shared tensor (tied head, shared norms): the others
        # are found through the parameter they name
        names: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(name)
        for aliases in names.values():
            stored = next((n for n in aliases if n in saved), None)
            for n in aliases:
                if stored is not None:
                    weights[n] = saved[stored]
        for name, buf in model.named_buffers():
            if name in saved:
                weights[name] = saved[name]
        set_model_state_dict(model, weights, options=full)
        template = get_optimizer_state_dict(model, optimizer)  # names, in param-group order
        by_position = [n for g in template["param_groups"] for n in g["params"]]
        positions = [i for g in optimizer_state["param_groups"] for i in g["params"]]
        if len(positions) != len(by_position):
            raise ValueError(f"the saved optimizer has {len(positions)} parameters, this model {len(by_position)}")
        name_of = dict(zip(positions, by_position))
        groups = [{**saved_g, "params": g["params"]}
                  for saved_g, g in zip(optimizer_state["param_groups"], template["param_groups"])]
        state = {name_of[i]: s for i, s in optimizer_state["state"].items()}
        with _quiet():
            set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=full)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot load {ckpt} into the FSDP-sharded model: {one_line(e)}") from e


def export_weights(path: str | os.PathLike, tag: str = "last", out: str | os.PathLike | None = None) -> Path:
    """Write the weights of a checkpoint as one ``model.safetensors`` (default: into the
    checkpoint directory itself, beside its ``dcp/``), atomically: a temporary file, then a rename.
    Returns the file written. The model is built on the CPU from the checkpoint's config."""
    from safetensors.torch import save_model

    from muse.runtime import load_for_inference

    ckpt = resolve_checkpoint(path, tag)
    target = Path(out).expanduser() if out is not None else ckpt / WEIGHTS
    if target.is_dir():
        target = target / WEIGHTS
    model = load_for_inference(ckpt, torch.device("cpu"))[0]
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        save_model(model, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
        raise CheckpointError(f"cannot write {target}: {one_line(e)}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return target
