"""HolographicMixer (DESIGN.md §1.5): shapes, implementations agree with gradients, decoding equals
the forward, the auxiliary loss trains the projections, the slot statistics, config errors."""

import math

import pytest
import torch

from muse import build_model
from muse.config import ConfigError, load_config
from muse.mixers import MIXERS, build_mixer
from muse.mixers.holographic import HolographicMixer, initial_decay_logits
from tests.mixers.test_prefill import check


def hcfg(d=24, lin=None, **over):
    base = {"model.d_model": d, "model.n_heads": 3, "model.n_layers": 2, "model.max_seq_len": 64,
            "model.mixer.kind": "holographic", "model.mixer.holographic.hcm_dim": 15,
            "model.mixer.holographic.num_slots": 5, "model.mixer.holographic.chunk_size": 8}
    if lin:
        base.update({"model.mixer.linear.kind": lin, "model.mixer.linear.rank": 4})
    base.update({f"model.mixer.holographic.{k}": v for k, v in over.items()})
    return load_config("tiny", base).model


def test_registered_and_shapes():
    assert MIXERS["holographic"] is HolographicMixer
    torch.manual_seed(0)
    mixer = build_mixer(hcfg(), 0)
    y, aux = mixer(torch.randn(3, 11, 24))
    assert y.shape == (3, 11, 24) and aux.shape == () and aux.item() > 0
    state = mixer.init_state(3, None, torch.float32)
    assert state["memory"].shape == (3, 5, 16) and state["memory"].dtype == torch.float32  # (B, S, 2F), F = 15 // 2 + 1
    with torch.no_grad():
        for t in range(4):  # the decoding state never grows
            _, state = mixer.step(torch.randn(3, 24), state, t)
            assert state["memory"].shape == (3, 5, 16)
    assert mixer.init_state(1, None, torch.bfloat16)["memory"].dtype == torch.float32


@pytest.mark.parametrize("N", [1, 13, 37])
@pytest.mark.parametrize(
    "lin, over",
    [(None, {}), ("lowrank", {"unitary": False, "out_norm": False}), ("tt", {"aux_weight": 0.0})],
)
def test_three_implementations_agree(N, lin, over):
    """Outputs, the auxiliary loss and the gradients of the input and of every parameter."""
    torch.manual_seed(0)
    mixer = build_mixer(hcfg(lin=lin, **over), 0).double()
    x = torch.randn(2, N, 24, dtype=torch.float64, requires_grad=True)
    cot = torch.randn(2, N, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for impl in ("quadratic", "chunked", "recurrent"):
        mixer.h.impl = impl
        y, aux = mixer(x)
        loss = (y * cot).sum() + (aux if aux is not None else 0)
        params = [x] + list(mixer.parameters())
        results.append((y.detach(), None if aux is None else aux.detach(), torch.autograd.grad(loss, params)))
    (y0, a0, g0) = results[0]
    assert N == 1 or all(g.abs().max() > 0 for g in g0)  # every parameter takes part (decays: from 2 tokens)
    for y, a, g in results[1:]:
        torch.testing.assert_close(y, y0, rtol=1e-10, atol=1e-10)
        if a0 is not None:
            torch.testing.assert_close(a, a0, rtol=1e-10, atol=1e-12)
        for ga, gb in zip(g, g0):
            torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lin, d, over", [(None, 24, {}), ("lowrank", 21, {"unitary": False}),
                                          ("tt", 24, {"out_norm": False, "hcm_dim": 16})])
def test_prefill_and_steps_equal_forward(lin, d, over, dtype):
    """prefill == step by step (from 0, in chunks that do not divide T, after decoded tokens), and
    both equal the training forward."""
    torch.manual_seed(0)
    mixer = build_mixer(hcfg(d=d, lin=lin, **over), 0)
    check(mixer, dtype, chunks=(10, 3))
    x = torch.randn(2, 29, d, dtype=dtype)
    with torch.no_grad():
        y, _ = mixer(x)
        state, ys = mixer.init_state(2, None, dtype), []
        for t in range(29):
            y_t, state = mixer.step(x[:, t], state, t)
            ys.append(y_t)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=3e-5)
    torch.testing.assert_close(torch.stack(ys, 1), y, **tol)


def test_mixer_is_causal():
    torch.manual_seed(0)
    mixer = build_mixer(hcfg(), 0).double()
    x = torch.randn(1, 20, 24, dtype=torch.float64)
    y, _ = mixer(x)
    x2 = x.clone()
    x2[:, 12:] += 1.0
    y2, _ = mixer(x2)
    torch.testing.assert_close(y2[:, :12], y[:, :12], rtol=0, atol=1e-12)
    assert (y2[:, 12:] - y[:, 12:]).abs().max() > 1e-3


def test_aux_loss_trains_the_projections():
    """The reconstruction loss reaches q/k/v and the slot write logits (k, v, α), not the read
    side (q, β, W_o), and is λ_aux · (1 − fidelity)."""
    torch.manual_seed(0)
    mixer = build_mixer(hcfg(aux_weight=0.3), 0)
    _, aux = mixer(torch.randn(2, 17, 24))
    assert aux.item() > 0
    fidelity = mixer.stats()["memory_fidelity"]
    assert math.isclose(aux.item(), 0.3 * (1 - fidelity), rel_tol=1e-5)
    W = mixer.in_proj.weight  # rows: q (15), k (15), v (15), write logits (5), read logits (5)
    gW, g_decay, g_out = torch.autograd.grad(aux, [W, mixer.decay_logit, mixer.o_proj.weight], allow_unused=True)
    rows = gW.abs().sum(1)
    assert rows[:15].max() == 0 and rows[45 + 5:].max() == 0  # query and read logits: no part in it
    assert (rows[15:45] > 0).all() and (rows[45:50] > 0).all()  # keys, values, write logits
    assert g_decay.abs().max() > 0 and g_out is None


def test_aux_weight_zero_measures_fidelity_in_evaluation_only():
    """Without the aux loss a training forward skips the recall read (nothing needs it); an
    evaluation forward (no grad, where `muse eval` reads stats()) still measures the fidelity,
    which is what the aux-loss ablation compares."""
    torch.manual_seed(0)
    mixer = build_mixer(hcfg(aux_weight=0.0), 0)
    x = torch.randn(2, 9, 24)
    y, aux = mixer(x)
    assert aux is None and mixer.stats() == {}
    with torch.no_grad():
        y_eval, aux = mixer(x)
    assert aux is None and 0 < mixer.stats()["memory_fidelity"] <= 1
    torch.testing.assert_close(y_eval, y.detach())


def test_single_token_is_recalled_exactly():
    """One written token, unbound with its own unit-modulus key: fidelity 1 (exact unbinding);
    plain HRR keys (unitary off) recall it only approximately."""
    torch.manual_seed(0)
    mixer = build_mixer(hcfg(), 0).double()
    mixer(torch.randn(4, 1, 24, dtype=torch.float64))
    assert mixer.stats()["memory_fidelity"] == pytest.approx(1.0, abs=1e-12)
    mixer = build_mixer(hcfg(unitary=False), 0).double()
    mixer(torch.randn(4, 1, 24, dtype=torch.float64))
    assert mixer.stats()["memory_fidelity"] < 0.99


def test_slot_statistics():
    torch.manual_seed(0)
    mixer = build_mixer(hcfg(num_slots=8), 0)
    assert mixer.stats() == {}  # nothing before a forward
    mixer(torch.randn(2, 10, 24))
    s = mixer.stats()
    # near-uniform write weights at initialisation: every slot used, ~S effective slots
    assert s["slot_utilisation"] == 1.0 and 7.9 < s["effective_slots"] <= 8.0
    with torch.no_grad():  # every token writes to slot 2 only
        mixer.in_proj.bias[45 : 45 + 8] = torch.tensor([0.0, 0, 50, 0, 0, 0, 0, 0])
        mixer.in_proj.weight[45 : 45 + 8] = 0
    mixer(torch.randn(2, 10, 24))
    s = mixer.stats()
    assert s["slot_utilisation"] == 1 / 8 and s["effective_slots"] == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():  # two slots share the writes 3:1: both hold >= 1/(4S) of the mass
        mixer.in_proj.bias[45 : 45 + 8] = torch.tensor([50 + math.log(3), 50, 0, 0, 0, 0, 0, 0])
    mixer(torch.randn(2, 10, 24))
    s = mixer.stats()
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)
    assert s["slot_utilisation"] == 2 / 8
    assert s["effective_slots"] == pytest.approx(torch.exp(-(p * p.log()).sum()).item(), rel=1e-5)


def test_model_reports_mixer_stats():
    torch.manual_seed(0)
    cfg = load_config("tiny", {"model.mixer.kind": "holographic", "model.mixer.holographic.hcm_dim": 16,
                               "model.mixer.holographic.num_slots": 4, "model.d_model": 32, "model.n_layers": 2,
                               "model.vocab_size": 64, "model.embedding.kind": "dense",
                               "model.embedding.vocab_factors": None, "model.embedding.dim_factors": None})
    model = build_model(cfg)
    out = model(torch.randint(0, 64, (2, 12)), torch.randint(0, 64, (2, 12)))
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    assert set(model.mixer_stats()) == {"memory_fidelity", "slot_utilisation", "effective_slots"}


def test_decays_initialised_log_spaced_and_stay_in_unit_interval():
    gamma = initial_decay_logits(5, 0.5, 0.9999).double().sigmoid()
    forget = (1 - gamma).log10()
    torch.testing.assert_close(forget, torch.linspace(math.log10(0.5), -4, 5, dtype=torch.float64), rtol=0, atol=1e-5)
    assert initial_decay_logits(1, 0.9, 0.99).sigmoid().item() == pytest.approx(0.9)
    torch.manual_seed(0)
    mixer = build_mixer(hcfg(), 0)
    with torch.no_grad():
        mixer.decay_logit.copy_(torch.tensor([-1e4, -5.0, 0.0, 5.0, 1e4]))
    y, aux = mixer(torch.randn(1, 20, 24))  # γ ≈ 0 and γ ≈ 1 are both finite
    assert torch.isfinite(y).all() and torch.isfinite(aux)


def test_bf16_autocast_forward_is_close_to_fp32():
    torch.manual_seed(0)
    mixer = build_mixer(hcfg(), 0)
    x = torch.randn(2, 19, 24)
    y32, _ = mixer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, aux = mixer(x)
    assert y16.dtype == torch.bfloat16 and torch.isfinite(aux)
    assert ((y16.float() - y32).norm() / y32.norm()).item() < 3e-2


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("hcm_dim", 0, "mixer.holographic.hcm_dim"),
        ("num_slots", -2, "mixer.holographic.num_slots"),
        ("decay_min", 0.0, "mixer.holographic.decay_min must lie in"),
        ("decay_max", 1.0, "mixer.holographic.decay_max must lie in"),
        ("aux_weight", -0.1, "mixer.holographic.aux_weight"),
        ("impl", "fast", "mixer.holographic.impl"),
        ("chunk_size", 0, "mixer.holographic.chunk_size"),
        ("unitary", "yes", "mixer.holographic.unitary"),
        ("slots", 4, "model.mixer.holographic.slots"),
    ],
)
def test_config_errors_name_the_field(key, value, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config("tiny", {"model.mixer.kind": "holographic", f"model.mixer.holographic.{key}": value})


def test_decay_range_order_is_checked():
    with pytest.raises(ConfigError, match=r"mixer\.holographic\.decay_min \(0\.9\) must be <= mixer\.holographic\.decay_max"):
        load_config("tiny", {"model.mixer.holographic.decay_min": 0.9, "model.mixer.holographic.decay_max": 0.5})


def test_pure_bf16_build():
    """build_model(dtype=bf16) (train.precision bf16-pure): every parameter bf16, the memory fp32."""
    cfg = load_config("tiny", {"model.mixer.kind": "holographic", "model.mixer.holographic.hcm_dim": 16,
                               "model.mixer.holographic.num_slots": 4, "model.d_model": 32, "model.n_layers": 1,
                               "model.vocab_size": 64, "model.embedding.kind": "dense",
                               "model.embedding.vocab_factors": None, "model.embedding.dim_factors": None})
    model = build_model(cfg, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    out = model(torch.randint(0, 64, (2, 9)), torch.randint(0, 64, (2, 9)))
    assert torch.isfinite(out.loss) and torch.isfinite(out.aux_loss)
    assert model.init_state(2)["layers"][0]["memory"].dtype == torch.float32
