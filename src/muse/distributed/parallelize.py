"""Data parallelism applied to the single-device model from outside, as torchtitan's ``parallelize``.

The model code never knows how it is distributed. ``parallelize`` returns the module the training
step runs its forward through:

- ``none``: the model itself.
- ``ddp``: a ``DistributedDataParallel`` wrapper; every process holds the whole model and the
  gradients are all-reduced at the last micro-batch.
- ``fsdp``: the model itself, sharded in place by FSDP2 over a 1-D ``DeviceMesh``. Each unit of
  ``model.shard_units()`` (the blocks) is one ``fully_shard`` group, the root's group holds the
  rest (embedding, final norm, head; a tied head stays with its embedding). Every parameter
  becomes a DTensor sharded on dim 0, so parameters, gradients and optimizer states are divided
  by the number of processes; a block's full parameters exist only while it runs. Under
  ``precision: bf16`` the mixed-precision policy gathers parameters in bf16 and reduces gradients
  in fp32, while the sharded parameters and optimizer states stay fp32.

Build the optimizer after ``parallelize``: FSDP2 replaces the parameters with sharded ones.
"""

from __future__ import annotations

import torch
from torch import nn

from muse.config import ConfigError
from muse.runtime import compile_model, compile_options

__all__ = ["parallelize", "resolve_parallel"]


def resolve_parallel(setting: str, world_size: int) -> str:
    """The parallelism a run of ``world_size`` processes uses for ``train.parallel``: ``auto`` is
    ``ddp`` with several processes and ``none`` with one; ``none`` with several is refused (each
    process would train its own model and only rank 0's would be saved)."""
    if setting == "auto":
        return "ddp" if world_size > 1 else "none"
    if setting == "none" and world_size > 1:
        raise ConfigError(
            f"train.parallel none with {world_size} processes would train {world_size} unrelated models; "
            "use ddp or fsdp (or auto)"
        )
    return setting


def _mixed_precision(precision: str):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if precision == "bf16-pure":  # bf16 parameters already; sum the gradients in fp32 all the same
        return MixedPrecisionPolicy(reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_dim(shape: tuple[int, ...], world_size: int) -> int:
    """The dimension FSDP splits a parameter of ``shape`` on: dim 0, as FSDP2 does by default,
    unless it has fewer entries than processes (a TT core of shape (1, m, n, r)), where some
    processes would hold an empty shard (which torchao's 8-bit states cannot quantize): then the
    largest dimension that the process count divides (FSDP2 pads only dim 0), else dim 0."""
    if not shape or shape[0] >= world_size:
        return 0
    even = [d for d in range(1, len(shape)) if shape[d] % world_size == 0]
    return max(even, key=lambda d: shape[d]) if even else 0


def apply_fsdp(model: nn.Module, device: torch.device, world_size: int, precision: str) -> nn.Module:
    """Shard ``model`` in place with FSDP2 (see the module docstring); returns it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    mesh = init_device_mesh(device.type, (world_size,), mesh_dim_names=("dp",))
    kwargs = {"mesh": mesh, "mp_policy": _mixed_precision(precision),
              "shard_placement_fn": lambda p: Shard(shard_dim(tuple(p.shape), world_size))}
    units = model.shard_units()
    for i, unit in enumerate(units):
        # the last unit's parameters are needed again at the start of backward: keep them gathered
        fully_shard(unit, reshard_after_forward=i < len(units) - 1, **kwargs)
    fully_shard(model, **kwargs)
    return model


def parallelize(model: nn.Module, mode: str, device: torch.device, world_size: int, *, precision: str = "fp32",
                compile: bool = False, compile_mode: str | None = None) -> nn.Module:
    """Apply ``mode`` (``none`` | ``ddp`` | ``fsdp``, see :func:`resolve_parallel`) and, with
    ``compile``, torch.compile; returns the module to run the forward through."""
    if mode == "fsdp":
        if compile:  # each block compiled in place before sharding, as torchtitan does: FSDP's
            # hooks stay outside the compiled graphs and parameter names do not change
            for unit in model.shard_units() or [model]:
                unit.compile(options=compile_options(compile_mode))
        return apply_fsdp(model, device, world_size, precision)
    forward_model = model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        forward_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    elif mode != "none":
        raise ValueError(f"parallel mode must be none, ddp or fsdp; got {mode!r}")
    return compile_model(forward_model, compile_mode) if compile else forward_model
