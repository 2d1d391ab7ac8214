"""SemiseparableMixer: the quadratic, chunked and recurrent implementations agree in float64."""

import pytest
import torch

from muse.config import load_config
from muse.mixers import MIXERS, build_mixer
from muse.ops.semiseparable import causal_band, causal_band_matrix


def mixer_cfg(**over):
    base = {"model.d_model": 24, "model.n_heads": 3, "model.n_layers": 2, "model.max_seq_len": 300}
    base.update({f"model.mixer.semiseparable.{k}": v for k, v in over.items()})
    return load_config("tiny", base).model


def run(mixer, x, impl):
    mixer.s.impl = impl
    y, aux = mixer(x)
    return y, aux


@pytest.mark.parametrize("N", [1, 5, 16, 37])
@pytest.mark.parametrize(
    "over",
    [
        {},
        {"decay": "none"},
        {"decay": "fixed", "gates": False},
        {"decay": "data", "band_width": 0, "uv_norm": "l2"},
        {"band_width": 5, "min_rank": 0, "max_rank": 3},
    ],
)
def test_three_implementations_agree(N, over):
    torch.manual_seed(0)
    cfg = mixer_cfg(chunk_size=8, **over)
    mixer = build_mixer(cfg, 0).double()
    x = torch.randn(2, N, 24, dtype=torch.float64, requires_grad=True)
    ys, grads = [], []
    for impl in ("quadratic", "chunked", "recurrent"):
        y, aux = run(mixer, x, impl)
        loss = (y * torch.randn_like(y, generator=torch.Generator().manual_seed(1))).sum()
        if aux is not None:
            loss = loss + aux
        params = [x] + list(mixer.parameters())
        ys.append(y.detach())
        grads.append(torch.autograd.grad(loss, params))
    for other_y, other_g in zip(ys[1:], grads[1:]):
        torch.testing.assert_close(other_y, ys[0], rtol=1e-10, atol=1e-10)
        for a, b in zip(other_g, grads[0]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_step_matches_forward():
    torch.manual_seed(0)
    mixer = build_mixer(mixer_cfg(band_width=4), 0).double().eval()
    x = torch.randn(2, 13, 24, dtype=torch.float64)
    y, _ = mixer(x)
    state = mixer.init_state(2, x.device, x.dtype)
    for t in range(13):
        y_t, state = mixer.step(x[:, t], state, t)
        torch.testing.assert_close(y_t, y[:, t], rtol=1e-10, atol=1e-10)
    assert state["S"].shape == (2, 3, 16, 8)  # (B, H, r, p): constant in context length


def test_band_conv_equals_band_matrix():
    torch.manual_seed(0)
    z, w = torch.randn(2, 11, 2, 3, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    torch.testing.assert_close(causal_band(z, w), causal_band_matrix(z, w))
    # causal: changing the future never changes the past
    z2 = z.clone()
    z2[:, 7:] += 1
    torch.testing.assert_close(causal_band(z2, w)[:, :7], causal_band(z, w)[:, :7])


def test_mixer_is_causal():
    torch.manual_seed(0)
    mixer = build_mixer(mixer_cfg(), 0).double()
    x = torch.randn(1, 20, 24, dtype=torch.float64)
    y, _ = mixer(x)
    x2 = x.clone()
    x2[:, 12:] = torch.randn(1, 8, 24, dtype=torch.float64)
    y2, _ = mixer(x2)
    torch.testing.assert_close(y2[:, :12], y[:, :12])
    assert not torch.allclose(y2[:, 12:], y[:, 12:])


def test_parameter_count_by_hand():
    cfg = mixer_cfg(max_rank=4, min_rank=1, band_width=3, decay="data")
    mixer = build_mixer(cfg, 0)
    d, H, r = 24, 3, 4
    dense = lambda i, o: i * o + o
    expected = (
        dense(d, d)  # W_z
        + 2 * dense(d, H * r)  # W_u, W_v
        + dense(d, H * (r - 1))  # W_g (the first min_rank gates are fixed open)
        + dense(d, H)  # data-dependent log-decay
        + d * 3  # causal band taps
        + d  # per-head norm weight
        + dense(d, d)  # W_o
    )
    assert sum(p.numel() for p in mixer.parameters()) == expected


def test_identity_projections_and_registry():
    cfg = mixer_cfg(value_proj="identity", out_proj="identity", gates=False, decay="none", band_width=0,
                    head_norm=False)
    mixer = build_mixer(cfg, 0)
    assert sum(p.numel() for p in mixer.parameters()) == 2 * (24 * 3 * 16 + 3 * 16)
    assert {"attention", "semiseparable"} <= set(MIXERS)
