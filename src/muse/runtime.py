"""Devices, precision contexts, compilation and loading a trained model for inference."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import yaml

from muse.config import Config, DataConfig, from_dict


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:  # torch's message lists two dozen device types
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available; use the cpu device")
    return dev


# Inductor settings MUSE compiles with, over those of the compile mode. comprehensive_padding:
# Inductor pads a wide output's row stride to 128 bytes, e.g. the semiseparable mixer's fused
# projection from 1,248 to 1,280 columns; cuBLASLt then refuses the bias epilogue (it needs a
# contiguous result), so ATen copies the broadcast bias into the output and runs a beta = 1 GEMM
# instead: two extra passes over a (T, 1248) tensor per layer (what turning the padding off saved
# is in docs/performance-notes.md §6). MUSE's kernels read strided rows, so they need no padding.
INDUCTOR_OPTIONS = {"comprehensive_padding": False}


def side_stream_call(fn, side: torch.cuda.Stream):
    """``fn()`` on the CUDA stream ``side``, ordered after and before the current stream's work.
    The warm-up before a CUDA-graph capture runs there (PyTorch's CUDA-graph notes ask for a side
    stream, so that autograd and the allocator settle the streams the capture will use)."""
    main = torch.cuda.current_stream()
    side.wait_stream(main)
    with torch.cuda.stream(side):
        out = fn()
    main.wait_stream(side)
    out.record_stream(main)
    return out


def compile_options(mode: str | None = None) -> dict:
    """Inductor options of the compile ``mode`` with ``INDUCTOR_OPTIONS`` (those this torch knows)."""
    import torch._inductor as inductor
    import torch._inductor.config as inductor_config

    known = inductor_config.get_config_copy()
    return {**inductor.list_mode_options(mode), **{k: v for k, v in INDUCTOR_OPTIONS.items() if k in known}}


def compile_model(model: torch.nn.Module, mode: str | None = None) -> torch.nn.Module:
    """``torch.compile(model, mode=mode)`` with :func:`compile_options`."""
    return torch.compile(model, options=compile_options(mode))


CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
_cublas_warned: set[tuple[str, str]] = set()


def effective_cublas_workspace(setting: str = "default") -> str:
    """The CUBLAS_WORKSPACE_CONFIG a process applying ``setting`` runs with: ``setting`` itself,
    or for ``default`` whatever the environment already holds ("default" when unset)."""
    return setting if setting != "default" else os.environ.get(CUBLAS_ENV) or "default"


def apply_cublas_workspace(setting: str) -> str:
    """Cap cuBLAS's workspace for this process (``train.cublas_workspace``); returns the
    CUBLAS_WORKSPACE_CONFIG in effect ("default": torch's own size).

    PyTorch allocates one cuBLAS workspace (and one cuBLASLt workspace) per (handle, stream)
    through its caching allocator, sized by CUBLAS_WORKSPACE_CONFIG when the first one is made;
    so the variable must be set before the first CUDA use. ``default`` changes nothing. If CUDA
    is already initialised under a different value the request cannot take effect: the
    environment is left as it is (so what is recorded is what runs) and a warning says so, once.
    """
    from muse.config import check_cublas_workspace

    check_cublas_workspace("train.cublas_workspace", setting)
    current = os.environ.get(CUBLAS_ENV) or "default"
    if setting == "default" or setting == current:
        return current
    if torch.cuda.is_initialized():
        if (setting, current) not in _cublas_warned:
            _cublas_warned.add((setting, current))
            import warnings

            warnings.warn(
                f"muse: train.cublas_workspace {setting!r} cannot take effect: CUDA was initialised before it "
                f"could be applied, and this process keeps CUBLAS_WORKSPACE_CONFIG={current!r}; set it before "
                f"the first CUDA use (e.g. export {CUBLAS_ENV}={setting})",
                RuntimeWarning, stacklevel=2,
            )
        return current
    os.environ[CUBLAS_ENV] = setting
    return setting


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast for mixed precision; fp32 and pure-bf16 parameters need none."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def load_for_inference(path: str | Path, device: torch.device, tag: str = "last", int8: bool = False):
    """(model in eval mode, Config, Tokenizer, checkpoint dir, trainer state) from a run or checkpoint.

    int8: quantize the model's ``nn.Linear`` weights to INT8 (weight-only, torchao) after loading.
    """
    from muse.data import Tokenizer
    from muse.model import build_model
    from muse.train.checkpoint import load_checkpoint, read_file, resolve_checkpoint

    ckpt_dir = resolve_checkpoint(path, tag)
    cfg = from_dict(Config, DataConfig.saved(yaml.safe_load(read_file(ckpt_dir, "config.yaml"))))
    if int8 and cfg.model.kind != "muse":
        # transformers' GPT-2 projections are Conv1D modules, not nn.Linear: only its head would be
        # quantized (and a tied head would lose its tie), so the figures would mean nothing
        raise ValueError(f"--int8 quantizes MUSE models only; {ckpt_dir} is model.kind {cfg.model.kind}")
    model = build_model(cfg)
    _, state = load_checkpoint(ckpt_dir, model, map_location="cpu")
    model.to(device).eval()
    if int8:
        from muse.memory.quant import quantize_int8

        quantize_int8(model)
    return model, cfg, Tokenizer.load(ckpt_dir), ckpt_dir, state


def environment_info(device: torch.device | str | None = None) -> dict:
    """What every benchmark result records (DESIGN.md §2): commit, date, device, torch."""
    import datetime
    import platform
    import subprocess

    sha = os.environ.get("MUSE_GIT_SHA")  # set where the tree was copied without .git (GPU box)
    if not sha:
        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).parent).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            sha = "unknown"
    dev = torch.device(device) if device is not None else None
    on_cuda = dev is not None and dev.type == "cuda"
    return {
        "git_sha": sha,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(dev) if on_cuda
        else f"cpu ({platform.machine()}, {os.cpu_count()} logical cores)",
        "device_type": "cuda" if on_cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if on_cuda else None,
        "python": platform.python_version(),
    }
