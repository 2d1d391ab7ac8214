"""Dense, low-rank and TT embeddings share one interface; TT never builds its table."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from muse.layers.embedding import DenseEmbedding, LowRankEmbedding, TTEmbedding

PHASES = ("none", "cos", "complex")


class MaxAlloc(TorchDispatchMode):
    """Largest tensor any op produced while active."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def make(kind: str, V: int, d: int, **kw):
    if kind == "dense":
        return DenseEmbedding(V, d)
    if kind == "lowrank":
        return LowRankEmbedding(V, d, rank=5)
    return TTEmbedding(V, d, rank=4, **kw)


@pytest.mark.parametrize("kind", ["dense", "lowrank", "tt"])
def test_interface(kind):
    torch.manual_seed(0)
    emb = make(kind, 97, 12).double()
    E = emb.to_dense()
    assert E.shape == (97, 12)
    torch.testing.assert_close(emb.weight_dense(), E)
    idx = torch.randint(0, 97, (3, 8))
    torch.testing.assert_close(emb(idx), E[idx], rtol=1e-12, atol=1e-12)
    h = torch.randn(2, 5, 12, dtype=torch.float64)
    torch.testing.assert_close(emb.attend(h), h @ E.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("phase", PHASES)
def test_tt_forward_and_grads_match_dense_indexing(phase):
    torch.manual_seed(0)
    emb = TTEmbedding(1000, 48, rank=6, num_cores=3, phase=phase, init_std=0.3).double()
    if phase != "none":
        with torch.no_grad():
            for th in emb.tt.phases:
                th.uniform_(-3, 3)
    idx = torch.randint(0, 1000, (4, 16))
    w = torch.randn(4, 16, 48, dtype=torch.float64)
    params = list(emb.parameters())
    out = emb(idx)
    torch.testing.assert_close(out, emb.to_dense()[idx], rtol=1e-12, atol=1e-12)
    g_fwd = torch.autograd.grad((out * w).sum(), params)
    g_dense = torch.autograd.grad((emb.to_dense()[idx] * w).sum(), params)
    for a, b in zip(g_fwd, g_dense):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the tied-head path differentiates like h @ Eᵀ as well
    h = torch.randn(3, 48, dtype=torch.float64)
    g_att = torch.autograd.grad(emb.attend(h).square().sum(), params)
    g_ref = torch.autograd.grad((h @ emb.to_dense().T).square().sum(), params)
    for a, b in zip(g_att, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "V,d,kw",
    [(1000, 48, {}), (97, 10, {}), (1000, 48, dict(num_cores=3)), (97, 30, dict(num_cores=3)), (500, 17, {})],
)
def test_tt_from_dense_exact_at_full_rank(V, d, kw):
    torch.manual_seed(0)
    W = torch.randn(V, d, dtype=torch.float64)
    emb = TTEmbedding.from_dense(W, 10**6, **kw)
    assert (emb.vocab_size, emb.dim, emb.phase) == (V, d, "none")
    torch.testing.assert_close(emb.to_dense(), W, rtol=0, atol=1e-10)
    idx = torch.randint(0, V, (7,))
    torch.testing.assert_close(emb(idx), W[idx], rtol=0, atol=1e-10)


def test_tt_from_dense_truncation_error_shrinks_with_rank():
    torch.manual_seed(0)
    W = torch.randn(256, 32, dtype=torch.float64)
    # factors [8, 4, 8] × [4, 2, 4]: both bonds saturate at rank 32
    errs = [(TTEmbedding.from_dense(W, r, num_cores=3).to_dense() - W).norm().item() for r in (2, 8, 16, 32)]
    assert errs[0] > errs[1] > errs[2] > 1.0 > 1e-10 > errs[3]


def test_tt_forward_never_builds_the_table():
    torch.manual_seed(0)
    V, d = 50_000, 1024
    emb = TTEmbedding(V, d, rank=16)
    idx = torch.randint(0, V, (2, 256))
    h = torch.randn(2, 4, d)
    with MaxAlloc() as mode:
        out = emb(idx)
        out.square().sum().backward()
    assert out.shape == (2, 256, d)
    assert mode.max_numel < V * d // 20
    with MaxAlloc() as mode:
        logits = emb.attend(h)  # (2, 4, V): the output itself is 8·V, no V×d along the way
    assert logits.shape == (2, 4, V)
    assert mode.max_numel < V * d // 20


def test_tt_param_counts():
    # defaults: V=10000 → [25, 20, 20], d=512 → [8, 8, 8]; 1·25·8·16 + 16·20·8·16 + 16·20·8·1
    assert TTEmbedding(10000, 512, rank=16).num_params() == 3200 + 40960 + 2560 == 46720
    # V=50000 → [50, 25, 40], d=1024 → [16, 8, 8]; 1·50·16·16 + 16·25·8·16 + 16·40·8·1
    assert TTEmbedding(50000, 1024, rank=16).num_params() == 12800 + 51200 + 5120 == 69120
    # V=4096 → [64, 64], d=128 → [16, 8]; 1·64·16·8 + 8·64·8·1
    assert TTEmbedding(4096, 128, rank=8).num_params() == 8192 + 4096 == 12288
    emb = TTEmbedding(10000, 512, rank=16, vocab_factors=[20, 20, 25], dim_factors=[8, 8, 8])
    assert sum(p.numel() for p in emb.parameters()) == 2560 + 40960 + 3200 == 46720
    assert sum(p.numel() for p in LowRankEmbedding(10000, 512, rank=32).parameters()) == (10000 + 512) * 32


@pytest.mark.parametrize("kind", ["dense", "lowrank", "tt"])
def test_init_std(kind):
    torch.manual_seed(0)
    emb = {"dense": DenseEmbedding(4000, 256), "lowrank": LowRankEmbedding(4000, 256, rank=16),
           "tt": TTEmbedding(4000, 256, rank=16)}[kind]
    with torch.no_grad():
        std = emb.to_dense().std().item()
    assert 0.85 * 0.02 < std < 1.15 * 0.02


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        DenseEmbedding(0, 8)
    with pytest.raises(ValueError, match="dim"):
        TTEmbedding(100, 0, rank=4)
    with pytest.raises(ValueError, match="rank"):
        LowRankEmbedding(100, 8, rank=0)
    with pytest.raises(ValueError, match="phase"):
        TTEmbedding(100, 8, rank=4, phase="hologram")
    with pytest.raises(ValueError, match=r"idx values must lie in \[0, 100\)"):
        TTEmbedding(100, 8, rank=4)(torch.tensor([0, 100]))
