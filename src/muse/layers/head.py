"""Output heads and the memory-bounded cross-entropy.

The loss never holds B×N×V logits. Where the head ends in a plain (V, K) matrix — a dense head,
the (r, V) factor of a low-rank head, a head tied to a dense embedding — it runs a linear +
cross-entropy of ``muse.ops.linear_ce`` on (x, W, b) = ``last_matrix``: the fused Triton kernels
(logits tiles in registers, a per-token log-sum-exp saved) or, when those are not selected,
``chunk_linear_cross_entropy``: chunks of ``head.loss_chunk`` tokens that compute the loss and
the gradients of x, W and b in the forward, so the backward only scales them. Otherwise (TT
heads, heads tied to a TT or low-rank embedding) ``chunked_nll`` walks over chunks of
``head.loss_chunk`` tokens and recomputes each chunk's logits in the backward pass. The first
peaks at one fp32 (chunk, V) buffer plus its low-precision copy, the second at a few.
``head.loss_impl`` picks: "auto" (fused on CUDA where possible, once the kernels are validated on
a GPU: ``muse.ops.linear_ce.AUTO_ON_GPU``), "fused", "chunked" (the torch chunked loss of the
head: gradient-in-forward for a plain matrix, recomputation otherwise).
"""

from __future__ import annotations

from torch import Tensor, nn

from muse.config import HeadConfig
from muse.layers.embedding import DenseEmbedding
from muse.layers.linear import LowRankLinear, make_linear
from muse.ops._dispatch import abstract, note_path
from muse.ops._triton import HAS_TRITON
from muse.ops.linear_ce import (
    chunk_linear_cross_entropy, chunked_nll, linear_cross_entropy, resolve_impl, triton_supports,
)


def make_head(cfg: HeadConfig, dim: int, vocab_size: int, init_std: float = 0.02) -> nn.Module | None:
    """The projection d → V, or None for a head tied to the embedding (it uses ``embedding.attend``)."""
    if cfg.kind == "tied":
        return None
    return make_linear(cfg.kind, dim, vocab_size, rank=cfg.rank, bias=cfg.bias, init_std=init_std)


def head_logits(head: nn.Module | None, embed: nn.Module, h: Tensor) -> Tensor:
    """(..., d) → (..., V); a tied head (None) contracts with the (possibly TT) embedding directly."""
    return embed.attend(h) if head is None else head(h)


def fusable(head: nn.Module | None, embed: nn.Module) -> bool:
    """Whether the projection ends in a plain (V, K) matrix the fused loss can take."""
    if head is None:
        return isinstance(embed, DenseEmbedding)
    return isinstance(head, (nn.Linear, LowRankLinear))


def last_matrix(head: nn.Module | None, embed: nn.Module, h: Tensor) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """(x, W, b) with head_logits(h) = x @ W^T + b and W a (V, K) matrix, or None.

    dense: (h, weight, bias); low-rank: (h @ A, B^T, bias), so only the (T, r) projection is
    formed outside the kernel; tied to a dense embedding: (h, E, None).
    """
    if head is None:
        return (h, embed.weight, None) if isinstance(embed, DenseEmbedding) else None
    if isinstance(head, nn.Linear):
        return h, head.weight, head.bias
    if isinstance(head, LowRankLinear):
        return h @ head.A, head.B.T, head.bias
    return None


def resolve_loss_impl(cfg: HeadConfig, head: nn.Module | None, embed: nn.Module, h: Tensor) -> str:
    """"fused" or "chunked" for ``head.loss_impl`` and hidden states h (..., d).

    "auto" fuses where the head allows it and ``muse.ops.linear_ce.resolve_impl`` picks the
    Triton kernels (CUDA, K within ``AUTO_MAX_K``); the CPU — interpreter or not — keeps the
    chunked loss. "fused" raises when the head has no final plain matrix; the kernels raise
    when they cannot run the tensors.
    """
    impl = cfg.loss_impl
    if impl == "chunked":
        return "chunked"
    if not fusable(head, embed):
        if impl == "fused":
            kind = "tied" if head is None else type(head).__name__
            raise ValueError(
                f"head.loss_impl 'fused' needs a dense or lowrank head, or a tied head over a dense embedding; "
                f"got {kind} (embedding {type(embed).__name__}); use head.loss_impl 'chunked' or 'auto'"
            )
        return "chunked"
    if impl == "fused":
        if not (abstract(h) or triton_supports(h)):
            raise ValueError(
                "head.loss_impl 'fused' runs the Triton kernels: it needs the triton package and CUDA "
                f"tensors (or fp32/fp64 CPU ones under TRITON_INTERPRET=1); got {h.device.type} {h.dtype}"
                f"{'' if HAS_TRITON else ' without triton installed'}; use head.loss_impl 'auto' or 'chunked'"
            )
        return "fused"
    K = head.rank if isinstance(head, LowRankLinear) else h.size(-1)  # the width the kernels contract
    return "fused" if resolve_impl("auto", h, K) == "triton" else "chunked"


def lm_loss(
    cfg: HeadConfig, head: nn.Module | None, embed: nn.Module, h: Tensor, targets: Tensor, ignore_index: int = -100
) -> Tensor:
    """Mean next-token NLL of the head's logits of h (..., d) against targets (...): float32
    (float64 for a float64 model), over the targets that are not ``ignore_index``."""
    h = h.reshape(-1, h.size(-1))  # (T, d)
    targets = targets.reshape(-1)  # (T,)
    impl = resolve_loss_impl(cfg, head, embed, h)
    if impl == "fused":
        x, w, b = last_matrix(head, embed, h)
        total = linear_cross_entropy(x, w, targets, b, ignore_index, impl="triton")
    elif fusable(head, embed):  # a plain last matrix: gradients in the forward, no recomputation
        x, w, b = last_matrix(head, embed, h)
        note_path("linear_cross_entropy", "chunked")
        total = chunk_linear_cross_entropy(x, w, targets, b, ignore_index, chunk_size=cfg.loss_chunk)
    else:
        note_path("linear_cross_entropy", "chunked_nll")
        total = chunked_nll(lambda z: head_logits(head, embed, z), h, targets, cfg.loss_chunk, ignore_index)
    return total / (targets != ignore_index).sum().clamp(min=1)
