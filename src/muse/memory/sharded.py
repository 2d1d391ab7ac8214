"""Per-process memory of a training step sharded by FSDP2 over K processes, from one process
(``muse memory --nproc K``; DESIGN.md §1.8, §1.9).

No K GPUs are needed: this process joins a *fake* process group of K (torch's ``fake`` backend,
as torchtitan's memory estimation does), in which it is rank 0 and every collective returns at
once without moving data. The model is built and sharded as the trainer shards it
(:func:`muse.distributed.parallelize`, FSDP2 ``fully_shard`` per block, then the root), the
optimizer is built on the shards, and the step is the trainer's
(:class:`~muse.train.step.TrainStep`, through :mod:`muse.memory.profile`). So rank 0 allocates
what it would in a real run of K processes: its shard of the parameters, gradients and optimizer
states; the gathered parameters of the units in flight and the unsharded gradients that wait for
their reduce-scatter; and the full activations of its local batch (``--batch`` sequences per
process), which sharding does not divide. The values are wrong (other ranks' shards are never
received), the bytes are not, and no throughput is reported (nothing is communicated).

On CUDA this is a measurement (``measured, fake process group of K``); elsewhere the estimate of
:mod:`muse.memory.profile` runs the same sharded step on fake tensors, less gradient clipping
(fake tensors count two copies of the DTensor gradients there, which real ones never allocate:
``grad_clip_note`` says so). Either way the result
carries ``one_process``: the parameter, gradient and optimizer-state bytes of the same step in a
single process, from the shapes, beside the per-process figures.
"""

from __future__ import annotations

import contextlib
import copy
import functools

import torch

from muse.config import Config, ConfigError
from muse.memory.accounting import expected_optimizer_bytes
from muse.memory.profile import Built, StepPlan
from muse.memory.profile import run as run_one
from muse.train.optim import build_optimizer
from muse.train.step import build_training

__all__ = ["build_sharded", "check_nproc", "fake_world", "one_process_bytes", "run"]


def check_nproc(nproc, plan: StepPlan, cfg: Config) -> None:
    """Refuse what ``--nproc`` cannot profile, in one line."""
    if not (isinstance(nproc, int) and not isinstance(nproc, bool) and nproc >= 1):
        raise ConfigError(f"--nproc must be a positive integer; got {nproc!r}")
    if nproc == 1:
        return
    if plan.mode == "infer":
        raise ConfigError("--nproc profiles a training step sharded by FSDP2 (--mode train or fwdbwd); "
                          "--mode infer is one process's inference: drop --nproc")
    sharded = copy.deepcopy(cfg.train)
    sharded.optimizer, sharded.precision, sharded.parallel = plan.optimizer, plan.precision, "fsdp"
    if conflict := sharded.fsdp_conflict():
        raise ConfigError(f"--nproc {nproc} shards the step with FSDP2: {conflict}")


@contextlib.contextmanager
def fake_world(nproc: int):
    """This process as rank 0 of a fake process group of ``nproc`` for the duration."""
    import torch.distributed as dist

    if not dist.is_available():
        raise ValueError("--nproc needs torch.distributed, which this PyTorch build lacks")
    if dist.is_initialized():
        raise ConfigError("--nproc makes a process group of its own: run muse memory in one process, "
                          "not under torchrun")
    from torch.testing._internal.distributed.fake_pg import (
        FakeStore,  # registers the "fake" backend
    )

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=nproc)
    try:
        yield
    finally:
        dist.destroy_process_group()


def build_sharded(cfg: Config, plan: StepPlan, device: torch.device, nproc: int) -> Built:
    """A :data:`~muse.memory.profile.Builder`: the model of ``cfg`` built on the host from seed 0,
    sharded over the fake process group of ``nproc`` onto ``device`` as the trainer shards it
    (FSDP2 moves one unit at a time to the device, so the whole model is never there), and for
    ``train`` the optimizer, built on the shards. Under fake tensors (the estimate) the device
    mesh is made of real ones, and nothing is compiled."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from muse.distributed import parallelize

    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # FSDP shards onto the current CUDA device
    torch.manual_seed(0)
    model, _ = build_training(cfg, torch.device("cpu"), optimizer=False, init_on_device=True)
    try:
        with unset_fake_temporarily():
            model = parallelize(model, "fsdp", device, nproc, precision=cfg.train.precision,
                                compile=cfg.train.compile, compile_mode=cfg.train.compile_mode)
    except NotImplementedError as e:  # FSDP2 refuses some splits (uneven on a dim other than 0)
        raise ValueError(f"FSDP2 cannot shard {cfg.name} over {nproc} processes: {e}") from None
    opt = build_optimizer(model, cfg.train, device.type) if plan.mode == "train" else None
    return model, opt, model


def one_process_bytes(cfg: Config, plan: StepPlan) -> dict:
    """Parameters (and buffers), gradients and optimizer state of ``plan``'s step in one process,
    from the shapes of the model built on the meta device: what ``muse memory`` without
    ``--nproc`` reports for them."""
    from muse.model import build_model

    model = build_model(cfg, device="meta", dtype=torch.bfloat16 if plan.precision == "bf16-pure" else None)
    return {
        "parameters": sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]),
        "gradients": sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad),
        "optimizer_state": expected_optimizer_bytes(model, plan.optimizer, "cuda") if plan.mode == "train" else 0,
    }


def run(cfg: Config, plan: StepPlan, nproc: int = 1, budget: int | None = None, device: str = "auto") -> dict:
    """:func:`muse.memory.profile.run` for rank 0 of ``nproc`` FSDP2 processes (see the module
    docstring); ``nproc`` 1 is that function itself, one process without FSDP."""
    check_nproc(nproc, plan, cfg)
    if nproc == 1:
        return run_one(cfg, plan, budget=budget, device=device)
    cfg = copy.deepcopy(cfg)
    cfg.train.parallel = "fsdp"
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())  # as run_one decides
    clip_left_out = not on_cuda and plan.mode == "train" and cfg.train.grad_clip > 0
    if clip_left_out:
        # On fake tensors, clipping DTensor gradients is counted as two more copies of them; on real
        # ones it allocates one norm per gradient (tests/memory/test_sharded.py), so leave it out.
        cfg.train.grad_clip = 0.0
    with fake_world(nproc):
        out = run_one(cfg, plan, budget=budget, device=device, build=functools.partial(build_sharded, nproc=nproc))
    world = f"fake process group of {nproc}"
    if out["method"] == "measured":
        out["method"] = f"measured, {world}"
        # the collectives moved nothing: a time per step would not be a K-GPU throughput
        out.update(tokens_per_s=None, tokens_per_s_note=f"not measured: a {world} communicates nothing")
    else:
        out["device"] = f"{out['device']}, {world}"
    if clip_left_out:
        out["grad_clip_note"] = "gradient clipping left out of the fake-tensor run (it allocates a norm per gradient)"
    out["nproc"], out["parallel"] = nproc, "fsdp"
    out["one_process"] = one_process_bytes(cfg, plan)
    return out

