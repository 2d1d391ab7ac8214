"""muse.ops._reduce.sum_partials: the one-launch sum of split partials equals torch's sum + cast."""

from __future__ import annotations

import pytest
import torch

from muse.ops._reduce import sum_partials

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("shape", [(1, 7), (3, 37, 5), (5, 301), (256, 3, 2)])
@pytest.mark.parametrize("dtype,out_dtype", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                             (torch.float32, torch.bfloat16)])
def test_matches_torch_sum_then_cast(shape, dtype, out_dtype):
    p = torch.randn(shape, device=DEVICE, dtype=dtype)
    ref = p.sum(0).to(out_dtype)
    got = sum_partials(p, out_dtype)
    assert got.shape == ref.shape and got.dtype == out_dtype
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[out_dtype]
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * shape[0])


def test_writes_into_out_contiguous_or_not():
    p = torch.randn(4, 6, 5, device=DEVICE)
    out = torch.empty(6, 5, device=DEVICE)
    assert sum_partials(p, torch.float32, out=out) is out
    torch.testing.assert_close(out, p.sum(0))
    t = torch.empty(5, 6, device=DEVICE).t()  # a transposed weight's gradient: not contiguous
    assert sum_partials(p, torch.float32, out=t) is t
    torch.testing.assert_close(t, p.sum(0))
