"""How a TT matrix is laid out: the factors of its rows and columns, its bond ranks, and the
TT-SVD that fits cores to a dense matrix (``TTMatrix.from_dense``, the spectral initialisation).
Pure integer and float64 math, shared by every TT layer through ``muse.layers.tt``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["auto_num_cores", "bond_ranks", "factorize", "prod", "resolve_factors", "tt_svd"]


# ----------------------------------------------------------------------------- factorization
def prod(xs) -> int:
    return math.prod([int(x) for x in xs])  # a list: dynamo cannot pass a generator to math.prod


def _imbalance(fs: list[int]) -> float:
    # Σ log² f is minimised, for a fixed product, by the most equal factors
    return sum(math.log(f) ** 2 for f in fs)


def _exact_splits(n: int, k: int, lo: int):
    """All non-decreasing k-tuples of integers ≥ lo whose product is exactly n."""
    if k == 1:
        if n >= lo:
            yield [n]
        return
    f = lo
    while f**k <= n:
        if n % f == 0:
            for rest in _exact_splits(n // f, k - 1, f):
                yield [f, *rest]
        f += 1


def _padded_splits(n: int, k: int):
    """Non-decreasing k-tuples (factors ≥ 2, max ≤ 2·min) with product ≥ n, tight in the last factor."""
    root = max(2, math.ceil(n ** (1.0 / k)))
    while root > 2 and (root - 1) ** k >= n:  # guard float error in the k-th root
        root -= 1
    while root**k < n:
        root += 1
    if k == 1:
        yield [root]
        return
    # max ≤ 2·min and product ≥ n give min·(2·min)^{k−1} ≥ n: a lower bound on the smallest factor
    lo = max(2, int((n / 2 ** (k - 1)) ** (1.0 / k)) - 1)

    def rec(prefix: list[int], left: int, cap: int):
        p = prod(prefix)
        if left == 1:
            last = max(prefix[-1], -(-n // p))  # the smallest last factor reaching n
            if last <= cap:
                yield [*prefix, last]
            return
        for f in range(prefix[-1], cap + 1):
            yield from rec([*prefix, f], left - 1, cap)
            if p * f**left >= n:  # all-f already reaches n; a larger f only adds padding
                break

    for first in range(lo, root + 1):
        yield from rec([first], k - 1, 2 * first)


def factorize(n: int, k: int, exact: bool) -> list[int]:
    """Split n into k integer factors, each ≥ 2, as balanced as possible, in ascending order.

    exact=True (dimensions): the product is exactly n whenever such a split exists (the most
    balanced one, i.e. minimal Σ log² f); otherwise the padded rule below.
    exact=False (vocabularies): among splits whose largest factor is at most twice the smallest,
    the one with the smallest product ≥ n (least padding), ties broken by balance. The
    all-equal split ⌈n^{1/k}⌉^k always qualifies, so a prime n still works.

    >>> factorize(512, 3, True), factorize(3072, 3, True), factorize(10000, 3, False)
    ([8, 8, 8], [12, 16, 16], [20, 20, 25])
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"factorize: n must be an integer >= 1; got {n!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"factorize: k must be an integer >= 1; got {k!r}")
    if exact:
        best = min(_exact_splits(n, k, 2), key=_imbalance, default=None)
        if best is not None:
            return best
    return min(_padded_splits(n, k), key=lambda fs: (prod(fs), _imbalance(fs)))


def auto_num_cores(rows: int, cols: int) -> int:
    """Number of TT cores for a rows×cols matrix.

    With n = max(rows, cols): 2 cores if n ≤ 4096, 3 if n ≤ 2^19 (524 288), else 4 — more
    cores only pay off once a factor per core stays large. The result is then capped at
    ⌊log₂ min(rows, cols)⌋ (at least 2) so the smaller side still splits into factors ≥ 2
    without mostly padding.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"auto_num_cores: rows and cols must be >= 1; got rows={rows}, cols={cols}")
    n = max(rows, cols)
    k = 2 if n <= 4096 else 3 if n <= 2**19 else 4
    return max(2, min(k, int(math.log2(min(rows, cols)))))


def _check_factors(name: str, factors, size: int) -> list[int]:
    fs = list(factors)
    if not fs or any(not isinstance(f, int) or f < 1 for f in fs):
        raise ValueError(f"{name} must be a list of positive integers; got {factors!r}")
    if prod(fs) < size:
        raise ValueError(f"{name}={fs} has product {prod(fs)} < {size}; it must cover all {size} indices")
    return fs


def _ends_first(factors: list[int]) -> list[int]:
    """Largest factors on the outer cores, smallest in the middle: [a≤b≤c] → [c, a, b].

    Inner cores pay r² per (m_i, n_i) entry and the two outer ones only r, so this order
    lowers Σ r_{i−1} m_i n_i r_i (e.g. V=50 000, d=1024, r=16: 69 120 instead of 97 920).
    """
    front, back = [], []
    for i, f in enumerate(sorted(factors, reverse=True)):
        (front if i % 2 == 0 else back).append(f)
    return front + back[::-1]


def resolve_factors(rows: int, cols: int, num_cores=None, row_factors=None, col_factors=None):
    """(k, row_factors, col_factors): explicit factors win, then num_cores, then auto_num_cores.

    Automatic factors come from ``factorize`` (rows: exact=False, cols: exact=True) and are
    placed largest-at-the-ends (``_ends_first``); explicit factors keep the given order.
    """
    lengths = {len(f) for f in (row_factors, col_factors) if f is not None}
    if num_cores is not None:
        lengths.add(num_cores)
    if len(lengths) > 1:
        raise ValueError(
            f"num_cores={num_cores}, row_factors={row_factors} and col_factors={col_factors} "
            "disagree on the number of cores"
        )
    k = lengths.pop() if lengths else auto_num_cores(rows, cols)
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"num_cores must be an integer >= 2; got {k!r}")
    if row_factors is not None:
        rf = _check_factors("row_factors", row_factors, rows)
    else:
        rf = _ends_first(factorize(rows, k, exact=False))
    if col_factors is not None:
        cf = _check_factors("col_factors", col_factors, cols)
    else:
        cf = _ends_first(factorize(cols, k, exact=True))
    return k, rf, cf


def bond_ranks(rank, m: list[int], n: list[int]) -> list[int]:
    """[1, r_1, …, r_{k−1}, 1], each clipped to the largest rank the bond can use."""
    k = len(m)
    ranks = [rank] * (k - 1) if isinstance(rank, int) else list(rank)
    if len(ranks) != k - 1 or any(not isinstance(r, int) or r < 1 for r in ranks):
        raise ValueError(f"rank must be an integer >= 1 or a list of {k - 1} such integers; got {rank!r}")
    sizes = [mi * ni for mi, ni in zip(m, n)]
    # a bond cannot carry more than the smaller side's number of (row, col) entries
    clip = [min(prod(sizes[: i + 1]), prod(sizes[i + 1 :])) for i in range(k - 1)]
    return [1, *(min(r, c) for r, c in zip(ranks, clip)), 1]


def tt_svd(W: Tensor, m: list[int], n: list[int], wanted: list[int]) -> list[Tensor]:
    """TT-SVD of an (M, N) matrix into cores (r_{i−1}, m_i, n_i, r_i), float64, left-orthogonal:
    sequential truncated SVDs with bond ranks min(wanted_i, what the bond can hold). W is
    zero-padded to (∏m, ∏n)."""
    k, (M, N) = len(m), W.shape
    T = W.detach().to(torch.float64).new_zeros(prod(m), prod(n))
    T[:M, :N] = W.detach().to(torch.float64)
    # (m_1..m_k, n_1..n_k) → (m_1, n_1, m_2, n_2, …): core i owns the digit pair (t_i, c_i)
    T = T.reshape(*m, *n).permute(*[d for i in range(k) for d in (i, k + i)])
    cores, r_prev, C = [], 1, T.reshape(-1)
    for i in range(k - 1):
        C = C.reshape(r_prev * m[i] * n[i], -1)  # (r_{i−1}·m_i·n_i, rest)
        Uf, S, Vh = torch.linalg.svd(C, full_matrices=False)
        r = min(wanted[i], S.numel())
        cores.append(Uf[:, :r].reshape(r_prev, m[i], n[i], r))
        C = S[:r, None] * Vh[:r]  # (r_i, rest): singular values move right
        r_prev = r
    cores.append(C.reshape(r_prev, m[-1], n[-1], 1))
    return cores
