"""INT8 weight-only quantization (torchao) of nn.Linear layers for inference: `muse eval/generate --int8`."""

import importlib.util
import json
import sys

import pytest
import torch
from torch import nn

import muse
from muse.cli import main
from muse.memory.quant import MISSING_TORCHAO, quantize_int8

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao not installed")


def _dense_model():
    """Tiny model whose projections are all real nn.Linear (attention, dense FFN, dense head)."""
    torch.manual_seed(0)
    cfg = muse.load_config("tiny", {
        "model.vocab_size": 512, "model.d_model": 64, "model.n_layers": 2, "model.max_seq_len": 64,
        "model.positions": "rope", "model.mixer.kind": "attention", "model.ffn.kind": "dense",
        "model.embedding.kind": "dense", "model.head.kind": "dense",
    })
    return muse.build_model(cfg).float().eval()


@needs_torchao
def test_int8_logits_close_and_weights_quantized():
    from torchao.utils import TorchAOBaseTensor

    model = _dense_model()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert len(linears) == 9  # 2 × (qkv, proj, up, down) + head
    emb_before = model.embed.weight.detach().clone()
    x = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).logits
    stats = quantize_int8(model)
    with torch.no_grad():
        out = model(x).logits
    rel = ((out - ref).pow(2).mean() / ref.pow(2).mean()).sqrt().item()
    # measured: 0.0094 (torch 2.13 CPU, torchao 0.18); per-row int8 rounding ≈ 0.5% of each weight
    assert 0 < rel < 0.05, rel

    n_weights = sum(m.weight.numel() for m in linears.values())
    assert stats.layers == 9 and stats.bytes_before == 4 * n_weights
    # int8 data + one fp32 scale (+ one int8 zero point) per output row
    n_rows = sum(m.weight.shape[0] for m in linears.values())
    assert n_weights < stats.bytes_after <= n_weights + 5 * n_rows, stats
    for name, m in linears.items():
        w = m.weight
        assert isinstance(w, TorchAOBaseTensor) and type(w) not in (torch.Tensor, nn.Parameter), (name, type(w))
        inner = [getattr(w, k) for k in w.__tensor_flatten__()[0]]
        assert any(t.dtype == torch.int8 and t.shape == w.shape for t in inner), name
    assert type(model.embed.weight) is nn.Parameter and torch.equal(model.embed.weight, emb_before)


@needs_torchao
def test_only_real_linears_are_quantized():
    torch.manual_seed(0)
    cfg = muse.load_config("tiny", {"model.vocab_size": 512, "model.d_model": 64, "model.n_layers": 2})
    model = muse.build_model(cfg).eval()  # TT embedding, low-rank FFN, semiseparable mixer (nn.Linear projections)
    plain = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = quantize_int8(model)
    linear_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert stats.layers == len(linear_weights) > 0
    for n, p in model.named_parameters():
        if n in linear_weights:
            assert type(p) is not nn.Parameter, n
        else:  # TT cores, low-rank factors, biases, norms: untouched
            assert type(p) is nn.Parameter and torch.equal(p, plain[n]), n


def test_no_linear_is_one_line_error():
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="no nn.Linear") as e:
        quantize_int8(model)
    assert "\n" not in str(e.value)


def test_missing_torchao_is_one_line_error(monkeypatch):
    for name in [k for k in sys.modules if k == "torchao" or k.startswith("torchao.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "torchao", None)
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValueError) as e:
        quantize_int8(model)
    assert str(e.value) == MISSING_TORCHAO == "--int8 needs torchao: pip install torchao (or pip install -e '.[ao]')"
    assert type(model[0].weight) is nn.Parameter  # nothing was touched


@needs_torchao
def test_eval_int8_json(trained_run, capsys):
    common = ["eval", str(trained_run), "--split", "valid", "--max-tokens", "4096", "--json"]
    assert main(common) == 0
    ref = json.loads(capsys.readouterr().out)
    assert main(common + ["--int8"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["int8"] is True and ref["int8"] is False
    assert r["tokens"] == ref["tokens"] > 0
    assert r["loss"] != ref["loss"] and abs(r["loss"] - ref["loss"]) < 0.01 * ref["loss"], (r["loss"], ref["loss"])


@needs_torchao
def test_generate_int8_smoke(trained_run, capsys):
    assert main(["generate", str(trained_run), "--prompt", " The", "--int8", "--max-new-tokens", "5", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith(" The")
