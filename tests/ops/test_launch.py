"""``muse.ops._launch.launch``: the cached launch path gives what ``kernel[grid]`` gives.

On a GPU the second and later calls per key go straight to the compiled kernel, so these tests
check that every property a compiled kernel is specialized on (tensor alignment, integer
divisibility and value 1, dtype, autotuned config) starts a new key rather than reusing a
kernel compiled for other inputs. Without a GPU they run under Triton's interpreter, where
the same calls take Triton's path (the cache keeps only the config).
"""

from __future__ import annotations

import pytest
import torch

from muse.ops import _launch
from muse.ops._triton import HAS_TRITON

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _axpy_kernel(x, y, out, n, a, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        tl.store(out + offs, a * tl.load(x + offs, mask=m) + tl.load(y + offs, mask=m), mask=m)

    # two configs to choose from on a GPU; the interpreter cannot benchmark, so one there
    _CONFIGS = [triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})][: 2 if DEVICE == "cuda" else 1]

    @triton.autotune(configs=_CONFIGS, key=["n"])
    @triton.jit
    def _tuned_axpy_kernel(x, y, out, n, a, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        tl.store(out + offs, a * tl.load(x + offs, mask=m) + tl.load(y + offs, mask=m), mask=m)


def _run(kernel, x, y, a, **meta):
    out = torch.empty_like(x)
    n = x.numel()
    grid = (lambda m: (triton.cdiv(n, m["BLOCK"]),)) if not meta else (triton.cdiv(n, meta["BLOCK"]),)
    _launch.launch(kernel, grid, x, y, out, n, a, **meta)
    return out


@pytest.mark.parametrize("tuned", [False, True], ids=["jit", "autotuned"])
def test_cached_launches_match_torch(tuned):
    """Repeated launches with inputs that differ in every specialized property: 16-byte aligned
    and misaligned views, n divisible by 16 or not, n = 1, another dtype, another scalar."""
    kernel, meta = (_tuned_axpy_kernel, {}) if tuned else (_axpy_kernel, {"BLOCK": 32})
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(200, generator=gen, dtype=torch.float64)
    other = torch.randn(200, generator=gen, dtype=torch.float64)
    cases = []
    for dtype in (torch.float32, torch.float64):
        b, o = base.to(DEVICE, dtype), other.to(DEVICE, dtype)
        for lo, n in ((0, 64), (1, 64), (0, 37), (3, 1), (0, 160), (2, 100)):
            for a in (2.0, -0.5):
                cases.append((b[lo:lo + n], o[lo:lo + n], a))
    for _ in range(2):  # the second round hits every key's cached kernel
        for x, y, a in cases:
            out = _run(kernel, x, y, a, **meta)
            torch.testing.assert_close(out, a * x + y, rtol=0, atol=0)


def test_key_separates_alignment_and_dtype():
    x = torch.zeros(40, device=DEVICE)
    assert _launch._spec(x) != _launch._spec(x[1:])  # a view 4 bytes in: not 16-byte aligned
    assert _launch._spec(x) != _launch._spec(x.double())
    assert _launch._spec(x[4:]) == _launch._spec(x)  # 16 bytes in: aligned again
    assert _launch._spec(7) == 7


def test_grid_arithmetic_matches_triton():
    # the launchers size grids and blocks with these instead of Triton's constexpr functions
    for n in [*range(0, 2100), 2**20 - 1, 2**20, 2**20 + 1, 3 * 2**31]:
        assert _launch.next_pow2(n) == triton.next_power_of_2(n), n
    for a in [*range(0, 200), 2**31 + 5]:
        for b in (1, 2, 3, 7, 16, 64, 264):
            assert _launch.cdiv(a, b) == triton.cdiv(a, b), (a, b)
