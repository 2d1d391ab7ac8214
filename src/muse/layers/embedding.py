"""Token embeddings: dense, low-rank and tensor-train ("HTT", DESIGN §1.1).

All three share one interface, so the model and a tied output head never branch on the kind:

    forward(idx)   (*idx.shape) → (*idx.shape, d)
    attend(h)      (..., d) → (..., V) = h @ Eᵀ   (tied-head logits)
    to_dense()     (V, d); ``weight_dense()`` is the same

Low-rank and TT tables are never materialised in ``forward`` or ``attend``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from muse.layers.linear import spectral_init_
from muse.layers.tt import TTMatrix


def _check_sizes(vocab_size: int, dim: int) -> None:
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be an integer >= 1; got {vocab_size!r}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1; got {dim!r}")


def _normal(shape: tuple[int, ...], std: float) -> Tensor:
    # torch.empty honours the default device, so building on "meta" allocates nothing
    return nn.init.normal_(torch.empty(shape), std=std)


class DenseEmbedding(nn.Embedding):
    """``nn.Embedding`` with N(0, init_std²) init and the shared embedding interface."""

    kind = "dense"

    def __init__(self, vocab_size: int, dim: int, init_std: float = 0.02):
        _check_sizes(vocab_size, dim)
        super().__init__(vocab_size, dim)
        nn.init.normal_(self.weight, std=init_std)

    @property
    def vocab_size(self) -> int:
        return self.num_embeddings

    @property
    def dim(self) -> int:
        return self.embedding_dim

    def attend(self, h: Tensor) -> Tensor:
        """h @ Eᵀ: (..., d) → (..., V)."""
        return F.linear(h, self.weight)

    def to_dense(self) -> Tensor:
        """The (V, d) table (the parameter itself)."""
        return self.weight

    weight_dense = to_dense


class LowRankEmbedding(nn.Module):
    """E = A·B with A ∈ R^{V×r} (one row gathered per id) and B ∈ R^{r×d}: (V + d)·r parameters.

    A and B entries are N(0, σ²) with σ = (init_std²/r)^{1/4}, so entries of E have std init_std
    (or :meth:`spectral_init_`).
    """

    kind = "lowrank"
    factorized = True  # train.factor_lr_scale applies to A and B

    def __init__(self, vocab_size: int, dim: int, rank: int, init_std: float = 0.02):
        super().__init__()
        _check_sizes(vocab_size, dim)
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be an integer >= 1; got {rank!r}")
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0; got {init_std!r}")
        self.vocab_size, self.dim, self.rank, self.init_std = vocab_size, dim, rank, init_std
        sigma = (init_std**2 / rank) ** 0.25
        self.A = nn.Parameter(_normal((vocab_size, rank), sigma))  # (V, r)
        self.B = nn.Parameter(_normal((rank, dim), sigma))  # (r, d)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, dim={self.dim}, rank={self.rank}"

    def forward(self, idx: Tensor) -> Tensor:  # (*idx.shape) -> (*idx.shape, d)
        return F.embedding(idx, self.A) @ self.B

    def attend(self, h: Tensor) -> Tensor:
        """h @ Eᵀ = (h @ Bᵀ) @ Aᵀ: (..., d) → (..., V) through the rank-r bottleneck."""
        return F.linear(F.linear(h, self.B), self.A)

    def to_dense(self) -> Tensor:
        """The (V, d) table A·B."""
        return self.A @ self.B

    def spectral_init_(self) -> None:
        """A·B := the best rank-r approximation of a dense N(0, init_std²) (V, d) table."""
        spectral_init_(self.A, self.B, self.init_std)

    weight_dense = to_dense


class TTEmbedding(nn.Module):
    """A V×d table stored as a tensor train and never materialised (DESIGN §1.1).

    Row t = reshape(G_1[:, t_1] · … · G_k[:, t_k]) with t written in mixed radix over
    ``vocab_factors`` (∏ ≥ V) and d = ∏ ``dim_factors`` (padded when d does not factor).
    ``forward`` contracts only the unique ids of the batch (see ``TTMatrix.rows``).

    Args:
        vocab_size, dim: V and d.
        rank: TT bond rank (int, or a list of num_cores − 1 ints); clipped per bond.
        num_cores: 2–4 by default from V and d (``auto_num_cores``).
        vocab_factors, dim_factors: override the automatic factorisations.
        phase: "none" | "cos" | "complex" holographic bond phases (see ``TTMatrix``).
        init_std: std of the table entries at init (as a dense embedding's).
        gather_impl: "auto" | "triton" | "torch": how ``forward`` gathers rows (see ``TTMatrix``).
    """

    kind = "tt"

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        rank: int | list[int],
        num_cores: int | None = None,
        vocab_factors: list[int] | None = None,
        dim_factors: list[int] | None = None,
        phase: str = "none",
        init_std: float = 0.02,
        gather_impl: str = "auto",
    ):
        super().__init__()
        _check_sizes(vocab_size, dim)
        self.vocab_size, self.dim = vocab_size, dim
        self.tt = TTMatrix(vocab_size, dim, rank, num_cores, vocab_factors, dim_factors, phase, init_std, gather_impl)

    @classmethod
    def from_dense(
        cls,
        weight: Tensor,
        rank: int | list[int],
        num_cores: int | None = None,
        vocab_factors: list[int] | None = None,
        dim_factors: list[int] | None = None,
        gather_impl: str = "auto",
    ) -> "TTEmbedding":
        """TT-SVD of a trained (V, d) table; exact when rank reaches the full TT rank.

        The result has phase "none": at θ = 0 (or zero imaginary parts) the phase gradients
        vanish, so a phased model started from a dense table would never use its phases.
        """
        tt = TTMatrix.from_dense(weight, rank, num_cores, vocab_factors, dim_factors)
        emb = cls(tt.num_rows, tt.num_cols, 1, vocab_factors=tt.row_factors, dim_factors=tt.col_factors)
        tt.gather_impl = tt._check_gather_impl(gather_impl)
        emb.tt = tt  # the rank-1 placeholder cores are dropped
        return emb

    @property
    def phase(self) -> str:
        return self.tt.phase

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, dim={self.dim}"

    def forward(self, idx: Tensor) -> Tensor:  # (*idx.shape) -> (*idx.shape, d)
        return self.tt.rows(idx)

    def attend(self, h: Tensor) -> Tensor:
        """h @ Eᵀ: (..., d) → (..., V), contracted core by core from the TT cores."""
        return self.tt.matmul_t(h)

    def to_dense(self) -> Tensor:
        """The (V, d) table, for export and tests (differentiable)."""
        return self.tt.to_dense()

    weight_dense = to_dense

    def num_params(self) -> int:
        return self.tt.num_params()
