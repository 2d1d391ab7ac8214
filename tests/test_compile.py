"""Every shipped preset compiles to one graph on the path a GPU takes.

A graph break splits a compiled step into several graphs (and CUDA graphs) with host work in
between: on an H100 one ``is_fake`` call in the TT gather's dispatch split the compiled
``standard`` forward into six graphs and left the GPU idle ~1.6 ms of a 10 ms step, while
``baseline`` compiled to one. On CPU the ops' "auto" dispatch is made to take its CUDA branch
(``assumes_cuda`` → True; the Triton kernels run on the CPU interpreter, TRITON_INTERPRET=1
from conftest.py); on a GPU the model runs there as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from muse.config import load_config
from muse.model import build_model
from muse.ops.semiseparable.triton_chunk import HAS_TRITON

PRESETS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
SMALL = {"model.n_layers": 1, "model.d_model": 64, "model.n_heads": 4, "model.vocab_size": 512,
         "model.max_seq_len": 32, "train.seq_len": 32, "model.checkpointing": False}
ON_GPU = torch.cuda.is_available()


@pytest.fixture
def gpu_dispatch(monkeypatch):
    """On CPU: every MUSE module's ``assumes_cuda`` says yes and ``interpreting`` no, so "auto"
    resolves as on a GPU."""
    if ON_GPU:
        return
    for name, mod in list(sys.modules.items()):
        if name.startswith("muse.") and mod is not None:
            if hasattr(mod, "assumes_cuda"):
                monkeypatch.setattr(mod, "assumes_cuda", lambda t: True)
            if hasattr(mod, "interpreting"):
                monkeypatch.setattr(mod, "interpreting", lambda: False)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (the GPU path runs its kernels)")
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_compiles_to_one_graph(gpu_dispatch, preset):
    hybrid = {"model.n_layers": 2, "model.attention_layers": [1]} if load_config(preset).model.attention_layers else {}
    cfg = load_config(preset, {**SMALL, **hybrid})  # a hybrid keeps one block of each mixer
    device = torch.device("cuda" if ON_GPU else "cpu")
    model = build_model(cfg, device=device)
    idx = torch.randint(0, cfg.model.vocab_size, (1, 33), device=device)
    torch._dynamo.reset()
    ex = torch._dynamo.explain(model)(idx[:, :-1], idx[:, 1:])
    breaks = [f"{b.reason.splitlines()[0]} at {b.user_stack[-1].filename}:{b.user_stack[-1].lineno}"
              for b in ex.break_reasons if b.user_stack]
    assert ex.graph_break_count == 0 and ex.graph_count == 1, breaks


def test_compile_model_keeps_the_mode_and_turns_padding_off(monkeypatch):
    """``muse.runtime.compile_model``: the mode's own Inductor options plus MUSE's (padding off:
    a padded fused-projection output costs cuBLASLt its bias epilogue), as one options dict."""
    import torch._inductor as inductor

    from muse import runtime

    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: seen.append(kw) or model)
    for mode in (None, "default", "reduce-overhead", "max-autotune"):
        runtime.compile_model(torch.nn.Linear(2, 2), mode)
        assert set(seen[-1]) == {"options"}
        assert seen[-1]["options"] == {**inductor.list_mode_options(mode), "comprehensive_padding": False}
    assert seen[2]["options"]["triton.cudagraphs"] is True


@pytest.mark.parametrize("preset", ["baseline", "compact"])
def test_recording_the_kernel_paths_does_not_recompile(preset):
    """A captured step's last warm-up step records which kernels MUSE's ops run
    (``muse.ops.record_paths``); a compiled model must not guard on that recording, or that step
    recompiles every graph that notes a path (it did, on ``_dispatch._paths``)."""
    from muse.ops import record_paths

    cfg = load_config(preset, {**SMALL, "model.embedding.vocab_factors": None, "model.embedding.dim_factors": None})
    model = build_model(cfg)
    idx = torch.randint(0, cfg.model.vocab_size, (2, 33))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")  # dynamo's guards without Inductor's compile time
    compiled(idx[:, :-1], idx[:, 1:]).loss.backward()
    with torch._dynamo.config.patch(error_on_recompile=True):
        with record_paths():
            compiled(idx[:, :-1], idx[:, 1:]).loss.backward()
        compiled(idx[:, :-1], idx[:, 1:]).loss.backward()
    torch._dynamo.reset()


def test_the_captured_batch_runs_the_warm_up_graphs():
    """The capture copies its batch into static buffers and runs the step once on them: the
    compiled graphs of the warm-up must serve it, since compiling inside a capture aborts it.
    ``clone()`` made the views ``ids[:, :-1]`` / ``ids[:, 1:]`` (``muse memory`` and the
    throughput benchmark pass these) contiguous, the guards on their strides failed, and every
    compiled-and-captured step failed on the GPU; ``static_copy`` keeps the layout."""
    from muse.train.graph import static_copy

    cfg = load_config("baseline", SMALL)
    model = build_model(cfg)
    idx = torch.randint(0, cfg.model.vocab_size, (1, 2, 33))
    batch = idx[:, :, :-1], idx[:, :, 1:]  # (1, B, N) views, as muse.memory.profile.plan_step makes them
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    compiled(batch[0][0], batch[1][0]).loss.backward()
    static = tuple(static_copy(t) for t in batch)
    for s, t in zip(static, batch, strict=True):
        assert (s.shape, s.stride(), s.storage_offset()) == (t.shape, t.stride(), t.storage_offset())
        assert torch.equal(s, t) and s.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled(static[0][0], static[1][0]).loss.backward()
    torch._dynamo.reset()
    with pytest.raises(Exception, match="[Rr]ecompil"):  # what clone() did
        compiled(batch[0][0], batch[1][0]).loss.backward()
        with torch._dynamo.config.patch(error_on_recompile=True):
            compiled(batch[0][0].clone(), batch[1][0].clone()).loss.backward()
    torch._dynamo.reset()


@pytest.mark.parametrize("shape, view", [((5, 7), lambda t: t), ((3, 9), lambda t: t[:, 2:]),
                                         ((4, 6), lambda t: t.t()), ((0, 3), lambda t: t), ((2, 3, 5), lambda t: t[1:, :, ::2])])
def test_static_copy_keeps_the_layout(shape, view):
    from muse.train.graph import static_copy

    t = view(torch.randn(shape, dtype=torch.float64))
    s = static_copy(t)
    assert (s.shape, s.stride(), s.storage_offset(), s.dtype) == (t.shape, t.stride(), t.storage_offset(), t.dtype)
    assert torch.equal(s, t)
