"""model.factor_init spectral: factorised weights start as the best low-rank / TT-SVD
approximation of a dense N(0, init_std²) matrix."""

import pytest
import torch

from muse.config import ConfigError, load_config
from muse.layers.embedding import LowRankEmbedding, TTEmbedding
from muse.layers.linear import LowRankLinear, TTLinear, split_svd
from muse.layers.tt import TTMatrix
from muse.model import build_model


def _dense(n: int, m: int, std: float, seed: int) -> torch.Tensor:
    """The dense matrix spectral_init_ draws after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return torch.empty(n, m).normal_(std=std).double()


def _best_rank(W: torch.Tensor, r: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vh[:r]


@pytest.mark.parametrize("n, m, r", [(13, 7, 3), (5, 29, 4), (9, 9, 9)])
def test_lowrank_linear_is_the_best_rank_r_approximation(n, m, r):
    layer = LowRankLinear(n, m, r, init_std=0.05).double()
    torch.manual_seed(3)
    layer.spectral_init_()
    W = _dense(n, m, 0.05, 3)
    assert torch.allclose(layer.A @ layer.B, _best_rank(W, r), atol=1e-6)
    # orthogonal factors with equal singular values on both sides (√S split)
    ata, bbt = layer.A.T @ layer.A, layer.B @ layer.B.T
    assert torch.allclose(ata, torch.diag(torch.diagonal(ata)), atol=1e-6)
    assert torch.allclose(torch.diagonal(ata), torch.diagonal(bbt), atol=1e-6)


def test_lowrank_embedding_spectral():
    emb = LowRankEmbedding(31, 6, 2, init_std=0.1).double()
    torch.manual_seed(0)
    emb.spectral_init_()
    assert torch.allclose(emb.to_dense(), _best_rank(_dense(31, 6, 0.1, 0), 2), atol=1e-6)


@pytest.mark.parametrize("rows, cols, rank, cores", [(30, 12, 3, 2), (60, 8, [4, 2], 3)])
def test_tt_spectral_is_the_tt_svd_of_a_dense_draw(rows, cols, rank, cores):
    tt = TTMatrix(rows, cols, rank, num_cores=cores, init_std=0.07).double()
    torch.manual_seed(5)
    tt.spectral_init_()
    W = _dense(rows, cols, 0.07, 5)
    ref = TTMatrix.from_dense(W, tt.ranks[1:-1], row_factors=tt.row_factors, col_factors=tt.col_factors)
    assert torch.allclose(tt.to_dense(), ref.to_dense(), atol=1e-6)
    # with full bond ranks the TT-SVD is exact: the dense draw itself
    full = TTMatrix(rows, cols, 10**6, num_cores=cores, init_std=0.07).double()
    torch.manual_seed(5)
    full.spectral_init_()
    assert torch.allclose(full.to_dense(), W, atol=1e-9)


def test_tt_spectral_refuses_phases_and_skips_meta():
    with pytest.raises(ValueError, match="phase 'none'"):
        TTMatrix(16, 8, 2, phase="cos").spectral_init_()
    with torch.device("meta"):
        TTEmbedding(64, 8, 4).tt.spectral_init_()  # nothing to draw on the meta device
        LowRankLinear(8, 8, 2).spectral_init_()


def test_model_factor_init_spectral_reaches_every_factorised_layer():
    over = {"model.vocab_size": 512, "model.d_model": 32, "model.n_layers": 2, "model.ffn.kind": "lowrank",
            "model.ffn.rank": 4, "model.head.kind": "lowrank", "model.head.rank": 8}
    torch.manual_seed(0)
    gaussian = build_model(load_config("tiny", {**over, "model.head.kind": "lowrank"}))
    torch.manual_seed(0)
    spectral = build_model(load_config("tiny", {**over, "model.factor_init": "spectral"}))
    lowrank = [m for m in spectral.modules() if isinstance(m, LowRankLinear)]
    assert len(lowrank) >= 5  # the FFNs' up and down, the head
    for m in lowrank:
        ata = m.A.T @ m.A  # orthogonal columns: what an independent Gaussian draw does not give
        assert torch.allclose(ata, torch.diag(torch.diagonal(ata)), atol=1e-6)
    g = [m for m in gaussian.modules() if isinstance(m, LowRankLinear)][0]
    assert not torch.allclose(g.A.T @ g.A, torch.diag(torch.diagonal(g.A.T @ g.A)), atol=1e-6)


def test_factor_init_config_checks():
    with pytest.raises(ConfigError, match="model.factor_init must be one of"):
        load_config("tiny", {"model.factor_init": "svd"})
    with pytest.raises(ConfigError, match="needs embedding.phase none"):
        load_config("tiny", {"model.factor_init": "spectral", "model.embedding.phase": "cos"})


def test_split_svd_clips_the_rank():
    A, B = split_svd(torch.randn(3, 5), 10)
    assert A.shape == (3, 3) and B.shape == (3, 5)


def test_ttlinear_spectral():
    lin = TTLinear(24, 10, 3, num_cores=2, init_std=0.03).double()
    torch.manual_seed(1)
    lin.tt.spectral_init_()
    W = _dense(24, 10, 0.03, 1)
    ref = TTMatrix.from_dense(W, lin.tt.ranks[1:-1], row_factors=lin.tt.row_factors, col_factors=lin.tt.col_factors)
    assert torch.allclose(lin.tt.to_dense(), ref.to_dense(), atol=1e-6)
