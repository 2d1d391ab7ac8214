"""The sequence-chunked FFN (ffn.token_chunk): same outputs and gradients, smaller peak."""

from __future__ import annotations

import pytest
import torch

from muse.config import FFNConfig, load_config
from muse.layers.ffn import FFN
from muse.memory.profile import StepPlan, estimate


def _pair(kind: str, activation: str, chunk: int, dtype=torch.float64):
    torch.manual_seed(0)
    rank = 3 if kind != "dense" else 0
    whole = FFN(12, FFNConfig(kind=kind, activation=activation, rank=rank, mult=2.5)).to(dtype)
    chunked = FFN(12, FFNConfig(kind=kind, activation=activation, rank=rank, mult=2.5, token_chunk=chunk)).to(dtype)
    chunked.load_state_dict(whole.state_dict())
    return whole, chunked


@pytest.mark.parametrize("kind", ["dense", "lowrank", "tt"])
@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
@pytest.mark.parametrize("chunk", [1, 7, 32])
def test_chunked_ffn_matches_whole(kind, activation, chunk):
    whole, chunked = _pair(kind, activation, chunk)
    x = torch.randn(3, 11, 12, dtype=torch.float64, requires_grad=True)  # T = 33: a ragged last chunk
    g = torch.randn(3, 11, 12, dtype=torch.float64)
    ys = []
    for m in (whole, chunked):
        x.grad = None
        y = m(x)
        (y * g).sum().backward()
        ys.append((y.detach(), x.grad.clone(), [p.grad.clone() for p in m.parameters()]))
    (y0, dx0, dp0), (y1, dx1, dp1) = ys
    torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx1, dx0, rtol=1e-12, atol=1e-12)
    assert len(dp0) == len(dp1) > 0
    for a, b in zip(dp0, dp1):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the inference path chunks without checkpoints
        torch.testing.assert_close(chunked(x), y0, rtol=1e-12, atol=1e-12)


def test_chunked_ffn_inside_checkpointed_model():
    """Nested in the blocks' activation checkpoints, loss and every gradient are unchanged."""
    grads = []
    for chunk in (0, 5):
        cfg = load_config("tiny", {"model.ffn.token_chunk": chunk, "model.checkpointing": True,
                                   "model.max_seq_len": 16})
        from muse.model import build_model

        torch.manual_seed(0)
        model = build_model(cfg).double().train()
        idx = torch.randint(0, cfg.model.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1))
        out = model(idx[:, :-1], idx[:, 1:])
        out.loss.backward()
        grads.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = grads
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=0)
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-10, atol=1e-12, msg=n)


def test_token_chunk_lowers_the_estimated_peak():
    """Low-rank FFN with checkpointing: the (T, 4d) hidden activations set the backward peak;
    chunking them must lower the estimated activations by at least half of the 3 saved ones."""
    plan = StepPlan(batch=2, seq=512, precision="bf16-pure", optimizer="adamw8bit", mode="fwdbwd")
    base = {"model.n_layers": 2, "model.ffn.impl": "torch"}  # the unfused FFN, which stores them
    whole = estimate(load_config("ultra", {**base, "model.ffn.token_chunk": 0}), plan)
    chunked = estimate(load_config("ultra", {**base, "model.ffn.token_chunk": 128}), plan)
    hidden = 2 * 512 * 2048 * 2  # one (T, 4d) bf16 tensor
    assert chunked["activations"] <= whole["activations"] - 1.5 * hidden, (whole["activations"], chunked["activations"])
    # the fused kernel (the GPU step the estimate models) stores none of them: below the chunked
    # torch FFN, and token_chunk is not applied there (the same estimate with and without it)
    fused = {**base, "model.ffn.impl": "triton"}
    fused_whole = estimate(load_config("ultra", {**fused, "model.ffn.token_chunk": 0}), plan)
    fused_chunked = estimate(load_config("ultra", {**fused, "model.ffn.token_chunk": 128}), plan)
    assert fused_whole["activations"] < chunked["activations"], (fused_whole["activations"], chunked["activations"])
    assert fused_chunked["activations"] == fused_whole["activations"]
