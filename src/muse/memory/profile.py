"""Peak memory of one training step, split into parameters, gradients, optimizer state and
activations + temporaries: *measured* on CUDA, *estimated* elsewhere (DESIGN.md §1.8, §2).

Both paths run the trainer's own step (:mod:`muse.train.step`: the model and optimizer of
``build_training``, one ``TrainStep`` with its autocast, loss scaling and clipping). The
measurement reads ``torch.cuda.max_memory_allocated`` over timed steps after warm-up (CUDA
context excluded); the estimate runs that step up to the update on fake tensors under PyTorch's
``MemTracker`` (no memory, no data), and adds the optimizer state computed exactly from the
parameter shapes. Breakdown, in both:

- parameters, gradients, optimizer state: the resident bytes of those tensors;
- cuBLAS workspace: the cuBLAS + cuBLASLt workspaces PyTorch allocates through its caching
  allocator per (handle, stream); measured between steps on CUDA, from
  :func:`workspace_bytes` in the estimate;
- activations + temporaries: the rest of the peak (saved activations, recomputation in
  checkpointed blocks, logits chunks — or, where the loss runs the fused linear +
  cross-entropy kernels on a GPU, their per-token log-sum-exp; the estimate models that path).

With ``adamw-offload`` (torchao's CPUOffloadOptimizer) the AdamW states and the gradients of
parameters of >= 4096 values live in host memory: they count 0 GPU bytes, and the estimate runs
backward with the optimizer's own hook (each such gradient is dropped as soon as it is
accumulated), so the one gradient alive on the GPU at a time is part of the peak; the host bytes
are reported under ``offload``.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import math
import os
import re
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from muse.config import OPTIMIZERS, PRECISIONS, Config, ConfigError
from muse.memory.accounting import (
    expected_offload_bytes,
    expected_optimizer_bytes,
    offload_host_bytes,
    optimizer_state_bytes,
    tensor_bytes,
    update_temporaries_bytes,
)
from muse.memory.budget import fmt_bytes
from muse.runtime import resolve_device
from muse.train.graph import WARMUP_STEPS
from muse.train.optim import (
    OFFLOAD_MIN_NUMEL,  # torchao's minimal_size: smaller tensors stay on the GPU
)
from muse.train.step import TrainStep, build_training, capture, training_loss

MODES = ("train", "fwdbwd", "infer")
CUDA_GRAPH_MODES = ("reduce-overhead",)  # train.compile_mode values that replay CUDA graphs
CUDA_GRAPH_NOTE = "not measured: CUDA-graph replays allocate in a private pool that max_memory_allocated does not count"


def cublas_workspace_bytes(config: str = "default", sm90: bool = True) -> int:
    """Bytes of one cuBLAS workspace for a CUBLAS_WORKSPACE_CONFIG value, as PyTorch sizes it
    (``parseChosenWorkspaceSize``): the sum of SIZE KiB x COUNT over the ``:SIZE:COUNT`` groups;
    unset ("default"): 32 MiB on sm90 (Hopper), 4096 KiB x 2 + 16 KiB x 8 elsewhere."""
    if config == "default":
        return 4096 * 1024 * 8 if sm90 else 4096 * 1024 * 2 + 16 * 1024 * 8
    return sum(int(size) * 1024 * int(count) for size, count in re.findall(r":([0-9]+):([0-9]+)", config))


def cublaslt_workspace_bytes(config: str = "default", sm90: bool = True) -> int:
    """One cuBLASLt workspace: CUBLASLT_WORKSPACE_SIZE KiB (default 1024), capped at the cuBLAS
    workspace; 0 when TORCH_CUBLASLT_UNIFIED_WORKSPACE makes cuBLASLt share the cuBLAS one."""
    if os.environ.get("TORCH_CUBLASLT_UNIFIED_WORKSPACE", "").lower() in ("1", "true", "on", "yes"):
        return 0
    try:
        lt = int(os.environ.get("CUBLASLT_WORKSPACE_SIZE", "1024")) * 1024
    except ValueError:
        lt = 1024 * 1024
    return min(lt, cublas_workspace_bytes(config, sm90))


def workspace_bytes(config: str = "default", mode: str = "train", sm90: bool = True) -> int:
    """The cuBLAS + cuBLASLt workspaces a step leaves allocated: one pair per (handle, stream),
    and a training step has two handles (the forward's thread and autograd's backward thread),
    inference one. For unset, ':4096:1' and ':16:8' this gives 66, 10 and 0.5 MiB, the low end
    of what a step leaves allocated on an H100 (docs/performance-notes.md §2)."""
    handles = 1 if mode == "infer" else 2
    return handles * (cublas_workspace_bytes(config, sm90) + cublaslt_workspace_bytes(config, sm90))


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
    if plan.optimizer == "adamw-offload":
        cfg.train.grad_accum = 1  # a memory step has no accumulation; the trainer enforces it
    if plan.checkpointing is not None:
        cfg.model.checkpointing = plan.checkpointing
    cfg.train.__post_init__()  # the plan's optimizer and precision must suit the rest (train.cuda_graph true)
    return cfg


def build_plan(cfg: Config, plan: StepPlan,
               device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer | None]:
    """The model and (for ``train``) the optimizer of ``cfg`` (a :func:`plan_config`), built as the
    trainer builds them (:func:`muse.train.step.build_training`) from seed 0, directly on ``device``."""
    torch.manual_seed(0)
    return build_training(cfg, device, optimizer=plan.mode == "train", init_on_device=True)


# (cfg, plan, device) -> (model, optimizer or None, the module the forward runs through)
Built = tuple[torch.nn.Module, torch.optim.Optimizer | None, torch.nn.Module]
Builder = Callable[[Config, StepPlan, torch.device], Built]


def build_single(cfg: Config, plan: StepPlan, device: torch.device) -> Built:
    """The :data:`Builder` of a one-process step: :func:`build_plan`, and the forward through
    ``torch.compile`` where ``train.compile`` asks for it, as the trainer compiles it.
    (:mod:`muse.memory.sharded` builds the FSDP2 step of one process of several.)"""
    from muse.runtime import compile_model

    model, opt = build_plan(cfg, plan, device)
    return model, opt, compile_model(model, cfg.train.compile_mode) if cfg.train.compile else model


def plan_step(cfg: Config, plan: StepPlan, model: torch.nn.Module, opt, idx: torch.Tensor,
              forward_model: torch.nn.Module | None = None, captured: bool = False) -> Callable[[], int]:
    """The step ``plan.mode`` profiles on the sequences ``idx`` (B, N + 1), as a callable that runs
    it once and returns the gradient bytes it produced (0 for inference).

    ``train``: the trainer's :class:`~muse.train.step.TrainStep` (one micro-batch; clipping, loss
    scaling and the optimizer step as ``cfg.train`` says; ``opt`` None runs all but the update),
    ``captured``: under :func:`~muse.train.step.capture` as ``train.cuda_graph`` runs it (the
    gradients count once the step is captured: the eager warm-up steps drop theirs). ``fwdbwd``:
    that step's forward and backward only. ``infer``: its forward under ``no_grad``.
    ``forward_model``: what runs the forward (a compiled ``model``).
    """
    forward_model = model if forward_model is None else forward_model
    x, y = idx[None, :, :-1], idx[None, :, 1:]  # (1, B, N): one micro-batch, views of idx
    train = plan.mode == "train"
    step = TrainStep(model, opt if train else None, idx.device, precision=plan.precision,
                     grad_clip=cfg.train.grad_clip if train else 0.0, forward_model=forward_model)
    if plan.mode == "infer":
        def infer() -> int:
            with torch.no_grad():
                training_loss(forward_model, x[0], y[0], step.autocast)
            return 0

        return infer

    def grads() -> int:
        return tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)

    if captured:
        run = capture(step)

        def replay() -> int:
            run(x, y)
            return grads() if run.captured else 0

        return replay

    def eager() -> int:
        step(x, y)
        n = grads()
        step.zero_grad()
        return n

    return eager


def kernel_paths(model, autocast, idx: torch.Tensor) -> dict[str, list[str]]:
    """{op: implementations} that MUSE's ops run in ``model``'s forward on ``idx``'s device and
    dtype (``muse.ops.record_paths``), from one eager no-grad forward of the first sequence: a
    figure then says which kernels produced it, not the "auto" of its config. Call it on the
    eager model (nothing is recorded while compiling; blocks compiled in place run eagerly here)."""
    from muse.ops import record_paths

    with torch.no_grad(), autocast, torch.compiler.set_stance("force_eager"), record_paths() as paths:
        model(idx[:1, :-1], idx[:1, 1:])
    return paths


def _result(cfg: Config, plan: StepPlan, method: str, device: str, params: int, grads: int, state: int,
            peak: int, workspace: int, cublas: str) -> dict:
    return {
        "method": method, "device": device, "name": cfg.name, "batch": plan.batch, "seq": plan.seq,
        "precision": plan.precision, "optimizer": plan.optimizer if plan.mode == "train" else None,
        "checkpointing": cfg.model.checkpointing, "mode": plan.mode, "cublas_workspace": cublas,
        "parameters": params, "gradients": grads, "optimizer_state": state, "workspace": workspace,
        "activations": peak - params - grads - state - workspace, "peak": peak,
    }


def _offload_like_torchao(model: torch.nn.Module) -> None:
    """What CPUOffloadOptimizer(offload_gradients=True) does to a gradient on the GPU: once
    accumulated it is copied to the host and dropped (for tensors of >= OFFLOAD_MIN_NUMEL values)."""

    def drop(p: torch.Tensor) -> None:
        p.grad = None

    for p in model.parameters():
        if p.requires_grad and p.numel() >= OFFLOAD_MIN_NUMEL:
            p.register_post_accumulate_grad_hook(drop)


def estimate(cfg: Config, plan: StepPlan, build: Builder = build_single) -> dict:
    """Analytic peak from a fake-tensor run (any size, any machine, no memory used) of the eager
    step of the model ``build`` makes."""
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError as e:  # pragma: no cover - torch < 2.5
        raise ValueError(f"memory estimates need torch >= 2.5 (MemTracker): {e}") from None
    from muse.memory.cuda_policy import CudaStepPolicy
    from muse.ops import assume_cuda, record_paths
    from muse.runtime import effective_cublas_workspace

    cfg = plan_config(cfg, plan)
    cfg.train.compile = False  # fake tensors run the eager step
    cpu = torch.device("cpu")
    fb_plan = dataclasses.replace(plan, mode="fwdbwd") if plan.mode == "train" else plan
    offload = plan.mode == "train" and plan.optimizer == "adamw-offload"
    cublas = effective_cublas_workspace(cfg.train.cublas_workspace)
    workspace = workspace_bytes(cublas, plan.mode)  # assumes an sm90 (Hopper) GPU for "default"
    with FakeTensorMode():
        model = build(cfg, fb_plan, cpu)[0]
        if offload:
            _offload_like_torchao(model)
        params = tensor_bytes(list(model.parameters()) + list(model.buffers()))
        idx = torch.randint(0, cfg.model.vocab_size, (plan.batch, plan.seq + 1))
        tracker = MemTracker()
        tracker.track_external(model)
        # assume_cuda: "auto" takes the paths it would on a GPU, not the CPU's: the Triton mixer ops
        # (scan, gates, head norm: their fake implementations) and the fused linear + cross-entropy
        # (holding a per-token lse) where head.loss_impl resolves to it. CudaStepPolicy: CUDA
        # autocast's fp32 normalisations and CUDA's fused dropout.
        with tracker, warnings.catch_warnings(), assume_cuda(), CudaStepPolicy(), record_paths() as paths:
            # MemTracker looks for the gradients the offload hook has just dropped: expected, not news
            warnings.filterwarnings("ignore", message="Expected a tensor or a traceable wrapper-subclass")
            grads = plan_step(cfg, plan, model, None, idx)()
        peak = sum(d["Total"] for d in tracker.get_tracker_snapshot("peak").values())
        train = plan.mode == "train"
        state = expected_optimizer_bytes(model, plan.optimizer, "cuda") if train else 0
        # the update holds every parameter, gradient and state and its own temporaries
        update = params + grads + state + update_temporaries_bytes(model, plan.optimizer) if train else 0
        host = expected_offload_bytes(model) if offload else None
    # the optimizer state is resident through the whole forward and backward of a later step; the
    # cuBLAS workspaces from the first matmul on
    out = _result(cfg, plan, "estimate", "estimate (fake tensors, no device)", params, grads, state,
                  max(peak + state, update) + workspace, workspace, cublas)
    if host is not None:
        out["offload"] = host
    if train:  # where the step peaks: with the update's temporaries, "activations" holds them
        out["peak_phase"] = "optimizer update" if update > peak + state else "forward and backward"
    out["paths"] = paths
    return out


def measure(cfg: Config, plan: StepPlan, device: torch.device | str = "cuda", budget: int | None = None,
            warmup: int = 2, steps: int = 3, build: Builder = build_single) -> dict:
    """Real steps on CUDA: peak allocated over ``steps`` timed steps after ``warmup``, of the model
    and optimizer ``build`` makes.

    The step is captured as a CUDA graph only for ``train.cuda_graph`` true (then no peak is
    reported); ``auto`` and ``false`` measure the uncaptured step, which allocates the same tensors.

    With ``budget`` the process is capped by ``set_per_process_memory_fraction`` for the whole
    run (warm-up included): ``status`` is PASS only if every step completed, FAIL (with the peak
    reached) on out-of-memory.
    """
    from muse.runtime import apply_cublas_workspace, autocast_context

    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError("memory measurements need a CUDA device; without one use the estimate")
    cfg = plan_config(cfg, plan)
    cublas = apply_cublas_workspace(cfg.train.cublas_workspace)  # before the first CUDA use, if this is it
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    if budget is not None and budget > total:
        raise ConfigError(f"--budget {fmt_bytes(budget)} exceeds this GPU's {fmt_bytes(total)}")
    if cfg.train.compile:
        # an earlier compiled model's CUDA-graph pools would stay allocated in `base` and be
        # freed mid-run (a peak below the start); drop every compiled artefact first
        torch._dynamo.reset()
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    if hasattr(torch._C, "_cuda_clearCublasWorkspaces"):
        torch._C._cuda_clearCublasWorkspaces()  # each measurement pays for its own cuBLAS workspace
    torch.cuda.set_per_process_memory_fraction(budget / total if budget else 1.0, device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    model = opt = idx = forward_model = step = None
    params = grads = state = expected_state = workspace = 0
    host = expected_host = paths = None
    times: list[float] = []
    error = None
    try:
        model, opt, forward_model = build(cfg, plan, device)  # compiled under train.compile: the warm-up compiles
        params = tensor_bytes(list(model.parameters()) + list(model.buffers()))
        idx = torch.randint(0, cfg.model.vocab_size, (plan.batch, plan.seq + 1), device=device)
        paths = kernel_paths(model, autocast_context(plan.precision, device), idx)
        captured = cfg.train.cuda_graph is True and plan.mode == "train"  # "auto" measures the uncaptured step
        step = plan_step(cfg, plan, model, opt, idx, forward_model, captured)
        if captured:
            warmup = max(warmup, WARMUP_STEPS + 1)
        for _ in range(warmup):  # a captured step: its eager warm-up steps, then the capture
            grads = step()
        state = optimizer_state_bytes(opt) if opt is not None else 0
        torch.cuda.synchronize(device)
        # between steps nothing but parameters, optimizer state and library workspaces is alive
        workspace = torch.cuda.memory_allocated(device) - base - params - state
        expected_state = expected_optimizer_bytes(model, plan.optimizer, "cuda") if opt is not None else 0
        if opt is not None and plan.optimizer == "adamw-offload":
            host, expected_host = offload_host_bytes(opt), expected_offload_bytes(model)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError as e:
        error = str(e).splitlines()[0][:200]
    finally:
        peak = torch.cuda.max_memory_allocated(device) - base
        model = opt = idx = forward_model = step = None  # the step holds them too
        if cfg.train.compile:
            torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    out = _result(cfg, plan, "measured", torch.cuda.get_device_name(device), params, grads, state, peak,
                  workspace, cublas)
    out["tokens_per_s"] = plan.batch * plan.seq / statistics.median(times) if times else None
    out["compile"] = cfg.train.compile_mode if cfg.train.compile else None
    out["cuda_graph"] = cfg.train.cuda_graph is True and plan.mode == "train"
    if out["cuda_graph"] or (cfg.train.compile and cfg.train.compile_mode in CUDA_GRAPH_MODES):
        # replaying a CUDA graph allocates nothing: its temporaries live in a private pool that
        # max_memory_allocated stops counting once the capture is over, so no peak is reported
        out.update(peak=None, activations=None, peak_note=CUDA_GRAPH_NOTE)
    out["timed_steps"] = len(times)
    out["paths"] = paths
    props = torch.cuda.get_device_properties(device)
    sm90 = (props.major, props.minor) == (9, 0)
    # the estimate's formulas, checked against what was allocated
    out["workspace_formula"] = workspace_bytes(cublas, plan.mode, sm90)
    out["optimizer_state_formula"] = expected_state
    if host is not None:
        out["offload"] = {**expected_host, **host, "formula": expected_host}
    if budget is not None:
        out["budget"] = budget
    if budget is not None or error:  # an out-of-memory without a budget fails against the whole GPU
        out["status"] = "FAIL" if error else "PASS"
    if error:
        out["error"] = error
    return out


def run(cfg: Config, plan: StepPlan, budget: int | None = None, device: str = "auto",
        build: Builder = build_single) -> dict:
    """Measure where CUDA is available (or asked for), estimate otherwise, the step of ``build``'s model."""
    if cfg.train.cuda_graph is True:  # "auto" (the default) measures the uncaptured step
        raise ConfigError("train.cuda_graph replays a captured step, whose memory max_memory_allocated does not "
                          "see; measure with train.cuda_graph false (the step allocates the same tensors)")
    if cfg.train.compile and cfg.train.compile_mode in CUDA_GRAPH_MODES:
        raise ConfigError(f"train.compile_mode {cfg.train.compile_mode!r} replays CUDA graphs, whose memory "
                          "max_memory_allocated does not see; measure with compile_mode 'default' or "
                          "'max-autotune-no-cudagraphs' (or without train.compile)")
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        resolve_device(device)  # a one-line error where CUDA was asked for and is not there
        return measure(cfg, plan, "cuda" if device == "auto" else device, budget=budget, build=build)
    out = estimate(cfg, plan, build)
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

