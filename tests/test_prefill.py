"""MuseLM.prefill (one parallel pass per chunk) equals feeding the prompt step by step, and the
decoding step with a device position (what a CUDA graph captures) equals the full forward.

Float64: last logits and every state tensor to 1e-9. Float32: 1e-4 relative / absolute on
logits of O(1) (a 37-token prompt through two layers; parallel and stepwise sum in other orders).
"""

import pytest
import torch

from muse import build_model, load_config
from muse.generate import Decoder, generate
from muse.mixers import Mixer
from muse.model import Block

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-4)}

MODELS = [
    ("tiny", {}),  # TT embedding, semiseparable (data decay, band 3, gates), low-rank FFN, tied head
    ("tiny", {"model.mixer.semiseparable.band_width": 4, "model.mixer.semiseparable.decay": "fixed"}),
    ("baseline", {}),  # dense GPT-2: learned positions, attention
    ("baseline", {"model.positions": "rope", "model.n_heads": 2}),
    ("compact", {}),  # semiseparable, no positions, low-rank head
    ("standard", {}),  # hybrid: attention (no positions, tied head) after a semiseparable layer
    ("hamt-small", {"model.attention_layers": [0], "model.positions": "rope"}),  # rope attention, then holographic
]


def small(preset: str, **over):
    base = {
        "model.vocab_size": 97, "model.d_model": 32, "model.n_layers": 2, "model.n_heads": 4,
        "model.max_seq_len": 64, "model.embedding.vocab_factors": None, "model.embedding.dim_factors": None,
        "model.mixer.semiseparable.chunk_size": 16,
    }
    base.update(over)
    return load_config(preset, base)


def make(preset, over, dtype=torch.float64):
    torch.manual_seed(0)
    return build_model(small(preset, **over)).to(dtype).eval()


def stepwise(model, idx, state=None):
    """What MuseLM.prefill did before: one ``step`` per prompt token."""
    state = model.init_state(idx.size(0)) if state is None else state
    logits = None
    for t in range(idx.size(1)):
        logits, state = model.step(idx[:, t], state)
    return logits, state


def assert_same_state(a, b, **tol):
    assert a["pos"] == b["pos"]
    assert len(a["layers"]) == len(b["layers"])
    for i, (la, lb) in enumerate(zip(a["layers"], b["layers"])):
        assert la.keys() == lb.keys()
        for k in la:
            assert la[k].shape == lb[k].shape and la[k].dtype == lb[k].dtype, (i, k)
            torch.testing.assert_close(la[k], lb[k], **tol, msg=lambda m: f"layer {i} {k!r}: {m}")


def greedy(model, logits, state, n):
    out = []
    for _ in range(n):
        nxt = logits.argmax(-1)
        out.append(nxt.tolist())
        logits, state = model.step(nxt, state)
    return out


@pytest.mark.parametrize("preset, over", MODELS)
def test_prefill_equals_stepwise(preset, over):
    model = make(preset, over)
    idx = torch.randint(0, 97, (2, 37), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_state = stepwise(model, idx)
    tol = TOL[torch.float64]

    logits, state = model.prefill(idx)
    torch.testing.assert_close(logits, ref_logits, **tol)
    assert_same_state(state, ref_state, **tol)

    logits, state = model.prefill(idx, chunk=10)  # 10 + 10 + 10 + 7
    torch.testing.assert_close(logits, ref_logits, **tol)
    assert_same_state(state, ref_state, **tol)

    _, mid = stepwise(model, idx[:, :5])  # decode a few tokens, then prefill the rest
    logits, state = model.prefill(idx[:, 5:], mid, chunk=13)
    torch.testing.assert_close(logits, ref_logits, **tol)
    assert_same_state(state, ref_state, **tol)

    # generation goes on identically from either state
    assert greedy(model, logits, state, 8) == greedy(model, ref_logits, ref_state, 8)


@pytest.mark.parametrize("preset, over", [MODELS[0], MODELS[1], MODELS[3]])
def test_prefill_of_a_short_prompt(preset, over):
    """One token (shorter than the band's reach), then one more after a step."""
    model = make(preset, over)
    idx = torch.tensor([[5, 7, 11]])
    ref_logits, ref_state = stepwise(model, idx)
    _, state = model.prefill(idx[:, :1])
    _, state = model.step(idx[:, 1], state)
    logits, state = model.prefill(idx[:, 2:], state)
    torch.testing.assert_close(logits, ref_logits, **TOL[torch.float64])
    assert_same_state(state, ref_state, **TOL[torch.float64])


@pytest.mark.parametrize("preset, over", [MODELS[0], MODELS[2], MODELS[4]])
def test_prefill_equals_stepwise_float32(preset, over):
    model = make(preset, over, torch.float32)
    idx = torch.randint(0, 97, (1, 37), generator=torch.Generator().manual_seed(2))
    ref_logits, ref_state = stepwise(model, idx)
    logits, state = model.prefill(idx, chunk=16)
    torch.testing.assert_close(logits, ref_logits, **TOL[torch.float32])
    assert_same_state(state, ref_state, **TOL[torch.float32])


@pytest.mark.parametrize("preset, over", [MODELS[0], MODELS[3]])
def test_prefill_runs_the_parallel_path(preset, over, monkeypatch):
    """No token-by-token step inside prefill: each block's parallel prefill, once per chunk."""
    model = make(preset, over)
    calls = {"step": 0, "prefill": 0}

    def count(name, real):
        def wrapped(*a, **k):
            calls[name] += 1
            return real(*a, **k)
        return wrapped

    for cls in {type(b.mixer) for b in model.blocks}:
        monkeypatch.setattr(cls, "step", count("step", cls.step))
        monkeypatch.setattr(cls, "prefill", count("prefill", cls.prefill))
    monkeypatch.setattr(Block, "step", count("step", Block.step))
    model.prefill(torch.randint(0, 97, (1, 37)), chunk=16)
    assert calls == {"step": 0, "prefill": 2 * 3}  # 2 layers × 3 chunks


def test_every_mixer_prefills():
    assert "prefill" in Mixer.__abstractmethods__


@pytest.mark.parametrize("preset, over", MODELS)
def test_decode_step_with_a_device_position_equals_forward(preset, over):
    """The capturable step (position a 0-d tensor, fixed-shape cache) against the full forward."""
    model = make(preset, over)
    idx = torch.randint(0, 97, (2, 23), generator=torch.Generator().manual_seed(3))
    full = model(idx).logits  # (B, N, V)
    layers = model.init_state(2)["layers"]
    shapes = [{k: t.shape for k, t in s.items()} for s in layers]
    for t in range(idx.size(1)):
        logits, layers = model.decode_step(idx[:, t], layers, torch.tensor(t))
        torch.testing.assert_close(logits, full[:, t], rtol=1e-9, atol=1e-9)
        assert [{k: v.shape for k, v in s.items()} for s in layers] == shapes  # fixed shapes


def test_prefill_checks_its_input():
    model = make("baseline", {})
    with pytest.raises(ValueError, match="T >= 1"):
        model.prefill(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk"):
        model.prefill(torch.zeros(1, 3, dtype=torch.long), chunk=0)
    with pytest.raises(ValueError, match="max_seq_len=64"):
        model.prefill(torch.zeros(1, 65, dtype=torch.long))
    _, state = model.prefill(torch.zeros(1, 60, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len=64"):
        model.prefill(torch.zeros(1, 5, dtype=torch.long), state)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.prefill(torch.tensor([[1, 97]]))


def test_generate_stats_and_cpu_decoder():
    model = make("tiny", {})
    stats = {}
    out = generate(model, torch.tensor([[3, 4, 5, 6, 7]]), 6, temperature=0.0, stats=stats)
    assert len(out) == 6
    assert stats["prompt_tokens"] == 5 and stats["new_tokens"] == 6 and stats["device"] == "cpu"
    assert stats["prompt_s"] > 0 and stats["decode_s"] > 0 and stats["cuda_graph"] is False
    with pytest.raises(ValueError, match="CUDA"):
        Decoder(model, cuda_graph=True)(torch.tensor([1]), model.init_state(1))


# ---------------------------------------------------------------------------------- CUDA graphs
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _decode(model, decoder, prompt, tokens):
    """Teacher-forced decoding of ``tokens`` after ``prompt``: the logits of every step."""
    _, state = model.prefill(prompt)
    out = []
    for t in range(tokens.size(1)):
        logits, state = decoder(tokens[:, t], state)
        out.append(logits)
    return torch.stack(out, 1), state


@cuda
@pytest.mark.parametrize("preset, over", [MODELS[0], MODELS[2], MODELS[3], MODELS[4]])
def test_captured_decode_equals_eager(preset, over):
    model = make(preset, over, torch.float32).cuda()
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 97, (1, n), generator=g).cuda() for n in (9, 14)]
    tokens = torch.randint(0, 97, (1, 20), generator=g).cuda()
    captured = Decoder(model, cuda_graph=True)
    for prompt in prompts:  # the second prompt reuses the graph: its state is copied into the buffers
        ref, ref_state = _decode(model, Decoder(model, cuda_graph=False), prompt, tokens)
        got, state = _decode(model, captured, prompt, tokens)
        assert captured.captured
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        assert_same_state(state, ref_state, rtol=1e-5, atol=1e-5)


@cuda
def test_decoders_do_not_pile_up_gpu_memory():
    """Each Decoder once warmed up on a stream of its own, and torch keeps a cuBLAS workspace per
    stream for good: every generation in a process held ~32 MiB more (decode_memory's first H100
    run grew 33 MiB per context for that reason)."""
    model = make("baseline", {}, torch.float32).cuda()
    prompt, tokens = torch.tensor([[1, 2, 3]]).cuda(), torch.randint(0, 97, (1, 4)).cuda()
    _decode(model, Decoder(model, cuda_graph=True), prompt, tokens)
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    for _ in range(3):
        decoder = Decoder(model, cuda_graph=True)
        _decode(model, decoder, prompt, tokens)
        del decoder
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - held < 2**20


@cuda
def test_decoder_falls_back_when_the_capture_fails(monkeypatch):
    import muse.generate as gen

    model = make("baseline", {}, torch.float32).cuda()
    real = type(model).decode_step

    def syncs(self, *a):
        out = real(self, *a)
        out[0].sum().item()  # a host read: refused while capturing
        return out

    monkeypatch.setattr(type(model), "decode_step", syncs)
    monkeypatch.setattr(gen, "_warned_capture", False)
    prompt, tokens = torch.tensor([[1, 2, 3]]).cuda(), torch.randint(0, 97, (1, 6)).cuda()
    ref, _ = _decode(model, Decoder(model, cuda_graph=False), prompt, tokens)
    decoder = Decoder(model, cuda_graph=True)
    with pytest.warns(UserWarning, match="without a CUDA graph"):
        got, _ = _decode(model, decoder, prompt, tokens)
    assert decoder.failed and not decoder.captured
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@cuda
@pytest.mark.parametrize("preset, over", [MODELS[0], MODELS[2], MODELS[4]])
def test_prefill_on_gpu_equals_stepwise(preset, over):
    """The GPU kernels (Triton scan from an initial state, SDPA backends): fp32 with tf32 dots
    in the scan, to 5e-3."""
    model = make(preset, over, torch.float32).cuda()
    idx = torch.randint(0, 97, (1, 45), generator=torch.Generator().manual_seed(5)).cuda()
    ref_logits, ref_state = stepwise(model, idx)
    logits, state = model.prefill(idx[:, :7])
    logits, state = model.prefill(idx[:, 7:], state, chunk=16)
    torch.testing.assert_close(logits, ref_logits, rtol=5e-3, atol=5e-3)
    assert_same_state(state, ref_state, rtol=5e-3, atol=5e-3)
