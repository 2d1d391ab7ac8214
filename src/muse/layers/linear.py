"""Factorized linear layers (DESIGN §1.3) and ``make_linear``, the one switch every projection uses.

All layers map (..., in_features) → (..., out_features) and expose ``to_dense()`` with
``nn.Linear.weight``'s (out, in) layout, so a factorized layer can be exported or compared
against a dense one directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from muse.layers.tt import TTMatrix

LINEAR_KINDS = ("dense", "lowrank", "tt", "identity")


def _check_features(in_features: int, out_features: int) -> None:
    for name, v in (("in_features", in_features), ("out_features", out_features)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {v!r}")


def _check_rank(rank) -> None:
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1; got {rank!r}")


def split_svd(W: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """The best rank-r factors of a matrix W (n, m) (Eckart–Young): A = U_r·√S_r (n, r) and
    B = √S_r·V_rᵀ (r, m), in float64; rank is clipped to min(n, m)."""
    U, S, Vh = torch.linalg.svd(W.detach().to(torch.float64), full_matrices=False)
    rank = min(rank, S.numel())
    root = S[:rank].sqrt()
    return U[:, :rank] * root, root[:, None] * Vh[:rank]


@torch.no_grad()
def spectral_init_(A: nn.Parameter, B: nn.Parameter, std: float) -> None:
    """Re-initialise the factors of W = A·B (A (n, r), B (r, m)) as the best rank-r approximation
    of a dense N(0, std²) matrix (``model.factor_init: spectral``): W then carries the top of a
    dense initialisation's spectrum, and A's columns and B's rows are orthogonal, where the
    default draws A and B independently. Meta tensors (accounting builds) are left alone."""
    if A.is_meta:
        return
    n, m = A.shape[0], B.shape[1]
    W = torch.empty(n, m, device=A.device, dtype=torch.float32).normal_(std=std)  # (n, m)
    a, b = split_svd(W, A.shape[1])
    A.copy_(a)
    B.copy_(b)


class LowRankLinear(nn.Module):
    """y = x·A·B + b with A ∈ R^{in×r}, B ∈ R^{r×out}: r·(in + out) (+ out) parameters.

    A and B entries are N(0, σ²) with σ = (init_std²/r)^{1/4}, so the entries of W = A·B have
    std init_std like a dense layer's (or :meth:`spectral_init_`). The bias starts at zero.
    """

    factorized = True  # train.factor_lr_scale applies to A and B

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, init_std: float = 0.02):
        super().__init__()
        _check_features(in_features, out_features)
        _check_rank(rank)
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0; got {init_std!r}")
        self.in_features, self.out_features, self.rank, self.init_std = in_features, out_features, rank, init_std
        sigma = (init_std**2 / rank) ** 0.25
        self.A = nn.Parameter(nn.init.normal_(torch.empty(in_features, rank), std=sigma))  # (in, r)
        self.B = nn.Parameter(nn.init.normal_(torch.empty(rank, out_features), std=sigma))  # (r, out)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"bias={self.bias is not None}"
        )

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        # (..., r) in between: never an in×out matrix. F.linear rather than `@ B + bias`: under
        # autocast it casts the bias with the weight, where `bf16 + fp32 bias` would promote the
        # whole (..., out) activation to fp32 (and everything downstream, e.g. a 4d-wide GELU).
        return F.linear(x @ self.A, self.B.T, self.bias)

    def to_dense(self) -> Tensor:
        """W as (out, in), like ``nn.Linear.weight``."""
        return (self.A @ self.B).T

    def spectral_init_(self) -> None:
        """A·B := the best rank-r approximation of a dense N(0, init_std²) (in, out) matrix."""
        spectral_init_(self.A, self.B, self.init_std)

    @classmethod
    def from_dense(cls, weight: Tensor, bias: Tensor | None, rank: int) -> "LowRankLinear":
        """Best rank-r approximation of an (out, in) weight (truncated SVD, split as √S on each side).

        rank is clipped to min(out, in), beyond which the SVD is already exact.
        """
        if weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D (out, in) tensor; got shape {tuple(weight.shape)}")
        _check_rank(rank)
        out_f, in_f = weight.shape
        A, B = split_svd(weight.T, rank)  # Wᵀ: (in, out) -> (in, r), (r, out)
        layer = cls(in_f, out_f, A.shape[1], bias=bias is not None)
        layer = layer.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.A.copy_(A)
            layer.B.copy_(B)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer


class TTLinear(nn.Module):
    """y = x·W + b with W ∈ R^{in×out} a TT-matrix (rows = in, cols = out), never formed.

    Cores are r_{i−1}×m_i×n_i×r_i with ∏m_i ≥ in, ∏n_i ≥ out (see ``TTMatrix`` for the factor and
    core-count defaults); the input is zero-padded to ∏m_i and the output truncated to out.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int | list[int],
        num_cores: int | None = None,
        in_factors: list[int] | None = None,
        out_factors: list[int] | None = None,
        bias: bool = True,
        init_std: float = 0.02,
    ):
        super().__init__()
        _check_features(in_features, out_features)
        self.in_features, self.out_features = in_features, out_features
        self.tt = TTMatrix(in_features, out_features, rank, num_cores, in_factors, out_factors, init_std=init_std)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        y = self.tt.matmul(x)
        return y if self.bias is None else y + self.bias.to(y.dtype)  # no fp32 promotion under autocast

    def to_dense(self) -> Tensor:
        """W as (out, in), like ``nn.Linear.weight``."""
        return self.tt.to_dense().T

    @classmethod
    def from_dense(
        cls,
        weight: Tensor,
        bias: Tensor | None,
        rank: int | list[int],
        num_cores: int | None = None,
        in_factors: list[int] | None = None,
        out_factors: list[int] | None = None,
    ) -> "TTLinear":
        """TT-SVD of an (out, in) weight; exact when rank reaches the full TT rank."""
        if weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D (out, in) tensor; got shape {tuple(weight.shape)}")
        tt = TTMatrix.from_dense(weight.T, rank, num_cores, in_factors, out_factors)
        layer = cls(weight.shape[1], weight.shape[0], 1, None, tt.row_factors, tt.col_factors, bias=bias is not None)
        layer.tt = tt  # the rank-1 placeholder cores are dropped
        layer = layer.to(device=weight.device, dtype=weight.dtype)
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias)
        return layer


def make_linear(
    kind: str, in_features: int, out_features: int, rank: int = 0, bias: bool = True, init_std: float = 0.02
) -> nn.Module:
    """Build an in→out projection of the given kind.

    kind: "dense" (``nn.Linear``, weights N(0, init_std²), zero bias), "lowrank"
    (``LowRankLinear``), "tt" (``TTLinear``, default cores/factors) or "identity"
    (``nn.Identity``; needs in_features == out_features). rank ≥ 1 is required for lowrank/tt.
    """
    if kind not in LINEAR_KINDS:
        raise ValueError(f"kind must be one of {LINEAR_KINDS}; got {kind!r}")
    _check_features(in_features, out_features)
    if kind == "identity":
        if in_features != out_features:
            raise ValueError(
                f"kind 'identity' needs in_features == out_features; got in_features={in_features}, "
                f"out_features={out_features}"
            )
        return nn.Identity()
    if kind == "dense":
        layer = nn.Linear(in_features, out_features, bias=bias)
        nn.init.normal_(layer.weight, std=init_std)
        if bias:
            nn.init.zeros_(layer.bias)
        return layer
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1 for kind {kind!r}; got {rank!r}")
    if kind == "lowrank":
        return LowRankLinear(in_features, out_features, rank, bias=bias, init_std=init_std)
    return TTLinear(in_features, out_features, rank, bias=bias, init_std=init_std)
