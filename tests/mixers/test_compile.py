"""torch.compile traces the Triton path in one graph: the kernels are opaque torch.ops.muse.* nodes.

``fullgraph=True`` fails on any graph break (before the ops were registered, dynamo broke the
graph on the Triton autotuner's Python in every layer); the compile counter confirms a single
graph. The "aot_eager" backend runs AOTAutograd (forward and backward graphs, the ops' fake
implementations while tracing) and then the real kernels, here on Triton's CPU interpreter,
so outputs and gradients must match eager mode in fp32.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing

from muse.config import load_config
from muse.mixers import build_mixer
from muse.model import MuseLM
from muse.ops.semiseparable.triton_chunk import HAS_TRITON, triton_supports

pytestmark = pytest.mark.skipif(
    not (HAS_TRITON and triton_supports(torch.zeros(1, device="cuda" if torch.cuda.is_available() else "cpu"))),
    reason="needs Triton on CUDA or its CPU interpreter",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MUSE_OPS = {f"muse.{n}_{d}.default" for n in ("semiseparable", "gate_inputs", "rms_norm") for d in ("fwd", "bwd")}


def _compiled(module):
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    return torch.compile(module, backend=counter, fullgraph=True), counter


def _targets(gm: torch.fx.GraphModule) -> set[str]:
    """Call targets in a dynamo graph and its nested subgraphs (autograd.Function fwd / bwd)."""
    return {str(n.target) for m in gm.modules() if isinstance(m, torch.fx.GraphModule) for n in m.graph.nodes}


def _grads(loss, params):
    return torch.autograd.grad(loss, params)


def _assert_close(eager, compiled, what):
    for i, (a, b) in enumerate(zip(eager, compiled)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what}[{i}]: {m}")


def _compile_model(preset: str, over: dict):
    """Eager and fullgraph-compiled loss + gradients of a small model; the model, the compiled
    one, the compile counter, the inputs and the eager run's mixer stats."""
    torch.manual_seed(0)
    model = MuseLM(load_config(preset, over).model).to(DEVICE)
    idx, tgt = (torch.randint(0, 64, (2, 21), device=DEVICE) for _ in range(2))
    params = list(model.parameters())

    def step(m):
        out = m(idx, tgt)
        return [out.loss.detach(), *_grads(out.loss + out.aux_loss, params)]

    eager = step(model)
    stats = model.mixer_stats()
    for b in model.blocks:
        b.mixer._last = {}  # what the compiled run records (nothing, see stats()) shows afterwards
    cm, counter = _compiled(model)
    compiled = step(cm)
    assert counter.frame_count == 1
    _assert_close(eager, compiled, "loss, grads")
    return model, cm, counter, (idx, tgt), stats


def test_mixer_compiles_to_one_graph():
    """SemiseparableMixer on the fused gating, scan and head-norm kernels (all six ops)."""
    over = {"model.d_model": 24, "model.n_heads": 3, "model.n_layers": 2, "model.max_seq_len": 64}
    over.update({f"model.mixer.semiseparable.{k}": v for k, v in
                 dict(impl="triton", chunk_size=16, decay="data", band_width=3, head_norm=True, gates=True).items()})
    torch.manual_seed(0)
    mixer = build_mixer(load_config("tiny", over).model, 0).to(DEVICE)
    mixer._op_impl = "triton"  # the gating and norm kernels too ("auto" keeps torch off CUDA)
    x = torch.randn(2, 37, 24, device=DEVICE, requires_grad=True)  # N = 37: a partial last chunk
    w = torch.randn(2, 37, 24, device=DEVICE)
    params = [x, *mixer.parameters()]

    def step(m):
        y, aux = m(x)
        return y.detach(), _grads((y * w).sum() + aux, params)

    y0, g0 = step(mixer)
    cm, counter = _compiled(mixer)
    y1, g1 = step(cm)
    assert counter.frame_count == 1
    assert MUSE_OPS <= _targets(counter.graphs[0])
    _assert_close([y0, *g0], [y1, *g1], "mixer output, grads")


def test_tiny_model_compiles_to_one_graph():
    """The whole tiny model (TT embedding on the fused gather, semiseparable mixer on the scan
    kernels, tied TT head) with its loss; and the traceable token-id check."""
    over = {
        "model.vocab_size": 64, "model.d_model": 24, "model.n_heads": 3, "model.n_layers": 1, "model.max_seq_len": 64,
        "model.embedding.rank": 4, "model.embedding.gather_impl": "triton",
        "model.mixer.semiseparable.impl": "triton", "model.mixer.semiseparable.chunk_size": 16,
    }
    model, cm, counter, (idx, tgt), _ = _compile_model("tiny", over)
    assert {"muse.semiseparable_fwd.default", "muse.tt_gather_fwd.default", "muse.tt_gather_bwd.default"} <= _targets(
        counter.graphs[0]
    )
    if DEVICE == "cuda":
        return  # the check is a device-side assert there: it would poison the CUDA context of every later test
    bad = idx.clone()
    bad[1, 3] = 64
    with pytest.raises(RuntimeError, match=r"token ids must lie in the vocabulary \[0, 64\)"):
        cm(bad, tgt)
    assert counter.frame_count == 1  # the same graph: the check runs inside it
    with pytest.raises(ValueError, match=r"token id 64 is outside the vocabulary \[0, 64\)"):
        model(bad, tgt)  # eager: unchanged


def test_checkpointed_compact_model_compiles_to_one_graph():
    """`compact`'s layout (TT embedding, gated semiseparable mixer, low-rank FFN, low-rank head
    on the fused cross-entropy) with activation checkpointing: one graph. The gate statistics
    are not recorded under compile (a module attribute set inside a checkpointed block would
    break the graph at every block), so stats() reports none rather than a stale figure."""
    over = {
        "model.vocab_size": 64, "model.d_model": 24, "model.n_heads": 3, "model.n_layers": 2, "model.max_seq_len": 64,
        "model.embedding.rank": 4, "model.embedding.gather_impl": "triton", "model.head.rank": 8,
        "model.head.loss_impl": "fused", "model.ffn.rank": 8, "model.checkpointing": True,
        "model.mixer.semiseparable.impl": "triton", "model.mixer.semiseparable.chunk_size": 16,
        "model.mixer.semiseparable.max_rank": 8, "model.mixer.semiseparable.min_rank": 2,
    }
    model, _, counter, _, stats = _compile_model("compact", over)
    assert "gate_mean" in stats
    assert {"muse.linear_ce_fwd.default", "muse.semiseparable_fwd.default", "muse.tt_gather_fwd.default"} <= _targets(
        counter.graphs[0]
    )
    assert model.mixer_stats() == {}
