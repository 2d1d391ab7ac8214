"""Which process this is: joining torchrun's process group, and collectives the trainer shares."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from muse.runtime import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str, parallel: str = "auto") -> tuple[DistInfo, torch.device]:
    """Under torchrun (RANK/WORLD_SIZE set) join the process group; otherwise a single process.

    ``parallel`` fsdp in a single process still needs a process group (FSDP2 shards over a device
    mesh): a world of one is made in memory, so the sharded code path runs on one device too.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and parallel != "fsdp":
        return DistInfo(), resolve_device(device_name)
    import torch.distributed as dist

    if world <= 1:
        info = DistInfo()
    else:
        info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), world)
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda:
        if info.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"process with LOCAL_RANK {info.local_rank} but this machine has {torch.cuda.device_count()} CUDA "
                f"device(s): use --nproc-per-node {torch.cuda.device_count()} or --train.device cpu"
            )
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        if world <= 1 and "MASTER_ADDR" not in os.environ:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group(backend)
    device = torch.device(f"cuda:{info.local_rank}") if use_cuda else resolve_device(device_name)
    return info, device


def is_distributed() -> bool:
    """A process group with more than one process is running."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the processes, in place (a no-op in a single process). They must
    live on the process group's device: the CPU under gloo, the rank's GPU under NCCL."""
    if not is_distributed():
        return values
    import torch.distributed as dist

    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_object(obj) -> list:
    """Every process's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every process (itself in a single process)."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def under_torchrun() -> bool:
    """This process is one of several that torchrun started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def exit_process(code: int) -> None:
    """End this process now with ``code``, its output flushed, skipping the interpreter's shutdown.

    For a torchrun process whose work is done: after object collectives (DCP's, the checkpoint
    hand-over, ``all_gather_object``), gloo's teardown at interpreter exit sometimes aborts
    ("terminate called without an active exception", torch 2.13), which torchrun then reports as a
    failure of a finished run."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
