"""Triton for MUSE's kernels: whether it is there, where kernels run, and how they are tuned.

Triton is optional (the CPU torch wheel and macOS have none), so this is the one module that
imports it: ``triton`` and ``tl`` are None without it, ``HAS_TRITON`` says which, and every
kernel module defines its kernels under ``if HAS_TRITON:``. Without Triton every op's "auto"
takes its torch path, silently off CUDA and with one notice per process on CUDA
(``notice_no_triton``); ``muse memory``'s estimate on fake tensors still models the kernels.

``MUSE_TRITON_AUTOTUNE=0`` (the test suite) gives each kernel its first config alone.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import Tensor

from muse.ops._dispatch import assumes_cuda, fake

try:
    import triton
    import triton.language as tl
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.errors import OutOfResources
except ImportError:  # the CPU torch wheel, macOS: the torch paths everywhere
    triton = tl = Autotuner = None

    class OutOfResources(Exception):  # noqa: N818 - Triton's name; never raised without Triton
        pass


__all__ = [
    "AUTOTUNE", "HAS_TRITON", "HOST_DTYPES", "KERNEL_DTYPES", "OutOfResources", "autotune", "configs",
    "dot_precision", "interpreting", "notice_no_triton", "tl", "triton", "triton_supports",
]

HAS_TRITON = triton is not None
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
HOST_DTYPES = (torch.float32, torch.float64)  # numpy has no bfloat16: the interpreter computes garbage

# Autotuning compiles every config once per shape: worth it for a training run, too slow for a
# test session of many odd shapes, which sets MUSE_TRITON_AUTOTUNE=0.
AUTOTUNE = os.environ.get("MUSE_TRITON_AUTOTUNE", "1") != "0"


def interpreting() -> bool:
    """Triton's CPU interpreter is on (TRITON_INTERPRET=1: the tests without a GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_supports(*tensors: Tensor | None) -> bool:
    """True where the kernels can run these tensors (None entries ignored): Triton present, and
    CUDA tensors of a kernel dtype, or fp32/fp64 CPU ones under the interpreter. Fake tensors
    under ``assume_cuda()`` count as CUDA ones, Triton installed or not: only the ops' fake
    implementations run on them (``muse memory`` models the GPU step on any machine)."""
    return all(runs(t) for t in tensors if t is not None)


def runs(t: Tensor, dtype: torch.dtype | None = None) -> bool:
    """``triton_supports(t)`` for t computed in ``dtype`` (default t's)."""
    dtype = dtype or t.dtype
    if t.is_cuda or assumes_cuda(t):  # is_cuda first: the common case skips the call
        return dtype in KERNEL_DTYPES and (HAS_TRITON or fake(t))
    return HAS_TRITON and interpreting() and dtype in HOST_DTYPES


def dot_precision(dtype: torch.dtype) -> str | None:
    """tl.dot's ``input_precision`` for operands of ``dtype``: 3xTF32 keeps fp32 inputs near fp32
    accuracy (plain TF32 gave ~1.4e-3 after two chained products); IEEE for fp64; bf16/fp16 use
    the tensor cores natively (None: Triton's default)."""
    return {torch.float32: "tf32x3", torch.float64: "ieee"}.get(dtype)


_noticed = False


def notice_no_triton() -> None:
    """One line on stderr, once per process, the first time an op on CUDA falls back to torch
    because Triton is missing (the ops' "auto" dispatch calls it only then). Not while compiling:
    a print there would break the graph; the eager calls around a compiled step say it."""
    global _noticed
    if not (_noticed or torch.compiler.is_compiling()):
        _noticed = True
        print("muse: Triton is not installed, so the ops on CUDA run their slower torch paths "
              "(pip install triton for the fused kernels)", file=sys.stderr, flush=True)


def configs(extra: list[dict], warps=(4, 8), stages=(1, 2), interp: dict | None = None) -> list:
    """An autotuning space: each keyword set of ``extra`` with each number of warps and stages.
    Without autotuning the first entry alone (first warps, first stages); under the interpreter
    too (it would "benchmark" every config at numpy speed), with ``interp``'s keywords on one
    warp and stage where given (small blocks, so the tests cover several blocks of every loop)."""
    if interpreting() and interp is not None:
        return [triton.Config(interp, num_warps=1, num_stages=1)]
    if interpreting() or not AUTOTUNE:
        return [triton.Config(extra[0], num_warps=warps[0], num_stages=stages[0])]
    return [triton.Config(kw, num_warps=w, num_stages=s) for kw in extra for w in warps for s in stages]


def autotune(configs: list, key: list[str], **kwargs):
    """``triton.autotune(configs, key, **kwargs)``: the one way MUSE's kernels are autotuned."""
    return triton.autotune(configs=configs, key=key, **kwargs)
