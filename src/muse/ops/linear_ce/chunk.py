"""The torch chunked cross-entropies: gradient-in-forward for a plain matrix, recomputation for
any logits function.

``chunk_linear_cross_entropy`` (x (T, K), weight (V, K), bias, targets -> summed NLL) is the
torch path for heads that end in a plain (V, K) matrix: the Liger-kernel / Mini-Sequence-
Transformer technique. It walks over chunks of tokens ONCE, in the forward, and computes for
each chunk the loss and — when autograd will ask for them — the gradients of x, weight and
bias; the backward only scales the stored gradients by the incoming grad_output. Against the
checkpointed loss below that is 2/3 of the head's matmul FLOPs (no recomputed logits), fewer
aten ops per chunk (14 against 24 with every gradient and a bias under bf16 autocast, 12
against 16 in fp32; see ``_forward``), no (T, K) zero-filled slice gradient per chunk, and at
most one fp32 (chunk, V) buffer plus its low-precision copy alive at a time (the checkpointed
loss: ~3.2 fp32 chunks in a bf16 model). What stays alive from the forward to the backward is dx (T, K), dW (V, K)
and db (V,): the gradients themselves.

``chunked_nll`` works for any ``logits_fn`` (TT heads, heads tied to a TT or low-rank
embedding): it recomputes each chunk's logits in the backward pass (activation checkpointing on
the projection alone), so the peak is a few (chunk, V) buffers (logits, their fp32 copy, the
log-softmax, their gradients), at the cost of the recomputation and more launches per chunk. At V=50 257, N=2048, B=8 either chunked
loss is the difference between 3.3 GB of logits and ~0.4 GB at the default chunk of 2048 tokens.

The fused Triton op (``triton_kernel.py``) replaces both on a GPU where the projection ends in a
plain matrix and ``head.loss_impl`` selects it.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from muse.ops._checkpoint import activation_checkpoint
from muse.ops._dispatch import fake

from .naive import accumulation_dtype, autocast_operands, check_inputs

__all__ = ["chunk_linear_cross_entropy", "chunked_nll"]


# ----------------------------------------------------------------- gradient in the forward


def check_target_ids(targets: Tensor, V: int, ignore_index: int) -> None:
    """Ids outside [0, V) other than ``ignore_index`` raise ``F.cross_entropy``'s IndexError.

    One host-side check per call, on CPU tensors only: on CUDA it would cost a device sync per
    step, and the gather in ``_forward`` trips a device-side assert on such an id instead, as
    ``F.cross_entropy``'s kernel does. Fake and meta tensors (memory estimates) have no ids.
    """
    if targets.device.type != "cpu" or fake(targets):
        return
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
    if bad.any():
        raise IndexError(f"Target {int(targets[bad][0])} is out of bounds.")


def _no_autocast(t: Tensor):
    """Autocast off on t's device for the body (the operands are already in the compute dtype)."""
    dev = t.device.type
    if dev != "meta" and torch.is_autocast_enabled(dev):
        return torch.autocast(dev, enabled=False)
    return contextlib.nullcontext()


def _forward(
    x: Tensor, w: Tensor, b: Tensor | None, tgt: Tensor, ignore_index: int, chunk: int, need: tuple[bool, bool, bool]
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """(loss, dx, dW, db) of the summed NLL; a gradient is None where ``need`` (x, weight,
    bias) says it is not wanted. x, w, b share the compute dtype; tgt is int64 (T,).

    Kernel launches per chunk of c rows, every gradient wanted: 7 for the loss (matmul, upcast,
    max, subtract, gather, exp, sum), 4 for dz (scale, multiply, scatter, downcast), 3 for the
    gradients (dx, dW, db matmuls): 14; 12 when the compute dtype is already the accumulation
    dtype (fp32, fp64: no up/downcast). The log-sum-exp, the NLL and its masked sum run once
    over all T rows at the end.
    """
    T = x.shape[0]
    acc = accumulation_dtype(x)  # fp32 (fp64 for fp64 inputs): softmax and loss
    grad = any(need)
    valid = tgt != ignore_index  # (T,)
    ids = torch.where(valid, tgt, 0).unsqueeze(1)  # (T, 1): ignored rows read/write column 0
    sums = x.new_empty(T, 1, dtype=acc)  # (T, 1) sum_v exp(z - max)
    zt = x.new_empty(T, 1, dtype=acc)  # (T, 1) target logit - max
    dx = dw = db = ones = None
    if grad:
        keep = valid.to(acc).unsqueeze(1)  # (T, 1) 1 / 0: the weight of each row's dz
        minus = -keep  # (T, 1) what the target column gets: -1, or 0 in ignored rows
        if need[0]:
            dx = x.new_empty(x.shape)  # (T, K) in x's dtype
        if need[1]:
            # weight's dtype and strides (the low-rank head's B^T: its transpose is contiguous).
            # dW accumulates chunk by chunk in that dtype — what autograd's input buffer does
            # today when the chunks' gradients of one (autocast-cached) weight meet.
            dw = torch.empty_like(w)  # (V, K)
        if need[2]:
            db = torch.empty_like(b)  # (V,)
            ones = x.new_ones(min(chunk, T))  # (c,): db += dz^T @ 1, one gemv
    for i in range(0, T, chunk):
        rows = slice(i, i + chunk)
        xc = x[rows]  # (c, K)
        z = torch.mm(xc, w.T) if b is None else torch.addmm(b, xc, w.T)  # (c, V) compute dtype
        z = z.to(acc)  # (c, V) fp32; the low-precision copy is freed here
        z.sub_(z.amax(1, keepdim=True))  # (c, V) z - max
        torch.gather(z, 1, ids[rows], out=zt[rows])  # (c, 1)
        z.exp_()  # (c, V) exp(z - max)
        torch.sum(z, 1, keepdim=True, out=sums[rows])  # (c, 1)
        if not grad:
            del z  # before the next chunk's logits
            continue
        z.mul_(keep[rows] / sums[rows])  # (c, V) softmax, 0 in ignored rows
        z.scatter_add_(1, ids[rows], minus[rows])  # (c, V) dz = softmax - onehot(target)
        dz = z.to(x.dtype)  # (c, V) compute dtype
        del z  # the fp32 buffer goes before the matmuls
        if dx is not None:
            torch.mm(dz, w, out=dx[rows])  # (c, V) @ (V, K)
        if dw is not None:
            if i == 0:
                torch.mm(dz.T, xc, out=dw)  # (V, c) @ (c, K)
            else:
                dw.addmm_(dz.T, xc)
        if db is not None:
            if i == 0:
                torch.sum(dz, 0, out=db)  # (V,)
            else:
                db.addmv_(dz.T, ones[: dz.shape[0]])
        del dz  # before the next chunk's logits: one (c, V) buffer and its copy alive at a time
    nll = sums.log_().sub_(zt).squeeze(1)  # (T,) lse - target logit
    loss = torch.where(valid, nll, 0).sum()  # () ignored rows (whatever they hold) add 0
    return loss, dx, dw, db


class _ChunkLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, tgt, ignore_index: int, chunk: int):
        need = tuple(ctx.needs_input_grad[:3])
        with _no_autocast(x):
            loss, dx, dw, db = _forward(x, w, b, tgt, ignore_index, chunk, need)
        ctx.save_for_backward(dx, dw, db)  # released by autograd right after the backward
        ctx.scaled = False
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, dloss):
        if ctx.scaled:
            raise RuntimeError(
                "chunk_linear_cross_entropy: a second backward through the same loss (retain_graph=True) is "
                "not supported: its gradients are computed in the forward and scaled in place by the first"
            )
        ctx.scaled = True
        # in place: no second (V, K) / (T, K) buffer at the start of the backward. A 0-dim fp32
        # dloss multiplies in fp32 arithmetic on CPU (the result rounds to the gradient's dtype).
        dx, dw, db = (None if g is None else g.mul_(dloss) for g in ctx.saved_tensors)
        return dx, dw, db, None, None, None


def chunk_linear_cross_entropy(
    x: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int = 2048,
) -> Tensor:
    """Summed NLL of ``x @ weight^T + bias`` against targets, gradients computed in the forward.

    Args and result as ``naive_linear_cross_entropy``: x (T, K), weight (V, K), bias (V,) or
    None, targets (T,) int64/int32 ids in [0, V) or ``ignore_index``; returns the SUM of the NLL
    over the non-ignored tokens, float32 (float64 for float64 inputs), 0 when all are ignored.

    Under autocast, x, weight and bias are cast as ``F.linear`` would cast them; the chunks then
    run with autocast off: logits in the compute dtype, softmax and loss in fp32 (fp64). The
    gradients of the inputs that require one (and only under grad mode) are computed chunk by
    chunk of ``chunk_size`` rows during the forward and scaled by grad_output in the backward;
    backward through the same loss twice is not supported. Fake tensors run it like real ones.
    """
    check_inputs(x, weight, targets, bias)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1; got {chunk_size!r}")
    x, weight, bias = autocast_operands(x, weight, bias)
    if len({x.dtype, weight.dtype} | ({bias.dtype} if bias is not None else set())) > 1:
        raise ValueError(f"x, weight and bias must share a dtype (or run under autocast); got {x.dtype}, "
                         f"{weight.dtype}, {bias.dtype if bias is not None else None}")
    check_target_ids(targets, weight.shape[0], ignore_index)
    targets = targets.long()
    ignore_index = int(ignore_index)
    need = tuple(torch.is_grad_enabled() and t is not None and t.requires_grad for t in (x, weight, bias))
    if x.shape[0] == 0 or not any(need):
        # no gradients to compute (T = 0: zero gradients through an empty matmul)
        if x.shape[0] == 0:
            logits = F.linear(x, weight, bias).to(accumulation_dtype(x))  # (0, V)
            return F.cross_entropy(logits, targets, reduction="sum", ignore_index=ignore_index)
        with _no_autocast(x):
            return _forward(x, weight, bias, targets, ignore_index, chunk_size, (False, False, False))[0]
    return _ChunkLinearCrossEntropy.apply(x, weight, bias, targets, ignore_index, chunk_size)


# ----------------------------------------------------------------- recomputation, any logits


def _chunk_nll(logits_fn: Callable[[Tensor], Tensor], h: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
    logits = logits_fn(h)
    # upcast per chunk: a bf16 log-softmax over 50K classes loses ~2 digits of the loss
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")


def chunked_nll(
    logits_fn: Callable[[Tensor], Tensor],
    h: Tensor,
    targets: Tensor,
    chunk_size: int = 2048,
    ignore_index: int = -100,
) -> Tensor:
    """SUM of the next-token NLL of ``logits_fn(h)`` against ``targets``, chunk by chunk.

    h: (..., d) hidden states, targets: (...) class ids. Returns a float32 scalar (float64 when
    the logits are float64); ignored targets contribute 0.
    """
    h = h.reshape(-1, h.size(-1))  # (T, d)
    targets = targets.reshape(-1).long()  # (T,)
    recompute = torch.is_grad_enabled()  # head weights may need grads even when h does not
    total = h.new_zeros((), dtype=torch.float64 if h.dtype == torch.float64 else torch.float32)
    for i in range(0, h.size(0), chunk_size):
        hc, tc = h[i : i + chunk_size], targets[i : i + chunk_size]
        if recompute:
            total = total + activation_checkpoint(_chunk_nll, logits_fn, hc, tc, ignore_index)
        else:
            total = total + _chunk_nll(logits_fn, hc, tc, ignore_index)
    return total
