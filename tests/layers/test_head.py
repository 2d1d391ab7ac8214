"""lm_loss's torch paths: gradient-in-forward for heads that end in a plain matrix, the
checkpointed chunked_nll for the others; both give the same loss and gradients."""

from __future__ import annotations

import pytest
import torch

import muse.layers.head as head_mod
from muse import build_model
from tests.ops.test_linear_ce import _small

HEADS = [
    ({"kind": "dense", "bias": True}, {}),
    ({"kind": "lowrank", "rank": 5, "bias": True}, {}),
    ({"kind": "tied"}, {}),  # tied to a dense embedding
]
UNFUSABLE = [
    ({"kind": "tt", "rank": 4}, {"model.vocab_size": 64, "model.embedding.vocab_factors": [8, 8],
                                 "model.embedding.dim_factors": [4, 6]}),
    ({"kind": "tied"}, {"model.embedding.kind": "lowrank", "model.embedding.rank": 6}),
]


def _model(head: dict, over: dict):
    torch.manual_seed(0)
    model = build_model(_small({**head, "loss_impl": "chunked", "loss_chunk": 7}, **over)).double()
    idx = torch.randint(0, model.cfg.vocab_size, (2, 13))
    return model, idx


def _spy(monkeypatch) -> list[str]:
    calls: list[str] = []
    for name in ("chunk_linear_cross_entropy", "chunked_nll"):
        fn = getattr(head_mod, name)

        def wrapped(*a, _fn=fn, _name=name, **kw):
            calls.append(_name)
            return _fn(*a, **kw)

        monkeypatch.setattr(head_mod, name, wrapped)
    return calls


@pytest.mark.parametrize("loss_impl", ["chunked", "auto"])
@pytest.mark.parametrize("head,over", HEADS + UNFUSABLE)
def test_lm_loss_picks_the_torch_path(monkeypatch, head, over, loss_impl):
    model, idx = _model(head, over)
    model.cfg.head.loss_impl = loss_impl  # "auto" on CPU: the torch path too
    calls = _spy(monkeypatch)
    model(idx[:, :-1], idx[:, 1:]).loss.backward()
    want = "chunk_linear_cross_entropy" if (head, over) in HEADS else "chunked_nll"
    assert calls == [want]


@pytest.mark.parametrize("head,over", HEADS)
def test_gradient_in_forward_equals_checkpointed_loss(monkeypatch, head, over):
    """fp64: the new path against the previous one (chunked_nll over head_logits), loss and
    every parameter's gradient, with an ignored target and a mean over the rest."""
    model, idx = _model(head, over)
    targets = idx[:, 1:].clone()
    targets[0, 3] = -100

    def loss_and_grads():
        model.zero_grad()
        loss = model(idx[:, :-1], targets).loss
        return loss.detach(), torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)

    calls = _spy(monkeypatch)
    l_new, g_new = loss_and_grads()
    monkeypatch.setattr(head_mod, "fusable", lambda head, embed: False)  # the previous path
    l_old, g_old = loss_and_grads()
    assert calls == ["chunk_linear_cross_entropy", "chunked_nll"]
    assert l_new.dtype == torch.float64
    torch.testing.assert_close(l_new, l_old, rtol=1e-12, atol=0)
    for (name, _), a, b in zip(model.named_parameters(), g_new, g_old):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14, msg=name)
