"""Generation from a trained run: deterministic sampling, greedy equals full-sequence argmax."""

import json
import re

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


def test_top_p_zero_keeps_the_top_token():
    """--top-p 0 is greedy-like: the top token always stays (it was dropped: NaN probabilities)."""
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.0], [5.0, 1.0, 0.0, 2.0]])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert sample_next(logits, 1.0, top_p=0.0, generator=g).tolist() == [2, 0]
    assert sample_next(logits, 0.7, top_k=2, top_p=0.0, generator=g).tolist() == [2, 0]


def test_generate_top_p_zero_cli(trained_run, capsys):
    argv = ["generate", str(trained_run), "--prompt", " The", "--max-new-tokens", "8", "--top-p", "0"]
    assert main(argv) == 0
    sampled = capsys.readouterr().out
    assert main(argv[:-2] + ["--temperature", "0"]) == 0
    assert capsys.readouterr().out == sampled  # the top token only: greedy


def test_generate_reports_speed(trained_run, capsys):
    _, _, tok, _, _ = load_for_inference(trained_run, torch.device("cpu"))
    n = len(tok.encode(" The game was"))
    assert main(["generate", str(trained_run), "--prompt", " The game was", "--max-new-tokens", "7",
                 "--temperature", "0"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert re.fullmatch(
        rf"muse generate: prompt {n} tokens in \d+\.\d\d s \([\d,]+ tok/s\); generated 7 tokens in \d+\.\d\d s "
        r"\([\d,]+ tok/s\); device cpu", err[0]), err[0]


def test_invalid_utf8_prompt_is_one_line_error(trained_run, capsys):
    # what Python's argv holds for the bytes of --prompt $'\xff\xfe bad' (surrogateescape)
    assert main(["generate", str(trained_run), "--prompt", "ok \udcff\udcfe bad"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("muse: error: --prompt is not valid UTF-8 text")
    assert "0xff at byte offset 3" in err[0] and r"b'ok \xff\xfe bad'" in err[0]
    assert captured.out == ""


@pytest.mark.parametrize(
    "option, value",
    [
        ("--max-new-tokens", "-5"), ("--max-new-tokens", "0"), ("--temperature", "-0.5"), ("--temperature", "nan"),
        ("--temperature", "inf"), ("--top-k", "-1"), ("--top-p", "1.5"), ("--top-p", "-0.1"), ("--top-p", "nan"),
        ("--seed", str(2**64)), ("--device", "gpu0"),
    ],
)
def test_bad_generate_arguments(trained_run, capsys, option, value):
    assert main(["generate", str(trained_run), "--prompt", " The", "--max-new-tokens", "3", option, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"muse: error: {option} "), err


def test_generate_checks_sampling_arguments():
    model = None  # checked before the model is touched
    with pytest.raises(ValueError, match="--top-p"):
        generate(model, torch.tensor([[1]]), 3, top_p=2.0)
    with pytest.raises(ValueError, match="--max-new-tokens"):
        generate(model, torch.tensor([[1]]), -1)


def test_a_request_beyond_the_context_prints_only_its_error(trained_run, capsys, monkeypatch):
    """A model with a bounded context (an attention layer's KV cache): a prompt plus
    --max-new-tokens beyond it is refused before anything is printed (the prompt is not echoed)."""
    import muse.runtime

    real = muse.runtime.load_for_inference

    def bounded(*a, **k):
        model, *rest = real(*a, **k)
        model.max_context = 8
        return (model, *rest)

    monkeypatch.setattr(muse.runtime, "load_for_inference", bounded)
    assert main(["generate", str(trained_run), "--prompt", " The", "--max-new-tokens", "20"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines() == [
        err.strip()] and "exceeds model.max_seq_len=8" in err and err.startswith("muse: error: prompt (")


def test_generate_runs_without_autograd(trained_run):
    """Decoding records no graph (``generate`` is ``torch.no_grad``): every step sees grad off."""
    model, _, tok, _, _ = load_for_inference(trained_run, torch.device("cpu"))
    seen = []
    generate(model, torch.tensor([tok.encode(" The")]), 3, temperature=0.0,
             on_token=lambda t: seen.append(torch.is_grad_enabled()))
    assert seen == [False, False, False] and torch.is_grad_enabled()
