"""Generation from a trained run: deterministic sampling, greedy equals full-sequence argmax."""

import json

import pytest
import torch

from muse.cli import main
from muse.generate import generate, sample_next
from muse.runtime import load_for_inference


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shared_data, token_cache):
    run = tmp_path_factory.mktemp("gen") / "run"
    args = [
        "train", "tiny", "--run-dir", str(run), "--dataset", "wikitext-2", "--data-dir",
        str(shared_data / "wikitext-2"), "--data.cache_dir", str(token_cache), "--model.vocab_size", "512",
        "--model.d_model", "64", "--model.n_layers", "2", "--model.max_seq_len", "64", "--train.batch_size", "8",
        "--train.max_steps", "20", "--train.eval_every", "20", "--train.eval_tokens", "2048",
        "--train.progress", "false", "--train.tensorboard", "false",
    ]
    assert main(args) == 0
    return run


def test_greedy_equals_argmax_of_full_sequence(run_dir):
    model, cfg, tok, _, _ = load_for_inference(run_dir, torch.device("cpu"))
    prompt = torch.tensor([tok.encode(" The game was")])
    new = generate(model, prompt, 12, temperature=0.0)
    seq = torch.cat([prompt, torch.tensor([new])], dim=1)
    with torch.no_grad():
        logits = model(seq).logits[0]  # (T, V)
    expected = logits[prompt.size(1) - 1 : -1].argmax(-1).tolist()
    assert new == expected


def test_sampling_is_deterministic_for_a_seed(run_dir, capsys):
    outs = []
    for _ in range(2):
        assert main(["generate", str(run_dir), "--prompt", " The", "--max-new-tokens", "15", "--seed", "7"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith(" The")


def test_sample_next_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, top_k=1, generator=g).item() for _ in range(20)} == {3}
    assert {sample_next(logits, 1.0, top_p=0.5, generator=g).item() for _ in range(50)} <= {2, 3}
    assert sample_next(logits, 0.0).item() == 3


def test_eval_json_is_consistent(run_dir, capsys):
    assert main(["eval", str(run_dir), "--split", "test", "--json", "--batch-size", "16"]) == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("loss", "perplexity", "word_perplexity", "bits_per_byte", "tokens_per_s", "tokens", "words", "bytes"):
        assert r[key] is not None, key
    assert abs(r["perplexity"] - torch.tensor(r["loss"]).exp().item()) < 1e-6 * r["perplexity"]
    assert r["words"] == 245_569  # WikiText-2 test words incl. one <eos> per line
    nll = r["loss"] * r["tokens"]
    assert abs(r["word_perplexity"] - torch.tensor(nll / r["words"], dtype=torch.float64).exp().item()) < 1e-6 * r["word_perplexity"]
    assert r["split"] == "test" and r["tokenizer"] == "bpe"


def test_generate_too_long_for_bounded_model(run_dir, tmp_path):
    model, _, tok, _, _ = load_for_inference(run_dir, torch.device("cpu"))
    assert model.max_context is None  # the tiny semiseparable model decodes any length
    model.max_context = 8
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, torch.tensor([[1, 2, 3]]), 10)
