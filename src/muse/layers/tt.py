"""Tensor-train (TT) matrices: the shared math behind TT embeddings, TT linear layers and TT heads.

A matrix W ∈ R^{M×N} is padded to (∏m_i) × (∏n_i) and stored as k cores
G_i ∈ R^{r_{i-1} × m_i × n_i × r_i} with r_0 = r_k = 1. Row index t and column index c are
written in mixed radix over the factors (t_1 / c_1 most significant), and

    W[t, c] = G_1[:, t_1, c_1, :] · G_2[:, t_2, c_2, :] · … · G_k[:, t_k, c_k, :].

Every forward path (row gather, x @ W, y @ Wᵀ) contracts the cores one by one, so the cost
and the activations scale with the cores and the batch, never with M·N. Padded rows and
columns exist only inside the cores and are dropped from every result.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from muse.layers.tt_factors import bond_ranks, prod, resolve_factors, tt_svd
from muse.ops._dispatch import assumes_cuda, check_range, fake, note_path
from muse.ops.tt_gather import resolve_impl, shape_unsupported, tt_contract, tt_gather

PHASES = ("none", "cos", "complex")
GATHER_IMPLS = ("auto", "triton", "torch")

# cos-phase init: θ ~ U(−a, a). Not exactly 0: d cos θ / dθ = −sin θ vanishes there, so the
# phases would never leave their init. With a = 0.1, cos θ ≥ 0.995 at the start.
_COS_PHASE_INIT = 0.1


# ----------------------------------------------------------------------------- contraction
def _tt_apply(x: Tensor, cores: list[Tensor], in_f: list[int], out_f: list[int]) -> Tensor:
    """x: (B, ∏in_f) → (B, ∏out_f) through cores (r, in_i, out_i, r'), one core at a time."""
    B = x.shape[0]
    state = x.reshape(B, x.shape[1], 1, 1)  # (B, input digits left, output digits so far, bond)
    for core, mi, ni in zip(cores, in_f, out_f):
        _, q, p, r = state.shape
        state = state.reshape(B, mi, q // mi, p, r)  # (B, m_i, Q, P, r)
        state = torch.einsum("bmqpa,amnc->bqpnc", state, core)  # (B, Q, P, n_i, r')
        state = state.reshape(B, q // mi, p * ni, core.shape[-1])
    return state.reshape(B, math.prod(out_f))  # (B, ∏out_f)


class TTMatrix(nn.Module):
    """A rows×cols matrix in tensor-train format, used without ever forming it.

    The logical shape is (``num_rows``, ``num_cols``) = (M, N); ``rows(idx)`` gathers rows.

    Args:
        rows, cols: logical shape M×N; the cores cover ∏row_factors × ∏col_factors.
        rank: bond rank, an int or a list of k−1 ints; each is clipped to the bond's maximum.
        num_cores: k; default from the factors if given, else ``auto_num_cores(rows, cols)``.
        row_factors: default ``factorize(rows, k, exact=False)``, largest factors on the outer cores.
        col_factors: default ``factorize(cols, k, exact=True)``, likewise.
        phase: "none" | "cos" | "complex" — learnable bond phases θ_i ∈ R^{r_i}.
            "cos" scales bond i by cos θ_i (θ ~ U(−0.1, 0.1): cos ≈ 1 but with a non-zero
            gradient). "complex" uses complex cores (real and imaginary parts are separate real
            parameters), bond factors e^{iθ_i} (θ = 0 at init: the cores are circularly
            symmetric, so a random start phase would add nothing) and returns the real part.
        init_std: std of the entries of W at init; core entries are N(0, σ²) with σ solved
            from Var W = (∏ bond gains) · σ^{2k} (see ``reset_parameters``).
        gather_impl: how ``rows`` runs: "auto" (the fused Triton kernel for CUDA tensors when
            Triton is installed and the shape fits it: k = 2..4 cores, ranks <= 64, real phase;
            the torch contraction otherwise), "triton" (always the kernel: CUDA, or CPU under
            TRITON_INTERPRET=1; an error where it cannot run) or "torch". Fake and meta tensors
            (memory estimates) always take the torch path.
    """

    gather_impl = "auto"  # set per instance by __init__; the class default serves older pickles
    factorized = True  # train.factor_lr_scale applies to the cores

    def __init__(
        self,
        rows: int,
        cols: int,
        rank: int | list[int],
        num_cores: int | None = None,
        row_factors: list[int] | None = None,
        col_factors: list[int] | None = None,
        phase: str = "none",
        init_std: float = 0.02,
        gather_impl: str = "auto",
    ):
        super().__init__()
        if not isinstance(rows, int) or rows < 1 or not isinstance(cols, int) or cols < 1:
            raise ValueError(f"rows and cols must be integers >= 1; got rows={rows!r}, cols={cols!r}")
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}; got {phase!r}")
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0; got {init_std!r}")
        self.num_rows, self.num_cols, self.phase, self.init_std = rows, cols, phase, float(init_std)
        k, self.row_factors, self.col_factors = resolve_factors(rows, cols, num_cores, row_factors, col_factors)
        self.num_cores = k
        self.ranks = bond_ranks(rank, self.row_factors, self.col_factors)  # [1, r_1, …, r_{k−1}, 1]
        self.gather_impl = self._check_gather_impl(gather_impl)
        shapes = [(self.ranks[i], self.row_factors[i], self.col_factors[i], self.ranks[i + 1]) for i in range(k)]
        self.cores = nn.ParameterList(nn.Parameter(torch.empty(s)) for s in shapes)
        self.cores_imag = (
            nn.ParameterList(nn.Parameter(torch.empty(s)) for s in shapes) if phase == "complex" else None
        )
        self.phases = (
            nn.ParameterList(nn.Parameter(torch.empty(r)) for r in self.ranks[1:-1]) if phase != "none" else None
        )
        self.reset_parameters()

    def _check_gather_impl(self, impl: str) -> str:
        if impl not in GATHER_IMPLS:
            raise ValueError(f"gather_impl must be one of {', '.join(map(repr, GATHER_IMPLS))}; got {impl!r}")
        if impl == "triton":
            if self.phase == "complex":
                raise ValueError("gather_impl='triton' needs real cores; phase 'complex' runs on 'torch' (or 'auto')")
            why = shape_unsupported(self.ranks, self.col_factors)
            if why:
                raise ValueError(f"gather_impl='triton': {why}; use 'auto' or 'torch'")
        return impl

    @property
    def padded_shape(self) -> tuple[int, int]:
        return prod(self.row_factors), prod(self.col_factors)

    def reset_parameters(self) -> None:
        """Cores ~ N(0, σ²) so that entries of W have std ``init_std``.

        W[t, c] sums ∏_i r_i paths, each a product of k independent core entries times the bond
        factors, so Var W = σ^{2k} · ∏_i Σ_j |b_ij|². With b = 1 ("none"), b = e^{iθ} ("complex",
        |b| = 1) that is ∏ r_i; with b = cos θ, θ ~ U(−a, a) it is ∏ r_i·E[cos²θ] with
        E[cos²θ] = ½ + sin(2a)/(4a). Complex entries have E|z|² = 2σ² and the real part keeps half
        of E|W|², so there Var Re W = ∏ r_i · (2σ²)^k / 2. The gain uses expectations, not the
        drawn θ, so the init also runs on the meta device.
        """
        k, bonds = self.num_cores, self.ranks[1:-1]
        gain = float(prod(bonds))
        if self.phase == "cos":
            a = _COS_PHASE_INIT
            gain *= (0.5 + math.sin(2 * a) / (4 * a)) ** len(bonds)
            for th in self.phases:
                nn.init.uniform_(th, -a, a)
        elif self.phase == "complex":
            for th in self.phases:
                nn.init.zeros_(th)
        var = self.init_std**2
        if self.phase == "complex":
            sigma = math.sqrt((2 * var / gain) ** (1 / k) / 2)
        else:
            sigma = (var / gain) ** (1 / (2 * k))
        for p in self.cores:
            nn.init.normal_(p, std=sigma)
        for p in self.cores_imag or []:
            nn.init.normal_(p, std=sigma)

    @torch.no_grad()
    def spectral_init_(self) -> None:
        """Cores := the TT-SVD, at this matrix's bond ranks, of a dense N(0, init_std²) (M, N)
        matrix (``model.factor_init: spectral``), where :meth:`reset_parameters` draws every core
        independently. Needs phase "none"; meta tensors (accounting builds) are left alone."""
        if self.phase != "none":
            raise ValueError(f"spectral init needs TT phase 'none'; this matrix has phase {self.phase!r}")
        if self.cores[0].is_meta:
            return
        W = torch.empty(self.num_rows, self.num_cols, device=self.cores[0].device).normal_(std=self.init_std)
        cores = tt_svd(W, self.row_factors, self.col_factors, self.ranks[1:-1])
        for p, c in zip(self.cores, cores):  # the same bond ranks: both are clipped to each bond's maximum
            p.copy_(c)

    def extra_repr(self) -> str:
        return (
            f"rows={self.num_rows}, cols={self.num_cols}, row_factors={self.row_factors}, "
            f"col_factors={self.col_factors}, ranks={self.ranks}, phase={self.phase!r}"
        )

    def num_params(self) -> int:
        """Stored parameters: Σ r_{i−1} m_i n_i r_i (doubled for complex) plus the bond phases."""
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ cores with phases
    def _effective_cores(self) -> list[Tensor]:
        """The cores with bond factors folded into their right bond index (real or complex)."""
        if self.phase == "none":
            return list(self.cores)
        if self.phase == "cos":
            cores = list(self.cores)
            return [c * th.cos() for c, th in zip(cores, self.phases)] + cores[-1:]
        # complex: half precision has no complex kernels, so compute in at least fp32
        up = lambda t: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
        cores = [torch.complex(up(re), up(im)) for re, im in zip(self.cores, self.cores_imag)]
        bonds = [torch.complex(up(th).cos(), up(th).sin()) for th in self.phases]  # e^{iθ}
        return [c * b for c, b in zip(cores, bonds)] + cores[-1:]

    def _finish(self, out: Tensor) -> Tensor:
        if out.is_complex():
            out = out.real.to(self.cores[0].dtype)
        return out

    @staticmethod
    def _dense_is_cheaper(batch: int, contracted: int) -> bool:
        """Rebuild W for one product when it is no larger than the product's output.

        W (M×N) costs M·N memory; the output of x @ W costs batch·N. When batch ≥ M (e.g. a
        tied output head over thousands of tokens) one transient W adds no more than the logits
        already cost and turns a chain of small batched contractions into one large matmul, which
        is faster (e.g. for the tiny preset's head on CPU; docs/performance-notes.md §12).
        Otherwise (a TTLinear of a 10 K-wide model over a few hundred tokens) W would dwarf the
        activations, so the cores are contracted one by one.
        """
        return batch >= contracted

    # ------------------------------------------------------------------ forward paths
    def rows(self, idx: Tensor) -> Tensor:
        """Rows W[idx]: (*idx.shape) → (*idx.shape, N).

        Fused path (``gather_impl``, CUDA): one Triton kernel computes every row straight from
        the cores and writes only the output; its backward sums the gradient per unique id and
        adds it into the cores (``muse.ops.tt_gather``). Torch path: only the unique ids are
        contracted (a batch of language tokens repeats ids heavily), ``rows_chunk`` at a time,
        and scattered back with the inverse index. Peak memory is O(U · ∏n_i · r) for U unique
        ids, independent of M.
        """
        if idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"idx must be an integer tensor (int64 or int32); got {idx.dtype}")
        if self._fused_rows(idx):
            return self._gather_rows(idx)
        note_path("tt_gather", "torch")
        if fake(idx) or idx.device.type == "meta":
            # shape-only tensors (memory estimates): no values to deduplicate, so every id counts
            # as unique, an upper bound on U
            uniq, inv = idx.reshape(-1), torch.arange(idx.numel(), device=idx.device)
        else:
            uniq, inv = torch.unique(idx.reshape(-1), return_inverse=True)  # (U,), (L,)
        if uniq.numel() and not fake(uniq) and uniq.device.type != "meta" and bool(
            (uniq[0] < 0) | (uniq[-1] >= self.num_rows)
        ):
            raise ValueError(
                f"idx values must lie in [0, {self.num_rows}); got min {int(uniq[0])}, max {int(uniq[-1])}"
            )
        uniq = uniq.long()
        chunk = self.rows_chunk()
        if uniq.numel() <= chunk:
            table = self._contract_rows(uniq)  # (U, N)
            return table.index_select(0, inv).reshape(*idx.shape, self.num_cols)
        inv = inv.reshape(-1)
        starts = range(0, uniq.numel() + chunk, chunk)
        if fake(inv) or inv.device.type == "meta":  # inv = arange: already grouped
            order, bounds = inv, [min(b, inv.numel()) for b in starts]
        else:
            order = torch.argsort(inv)  # token positions grouped by unique id
            # chunk boundaries in ``order``: one host sync
            bounds = torch.searchsorted(inv[order], torch.tensor(list(starts), device=inv.device)).tolist()
        out = _ChunkedRows.apply(self, uniq, inv, order, bounds, chunk, *self.parameters())  # (L, N)
        return out.reshape(*idx.shape, self.num_cols)

    def _fused_rows(self, idx: Tensor) -> bool:
        """Whether ``rows(idx)`` runs the fused kernel (see ``gather_impl``)."""
        if self.gather_impl == "torch" or self.phase == "complex":
            return False
        if any(t.device.type == "meta" or (fake(t) and not assumes_cuda(t)) for t in (idx, self.cores[0])):
            # shape-only tensors keep the torch path exactly, unless the memory estimate models a
            # GPU step (assume_cuda): then the kernel's fake implementation stands in for it
            return False
        if self.gather_impl == "triton":
            return True  # tt_gather raises a clear error where the kernel cannot run
        return resolve_impl("auto", idx, list(self.cores), self.col_factors) == "triton"

    def _gather_rows(self, idx: Tensor) -> Tensor:
        flat = idx.reshape(-1).long()
        R = self.num_rows
        check_range(flat, R, lambda lo, hi: f"idx values must lie in [0, {R})" + ("" if lo is None else f"; got min {lo}, max {hi}"))
        dtype, dev = self.cores[0].dtype, flat.device.type
        if assumes_cuda(flat) and torch.is_autocast_enabled(dev) and dtype == torch.float32:
            dtype = torch.get_autocast_dtype(dev)  # as the torch path's bmm under autocast
        out = tt_gather(flat, self._effective_cores(), self.row_factors, self.col_factors, self.num_cols,
                        impl=self.gather_impl, out_dtype=dtype)
        return out.reshape(*idx.shape, self.num_cols)

    # Unique ids contracted at a time by ``rows``: enough that a chunk's partial products take
    # about ROWS_CHUNK_BYTES (a fixed 128 rows gave a 16K-token step 64 chunks and made it
    # launch-bound on the host; docs/performance-notes.md §8), and no fewer than 128. ROWS_CHUNK
    # overrides it (tests).
    ROWS_CHUNK: int | None = None
    ROWS_CHUNK_BYTES = 8 * 2**20

    def rows_chunk(self) -> int:
        if self.ROWS_CHUNK is not None:
            return self.ROWS_CHUNK
        per_row = 3 * 4 * self.padded_shape[1]  # output row, partial product, core slices (fp32)
        return max(128, self.ROWS_CHUNK_BYTES // per_row)

    def _contract_rows(self, uniq: Tensor) -> Tensor:
        """W[uniq] for sorted, in-range int64 ids: (U,) → (U, N), core by core (``tt_contract``)."""
        cores = self._effective_cores()
        return self._finish(tt_contract(uniq, cores, self.row_factors, self.col_factors, self.num_cols))  # (U, N)

    def matmul(self, x: Tensor) -> Tensor:
        """x @ W: (..., M) → (..., N), by sequential core contraction (W is never formed)."""
        if x.shape[-1] != self.num_rows:
            raise ValueError(f"x must have last dimension rows={self.num_rows}; got shape {tuple(x.shape)}")
        lead, (Mp, _) = x.shape[:-1], self.padded_shape
        x = x.reshape(-1, self.num_rows)
        if self._dense_is_cheaper(x.size(0), self.num_rows):
            return (x @ self.to_dense()).reshape(*lead, self.num_cols)
        if Mp > self.num_rows:
            x = nn.functional.pad(x, (0, Mp - self.num_rows))  # zero rows of the padding contribute nothing
        cores = self._effective_cores()
        if cores[0].is_complex():
            x = x.to(cores[0].dtype)
        out = _tt_apply(x, cores, self.row_factors, self.col_factors)[:, : self.num_cols]  # (B, N)
        return self._finish(out).reshape(*lead, self.num_cols)

    def matmul_t(self, y: Tensor) -> Tensor:
        """y @ Wᵀ: (..., N) → (..., M), contracting the transposed cores (r, n_i, m_i, r')."""
        if y.shape[-1] != self.num_cols:
            raise ValueError(f"y must have last dimension cols={self.num_cols}; got shape {tuple(y.shape)}")
        lead, (_, Np) = y.shape[:-1], self.padded_shape
        y = y.reshape(-1, self.num_cols)
        if self._dense_is_cheaper(y.size(0), self.num_cols):
            return (y @ self.to_dense().T).reshape(*lead, self.num_rows)
        if Np > self.num_cols:
            y = nn.functional.pad(y, (0, Np - self.num_cols))
        cores = [c.transpose(1, 2) for c in self._effective_cores()]
        if cores[0].is_complex():
            y = y.to(cores[0].dtype)
        out = _tt_apply(y, cores, self.col_factors, self.row_factors)[:, : self.num_rows]  # (B, M)
        return self._finish(out).reshape(*lead, self.num_rows)

    def to_dense(self) -> Tensor:
        """The full (M, N) matrix, for export and tests; differentiable w.r.t. the cores."""
        return self.rows(torch.arange(self.num_rows, device=self.cores[0].device))

    # ------------------------------------------------------------------ TT-SVD
    @classmethod
    def from_dense(
        cls,
        W: Tensor,
        rank: int | list[int],
        num_cores: int | None = None,
        row_factors: list[int] | None = None,
        col_factors: list[int] | None = None,
    ) -> "TTMatrix":
        """TT-SVD of an (M, N) matrix: sequential truncated SVDs, left-orthogonal cores.

        Exact (up to float64 round-off) when every bond rank reaches the full TT rank, i.e. for
        any rank ≥ the bond's maximum. Phase "none"; the result has W's dtype and device.
        """
        if W.dim() != 2:
            raise ValueError(f"W must be a 2-D (rows, cols) tensor; got shape {tuple(W.shape)}")
        M, N = W.shape
        k, m, n = resolve_factors(M, N, num_cores, row_factors, col_factors)
        cores = tt_svd(W, m, n, bond_ranks(rank, m, n)[1:-1])
        tt = cls(M, N, [c.shape[-1] for c in cores[:-1]], row_factors=m, col_factors=n)
        tt = tt.to(device=W.device, dtype=W.dtype if W.is_floating_point() else torch.float32)
        with torch.no_grad():
            for p, c in zip(tt.cores, cores):
                p.copy_(c)
        return tt



class _ChunkedRows(torch.autograd.Function):
    """``W[uniq][inv]`` computed ``chunk`` unique ids at a time, and recomputed the same way
    in backward: besides the (L, N) output only one chunk's partial products are ever alive
    (no (U, N) table, no per-id copies of the core slices). Gradients flow to the TT
    parameters only. Reference: ``TTMatrix._contract_rows`` + ``index_select`` (tests compare)."""

    @staticmethod
    def forward(ctx, tt: "TTMatrix", uniq: Tensor, inv: Tensor, order: Tensor, bounds: list[int],
                chunk: int, *params: Tensor) -> Tensor:
        out = None
        for c, start in enumerate(range(0, uniq.numel(), chunk)):
            part = tt._contract_rows(uniq[start : start + chunk])  # (≤chunk, N)
            if out is None:
                out = part.new_empty(inv.numel(), part.shape[-1])
            pos = order[bounds[c] : bounds[c + 1]]
            out[pos] = part.index_select(0, inv[pos] - start)
        ctx.tt, ctx.bounds, ctx.chunk = tt, bounds, chunk
        ctx.save_for_backward(uniq, inv, order)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        tt, bounds = ctx.tt, ctx.bounds
        uniq, inv, order = ctx.saved_tensors
        params = tuple(tt.parameters())
        grads = [None] * len(params)
        chunk = ctx.chunk
        for c, start in enumerate(range(0, uniq.numel(), chunk)):
            ids = uniq[start : start + chunk]
            pos = order[bounds[c] : bounds[c + 1]]
            g = grad_out.new_zeros(ids.numel(), grad_out.shape[-1])
            g.index_add_(0, inv[pos] - start, grad_out.index_select(0, pos))  # (≤chunk, N)
            with torch.enable_grad():
                part = tt._contract_rows(ids)
                gp = torch.autograd.grad(part, params, g, allow_unused=True)
            grads = [a if b is None else (b if a is None else a + b) for a, b in zip(grads, gp)]
        return (None, None, None, None, None, None, *grads)
