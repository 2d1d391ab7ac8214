"""The HAMT presets end to end: `muse params` counts the holographic mixer, `muse train` logs the
memory statistics, `muse eval` reports them, `muse generate` decodes with the recurrent memory."""

import json

import pytest
import torch

from muse.cli import main
from muse.config import load_config
from muse.generate import generate
from muse.runtime import load_for_inference

STATS = ("memory_fidelity", "slot_utilisation", "effective_slots")


def test_presets_have_the_specified_shapes():
    big = load_config("hamt-100m")
    m, h = big.model, big.model.mixer.holographic
    assert (m.d_model, m.n_layers, m.vocab_size, m.mixer.kind) == (512, 8, 10000, "holographic")
    assert (h.hcm_dim, h.num_slots) == (2048, 16)
    assert m.positions == "none"  # decoding is not capped by a position table
    small = load_config("hamt-small")
    assert small.model.mixer.kind == "holographic" and small.model.d_model <= 256


def test_params_counts_the_holographic_mixer(capsys):
    assert main(["params", "hamt-100m", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    rows = {c["name"]: c for c in r["components"]}
    d, D, S, L = 512, 2048, 16, 8
    # fused q, k, v and slot logits (with bias), W_o (with bias), the read norm, the slot decays
    per_layer = d * (3 * D + 2 * S) + 3 * D + 2 * S + D * d + d + D + S
    assert rows["mixers"]["actual"] == L * per_layer
    assert rows["mixers"]["dense_equivalent"] == L * (4 * d * d + 4 * d)  # the same-shape attention layer
    assert sum(c["actual"] for c in r["components"]) == r["actual_params"]


@pytest.fixture(scope="module")
def hamt_run(tmp_path_factory, shared_data, token_cache):
    """A few `muse train hamt-small` steps on WikiText-2 at a test-sized shape, TensorBoard on."""
    run = tmp_path_factory.mktemp("hamt") / "run"
    args = [
        "train", "hamt-small", "--run-dir", str(run), "--dataset", "wikitext-2", "--data-dir",
        str(shared_data / "wikitext-2"), "--data.cache_dir", str(token_cache), "--model.vocab_size", "512",
        "--model.d_model", "48", "--model.n_layers", "2", "--model.max_seq_len", "64",
        "--model.mixer.holographic.hcm_dim", "33", "--model.mixer.holographic.num_slots", "4",
        "--model.mixer.holographic.chunk_size", "16", "--train.batch_size", "8", "--train.max_steps", "6",
        "--train.eval_every", "3", "--train.eval_tokens", "2048", "--train.warmup_steps", "2",
        "--train.progress", "false", "--train.tensorboard", "true",
    ]
    assert main(args) == 0
    return run


def test_training_logs_memory_statistics(hamt_run):
    vals = [json.loads(line) for line in (hamt_run / "metrics.jsonl").read_text().splitlines()]
    vals = [v for v in vals if "val_loss" in v]
    assert [v["step"] for v in vals] == [3, 6]
    for v in vals:
        assert 0 < v["memory_fidelity"] <= 1 and 0 < v["slot_utilisation"] <= 1 and 1 <= v["effective_slots"] <= 4
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(hamt_run / "tensorboard"))
    acc.Reload()
    assert set(STATS) <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("memory_fidelity")] == [3, 6]


def test_eval_reports_memory_statistics(hamt_run, capsys):
    assert main(["eval", str(hamt_run), "--split", "valid", "--json", "--max-tokens", "2048"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert 0 < r["memory_fidelity"] <= 1 and 0 < r["slot_utilisation"] <= 1 and 1 <= r["effective_slots"] <= 4


def test_generate_decodes_with_the_recurrent_memory(hamt_run, capsys):
    model, _, tok, _, _ = load_for_inference(hamt_run, torch.device("cpu"))
    assert model.max_context is None  # no position table, no KV cache: any length decodes
    state = model.init_state(1)
    assert [s["memory"].shape for s in state["layers"]] == [(1, 4, 34)] * 2  # (B, S, 2F): fixed size
    prompt = torch.tensor([tok.encode(" The game was")])
    new = generate(model, prompt, 12, temperature=0.0)
    seq = torch.cat([prompt, torch.tensor([new])], dim=1)
    with torch.no_grad():
        logits = model(seq).logits[0]  # (T, V): the chunked training forward
    assert new == logits[prompt.size(1) - 1 : -1].argmax(-1).tolist()
    assert main(["generate", str(hamt_run), "--prompt", " The", "--max-new-tokens", "70", "--seed", "3"]) == 0
    assert capsys.readouterr().out.startswith(" The")
