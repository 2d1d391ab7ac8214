"""Mixer.prefill: one parallel pass equals T calls of step, in outputs and in every state tensor.

Float64 to 1e-10 (the two forms differ only by summation order); float32 to 2e-5 relative,
3e-5 absolute (the chunked scan against the recurrence over ~40 positions).
"""

import pytest
import torch

from muse.config import load_config
from muse.mixers import MIXERS, Mixer, build_mixer

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=3e-5)}


def ss_cfg(d=24, H=3, lin=None, **over):
    base = {"model.d_model": d, "model.n_heads": H, "model.n_layers": 2, "model.max_seq_len": 64}
    if lin:
        base.update({"model.mixer.linear.kind": lin, "model.mixer.linear.rank": 4})
    base.update({f"model.mixer.semiseparable.{k}": v for k, v in over.items()})
    return load_config("tiny", base).model


def attn_cfg(d=24, H=3, positions="learned", lin=None):
    base = {"model.d_model": d, "model.n_heads": H, "model.n_layers": 2, "model.max_seq_len": 64,
            "model.positions": positions}
    if lin:
        base.update({"model.mixer.linear.kind": lin, "model.mixer.linear.rank": 4})
    return load_config("baseline", base).model


def stepwise(mixer, x, state, pos):
    """The reference: x (B, T, d) one position at a time."""
    ys = []
    for t in range(x.size(1)):
        y, state = mixer.step(x[:, t], state, pos + t)
        ys.append(y)
    return torch.stack(ys, 1), state


def assert_states_close(a: dict, b: dict, **tol):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m: f"state {k!r}: {m}")


def check(mixer, dtype, T=37, B=2, chunks=(10,), warm=5, seed=0, device="cpu", tol=None):
    """Prefill equals stepwise: from position 0, chunked, and after ``warm`` decoded steps."""
    mixer = mixer.to(device=device, dtype=dtype).eval()
    d = mixer.cfg.d_model
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, d, generator=g, dtype=dtype).to(device)
    tol = tol or TOL[dtype]
    init = lambda: mixer.init_state(B, device, dtype)  # noqa: E731
    with torch.no_grad():
        ref_y, ref_s = stepwise(mixer, x, init(), 0)
        # one pass from position 0
        y, s = mixer.prefill(x, init(), 0)
        torch.testing.assert_close(y, ref_y, **tol)
        assert_states_close(s, ref_s, **tol)
        # in chunks that do not divide T (a chunk may be shorter than the band)
        for c in chunks:
            s, ys, pos = init(), [], 0
            for xc in x.split(c, dim=1):
                yc, s = mixer.prefill(xc, s, pos)
                ys.append(yc)
                pos += xc.size(1)
            torch.testing.assert_close(torch.cat(ys, 1), ref_y, **tol)
            assert_states_close(s, ref_s, **tol)
        # from a state reached by decoding `warm` tokens
        _, s = stepwise(mixer, x[:, :warm], init(), 0)
        y, s = mixer.prefill(x[:, warm:], s, warm)
        torch.testing.assert_close(y, ref_y[:, warm:], **tol)
        assert_states_close(s, ref_s, **tol)


@pytest.mark.parametrize("gates", [True, False])
@pytest.mark.parametrize("band_width", [0, 1, 3, 4])
@pytest.mark.parametrize("decay", ["none", "fixed", "data"])
def test_semiseparable_prefill_equals_steps(decay, band_width, gates):
    torch.manual_seed(0)
    mixer = build_mixer(ss_cfg(decay=decay, band_width=band_width, gates=gates, chunk_size=8, max_rank=5,
                               min_rank=2), 0)
    check(mixer, torch.float64, chunks=(10, 2))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "lin, d, H, over",
    [
        (None, 15, 3, {}),  # head dim 5
        ("lowrank", 21, 3, {"band_width": 4}),  # head dim 7
        ("tt", 24, 4, {"uv_norm": "l2", "value_proj": "identity", "head_norm": False}),
    ],
)
def test_semiseparable_prefill_kinds_and_dtypes(lin, d, H, over, dtype):
    torch.manual_seed(0)
    mixer = build_mixer(ss_cfg(d=d, H=H, lin=lin, chunk_size=16, **over), 0)
    check(mixer, dtype, chunks=(9,))


@pytest.mark.parametrize("T", [37, 2])
def test_semiseparable_prompt_shorter_than_band(T):
    """T = 2 < w − 1 = 3: the new conv state keeps z's from before the prompt."""
    torch.manual_seed(0)
    mixer = build_mixer(ss_cfg(band_width=4), 0)
    check(mixer, torch.float64, T=T, chunks=(1, 2), warm=1)


def test_semiseparable_prefill_on_triton_kernels():
    """impl=triton, the kernels taking the initial state: compiled on a GPU (tf32 dots: 5e-3),
    else on Triton's CPU interpreter (exact dots: the float32 tolerance above)."""
    pytest.importorskip("triton")
    torch.manual_seed(0)
    mixer = build_mixer(ss_cfg(impl="triton", chunk_size=16, band_width=3), 0)
    on_gpu = torch.cuda.is_available()
    check(mixer, torch.float32, T=21, B=1, chunks=(8,), warm=3, device="cuda" if on_gpu else "cpu",
          tol=dict(rtol=5e-3, atol=5e-3) if on_gpu else None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "positions, lin, d, H",
    [("learned", None, 24, 3), ("rope", None, 24, 3), ("rope", "lowrank", 30, 3), ("learned", "tt", 24, 4)],
)
def test_attention_prefill_equals_steps(positions, lin, d, H, dtype):
    torch.manual_seed(0)
    mixer = build_mixer(attn_cfg(d=d, H=H, positions=positions, lin=lin), 0)
    check(mixer, dtype, chunks=(10, 4))


def test_attention_prefill_checks_the_cache():
    mixer = build_mixer(attn_cfg(), 0).eval()
    state = mixer.init_state(1, None, torch.float32)
    with pytest.raises(ValueError, match="max_seq_len=64"):
        mixer.prefill(torch.randn(1, 10, 24), state, 60)


def test_attention_step_has_fixed_shapes(monkeypatch):
    """Every step attends over the whole cache (positions past it masked), with an int or a
    device position (what a captured step reads): same outputs and cache as before."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    mixer = build_mixer(attn_cfg(positions="rope"), 0).double().eval()
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    with torch.no_grad():
        full, _ = mixer(x)
        key_lengths, real = [], F.scaled_dot_product_attention

        def sdpa(q, k, v, **kw):
            key_lengths.append(k.size(2))
            return real(q, k, v, **kw)

        monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
        ref_y, ref_s = stepwise(mixer, x, mixer.init_state(2, None, torch.float64), 0)
        s, ys = mixer.init_state(2, None, torch.float64), []
        for t in range(9):
            y, s = mixer.step(x[:, t], s, torch.tensor(t))
            ys.append(y)
    assert key_lengths == [64] * 18  # model.max_seq_len, on every step
    torch.testing.assert_close(ref_y, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.stack(ys, 1), ref_y, rtol=1e-12, atol=1e-12)
    assert_states_close(s, ref_s, rtol=0, atol=0)


def test_every_mixer_implements_prefill():
    assert "prefill" in Mixer.__abstractmethods__
    for name, cls in MIXERS.items():
        assert cls.prefill is not Mixer.prefill, name
