"""Several processes: process groups, DDP and FSDP2 applied from outside the model, sharded (DCP)
checkpoints, and the collectives that evaluation and logging share."""

from muse.distributed.env import (
    DistInfo, all_gather_object, all_reduce_sum, broadcast_object, exit_process, init_distributed, is_distributed, under_torchrun,
)
from muse.distributed.parallelize import apply_fsdp, parallelize, resolve_parallel

__all__ = [
    "DistInfo", "all_gather_object", "all_reduce_sum", "apply_fsdp", "broadcast_object", "exit_process", "init_distributed",
    "is_distributed", "parallelize", "resolve_parallel", "under_torchrun",
]
