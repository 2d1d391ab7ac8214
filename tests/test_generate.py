"""Generation from a trained run: deterministic sampling, greedy equals full-sequence argmax."""

import json

import pytest
import torch

from muse.cli import main
from muse.generate import generate, sample_next
from muse.runtime import load_for_inference


def test_greedy_equals_argmax_of_full_sequence(trained_run):
    model, cfg, tok, _, _ = load_for_inference(trained_run, torch.device("cpu"))
    prompt = torch.tensor([tok.encode(" The game was")])
    new = generate(model, prompt, 12, temperature=0.0)
    seq = torch.cat([prompt, torch.tensor([new])], dim=1)
    with torch.no_grad():
        logits = model(seq).logits[0]  # (T, V)
    expected = logits[prompt.size(1) - 1 : -1].argmax(-1).tolist()
    assert new == expected


def test_sampling_is_deterministic_for_a_seed(trained_run, capsys):
    outs = []
    for _ in range(2):
        assert main(["generate", str(trained_run), "--prompt", " The", "--max-new-tokens", "15", "--seed", "7"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith(" The")


def test_sample_next_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, top_k=1, generator=g).item() for _ in range(20)} == {3}
    assert {sample_next(logits, 1.0, top_p=0.5, generator=g).item() for _ in range(50)} <= {2, 3}
    assert sample_next(logits, 0.0).item() == 3


def test_eval_json_is_consistent(trained_run, capsys):
    assert main(["eval", str(trained_run), "--split", "test", "--json", "--batch-size", "16"]) == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("loss", "perplexity", "word_perplexity", "bits_per_byte", "tokens_per_s", "tokens", "words", "bytes"):
        assert r[key] is not None, key
    assert abs(r["perplexity"] - torch.tensor(r["loss"]).exp().item()) < 1e-6 * r["perplexity"]
    assert r["words"] == 245_569  # WikiText-2 test words incl. one <eos> per line
    nll = r["loss"] * r["tokens"]
    assert abs(r["word_perplexity"] - torch.tensor(nll / r["words"], dtype=torch.float64).exp().item()) < 1e-6 * r["word_perplexity"]
    assert r["split"] == "test" and r["tokenizer"] == "bpe"


def test_generate_too_long_for_bounded_model(trained_run, tmp_path):
    model, _, tok, _, _ = load_for_inference(trained_run, torch.device("cpu"))
    assert model.max_context is None  # the tiny semiseparable model decodes any length
    model.max_context = 8
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, torch.tensor([[1, 2, 3]]), 10)
