"""Torch reference for the TT row gather: the core-by-core contraction behind ``TTMatrix.rows``.

``tt_contract`` is the one copy of this math: ``TTMatrix._contract_rows`` calls it on the unique
ids of a batch, ``tt_gather(impl="torch")`` on every id, and the Triton kernels are tested
against it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_inputs(ids: Tensor, cores: list[Tensor], row_factors, col_factors, num_cols: int) -> None:
    """Shapes of a TT gather: ids (L,) integer, cores (r_{i-1}, m_i, n_i, r_i) with r_0 = r_k = 1."""
    k = len(cores)
    if ids.dim() != 1 or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"ids must be a 1-D int64/int32 tensor; got shape {tuple(ids.shape)}, {ids.dtype}")
    if k < 1 or len(row_factors) != k or len(col_factors) != k:
        raise ValueError(
            f"need one row and one column factor per core; got {k} cores, row_factors={list(row_factors)}, "
            f"col_factors={list(col_factors)}"
        )
    r_prev = 1
    for i, (c, m, n) in enumerate(zip(cores, row_factors, col_factors)):
        r_next = 1 if i == k - 1 else c.shape[-1]
        if c.dim() != 4 or tuple(c.shape) != (r_prev, m, n, r_next):
            raise ValueError(f"core {i} must have shape {(r_prev, m, n, r_next)}; got {tuple(c.shape)}")
        if c.dtype != cores[0].dtype or c.device != cores[0].device:
            raise ValueError("all cores must share one dtype and device")
        r_prev = r_next
    if not 1 <= num_cols <= math.prod(col_factors):
        raise ValueError(f"num_cols must lie in [1, prod(col_factors)={math.prod(col_factors)}]; got {num_cols}")


def tt_contract(ids: Tensor, cores: list[Tensor], row_factors, col_factors, num_cols: int) -> Tensor:
    """Rows ``ids`` (U,) of the TT matrix → (U, num_cols), one core at a time.

    ids are in-range int64; row t's digits are mixed radix over ``row_factors``, most
    significant first, and the columns likewise over ``col_factors``, padding dropped.
    Complex cores give a complex result. Peak memory O(U · ∏n_i · r).
    """
    U = ids.numel()
    stride = math.prod(row_factors)
    res = None
    for core, mi, ni in zip(cores, row_factors, col_factors):
        stride //= mi
        digit = torch.div(ids, stride, rounding_mode="floor") % mi  # (U,)
        r0, r1 = core.shape[0], core.shape[-1]
        # (m_i, r0, n_i·r1): one core-sized copy, then a single gather per id
        sliced = core.permute(1, 0, 2, 3).reshape(mi, r0, ni * r1).index_select(0, digit)  # (U, r0, n_i·r1)
        if res is None:
            res = sliced.reshape(U, ni, r1)  # r0 = 1: (U, n_1, r_1)
        else:
            P = res.shape[1]
            res = torch.bmm(res, sliced).reshape(U, P * ni, r1)  # (U, P·n_i, r_i)
    return res.reshape(U, math.prod(col_factors))[:, :num_cols]  # (U, N)
