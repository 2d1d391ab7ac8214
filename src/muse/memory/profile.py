"""Peak memory of one training step, split into parameters, gradients, optimizer state and
activations + temporaries: *measured* on CUDA, *estimated* elsewhere (DESIGN.md §1.8, §2).

Both paths run the same step as the trainer (``build_model``, ``build_optimizer``,
``autocast_context``). The measurement reads ``torch.cuda.max_memory_allocated`` over timed
steps after warm-up (CUDA context excluded); the estimate runs that step on fake tensors under
PyTorch's ``MemTracker`` (no memory, no data), and adds the optimizer state computed exactly
from the parameter shapes. Breakdown, in both:

- parameters, gradients, optimizer state: the resident bytes of those tensors;
- activations + temporaries: the rest of the peak (saved activations, recomputation in
  checkpointed blocks, logits chunks, and on CUDA the cuBLAS workspace).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from muse.config import Config, ConfigError
from muse.memory.budget import fmt_bytes

MODES = ("train", "fwdbwd", "infer")
PRECISIONS = ("fp32", "bf16", "fp16", "bf16-pure")
OPTIMIZERS = ("adamw", "adamw8bit")


@dataclass
class StepPlan:
    batch: int
    seq: int
    precision: str = "fp32"
    optimizer: str = "adamw"
    checkpointing: bool | None = None  # None: as the config says
    mode: str = "train"  # train: full step | fwdbwd: no optimizer | infer: forward under no_grad

    def __post_init__(self):
        for name, value, allowed in (
            ("--precision", self.precision, PRECISIONS), ("--optimizer", self.optimizer, OPTIMIZERS),
            ("--mode", self.mode, MODES),
        ):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        for name, value in (("--batch", self.batch), ("--seq", self.seq)):
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")


def plan_config(cfg: Config, plan: StepPlan) -> Config:
    cfg = copy.deepcopy(cfg)
    if plan.seq > cfg.model.max_seq_len:
        raise ConfigError(f"--seq {plan.seq} exceeds model.max_seq_len={cfg.model.max_seq_len}")
    cfg.train.precision, cfg.train.optimizer = plan.precision, plan.optimizer
    if plan.checkpointing is not None:
        cfg.model.checkpointing = plan.checkpointing
    return cfg


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storages; tensor subclasses (torchao's 8-bit states) by their parts."""
    seen, total = set(), 0

    def visit(t: torch.Tensor) -> None:
        nonlocal total
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


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    return tensor_bytes(v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor))


def expected_optimizer_bytes(model: torch.nn.Module, optimizer: str, device_type: str) -> int:
    """Exact optimizer-state bytes once every parameter has been stepped.

    AdamW: exp_avg and exp_avg_sq in the parameter's dtype, plus a 4-byte step counter per
    parameter. torchao AdamW8bit: int8 codes plus one fp32 scale per 256-value block for
    tensors of >= 4096 values divisible by 256 (smaller ones keep plain states), and its step.
    """
    total = 0
    for p in model.parameters():
        if not p.requires_grad:
            continue
        n, es = p.numel(), p.element_size()
        if optimizer == "adamw8bit" and n >= 4096 and n % 256 == 0:
            total += 2 * (n + 4 * (n // 256))
        else:
            total += 2 * n * es
        total += 4
    return total


def _build(cfg: Config, plan: StepPlan, device: torch.device):
    from muse.model import build_model
    from muse.train.optim import build_optimizer

    torch.manual_seed(0)
    # pure bf16 is built in bf16: an fp32 copy first would double the peak (and break budgets)
    model = build_model(cfg, device=device, dtype=torch.bfloat16 if plan.precision == "bf16-pure" else None)
    model.train()
    opt = build_optimizer(model, cfg.train, device.type) if plan.mode == "train" else None
    return model, opt


def _step(model, opt, autocast, idx: torch.Tensor, mode: str) -> int:
    """One step; returns the gradient bytes it produced (0 for inference)."""
    x, y = idx[:, :-1], idx[:, 1:]
    if mode == "infer":
        with torch.no_grad(), autocast:
            model(x, y)
        return 0
    with autocast:
        out = model(x, y)
        loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
    loss.backward()
    grads = tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    else:
        model.zero_grad(set_to_none=True)
    return grads


def _result(cfg: Config, plan: StepPlan, method: str, device: str, params: int, grads: int, state: int,
            peak: int) -> dict:
    return {
        "method": method, "device": device, "name": cfg.name, "batch": plan.batch, "seq": plan.seq,
        "precision": plan.precision, "optimizer": plan.optimizer if plan.mode == "train" else None,
        "checkpointing": cfg.model.checkpointing, "mode": plan.mode,
        "parameters": params, "gradients": grads, "optimizer_state": state,
        "activations": peak - params - grads - state, "peak": peak,
    }


def estimate(cfg: Config, plan: StepPlan) -> dict:
    """Analytic peak from a fake-tensor run (any size, any machine, no memory used)."""
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError as e:  # pragma: no cover - torch < 2.5
        raise ValueError(f"memory estimates need torch >= 2.5 (MemTracker): {e}") from None
    from muse.runtime import autocast_context

    cfg = plan_config(cfg, plan)
    cpu = torch.device("cpu")
    fb_plan = dataclasses.replace(plan, mode="fwdbwd") if plan.mode == "train" else plan
    with FakeTensorMode():
        model, _ = _build(cfg, fb_plan, cpu)
        params = tensor_bytes(list(model.parameters()) + list(model.buffers()))
        idx = torch.randint(0, cfg.model.vocab_size, (plan.batch, plan.seq + 1))
        tracker = MemTracker()
        tracker.track_external(model)
        with tracker:
            grads = _step(model, None, autocast_context(plan.precision, cpu), idx, fb_plan.mode)
        peak = sum(d["Total"] for d in tracker.get_tracker_snapshot("peak").values())
        state = expected_optimizer_bytes(model, plan.optimizer, "cuda") if plan.mode == "train" else 0
    # the optimizer state is resident through the whole forward and backward of a later step
    return _result(cfg, plan, "estimate", "estimate (fake tensors, no device)", params, grads, state, peak + state)


def measure(cfg: Config, plan: StepPlan, device: torch.device | str = "cuda", budget: int | None = None,
            warmup: int = 2, steps: int = 3) -> dict:
    """Real steps on CUDA: peak allocated over ``steps`` timed steps after ``warmup``.

    With ``budget`` the process is capped by ``set_per_process_memory_fraction`` for the whole
    run (warm-up included): ``status`` is PASS only if every step completed, FAIL (with the peak
    reached) on out-of-memory.
    """
    from muse.runtime import autocast_context

    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError("memory measurements need a CUDA device; without one use the estimate")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    cfg = plan_config(cfg, plan)
    total = torch.cuda.get_device_properties(device).total_memory
    if budget is not None and budget > total:
        raise ConfigError(f"--budget {fmt_bytes(budget)} exceeds this GPU's {fmt_bytes(total)}")
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    if hasattr(torch._C, "_cuda_clearCublasWorkspaces"):
        torch._C._cuda_clearCublasWorkspaces()  # each measurement pays for its own cuBLAS workspace
    torch.cuda.set_per_process_memory_fraction(budget / total if budget else 1.0, device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    model = opt = idx = None
    params = grads = state = expected_state = workspace = 0
    times: list[float] = []
    error = None
    try:
        model, opt = _build(cfg, plan, device)
        params = tensor_bytes(list(model.parameters()) + list(model.buffers()))
        autocast = autocast_context(plan.precision, device)
        idx = torch.randint(0, cfg.model.vocab_size, (plan.batch, plan.seq + 1), device=device)
        for _ in range(warmup):
            grads = _step(model, opt, autocast, idx, plan.mode)
        state = optimizer_state_bytes(opt) if opt is not None else 0
        torch.cuda.synchronize(device)
        # between steps nothing but parameters, optimizer state and library workspaces is alive
        workspace = torch.cuda.memory_allocated(device) - base - params - state
        expected_state = expected_optimizer_bytes(model, plan.optimizer, "cuda") if opt is not None else 0
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            t0 = time.perf_counter()
            _step(model, opt, autocast, idx, plan.mode)
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError as e:
        error = str(e).splitlines()[0][:200]
    finally:
        peak = torch.cuda.max_memory_allocated(device) - base
        del model, opt, idx
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    out = _result(cfg, plan, "measured", torch.cuda.get_device_name(device), params, grads, state, peak)
    out["tokens_per_s"] = plan.batch * plan.seq / statistics.median(times) if times else None
    out["timed_steps"] = len(times)
    out["workspace"] = workspace  # cuBLAS/cuBLASLt workspaces: part of "activations" and of the peak
    out["optimizer_state_formula"] = expected_state  # the estimate's formula, checked against the real states
    if budget is not None:
        out["budget"] = budget
    if budget is not None or error:  # an out-of-memory without a budget fails against the whole GPU
        out["status"] = "FAIL" if error else "PASS"
    if error:
        out["error"] = error
    return out


def run(cfg: Config, plan: StepPlan, budget: int | None = None, device: str = "auto") -> dict:
    """Measure where CUDA is available (or asked for), estimate otherwise."""
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        return measure(cfg, plan, "cuda" if device == "auto" else device, budget=budget)
    out = estimate(cfg, plan)
    if budget is not None:
        out["budget"] = budget
        out["status"] = "PASS (estimate)" if out["peak"] <= budget else "FAIL (estimate)"
    return out


def summary_line(r: dict) -> str:
    status = r.get("status")
    head = f"{status}: " if status else ""
    budget = f" of {fmt_bytes(r['budget'])} budget" if r.get("budget") else ""
    what = {"train": "full-step", "fwdbwd": "forward+backward", "infer": "inference"}[r["mode"]]
    text = f"{head}{r['name']} {what} peak {fmt_bytes(r['peak'])}{budget} ({r['method']}, {r['device']})"
    if r.get("error"):
        text += f"; out of memory: {r['error']}"
    return text


def is_finite_number(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)

