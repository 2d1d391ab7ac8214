"""The estimate models the GPU's mixer: "auto" resolves to the Triton ops on its fake tensors.

``estimate`` runs the step on fake CPU tensors under ``muse.ops.assume_cuda()``: the scan,
gating and head-norm ops then run their fake implementations (outputs only, what the kernels
keep) instead of the CPU's torch paths with their saved intermediates.
"""

from __future__ import annotations

import pytest

import muse
from muse.memory.profile import StepPlan, estimate
from muse.ops.gates import triton_kernel as gk
from muse.ops.rmsnorm import triton_kernel as rk
from muse.ops.semiseparable import triton_scan as ts

LAYERS = 2


def _cfg(impl: str, checkpointing: bool = False):
    return muse.load_config("tiny", {
        "model.vocab_size": 512, "model.d_model": 64, "model.n_layers": LAYERS, "model.n_heads": 4,
        "model.max_seq_len": 128, "model.mixer.semiseparable.impl": impl,
        "model.mixer.semiseparable.head_norm": True, "model.checkpointing": checkpointing,
    })


@pytest.fixture
def op_calls(monkeypatch):
    """Calls of each op the autograd.Functions make (they look the ops up at call time)."""
    calls: dict[str, int] = {}
    for mod in (ts, gk, rk):
        for attr in ("_fwd_op", "_bwd_op"):
            real, key = getattr(mod, attr), f"{mod.__name__.split('.')[-2]}{attr}"

            def spy(*a, _real=real, _key=key):
                calls[_key] = calls.get(_key, 0) + 1
                return _real(*a)

            monkeypatch.setattr(mod, attr, spy)
    return calls


@pytest.mark.parametrize("precision", ["fp32", "bf16-pure"])
def test_estimate_takes_the_triton_mixer_path(op_calls, precision):
    plan = StepPlan(batch=2, seq=100, precision=precision)
    auto = estimate(_cfg("auto"), plan)
    # one forward and one backward per layer, of each op, on fake tensors
    assert op_calls == {f"{m}{d}": LAYERS for m in ("semiseparable", "gates", "rmsnorm") for d in ("_fwd_op", "_bwd_op")}
    op_calls.clear()
    chunked = estimate(_cfg("chunked"), plan)
    assert not op_calls  # the torch scan (and torch gating / norm with it)
    # the kernels keep their inputs only; the torch scan saves its chunked intermediates
    assert auto["activations"] < chunked["activations"]
    assert estimate(_cfg("triton"), plan)["activations"] == auto["activations"]
    # the result names what ran: the ops' "auto" resolved as on a GPU, the CPU's paths when forced
    assert auto["paths"]["semiseparable"] == auto["paths"]["gate_inputs"] == auto["paths"]["rms_norm"] == ["triton"]
    assert chunked["paths"]["semiseparable"] == ["chunked"]
    assert {k: auto[k] for k in ("parameters", "gradients", "optimizer_state")} == {
        k: chunked[k] for k in ("parameters", "gradients", "optimizer_state")
    }


def test_estimate_with_checkpointing_recomputes_on_the_ops(op_calls):
    estimate(_cfg("auto", checkpointing=True), StepPlan(batch=1, seq=64, precision="bf16-pure"))
    # each block's forward runs twice (once more while recomputing for its backward)
    assert op_calls["semiseparable_fwd_op"] == 2 * LAYERS and op_calls["semiseparable_bwd_op"] == LAYERS


def test_estimate_models_the_forced_tt_gather(monkeypatch):
    """embedding.gather_impl "triton": the fused gather's ops (only the (L, d) rows, no per-id
    table); "auto" keeps the torch path, as on a GPU until the kernel is validated there."""
    from muse.ops.tt_gather import triton_kernel as tk

    calls = []
    real = tk._fwd_op
    monkeypatch.setattr(tk, "_fwd_op", lambda *a: calls.append(1) or real(*a))
    plan = StepPlan(batch=2, seq=64)
    fused = estimate(muse.load_config("tiny", {"model.embedding.gather_impl": "triton"}), plan)
    assert calls
    calls.clear()
    torch_path = estimate(muse.load_config("tiny", {"model.embedding.gather_impl": "torch"}), plan)
    assert not calls and fused["activations"] < torch_path["activations"]
