"""Evaluation scores every window as if alone, in batches of one shape (``muse.evaluate``)."""

import numpy as np
import pytest
import torch

from muse import build_model
from muse.evaluate import total_nll
from tests.test_model import small

# the preset's mixers: attention (baseline), the gated semiseparable + one attention (standard),
# the holographic memory (hamt-small)
PRESETS = ["baseline", "standard", "hamt-small"]


def _model(preset: str):
    over = {"model.dropout": 0.0}
    if preset == "hamt-small":
        over.update({"model.mixer.holographic.hcm_dim": 16, "model.mixer.holographic.num_slots": 4})
    torch.manual_seed(0)
    return build_model(small(preset, **over)).double().eval()


# statistics that are token means; the others (slot use, effective slots) are functions of a
# batch's mean write mass, so they depend on how the windows are batched as well
LINEAR_STATS = {"memory_fidelity", "effective_rank", "gate_mean"}
FP32_STATS = {"memory_fidelity"}  # its cosines are taken in float32, a float64 model's too


def _close(got: float, want: float, key: str) -> bool:
    return got == pytest.approx(want, rel=1e-6 if key in FP32_STATS else 1e-10, abs=1e-12)


def _reference(model, tokens: np.ndarray, seq_len: int, batch_size: int = 1) -> tuple[float, int, dict]:
    """Unpadded forwards of batch_size windows at a time (a short window alone): the NLL summed
    and the mixers' statistics averaged over the batches, weighted by their tokens."""
    starts = list(range(0, len(tokens) - 1, seq_len))
    windows = [torch.from_numpy(tokens[i : i + seq_len + 1].astype(np.int64)) for i in starts]  # (n+1,)
    groups = [[w] for w in windows if w.numel() <= seq_len]  # the short one alone
    full = [w for w in windows if w.numel() == seq_len + 1]
    groups += [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    nll, count, stats = 0.0, 0, {}
    with torch.no_grad():
        for g in groups:
            w = torch.stack(g)  # (b, n+1)
            n = w[:, 1:].numel()
            nll += model(w[:, :-1], w[:, 1:]).loss.item() * n
            count += n
            for k, v in model.mixer_stats().items():
                stats[k] = stats.get(k, 0.0) + v * n
    return nll, count, {k: v / count for k, v in stats.items()}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("n_tokens,batch_size", [(7 * 13 + 6, 3), (2 * 13 + 1, 5), (13 * 4 + 1, 2)])
def test_padded_batches_score_each_window_as_alone(preset, n_tokens, batch_size):
    """Odd splits: a short last window, a short last batch, fewer windows than a batch, and an
    exact fit. Total NLL, token count and the mixers' token-mean statistics match each window's
    own unpadded forward (float64: 1e-10 relative; 1e-6 for a statistic taken in float32)."""
    model, seq_len = _model(preset), 13
    tokens = np.random.default_rng(1).integers(0, 97, n_tokens).astype(np.uint16)
    want_nll, want_count, want_stats = _reference(model, tokens, seq_len)
    stats: dict = {}
    nll, count, _ = total_nll(model, tokens, seq_len, torch.device("cpu"), batch_size, stats=stats)
    assert count == want_count == n_tokens - 1
    assert nll == pytest.approx(want_nll, rel=1e-10)
    assert stats.keys() == want_stats.keys() and (preset == "baseline" or stats)
    for k in want_stats.keys() & LINEAR_STATS:
        assert _close(stats[k], want_stats[k], k), k


@pytest.mark.parametrize("preset", ["standard", "hamt-small"])
@pytest.mark.parametrize("n_tokens,batch_size", [(5 * 13 + 1, 4), (9, 4)])
def test_padding_is_not_in_the_statistics(preset, n_tokens, batch_size):
    """Every statistic, the batch-level ones too, where the padded batches hold the reference's
    windows: a short last batch padded with rows, and one short window padded in length."""
    model, seq_len = _model(preset), 13
    tokens = np.random.default_rng(3).integers(0, 97, n_tokens).astype(np.uint16)
    want_nll, _, want_stats = _reference(model, tokens, seq_len, batch_size)
    stats: dict = {}
    nll, _, _ = total_nll(model, tokens, seq_len, torch.device("cpu"), batch_size, stats=stats)
    assert nll == pytest.approx(want_nll, rel=1e-10)
    assert stats.keys() == want_stats.keys() and stats
    for k in want_stats:
        assert _close(stats[k], want_stats[k], k), k


def test_every_forward_has_one_shape():
    """Nothing is compiled or autotuned for a tail: every batch is (batch_size, seq_len) once one
    batch was full, and the split's padding is not scored."""
    model = _model("standard")
    shapes: list = []
    model.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    tokens = np.random.default_rng(2).integers(0, 97, 5 * 13 + 4).astype(np.uint16)  # 6 windows, the last of 4
    _, count, _ = total_nll(model, tokens, 13, torch.device("cpu"), batch_size=4)
    assert shapes == [(4, 13), (4, 13)] and count == 5 * 13 + 3
    shapes.clear()
    total_nll(model, tokens, 13, torch.device("cpu"), batch_size=8)  # fewer windows than a batch
    assert shapes == [(6, 13)]
