"""Triton for MUSE's kernels: whether it is there, where kernels run, and how they are tuned.

Triton is optional (the CPU torch wheel and macOS have none), so this is the one module that
imports it: ``triton`` and ``tl`` are None without it, ``HAS_TRITON`` says which, and every
kernel module defines its kernels under ``if HAS_TRITON:``. Without Triton every op's "auto"
takes its torch path, silently off CUDA and with one notice per process on CUDA
(``notice_no_triton``); ``muse memory``'s estimate on fake tensors still models the kernels.

Autotuning (``autotune``) is ``triton.autotune`` plus two things:

- the chosen config is kept on disk (Triton >= 3.3's ``cache_results``), keyed by Triton's
  version, the compile target (e.g. CUDA sm_90 and the ptxas version), the kernel's source, the
  configs, the key values and dtypes, and here also the GPU's name and SM count (Triton's key
  would give an H200 the H100's choice): only the first process on a machine benchmarks, later
  ones read the choice from Triton's cache dir. ``MUSE_TRITON_AUTOTUNE_CACHE=0`` keeps nothing.
- a line on stderr when a kernel really benchmarks its configs (the first call of a shape on a
  GPU: compiling and timing every config takes seconds), none when the choice comes from disk.

``MUSE_TRITON_AUTOTUNE=0`` (the test suite) gives each kernel its first config alone.
"""

from __future__ import annotations

import functools
import inspect
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
    "dot_precision", "interpreting", "kernels_available", "notice_no_triton", "tl", "triton", "triton_supports",
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


def kernels_available(x: Tensor) -> bool:
    """For an op's "auto" dispatch, once ``x`` qualifies for its kernels: True where Triton is
    installed or ``x`` is fake (fakes launch nothing: the memory estimate models a GPU install);
    otherwise the one-time notice (``notice_no_triton``) and False, the torch path."""
    if HAS_TRITON or fake(x):
        return True
    notice_no_triton()
    return False


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


def _has_disk_cache() -> bool:
    """This Triton keeps autotuning results on disk in the form ``_MuseAutotuner`` extends."""
    if not HAS_TRITON or "cache_results" not in inspect.signature(Autotuner.__init__).parameters:
        return False
    check = getattr(Autotuner, "check_disk_cache", None)
    return check is not None and list(inspect.signature(check).parameters) == ["self", "tuning_key", "configs",
                                                                                "bench_fn"]


_GPU_KEYED = _has_disk_cache()  # else the override below would not fit this Triton's cache
_DISK_CACHE = _GPU_KEYED and os.environ.get("MUSE_TRITON_AUTOTUNE_CACHE", "1") != "0"


@functools.lru_cache(maxsize=None)
def _gpu(index: int) -> str:
    p = torch.cuda.get_device_properties(index)
    return f"{p.name} ({p.multi_processor_count} SMs)"


def this_gpu() -> str:
    """The current CUDA device as the autotuning cache knows it: name and SM count."""
    return _gpu(torch.cuda.current_device())


def _cache_dir() -> str:
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return knobs.cache.dir
    from triton.runtime.cache import default_cache_dir  # Triton < 3.4

    return default_cache_dir()


if HAS_TRITON:

    class _MuseAutotuner(Autotuner):
        """Triton's autotuner, its disk cache keyed also by the GPU, announcing real tuning."""

        if _GPU_KEYED:

            def check_disk_cache(self, tuning_key, configs, bench_fn):
                """Triton's lookup under the key plus this GPU's name; a hit is stored under the
                key ``run`` reads (a miss benchmarks through ``bench_fn``, which stores it there)."""
                gpu_key = (*tuning_key, this_gpu())
                hit = super().check_disk_cache(gpu_key, configs, bench_fn)
                if gpu_key in self.cache:
                    self.cache[tuning_key] = self.cache.pop(gpu_key)
                return hit

        def _bench(self, *args, config, **meta):
            announce(self, {**self.nargs, **meta})
            return super()._bench(*args, config=config, **meta)


_announced: set = set()


def announce(tuner, named_args: dict) -> None:
    """The line for a kernel that benchmarks its configs for these arguments (the key's values
    and the tensors' dtypes, as Triton keys its choice), once per kernel and key per process."""
    fn = tuner.base_fn
    name = f"{fn.__module__.removeprefix('muse.ops.')}.{fn.__name__}"
    key = [f"{k}={named_args[k]}" for k in tuner.keys if k in named_args]
    key += sorted({str(v.dtype).removeprefix("torch.") for v in named_args.values() if hasattr(v, "dtype")})
    # under torchrun every process tunes, but one line per kernel is enough (RANK: torchrun's)
    if (name, *key) in _announced or interpreting() or os.environ.get("RANK", "0") != "0":
        return
    _announced.add((name, *key))
    if getattr(tuner, "cache_results", False):
        when = f"once per GPU and shape; cached in {_cache_dir()}"
    else:
        when = "in every process: not kept on disk with Triton < 3.3 or MUSE_TRITON_AUTOTUNE_CACHE=0"
    print(f"muse: tuning Triton kernel {name} for {', '.join(key)} ({when})", file=sys.stderr, flush=True)


def autotune(configs: list, key: list[str], **kwargs):
    """``triton.autotune(configs, key, **kwargs)`` whose choices persist per GPU and shape (where
    this Triton can keep them, unless MUSE_TRITON_AUTOTUNE_CACHE=0) and whose real tuning is
    announced on stderr (see the module docstring)."""
    if _DISK_CACHE:
        kwargs["cache_results"] = True
    reset_to_zero, restore_value = kwargs.pop("reset_to_zero", None), kwargs.pop("restore_value", None)

    def decorator(fn):
        return _MuseAutotuner(fn, fn.arg_names, configs, key, reset_to_zero, restore_value, **kwargs)

    return decorator
