"""MuseLM assembly: presets build, decoding equals full forward, the loss is chunked, params add up."""

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from muse import build_model, list_presets, load_config
from muse.config import ConfigError
from muse.memory.params import count_components, dense_equivalent


def _presets():
    """Every shipped preset; those of model.kind hf-gpt2 only where transformers is installed."""
    have_hf = importlib.util.find_spec("transformers") is not None
    skip = pytest.mark.skip(reason="model.kind hf-gpt2 needs transformers (pip install 'muse[hf]')")
    return [pytest.param(p, marks=() if have_hf or load_config(p).model.kind == "muse" else skip)
            for p in list_presets()]


def small(preset: str, **over):
    """The preset's kinds of parts at a CPU-sized shape."""
    base = {
        "model.vocab_size": 97, "model.d_model": 32, "model.n_layers": 2, "model.n_heads": 4,
        "model.max_seq_len": 40, "model.embedding.vocab_factors": None, "model.embedding.dim_factors": None,
    }
    if load_config(preset).model.attention_layers:  # a hybrid: its attention block, the last, kept
        base["model.attention_layers"] = [base["model.n_layers"] - 1]
    base.update(over)
    return load_config(preset, base)


@pytest.mark.parametrize("preset", _presets())
def test_preset_builds_on_meta(preset):
    cfg = load_config(preset)
    model = build_model(cfg, device="meta")
    assert model.num_params() == count_components(model)["total"]
    assert model.dense_equivalent_params() == dense_equivalent(cfg)["total"]


@pytest.mark.parametrize("preset", _presets())
def test_preset_small_variant_trains(preset):
    torch.manual_seed(0)
    model = build_model(small(preset))
    idx = torch.randint(0, 97, (2, 37))
    out = model(idx[:, :-1], idx[:, 1:])
    loss = out.loss + (out.aux_loss if out.aux_loss is not None else 0)
    assert torch.isfinite(loss)
    assert out.logits is None
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert math.isclose(out.loss.item(), math.log(97), rel_tol=0.25)  # near-uniform at init


def test_dense_baseline_actual_equals_dense_equivalent():
    cfg = load_config("baseline")
    model = build_model(cfg, device="meta")
    assert model.num_params() == model.dense_equivalent_params()
    # GPT-2 shape by hand: V·d + N·d + L(12d² + 13d) + 2d + V·d
    V, d, L, N = 10000, 512, 6, 512
    assert model.num_params() == V * d + N * d + L * (12 * d * d + 13 * d) + 2 * d + V * d == 29_417_472


@pytest.mark.parametrize(
    "preset, over",
    [
        ("tiny", {}),
        ("tiny", {"model.mixer.semiseparable.decay": "fixed", "model.mixer.semiseparable.band_width": 1}),
        ("tiny", {"model.mixer.semiseparable.gates": False, "model.mixer.semiseparable.uv_norm": "l2"}),
        ("baseline", {}),
        ("baseline", {"model.positions": "rope", "model.head.kind": "tied"}),
        ("ultra", {}),
        ("phase8-max-tt", {"model.n_heads": 2}),
        ("ultra", {"model.attention_layers": [1]}),  # hybrid: a semiseparable, then an attention layer
    ],
)
def test_step_decoding_equals_full_forward(preset, over):
    torch.manual_seed(0)
    model = build_model(small(preset, **over)).double().eval()
    idx = torch.randint(0, 97, (2, 23))
    full = model(idx).logits  # (B, N, V)
    state = model.init_state(2)
    for t in range(idx.size(1)):
        logits, state = model.step(idx[:, t], state)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-9, atol=1e-9)


def test_chunked_loss_matches_full_cross_entropy_and_grads():
    torch.manual_seed(0)
    cfg = small("baseline", **{"model.head.loss_chunk": 7})
    model = build_model(cfg).double()
    idx = torch.randint(0, 97, (3, 20))
    out = model(idx[:, :-1], idx[:, 1:], return_logits=True)
    ref = F.cross_entropy(out.logits.reshape(-1, 97), idx[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-6, atol=1e-6)
    g1 = torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)
    model.zero_grad()
    out2 = model(idx[:, :-1], return_logits=True)
    ref2 = F.cross_entropy(out2.logits.reshape(-1, 97), idx[:, 1:].reshape(-1))
    g2 = torch.autograd.grad(ref2, list(model.parameters()), allow_unused=True)
    for a, b in zip(g1, g2):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    cfg = small("tiny")
    model = build_model(cfg).double()
    idx = torch.randint(0, 97, (2, 17))
    loss = model(idx[:, :-1], idx[:, 1:]).loss
    g1 = torch.autograd.grad(loss, list(model.parameters()))
    model.cfg.checkpointing = True
    loss2 = model(idx[:, :-1], idx[:, 1:]).loss
    g2 = torch.autograd.grad(loss2, list(model.parameters()))
    torch.testing.assert_close(loss, loss2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_aux_loss_is_gate_penalty():
    torch.manual_seed(0)
    cfg = small("tiny", **{"model.mixer.semiseparable.gate_l1": 0.5})
    model = build_model(cfg)
    out = model(torch.randint(0, 97, (2, 9)))
    assert out.aux_loss is not None and 0 < out.aux_loss.item() < 0.5 * cfg.model.n_layers
    stats = model.mixer_stats()
    assert cfg.model.mixer.semiseparable.min_rank <= stats["effective_rank"] <= cfg.model.mixer.semiseparable.max_rank


def test_bad_token_ids_and_lengths():
    model = build_model(small("tiny"))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[1, 2, 97]]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="integer"):
        model(torch.zeros(1, 4))
    # a recurrent mixer without a position table has no context limit ...
    assert model.max_context is None and model(torch.zeros(1, 41, dtype=torch.long)).logits.shape[1] == 41
    # ... a learned position table (or a KV cache) does
    for preset, over in (("baseline", {}), ("baseline", {"model.positions": "rope"})):
        bounded = build_model(small(preset, **over))
        with pytest.raises(ValueError, match="max_seq_len"):
            bounded(torch.zeros(1, 41, dtype=torch.long))


def test_impossible_shape_names_field():
    with pytest.raises(ConfigError, match="n_heads"):
        small("tiny", **{"model.n_heads": 5})


def test_shared_norm_counts_once():
    cfg = small("ultimate")
    model = build_model(cfg)
    assert model.blocks[0].norm1 is model.blocks[1].norm1
    counts = count_components(model)
    assert counts["norms"] == 3 * 32  # two shared RMSNorms + the final one, weight only
    assert model.num_params() == counts["total"]


def test_attention_layers_make_a_hybrid():
    """model.attention_layers puts attention at those blocks whatever mixer.kind says; decoding then
    carries a KV cache for them (and the context is bounded), a recurrent state for the others."""
    from muse.mixers.attention import AttentionMixer
    from muse.mixers.semiseparable import SemiseparableMixer

    model = build_model(small("standard", **{"model.n_layers": 3, "model.attention_layers": [0, 2]}))
    assert [type(b.mixer) for b in model.blocks] == [AttentionMixer, SemiseparableMixer, AttentionMixer]
    assert model.max_context == 40  # a KV cache is sized by model.max_seq_len
    assert build_model(small("compact")).max_context is None  # all semiseparable: no KV cache


@pytest.mark.parametrize("over, needle", [
    ({"model.attention_layers": [2]}, r"distinct layer indices in \[-2, 2\)"),
    ({"model.attention_layers": [1, 1]}, "distinct layer indices"),
    ({"model.attention_layers": [-3]}, r"distinct layer indices in \[-2, 2\)"),
    ({"model.attention_layers": [1, -1]}, "distinct layer indices"),  # the same block twice
])
def test_attention_layers_are_checked(over, needle):
    with pytest.raises(ConfigError, match=needle):
        small("standard", **over)
    with pytest.raises(ConfigError, match="applies only when mixer.kind is not attention"):
        small("baseline", **{"model.attention_layers": [0]})
