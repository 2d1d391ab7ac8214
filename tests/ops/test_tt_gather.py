"""The fused TT-gather kernels against the torch contraction, forward and every core gradient.

Without a GPU the kernels run on Triton's CPU interpreter (TRITON_INTERPRET=1, set in
conftest.py), whose dots are exact: fp64 checks the algorithm to 1e-10 and fp32 to rounding.
Shapes are tiny and odd (factors that are not powers of two, padded columns, unequal ranks)
so every mask and padding path is exercised in seconds.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import muse.ops.tt_gather as tg
from muse.ops import _triton
from muse.config import ConfigError, EmbeddingConfig, load_config
from muse.layers.embedding import TTEmbedding
from muse.layers.tt import TTMatrix
from muse.ops.tt_gather import resolve_impl, tt_gather
from muse.ops.tt_gather import triton_kernel as tk

pytestmark = pytest.mark.skipif(not tk.HAS_TRITON, reason="triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# relative error vs the torch path: the interpreter's dots are exact; compiled fp32 runs tf32x3
TOL = {torch.float64: 1e-10, torch.float32: 1e-5 if DEVICE == "cpu" else 1e-4, torch.bfloat16: 2e-2}
DTYPES = [torch.float64, torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])

# (row_factors, col_factors, ranks [1, …, 1], num_cols)
CASES = [
    ([5, 7], [3, 20], [1, 3, 1], 50),  # k = 2, padded columns (60 > 50)
    ([5, 7, 3], [3, 4, 5], [1, 3, 5, 1], 50),  # k = 3, odd factors and ranks, 60 > 50
    ([4, 3, 2], [8, 2, 6], [1, 17, 2, 1], 96),  # a rank above 16 (tile 32), exact columns
    ([3, 2, 3, 2], [2, 3, 2, 3], [1, 2, 5, 3, 1], 30),  # k = 4, 36 > 30
]


def make_cores(rf, cf, ranks, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(ranks[i], rf[i], cf[i], ranks[i + 1], generator=g, dtype=torch.float64).to(DEVICE, dtype)
            for i in range(len(rf))]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def run(impl, ids, cores, rf, cf, N, w):
    leaves = [c.detach().clone().requires_grad_() for c in cores]
    out = tt_gather(ids, leaves, rf, cf, N, impl=impl)
    return out.detach(), torch.autograd.grad((out * w).sum(), leaves)


def check(ids, cores, rf, cf, N, dtype):
    w = torch.randn(ids.numel(), N, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DEVICE, dtype)
    out, grads = run("triton", ids, cores, rf, cf, N, w)
    ref, ref_grads = run("torch", ids, [c.double() for c in cores], rf, cf, N, w.double())
    assert out.shape == (ids.numel(), N) and out.dtype == dtype
    assert rel(out, ref) < TOL[dtype]
    for g, r in zip(grads, ref_grads):
        assert g.dtype == dtype and rel(g, r) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{len(c[0])}-{c[1]}-r{c[2]}")
def test_matches_torch(case, dtype):
    rf, cf, ranks, N = case
    V = math.prod(rf)
    ids = torch.randint(0, V, (37,), generator=torch.Generator().manual_seed(2))
    ids[5:9] = ids[4]  # a run of equal ids
    ids[-1] = V - 1
    check(ids.to(DEVICE), make_cores(rf, cf, ranks, dtype), rf, cf, N, dtype)


def test_best_configs_name_what_the_autotuner_chose():
    """What benchmarks/tt_embedding.py records beside its timings (the kernels' chosen BT)."""
    rf, cf, ranks, N = CASES[0]
    cores = [c.requires_grad_() for c in make_cores(rf, cf, ranks, torch.float64)]
    tt_gather(torch.tensor([1, 2, 3], device=DEVICE), cores, rf, cf, N, impl="triton").sum().backward()
    chosen = tk.best_configs()
    assert set(chosen) == {"forward", "backward"} and all(c.startswith("BT: ") for c in chosen.values())


def test_long_runs_and_every_row():
    """One id repeated across many backward programs, then every row once: the per-run sums and
    the accumulate-then-flush of core slices across digit changes."""
    rf, cf, ranks, N = CASES[1]
    V = math.prod(rf)
    cores = make_cores(rf, cf, ranks, torch.float64)
    check(torch.full((40,), 17, device=DEVICE), cores, rf, cf, N, torch.float64)
    check(torch.arange(V, device=DEVICE).flip(0), cores, rf, cf, N, torch.float64)


def test_empty_and_out_dtype():
    rf, cf, ranks, N = CASES[0]
    cores = [c.requires_grad_() for c in make_cores(rf, cf, ranks, torch.float64)]
    out = tt_gather(torch.zeros(0, dtype=torch.long, device=DEVICE), cores, rf, cf, N, impl="triton")
    assert out.shape == (0, N)
    assert all(g.abs().sum() == 0 for g in torch.autograd.grad(out.sum(), cores))
    ids = torch.tensor([3, 0, 3, 34], device=DEVICE)
    out = tt_gather(ids, cores, rf, cf, N, impl="triton", out_dtype=torch.float32)  # dots in fp32
    ref = tt_gather(ids, cores, rf, cf, N, impl="torch")
    assert out.dtype == torch.float32 and rel(out, ref) < 1e-5
    grads = torch.autograd.grad((out * 2).sum(), cores)
    ref_grads = torch.autograd.grad((ref * 2).sum(), cores)
    assert all(g.dtype == torch.float64 and rel(g, r) < 1e-5 for g, r in zip(grads, ref_grads))


def test_impl_choice_and_errors(monkeypatch):
    rf, cf, ranks, N = CASES[1]
    cores = make_cores(rf, cf, ranks, torch.float32)
    ids = torch.tensor([1, 2], device=DEVICE)
    cpu_ids, cpu_cores = ids.cpu(), [c.cpu() for c in cores]
    assert resolve_impl("auto", cpu_ids, cpu_cores, cf) == "torch"  # never the interpreter under auto
    with pytest.raises(ValueError, match="'auto', 'triton', 'torch'"):
        tt_gather(ids, cores, rf, cf, N, impl="fast")
    with pytest.raises(ValueError, match="core 1 must have shape"):
        tt_gather(ids, [cores[0], cores[2], cores[1]], rf, cf, N)
    with pytest.raises(ValueError, match="ranks up to 64"):
        big = make_cores([2, 2], [8, 8], [1, 65, 1], torch.float32)
        tt_gather(ids % 4, big, [2, 2], [8, 8], 64, impl="triton")
    with pytest.raises(ValueError, match="2, 3 or 4 cores"):
        tt_gather(ids % 32, make_cores([2] * 5, [2] * 5, [1, 2, 2, 2, 2, 1], torch.float32), [2] * 5, [2] * 5, 32,
                  impl="triton")
    monkeypatch.setattr(_triton, "interpreting", lambda: False)  # triton_supports asks it there
    with pytest.raises(ValueError, match="runs CUDA tensors"):
        tt_gather(cpu_ids, cpu_cores, rf, cf, N, impl="triton")


def test_out_of_resources_falls_back(monkeypatch):
    """A shape within the limits that a GPU still cannot fit: "auto" forward and any backward
    recompute on the torch path (with a warning) instead of failing a training step."""
    rf, cf, ranks, N = CASES[0]
    cores = [c.requires_grad_() for c in make_cores(rf, cf, ranks, torch.float64)]
    ids = torch.tensor([4, 4, 9, 0], device=DEVICE)
    ref = tt_gather(ids, cores, rf, cf, N, impl="torch")
    ref_grads = torch.autograd.grad(ref.square().sum(), cores)

    class NoFit:
        def __getitem__(self, grid):
            def launch(*a, **k):
                raise tk.OutOfResources(300_000, 232_448, "shared memory")
            return launch

    monkeypatch.setattr(tk, "_bwd_kernel", NoFit())
    out = tt_gather(ids, cores, rf, cf, N, impl="triton")
    with pytest.warns(UserWarning, match="backward does not fit"):
        grads = torch.autograd.grad(out.square().sum(), cores)
    assert all(rel(g, r) < 1e-10 for g, r in zip(grads, ref_grads))
    monkeypatch.setattr(tk, "_fwd_kernel", NoFit())
    monkeypatch.setattr(tg, "resolve_impl", lambda *a: "triton")
    with pytest.warns(UserWarning, match="does not fit this GPU"):
        assert rel(tt_gather(ids, cores, rf, cf, N, impl="auto"), ref) < 1e-12
    with pytest.raises(tk.OutOfResources):
        tt_gather(ids, cores, rf, cf, N, impl="triton")


@pytest.mark.parametrize("phase", ["none", "cos"])
def test_tt_embedding_triton_matches_torch(phase):
    """TTEmbedding end to end: forward and the gradients of every parameter (cores and, for
    "cos", the bond phases, which reach the kernel through the effective cores)."""
    torch.manual_seed(0)
    kw = dict(vocab_factors=[5, 7, 3], dim_factors=[3, 4, 5], phase=phase, init_std=0.5)
    fast = TTEmbedding(100, 50, [3, 5], gather_impl="triton", **kw).double().to(DEVICE)
    slow = TTEmbedding(100, 50, [3, 5], gather_impl="torch", **kw).double().to(DEVICE)
    slow.load_state_dict(fast.state_dict())
    idx = torch.randint(0, 100, (3, 9), device=DEVICE)
    idx[1, :4] = idx[0, 2]
    w = torch.randn(3, 9, 50, dtype=torch.float64, device=DEVICE)
    outs = []
    for emb in (fast, slow):
        out = emb(idx)
        (out * w).sum().backward()
        outs.append(out.detach())
    assert outs[0].shape == (3, 9, 50) and rel(outs[0], outs[1]) < 1e-10
    names = [n for n, _ in fast.named_parameters()]
    assert any("phases" in n for n in names) == (phase == "cos")
    for (n, a), b in zip(fast.named_parameters(), slow.parameters()):
        assert rel(a.grad, b.grad) < 1e-10, n
    with pytest.raises(ValueError, match=r"idx values must lie in \[0, 100\)"):
        fast(torch.tensor([0, 100], device=DEVICE))


def test_tt_matrix_gather_impl():
    with pytest.raises(ValueError, match="gather_impl must be one of 'auto', 'triton', 'torch'"):
        TTMatrix(100, 50, 3, gather_impl="cuda")
    with pytest.raises(ValueError, match="phase 'complex'"):
        TTMatrix(100, 50, 3, phase="complex", gather_impl="triton")
    with pytest.raises(ValueError, match="ranks up to 64"):
        TTMatrix(5000, 4096, 80, num_cores=2, gather_impl="triton")
    tt = TTMatrix(100, 50, 3, num_cores=3)
    assert tt.gather_impl == "auto" and not tt._fused_rows(torch.tensor([1]))  # CPU: the torch path
    emb = TTEmbedding.from_dense(torch.randn(20, 12, dtype=torch.float64), 2, gather_impl="torch")
    assert emb.tt.gather_impl == "torch"
    with FakeTensorMode():  # shape-only tensors keep the torch path even when forced (unless assume_cuda)
        fake = TTMatrix(1000, 64, 4, num_cores=3, gather_impl="triton")
        assert fake.rows(torch.randint(0, 1000, (2, 8))).shape == (2, 8, 64)


def test_config_gather_impl():
    assert EmbeddingConfig().gather_impl == "auto"
    with pytest.raises(ConfigError, match="embedding.gather_impl must be one of auto, triton, torch; got 'fast'"):
        EmbeddingConfig(kind="tt", gather_impl="fast")
    with pytest.raises(ConfigError, match="only to embedding.kind 'tt'"):
        EmbeddingConfig(kind="dense", gather_impl="torch")
    with pytest.raises(ConfigError, match="phase 'complex'"):
        EmbeddingConfig(kind="tt", phase="complex", gather_impl="triton")
    from muse.model import make_embedding

    cfg = load_config("tiny", {"model.embedding.kind": "tt", "model.embedding.gather_impl": "torch"}).model
    assert make_embedding(cfg).tt.gather_impl == "torch"
