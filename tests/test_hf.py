"""The Hugging Face reference: model.kind hf-gpt2 (transformers' GPT2LMHeadModel behind MUSE's
model interface) and ``muse eval --hf`` (a local Hugging Face checkpoint scored zero-shot).

Tests that need transformers skip without it; the missing-extra tests hide it and always run.
"""

import importlib.util
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from muse import build_model, load_config
from muse.cli import main
from muse.config import ConfigError
from muse.memory.params import count_components, dense_equivalent, param_report

HAVE_HF = importlib.util.find_spec("transformers") is not None
needs_hf = pytest.mark.skipif(not HAVE_HF, reason="transformers is not installed (pip install 'muse[hf]')")
HINT = "pip install 'muse[hf]'"

SMALL = {"model.vocab_size": 97, "model.d_model": 32, "model.n_layers": 2, "model.n_heads": 4,
         "model.max_seq_len": 40}


def small(preset: str = "hf-gpt2", **over):
    return load_config(preset, {**SMALL, **over})


def one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("muse: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- config


def test_preset_is_baseline_with_the_hf_kind():
    cfg, base = load_config("hf-gpt2"), load_config("baseline")
    assert cfg.name == "hf-gpt2" and cfg.model.kind == "hf-gpt2" and base.model.kind == "muse"
    cfg.model.kind = "muse"
    assert cfg.model == base.model


def test_config_refuses_what_gpt2_cannot_express():
    with pytest.raises(ConfigError, match="model.kind must be one of muse, hf-gpt2; got 'gpt2'"):
        small(**{"model.kind": "gpt2"})
    with pytest.raises(ConfigError) as e:
        small("compact", **{"model.kind": "hf-gpt2"})  # TT embedding, semiseparable mixer, low-rank FFN/head
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("model.kind hf-gpt2")
    for field in ("embedding.kind 'tt'", "mixer.kind 'semiseparable'", "ffn.kind 'lowrank'", "head.kind 'lowrank'"):
        assert field in msg
    for over, field in [
        ({"model.positions": "rope"}, "model.positions 'rope' (needs 'learned')"),
        ({"model.norm.kind": "rmsnorm"}, "norm.kind 'rmsnorm'"),
        ({"model.norm.shared": True}, "norm.shared true (needs false)"),
        ({"model.ffn.activation": "swiglu"}, "ffn.activation 'swiglu'"),
        ({"model.ffn.bias": False}, "ffn.bias false"),
        ({"model.ffn.token_chunk": 16}, "ffn.token_chunk 16 (needs 0)"),
        ({"model.mixer.linear.bias": False}, "mixer.linear.bias false"),
        ({"model.head.bias": True}, "head.bias true"),
        ({"model.head.loss_impl": "chunked"}, "head.loss_impl 'chunked'"),
    ]:
        with pytest.raises(ConfigError, match="^model.kind hf-gpt2 .*" + re.escape(field)):
            small(**over)
    small(**{"model.head.kind": "tied", "model.checkpointing": True, "model.dropout": 0.1})  # these apply


def test_cuda_graph_is_off_for_hf_gpt2_and_true_is_refused():
    from muse.train.graph import resolve_cuda_graph

    cfg = small(**{"train.device": "cuda"})
    on, why = resolve_cuda_graph(cfg, torch.device("cuda"), 1)  # only reads the device's type
    assert not on and why.startswith("model.kind hf-gpt2")
    with pytest.raises(ConfigError, match="train.cuda_graph true does not combine with model.kind hf-gpt2"):
        small(**{"train.device": "cuda", "train.cuda_graph": True})


# ----------------------------------------------------------------------------- the model


@needs_hf
def test_gpt2_config_mirrors_the_muse_shape():
    from muse.hf import gpt2_config

    m = small(**{"model.ffn.mult": 3.0, "model.dropout": 0.125, "model.norm.eps": 1e-6,
                 "model.init_std": 0.03, "model.head.kind": "tied"}).model
    c = gpt2_config(m)
    assert (c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head, c.n_inner) == (97, 40, 32, 2, 4, 96)
    assert (c.resid_pdrop, c.embd_pdrop, c.attn_pdrop) == (0.125,) * 3
    assert (c.layer_norm_epsilon, c.initializer_range, c.activation_function) == (1e-6, 0.03, "gelu_new")
    assert c.tie_word_embeddings and c._attn_implementation == "sdpa"
    model = build_model(small(**{"model.head.kind": "tied"}))
    assert model.attn_implementation == "sdpa" and model.max_context == 40
    assert model.hf.lm_head.weight is model.hf.transformer.wte.weight


def _muse_to_hf(muse_sd: dict, L: int) -> dict:
    """MuseLM baseline weights under GPT2LMHeadModel's names (Conv1D stores W transposed)."""
    out = {"transformer.wte.weight": muse_sd["embed.weight"], "transformer.wpe.weight": muse_sd["pos.weight"],
           "transformer.ln_f.weight": muse_sd["norm.weight"], "transformer.ln_f.bias": muse_sd["norm.bias"],
           "lm_head.weight": muse_sd["head.weight"]}
    pairs = [("norm1", "ln_1"), ("norm2", "ln_2"), ("mixer.qkv", "attn.c_attn"), ("mixer.proj", "attn.c_proj"),
             ("ffn.up", "mlp.c_fc"), ("ffn.down", "mlp.c_proj")]
    for i in range(L):
        for ours, theirs in pairs:
            w = muse_sd[f"blocks.{i}.{ours}.weight"]
            out[f"transformer.h.{i}.{theirs}.weight"] = w.T if w.dim() == 2 else w
            out[f"transformer.h.{i}.{theirs}.bias"] = muse_sd[f"blocks.{i}.{ours}.bias"]
    return out


@needs_hf
def test_same_weights_give_muse_baseline_s_logits_and_loss():
    """The reference row and MUSE's baseline are one function: MuseLM's weights copied into the
    GPT2LMHeadModel give the same logits and loss (float64, odd shapes: B=3, N=29, V=97)."""
    torch.manual_seed(0)
    muse = build_model(small("baseline", **{"model.norm.eps": 1e-6})).double().eval()
    for p in muse.parameters():  # away from the init's zero biases and unit gains
        p.data.add_(0.05 * torch.randn_like(p))
    ref = build_model(small(**{"model.norm.eps": 1e-6})).double().eval()
    ref.hf.load_state_dict(_muse_to_hf(muse.state_dict(), 2), strict=True)
    idx = torch.randint(0, 97, (3, 30))
    a, b = muse(idx[:, :-1], idx[:, 1:], return_logits=True), ref(idx[:, :-1], idx[:, 1:], return_logits=True)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-12, atol=1e-12)


@needs_hf
def test_adapter_loss_is_mean_next_token_nll_of_the_hf_logits():
    torch.manual_seed(1)
    model = build_model(small(**{"model.head.kind": "tied"}))
    idx = torch.randint(0, 97, (3, 18))
    x, y = idx[:, :-1], idx[:, 1:]
    out = model(x, y)
    assert out.logits is None and out.aux_loss is None and out.loss.dtype == torch.float32
    logits = model.hf(input_ids=x).logits.double()  # (B, N, V)
    by_hand = -(logits.log_softmax(-1).gather(-1, y[..., None]).squeeze(-1)).mean()
    torch.testing.assert_close(out.loss.double(), by_hand, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model(x).logits, logits.float(), rtol=1e-5, atol=1e-5)  # no targets: logits
    y2 = y.clone()
    y2[0, :5] = -100  # ignored, as in MUSE's loss
    keep = y2 != -100
    masked = -(logits.log_softmax(-1).gather(-1, y.clamp(min=0)[..., None]).squeeze(-1))[keep].mean()
    torch.testing.assert_close(model(x, y2).loss.double(), masked, rtol=1e-6, atol=1e-6)
    model(x, y).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.double()(x, y).loss.dtype == torch.float64  # float64 model: float64 loss, like MuseLM's


@needs_hf
def test_adapter_checks_ids_and_length():
    model = build_model(small())
    with pytest.raises(ValueError, match="token id 97 is outside the vocabulary"):
        model(torch.tensor([[1, 97]]))
    with pytest.raises(ValueError, match="sequence length 41 exceeds this model's 40 positions"):
        model(torch.zeros(1, 41, dtype=torch.long))


@needs_hf
def test_checkpointing_gives_the_same_loss_and_gradients():
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_model(small(**{"model.checkpointing": ckpt})).train()
        assert model.hf.transformer.gradient_checkpointing is ckpt
        idx = torch.randint(0, 97, (2, 21))
        out = model(idx[:, :-1], idx[:, 1:])
        out.loss.backward()
        grads.append((out.loss.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


@needs_hf
def test_builds_on_meta_and_in_pure_bf16():
    model = build_model(load_config("hf-gpt2"), device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    model = build_model(small(), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32


@needs_hf
@pytest.mark.parametrize("head", ["dense", "tied"])
def test_parameter_counts_equal_muse_baseline_shape(head):
    """Same shape, same count, component by component (buffers are not parameters)."""
    over = {"model.head.kind": head}
    hf, muse = build_model(small(**over), device="meta"), build_model(small("baseline", **over), device="meta")
    assert count_components(hf) == count_components(muse)
    assert hf.num_params() == muse.num_params() == count_components(hf)["total"]
    assert hf.dense_equivalent_params() == dense_equivalent(small())["total"]


@needs_hf
def test_params_of_the_presets():
    hf, base = param_report(load_config("hf-gpt2")), param_report(load_config("baseline"))
    assert hf["actual_params"] == hf["dense_equivalent_params"] == base["actual_params"] == 29_417_472
    assert hf["components"] == base["components"]


# ----------------------------------------------------------------------------- training and muse eval RUN


def _text_file(tmp_path, shared_data=None):
    """A small UTF-8 corpus: the first 60 KB of WikiText-2's test split (or text of our own)."""
    path = tmp_path / "corpus.txt"
    if shared_data is not None and (shared_data / "wikitext-2" / "test.txt").is_file():
        text = (shared_data / "wikitext-2" / "test.txt").read_text(encoding="utf-8")[:60_000]
    else:
        text = "".join(f" The {i % 97} cat sat on the {i % 13} mat , and then it ran .\n" for i in range(1500))
    path.write_text(text, encoding="utf-8")
    return path


@needs_hf
def test_train_save_resume_and_eval_a_run(tmp_path, capsys):
    """muse train hf-gpt2 (tied head) → safetensors checkpoints (the tie survives loading) → muse
    eval RUN equals scoring the loaded model by hand; muse generate and --int8 refuse in one line."""
    from muse.runtime import load_for_inference

    corpus, run = _text_file(tmp_path), tmp_path / "run"
    args = ["train", "hf-gpt2", "--run-dir", str(run), "--dataset", f"text:{corpus}", "--data.tokenizer", "bytes",
            "--data.cache_dir", str(tmp_path / "cache"), "--model.vocab_size", "257", "--model.d_model", "32",
            "--model.n_layers", "2", "--model.n_heads", "4", "--model.max_seq_len", "32", "--model.head.kind",
            "tied", "--train.batch_size", "4", "--train.max_steps", "6", "--train.eval_every", "3",
            "--train.eval_tokens", "1024", "--train.warmup_steps", "2", "--train.log_every", "1", "--train.progress", "false",
            "--train.tensorboard", "false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "muse train: hf-gpt2" in out and "muse generate" not in out and "train.cuda_graph auto -> off" in out
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) >= 6 and all(math.isfinite(v) for v in losses)

    model, cfg, tok, ckpt, _ = load_for_inference(run, torch.device("cpu"))
    assert cfg.model.kind == "hf-gpt2" and ckpt.name == "step-00000006"
    assert model.hf.lm_head.weight is model.hf.transformer.wte.weight  # shared tensor restored as shared
    assert main(["eval", str(run), "--json", "--cache-dir", str(tmp_path / "cache2")]) == 0
    assert (tmp_path / "cache2").is_dir()  # --cache-dir holds the tokenized split, for a run as for --hf
    res = json.loads(capsys.readouterr().out)
    assert res["step"] == 6 and all(math.isfinite(res[k]) for k in ("loss", "word_perplexity", "bits_per_byte"))

    from muse.data import eval_windows, prepare_data

    data = prepare_data(cfg.data, 257, tokenizer=tok)
    nll = n = 0
    with torch.no_grad():
        for x, y in eval_windows(data.tokens["test"], 32):
            logits = model.hf(input_ids=x).logits.double()
            nll -= logits.log_softmax(-1).gather(-1, y[..., None]).sum().item()
            n += y.numel()
    assert res["tokens"] == n and math.isclose(res["loss"], nll / n, rel_tol=1e-6)

    assert "decodes MUSE models only" in one_error_line(capsys, ["generate", str(run)])
    assert "--int8 quantizes MUSE models only" in one_error_line(capsys, ["eval", str(run), "--int8"])
    assert main(["train", "--resume", str(run), "--train.max_steps", "9"]) == 0
    capsys.readouterr()
    assert load_for_inference(run, torch.device("cpu"))[3].name == "step-00000009"


# ----------------------------------------------------------------------------- muse eval --hf


def _hf_folder(tmp_path, corpus, tokenizer_json: bool = False, n_positions: int = 48):
    """A tiny GPT2LMHeadModel saved with save_pretrained, and beside it a GPT-2-format BPE trained
    on ``corpus``: vocab.json + merges.txt (or tokenizer.json)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from muse.data import train_bpe

    folder = tmp_path / ("hf-tj" if tokenizer_json else "hf")
    folder.mkdir()
    tok = train_bpe([corpus.read_text(encoding="utf-8")], 300)
    if tokenizer_json:
        tok._hf.save(str(folder / "tokenizer.json"))
    else:
        tok._hf.model.save(str(folder))  # vocab.json + merges.txt, GPT-2's file names and formats
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=tok.vocab_size, n_positions=n_positions, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=tok.eos_id, eos_token_id=tok.eos_id)
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(str(folder))
    return folder, model.eval(), tok


def _nll_by_hand(model, ids: np.ndarray, seq: int) -> tuple[float, int]:
    """Total NLL of every token after the first, in non-overlapping windows of ``seq`` inputs,
    through transformers' own shifted loss (``labels=``)."""
    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, seq):
            w = torch.as_tensor(ids[s : s + seq + 1].astype(np.int64))[None]
            if w.size(1) < 2:
                break
            nll += model(input_ids=w, labels=w).loss.double().item() * (w.size(1) - 1)  # mean over the shifted
            n += w.size(1) - 1
    return nll, n


@needs_hf
@pytest.mark.parametrize("tokenizer_json", [False, True])
def test_eval_hf_scores_a_local_checkpoint(tmp_path, capsys, shared_data, tokenizer_json):
    from muse.data import count_bytes, count_words, gpt2_tokenizer, load_text_splits
    from muse.config import DataConfig

    corpus = _text_file(tmp_path, shared_data)
    folder, model, tok = _hf_folder(tmp_path, corpus, tokenizer_json)
    argv = ["eval", "--hf", str(folder), "--dataset", f"text:{corpus}", "--cache-dir", str(tmp_path / "c"),
            "--seq-len", "32", "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["seq_len"] == 32 and res["step"] is None and res["model_type"] == "gpt2"
    assert res["tokenizer_files"] == ("tokenizer.json" if tokenizer_json else "vocab.json + merges.txt")
    assert res["params"] == sum(p.numel() for p in model.parameters())

    (text,) = load_text_splits(DataConfig(dataset=f"text:{corpus}"), ("test",)).docs["test"]
    ids = np.asarray((gpt2_tokenizer(folder) if not tokenizer_json else tok).encode(text))
    nll, n = _nll_by_hand(model, ids, 32)
    assert res["tokens"] == n and math.isclose(res["loss"], nll / n, rel_tol=1e-6)
    assert math.isclose(res["perplexity"], math.exp(nll / n), rel_tol=1e-6)
    assert res["words"] == count_words(text) and res["bytes"] == count_bytes(text)
    assert math.isclose(res["word_perplexity"], math.exp(nll / res["words"]), rel_tol=1e-6)
    assert math.isclose(res["bits_per_byte"], nll / (math.log(2) * res["bytes"]), rel_tol=1e-6)

    # --seq-len above n_positions is capped; 0 (the default) is n_positions
    assert main(argv[:-3] + ["--seq-len", "1000", "--max-tokens", "200", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seq_len"] == 48


@needs_hf
def test_eval_hf_on_wikitext_2(tmp_path, capsys, shared_data, token_cache):
    """The documented use: a WikiText-2 split from its folder, the whole split's normalisers."""
    folder, model, _ = _hf_folder(tmp_path, _text_file(tmp_path, shared_data))
    assert main(["eval", "--hf", str(folder), "--dataset", "wikitext-2", "--data-dir",
                 str(shared_data / "wikitext-2"), "--split", "valid", "--cache-dir", str(token_cache),
                 "--max-tokens", "3000", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dataset"] == "wikitext-2" and res["split"] == "valid" and res["seq_len"] == 48
    assert 3000 <= res["tokens"] < 3000 + 8 * 48 and math.isfinite(res["loss"]) and res["words"] is None


@needs_hf
def test_eval_hf_errors(tmp_path, capsys):
    assert "give exactly one" in one_error_line(capsys, ["eval"])
    assert "give exactly one" in one_error_line(capsys, ["eval", "runs/x", "--hf", str(tmp_path)])
    assert "needs --dataset" in one_error_line(capsys, ["eval", "--hf", str(tmp_path)])
    for flag in (["--int8"], ["--tag", "best"]):
        assert f"{flag[0]} applies to a MUSE run" in one_error_line(
            capsys, ["eval", "--hf", str(tmp_path), "--dataset", "wikitext-2", *flag])
    assert "--seq-len applies to --hf" in one_error_line(capsys, ["eval", str(tmp_path), "--seq-len", "8"])
    assert "has no config.json" in one_error_line(capsys, ["eval", "--hf", str(tmp_path), "--dataset", "pystdlib"])
    assert "does not exist" in one_error_line(
        capsys, ["eval", "--hf", str(tmp_path / "nope"), "--dataset", "pystdlib"])
    (tmp_path / "config.json").write_text("{}")
    assert "no tokenizer beside the model" in one_error_line(
        capsys, ["eval", "--hf", str(tmp_path), "--dataset", "pystdlib"])


# ----------------------------------------------------------------------------- without transformers


@pytest.fixture
def no_transformers(monkeypatch):
    """transformers made unimportable, as in an install without the hf extra."""
    for name in [m for m in sys.modules if m == "transformers" or m.startswith("transformers.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "transformers", None)


def test_without_transformers_both_routes_name_the_extra(no_transformers, tmp_path, capsys):
    with pytest.raises(ValueError, match=re.escape(f"model.kind hf-gpt2 needs the transformers package: {HINT}")):
        build_model(small())
    err = one_error_line(capsys, ["params", "hf-gpt2"])
    assert err == f"muse: error: model.kind hf-gpt2 needs the transformers package: {HINT}\n"
    err = one_error_line(capsys, ["train", "hf-gpt2", "--run-dir", str(tmp_path / "run")])
    assert err == f"muse: error: model.kind hf-gpt2 needs the transformers package: {HINT}\n"
    assert not (tmp_path / "run").exists()  # refused before anything was made or prepared
    err = one_error_line(capsys, ["eval", "--hf", str(tmp_path), "--dataset", "pystdlib"])
    assert err == f"muse: error: muse eval --hf needs the transformers package: {HINT}\n"
    build_model(small("baseline"))  # MUSE's own models need nothing more
    assert main(["params", "baseline", "--json"]) == 0


def test_import_muse_does_not_import_transformers():
    code = "import sys, muse, muse.cli, muse.model, muse.evaluate; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@needs_hf
def test_too_old_transformers_is_named(monkeypatch):
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.41.2")
    with pytest.raises(ValueError, match=r"needs transformers >= 4\.42 \(found 4\.41\.2\)"):
        build_model(small())
