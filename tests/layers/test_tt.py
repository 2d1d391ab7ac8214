"""TTMatrix and factorization: against an independent dense reference, in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from muse.layers.tt import TTMatrix
from muse.layers.tt_factors import auto_num_cores, factorize

PHASES = ("none", "cos", "complex")


def reference_dense(tt: TTMatrix) -> torch.Tensor:
    """W from the cores by plain tensordots over the bonds — no mixed-radix code shared with TTMatrix."""
    cores = list(tt.cores)
    if tt.phase == "complex":
        cores = [torch.complex(re, im) for re, im in zip(tt.cores, tt.cores_imag)]
    if tt.phase != "none":
        for i, th in enumerate(tt.phases):
            bond = th.cos() if tt.phase == "cos" else torch.polar(torch.ones_like(th), th)
            cores[i] = cores[i] * bond
    T = cores[0][0]  # (m1, n1, r1)
    for c in cores[1:]:
        T = torch.tensordot(T, c, dims=([T.dim() - 1], [0]))  # (m1, n1, …, m_i, n_i, r_i)
    T = T[..., 0]  # (m1, n1, m2, n2, …)
    k = tt.num_cores
    T = T.permute(*range(0, 2 * k, 2), *range(1, 2 * k, 2))  # (m1..mk, n1..nk)
    W = T.reshape(math.prod(tt.row_factors), math.prod(tt.col_factors))[: tt.num_rows, : tt.num_cols]
    return W.real if W.is_complex() else W


class MaxAlloc(TorchDispatchMode):
    """Records the largest tensor produced by any op, and the batch sizes of every bmm."""

    def __init__(self):
        super().__init__()
        self.max_numel, self.bmm_batches = 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        if func is torch.ops.aten.bmm.default:
            self.bmm_batches.append(args[0].shape[0])
        return out


# ----------------------------------------------------------------------------- factorize
def test_factorize_examples():
    assert factorize(512, 3, True) == [8, 8, 8]
    assert sorted(factorize(1024, 3, True)) == [8, 8, 16]
    assert factorize(3072, 3, True) == [12, 16, 16]
    f = factorize(10000, 3, False)
    assert math.prod(f) >= 10000 and all(18 <= x <= 27 for x in f)
    f = factorize(50257, 3, False)
    assert 50257 <= math.prod(f) <= 50257 * 1.01 and max(f) <= 2 * min(f)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 97, 100, 768, 1000, 4096, 10007, 50257, 65536, 100003])
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("exact", [True, False])
def test_factorize_properties(n, k, exact):
    f = factorize(n, k, exact)
    assert len(f) == k and all(isinstance(x, int) and x >= 2 for x in f)
    assert f == sorted(f)
    assert math.prod(f) >= n
    if not exact or math.prod(f) != n:
        # padded splits stay balanced and close to n (never more than one extra step of the root)
        assert max(f) <= 2 * min(f)
        assert math.prod(f) <= max(2, math.ceil(n ** (1 / k))) ** k


def test_factorize_exact_when_possible_else_padded():
    assert math.prod(factorize(48, 2, True)) == 48
    assert math.prod(factorize(3 * 5 * 7, 3, True)) == 105
    assert factorize(97, 2, True) == factorize(97, 2, False)  # prime: falls back to padding
    assert math.prod(factorize(97, 2, True)) > 97
    # balance among exact splits: 4096 = 16³ beats 8·16·32
    assert factorize(4096, 3, True) == [16, 16, 16]


def test_factorize_bad_args():
    with pytest.raises(ValueError, match="n must be"):
        factorize(0, 2, True)
    with pytest.raises(ValueError, match="k must be"):
        factorize(10, 0, True)


def test_auto_num_cores_rule():
    assert auto_num_cores(4096, 128) == 2
    assert auto_num_cores(10000, 512) == 3
    assert auto_num_cores(50257, 1024) == 3
    assert auto_num_cores(1_000_000, 1024) == 4
    assert auto_num_cores(1_000_000, 8) == 3  # capped so 8 still splits into factors ≥ 2
    assert auto_num_cores(100, 3) == 2


# ----------------------------------------------------------------------------- forward paths
SHAPES = [
    dict(rows=97, cols=10, rank=3),  # prime rows, k = 2, padded rows
    dict(rows=30, cols=70, rank=4, num_cores=3),  # 30 = 2·3·5 and 70 = 2·5·7: exact, three cores
    dict(rows=101, cols=13, rank=[2, 5], num_cores=3),  # prime both sides, unequal ranks
    dict(rows=200, cols=48, rank=3, num_cores=4),
]


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_paths_match_reference(shape, phase):
    torch.manual_seed(0)
    tt = TTMatrix(**shape, phase=phase, init_std=0.5).double()
    if phase != "none":  # move the phases off their init so they matter
        with torch.no_grad():
            for th in tt.phases:
                th.uniform_(-3, 3)
    W = reference_dense(tt)
    M, N = shape["rows"], shape["cols"]
    assert W.shape == (M, N)
    idx = torch.randint(0, M, (3, 5, 2))
    torch.testing.assert_close(tt.rows(idx), W[idx], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tt.to_dense(), W, rtol=1e-12, atol=1e-12)
    x, y = torch.randn(4, 3, M, dtype=torch.float64), torch.randn(7, N, dtype=torch.float64)
    torch.testing.assert_close(tt.matmul(x), x @ W, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tt.matmul_t(y), y @ W.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("phase", PHASES)
def test_gradients_match_reference(phase):
    torch.manual_seed(1)
    tt = TTMatrix(50, 12, [3, 4], num_cores=3, phase=phase, init_std=0.5).double()
    idx = torch.randint(0, 50, (6, 9))
    w = torch.randn(6, 9, 12, dtype=torch.float64)
    params = list(tt.parameters())
    g_fast = torch.autograd.grad((tt.rows(idx) * w).sum(), params)
    g_ref = torch.autograd.grad((reference_dense(tt)[idx] * w).sum(), params)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    x = torch.randn(5, 50, dtype=torch.float64)
    g_fast = torch.autograd.grad((tt.matmul(x) ** 2).sum(), params)
    g_ref = torch.autograd.grad(((x @ reference_dense(tt)) ** 2).sum(), params)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


class _Rows(torch.nn.Module):
    def __init__(self, tt: TTMatrix):
        super().__init__()
        self.tt = tt

    def forward(self, idx):
        return self.tt.rows(idx)


@pytest.mark.parametrize("phase", PHASES)
def test_gradcheck_rows(phase):
    torch.manual_seed(2)
    mod = _Rows(TTMatrix(9, 4, 2, num_cores=2, phase=phase).double())
    idx = torch.tensor([[0, 3, 3], [8, 0, 5]])
    names = [n for n, _ in mod.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in mod.parameters())
    rows_fn = lambda *ps: torch.func.functional_call(mod, dict(zip(names, ps)), (idx,))
    assert torch.autograd.gradcheck(rows_fn, params)


def test_rows_contracts_unique_ids_only():
    torch.manual_seed(0)
    tt = TTMatrix(1000, 64, 4, num_cores=3)
    idx = torch.tensor([[5, 5, 5, 9], [9, 5, 17, 5]])  # 3 unique ids among 8
    with MaxAlloc() as mode:
        out = tt.rows(idx)
    assert out.shape == (2, 4, 64)
    assert mode.bmm_batches == [3, 3]  # one bmm per core after the first, batched over unique ids
    torch.testing.assert_close(out[0, 0], out[1, 3])


def test_rows_never_builds_the_table():
    torch.manual_seed(0)
    V, d = 50_000, 1024
    tt = TTMatrix(V, d, 16)
    idx = torch.randint(0, V, (4, 128))
    with MaxAlloc() as mode:
        out = tt.rows(idx)
        out.square().sum().backward()
    assert out.shape == (4, 128, d)
    # intermediates scale with the unique ids (U·n_1·n_2·r, U·r·n_i·r), never with V
    assert mode.max_numel <= 4 * idx.numel() * d < V * d // 20


def test_complex_differs_from_cos():
    torch.manual_seed(3)
    cos = TTMatrix(60, 27, 3, num_cores=3, phase="cos").double()
    cplx = TTMatrix(60, 27, 3, num_cores=3, phase="complex").double()
    with torch.no_grad():
        for a, b in zip(cplx.cores, cos.cores):
            a.copy_(b)
        for a, b in zip(cplx.phases, cos.phases):
            a.copy_(b.uniform_(-2, 2))
        for im in cplx.cores_imag:
            im.zero_()
        # same real cores, same θ, no imaginary part: cos gives Σ ∏a·cos θ_1·cos θ_2, complex
        # gives Σ ∏a·cos(θ_1 + θ_2) along each path
        assert (cos.to_dense() - cplx.to_dense()).abs().max() > 1e-3
        for th in list(cos.phases) + list(cplx.phases):
            th.zero_()
        torch.testing.assert_close(cos.to_dense(), cplx.to_dense())  # and they meet at θ = 0
    # complex cores at init are not a rescaled cos model either
    torch.manual_seed(4)
    c = TTMatrix(60, 27, 3, num_cores=3, phase="complex").double()
    assert all(im.abs().sum() > 0 for im in c.cores_imag)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize(
    "cfg", [dict(rows=2000, cols=512, rank=16, num_cores=3), dict(rows=1000, cols=64, rank=[4, 32, 8], num_cores=4)]
)
def test_init_std(phase, cfg):
    torch.manual_seed(0)
    tt = TTMatrix(**cfg, phase=phase, init_std=0.02)
    with torch.no_grad():
        std = tt.to_dense().std().item()
    assert 0.8 * 0.02 < std < 1.2 * 0.02


def test_param_count_hand_formula():
    tt = TTMatrix(10000, 512, 16, num_cores=3, row_factors=[20, 20, 25], col_factors=[8, 8, 8])
    # Σ r_{i−1} m_i n_i r_i = 1·20·8·16 + 16·20·8·16 + 16·25·8·1
    assert tt.num_params() == 2560 + 40960 + 3200 == 46720
    c = TTMatrix(10000, 512, 16, num_cores=3, row_factors=[20, 20, 25], col_factors=[8, 8, 8], phase="complex")
    assert c.num_params() == 2 * 46720 + 16 + 16  # real + imaginary cores, two bond phase vectors


def test_rank_clipped_to_bond_maximum():
    tt = TTMatrix(6, 6, 1000, row_factors=[2, 3], col_factors=[3, 2])
    assert tt.ranks == [1, 6, 1]  # min(2·3, 3·2)
    tt = TTMatrix(8, 8, [100, 100], row_factors=[2, 2, 2], col_factors=[2, 2, 2])
    assert tt.ranks == [1, 4, 4, 1]


@pytest.mark.parametrize(
    "M,N,kw",
    [(1000, 48, {}), (97, 10, {}), (30, 70, {}), (1000, 48, dict(num_cores=3)), (64, 81, dict(num_cores=4))],
)
def test_from_dense_exact_at_full_rank(M, N, kw):
    torch.manual_seed(0)
    W = torch.randn(M, N, dtype=torch.float64)
    tt = TTMatrix.from_dense(W, 10**6, **kw)
    assert tt.phase == "none" and tt.cores[0].dtype == torch.float64
    torch.testing.assert_close(tt.to_dense(), W, rtol=0, atol=1e-10)


def test_from_dense_two_cores_is_truncated_svd():
    # with k = 2, TT-SVD at rank r is the best rank-r fit of the (m1·n1, m2·n2) reshaping
    torch.manual_seed(0)
    W = torch.randn(12, 20, dtype=torch.float64)
    tt = TTMatrix.from_dense(W, 5, row_factors=[3, 4], col_factors=[4, 5])
    S = torch.linalg.svdvals(W.reshape(3, 4, 4, 5).permute(0, 2, 1, 3).reshape(12, 20))
    err = (tt.to_dense() - W).norm()
    torch.testing.assert_close(err, S[5:].square().sum().sqrt())


def test_bad_arguments():
    with pytest.raises(ValueError, match="phase"):
        TTMatrix(10, 10, 2, phase="holo")
    with pytest.raises(ValueError, match="rank"):
        TTMatrix(10, 10, 0)
    with pytest.raises(ValueError, match="rank"):
        TTMatrix(10, 10, [2, 2], num_cores=2)
    with pytest.raises(ValueError, match="num_cores"):
        TTMatrix(10, 10, 2, num_cores=3, row_factors=[2, 5])
    with pytest.raises(ValueError, match="row_factors"):
        TTMatrix(10, 10, 2, row_factors=[2, 4])
    with pytest.raises(ValueError, match="num_cores"):
        TTMatrix(10, 10, 2, num_cores=1)
    tt = TTMatrix(10, 6, 2)
    with pytest.raises(ValueError, match=r"idx values must lie in \[0, 10\)"):
        tt.rows(torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="last dimension rows=10"):
        tt.matmul(torch.randn(2, 6))


def test_meta_device_and_int32_ids():
    with torch.device("meta"):
        tt = TTMatrix(50_000, 1024, 16, phase="complex")
    assert tt.cores[0].is_meta
    tt = TTMatrix(100, 8, 2)
    idx = torch.tensor([1, 99, 1], dtype=torch.int32)
    torch.testing.assert_close(tt.rows(idx), tt.rows(idx.long()))
    assert tt.rows(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3, 8)
    assert tt.matmul(torch.randn(0, 100)).shape == (0, 8)
    assert tt.matmul_t(torch.randn(2, 0, 8)).shape == (2, 0, 100)


@pytest.mark.parametrize("phase", ["none", "cos", "complex"])
def test_dense_and_contraction_paths_agree(phase):
    """matmul/matmul_t rebuild W when the batch is at least the contracted size; both paths agree."""
    torch.manual_seed(0)
    tt = TTMatrix(30, 70, rank=[3, 4], num_cores=3, phase=phase).double()
    for batch in (5, 29, 30, 71, 100):  # below and above both thresholds (30 rows, 70 cols)
        x = torch.randn(batch, 30, dtype=torch.float64, requires_grad=True)
        y = torch.randn(batch, 70, dtype=torch.float64, requires_grad=True)
        W = tt.to_dense()
        torch.testing.assert_close(tt.matmul(x), x @ W)
        torch.testing.assert_close(tt.matmul_t(y), y @ W.T)
        g = torch.autograd.grad((tt.matmul(x) ** 2).sum() + (tt.matmul_t(y) ** 2).sum(), list(tt.parameters()))
        g_ref = torch.autograd.grad(((x @ W) ** 2).sum() + ((y @ W.T) ** 2).sum(), list(tt.parameters()))
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("chunk", [1, 5, 7])
def test_chunked_rows_match_reference(phase, chunk, monkeypatch):
    """More unique ids than ROWS_CHUNK: the chunked, recomputing path (outputs and every
    gradient) equals the dense table in float64, for chunks that do not divide U."""
    monkeypatch.setattr(TTMatrix, "ROWS_CHUNK", chunk)
    torch.manual_seed(3)
    tt = TTMatrix(37, 10, [3, 2], num_cores=3, phase=phase, init_std=0.5).double()
    idx = torch.randint(0, 37, (3, 11))  # repeated ids, U not a multiple of the chunk
    w = torch.randn(3, 11, 10, dtype=torch.float64)
    params = list(tt.parameters())
    out = tt.rows(idx)
    torch.testing.assert_close(out, reference_dense(tt)[idx], rtol=1e-12, atol=1e-12)
    g_fast = torch.autograd.grad((out * w).sum(), params)
    g_ref = torch.autograd.grad((reference_dense(tt)[idx] * w).sum(), params)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_chunked_rows_float32_and_no_grad(monkeypatch):
    monkeypatch.setattr(TTMatrix, "ROWS_CHUNK", 4)
    torch.manual_seed(4)
    tt = TTMatrix(101, 24, 4, num_cores=3)
    idx = torch.randint(0, 101, (5, 13))
    with torch.no_grad():
        out = tt.rows(idx)
    torch.testing.assert_close(out, tt.to_dense()[idx], rtol=1e-5, atol=1e-6)
