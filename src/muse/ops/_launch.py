"""``launch``: how every MUSE Triton kernel is started, with as little host time as Triton allows.

``kernel[grid](*args)`` goes through Triton's Python binder on every call: it specializes each
argument (dtype, 16-byte alignment, integer divisibility), hashes the result and looks the
compiled kernel up; an autotuned kernel adds its own key and dispatch on top. For a launch of
~25 arguments that host work takes far longer than the driver's own launch call, and longer
than most of these kernels run on the GPU at N = 2K: eager layers were bound by it (figures in
docs/performance-notes.md §4). ``launch`` does that work once per *specialization* and then
calls the compiled kernel directly:

- key: the kernel, its keyword arguments, and per positional argument its value (scalars:
  Triton specializes ints on == 1 and % 16 and 32/64 bits, all covered by the value), or for
  a tensor its dtype, device and whether its address is 16-byte aligned (the only tensor
  property a compiled kernel assumes);
- first call per key: the ordinary launch (autotuning if the kernel is autotuned), then the
  chosen config's compiled kernel is fetched from Triton's cache (``warmup=True`` compiles
  nothing new) and kept with the values of the remaining parameters;
- later calls: ``compiled[grid](*all parameter values)``, Triton's own launcher.

Under Triton's CPU interpreter (the tests) there is no compiled kernel: every call takes the
ordinary path, as it does with MUSE_TRITON_FAST_LAUNCH=0 (for comparisons and debugging). Where the compiled-kernel interface differs (another Triton version), the key
falls back to the ordinary path for good, so a launch is never lost, only slower.
"""

from __future__ import annotations

import os

import torch

from muse.ops._triton import Autotuner, interpreting

__all__ = ["cdiv", "launch", "next_pow2"]

_CACHE: dict = {}


# Grid and block arithmetic on the host. Triton's ``triton.cdiv`` / ``triton.next_power_of_2``
# are ``constexpr_function``s that unwrap their arguments on every call, host time out of all
# proportion to the arithmetic, and a semiseparable layer makes ~25 such calls per
# forward+backward (docs/performance-notes.md §4).
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The least power of two >= n, as ``triton.next_power_of_2`` (which gives 0 for 0)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def _spec(a):
    if isinstance(a, torch.Tensor):
        return a.dtype, a.get_device(), a.data_ptr() % 16 == 0  # get_device: an int, no device object
    return a


def launch(kernel, grid, *args, **meta) -> None:
    """``kernel[grid](*args, **meta)`` for a ``triton.jit`` or ``triton.autotune`` kernel
    (positional arguments first, then keyword ones, as the kernel declares them); grid is a
    tuple or a function of the launch's keyword arguments and config (e.g. ``meta["BLOCK"]``).
    An autotuned kernel is tuned on its first call per key, as ``kernel[grid]`` would."""
    key = (kernel, *meta.items(), *map(_spec, args))
    hit = _CACHE.get(key)
    if hit is None:
        kernel[grid](*args, **meta)
        _CACHE[key] = _remember(kernel, grid, args, meta)
        return
    compiled, tail, config, kw = hit
    if compiled is None:  # the interpreter, or no direct call: Triton's path with the kept config
        (kernel.fn if isinstance(kernel, Autotuner) else kernel).run(*args, grid=grid, warmup=False, **meta, **config)
        return
    g = grid(kw) if callable(grid) else grid
    compiled[(g[0], g[1] if len(g) > 1 else 1, g[2] if len(g) > 2 else 1)](*args, *tail)


def _remember(kernel, grid, args, meta) -> tuple:
    """(compiled kernel or None, the values of the parameters after ``args``, the autotuned
    config's keywords, all launch keywords) for the launch just made."""
    config, fn = {}, kernel
    if isinstance(kernel, Autotuner):
        config, fn = kernel.best_config.all_kwargs(), kernel.fn
    kw = {**meta, **config}
    if interpreting() or os.environ.get("MUSE_TRITON_FAST_LAUNCH", "1") == "0":
        return None, (), config, kw
    try:
        compiled = fn.run(*args, grid=grid, warmup=True, **kw)  # Triton's cache: compiles nothing
        tail = tuple(kw[name] for name in fn.arg_names[len(args):])
    except (KeyError, TypeError, AttributeError):
        compiled = tail = None
    if compiled is None or not hasattr(compiled, "__getitem__"):
        return None, (), config, kw
    return compiled, tail, config, kw
