"""What tensors and optimizers hold on the training device: the exact byte counts that
:mod:`muse.memory.profile` measures and estimates with, and the formulas from parameter shapes
that its tests and the FSDP benchmark check them against."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from muse.train.optim import (
    OFFLOAD_MIN_NUMEL,  # torchao's minimal_size: smaller tensors stay on the GPU
)

__all__ = [
    "expected_offload_bytes", "expected_optimizer_bytes", "offload_host_bytes", "optimizer_state_bytes",
    "tensor_bytes", "update_temporaries_bytes",
]


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storages; tensor subclasses (torchao's 8-bit states) by their parts, DTensors
    by their local part."""
    seen, total = set(), 0

    def visit(t: torch.Tensor) -> None:
        nonlocal total
        local = getattr(t, "_local_tensor", None)  # a DTensor (FSDP's shards): this process's part
        if isinstance(local, torch.Tensor):
            visit(local)
            return
        if type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
            names, _ = t.__tensor_flatten__()
            for n in names:
                visit(getattr(t, n))
            return
        st = t.untyped_storage()
        if st._cdata not in seen:  # the StorageImpl's address: shared by views, real or fake
            seen.add(st._cdata)
            total += st.nbytes()

    for t in tensors:
        if isinstance(t, torch.Tensor):
            visit(t)
    return total


def _state_bytes(opt) -> int:
    return tensor_bytes(v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor))


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Resident optimizer-state bytes on the training device (an offloading optimizer's host
    states are not counted: see :func:`offload_host_bytes`)."""
    from muse.train.optim import is_offloaded

    if is_offloaded(opt):
        return _state_bytes(opt.d_opt) if opt.d_opt is not None else 0
    return _state_bytes(opt)


def offload_host_bytes(opt) -> dict:
    """Host memory of a CPUOffloadOptimizer: pinned parameter copies, pinned gradients, AdamW states."""
    hosts = list(opt.param_d2h_map.values())
    return {
        "host_parameters": tensor_bytes(hosts), "host_gradients": tensor_bytes(p.grad for p in hosts),
        "host_optimizer_state": sum(_state_bytes(o) for o in opt.optim_dict.values()),
    }


def expected_offload_bytes(model: torch.nn.Module) -> dict:
    """What :func:`offload_host_bytes` will find, from the parameter shapes: for every trainable
    parameter of >= OFFLOAD_MIN_NUMEL values a host copy, a host gradient, exp_avg + exp_avg_sq
    in its dtype and a 4-byte step; plus the largest such gradient (on the GPU for a moment)."""
    big = [p for p in model.parameters() if p.requires_grad and p.numel() >= OFFLOAD_MIN_NUMEL]
    sizes = [p.numel() * p.element_size() for p in big]
    return {
        "min_numel": OFFLOAD_MIN_NUMEL, "offloaded_tensors": len(big),
        "host_parameters": sum(sizes), "host_gradients": sum(sizes),
        "host_optimizer_state": sum(2 * b + 4 for b in sizes),
        "largest_offloaded_gradient": max(sizes, default=0),
    }


def expected_optimizer_bytes(model: torch.nn.Module, optimizer: str, device_type: str) -> int:
    """Exact optimizer-state bytes on the training device once every parameter has been stepped.

    AdamW: exp_avg and exp_avg_sq in the parameter's dtype, plus a 4-byte step counter per
    parameter. torchao AdamW8bit: int8 codes plus one fp32 scale per 256-value block for
    tensors of >= 4096 values divisible by 256 (smaller ones keep plain states), and its step.
    adamw-offload: AdamW states of the parameters under OFFLOAD_MIN_NUMEL values only (the
    others' live in host memory). A DTensor parameter (FSDP) counts this process's shard, whose
    size is also what torchao's 8-bit test sees.
    """
    total = 0
    for p in model.parameters():
        if not p.requires_grad:
            continue
        n, es = (p.to_local() if hasattr(p, "to_local") else p).numel(), p.element_size()
        if optimizer == "adamw-offload" and n >= OFFLOAD_MIN_NUMEL:
            continue
        if optimizer == "adamw8bit" and n >= 4096 and n % 256 == 0:
            total += 2 * (n + 4 * (n // 256))
        else:
            total += 2 * n * es
        total += 4
    return total


def update_temporaries_bytes(model: torch.nn.Module, optimizer: str) -> int:
    """GPU temporaries of the optimizer update, beyond the parameters, gradients and state.

    torchao's AdamW8bit updates one parameter at a time through a compiled ``single_param_adam``:
    it dequantises both moments to fp32, requantises them (a block-wise absmax, a reduction) and
    updates the parameter from the fp32 values, so the two fp32 moments of the parameter being
    stepped are materialised: 8 bytes per value of the largest 8-bit-quantised parameter. (On an
    H200, `standard`'s B=2 step with its own recipe, whose tied 5.12 M-value embedding is that
    parameter, held 40.9 MiB more than parameters, gradients, state and workspace at its peak:
    `verify-b2-cublas-16-8-h200.json`; this model gives 39.1.) Fused AdamW (CUDA) updates in
    place, and the offloading optimizer updates on the host: 0.
    """
    if optimizer != "adamw8bit":
        return 0
    sizes = [(p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters() if p.requires_grad]
    return 8 * max((n for n in sizes if n >= 4096 and n % 256 == 0), default=0)
