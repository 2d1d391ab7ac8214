"""Evaluation scores every window of a split as if alone (``muse.evaluate.total_nll``)."""

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


def _alone(model, tokens: np.ndarray, seq_len: int) -> tuple[float, int, dict]:
    """Each window's own forward (B=1, its length): the NLL summed, and the mixers' statistics
    averaged over the windows, weighted by their tokens."""
    nll, count, stats = 0.0, 0, {}
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, seq_len):
            w = torch.from_numpy(tokens[start : start + seq_len + 1].astype(np.int64))[None]  # (1, n+1)
            n = w.size(1) - 1
            nll += model(w[:, :-1], w[:, 1:]).loss.item() * n
            count += n
            for k, v in model.mixer_stats().items():
                stats[k] = stats.get(k, 0.0) + v * n
    return nll, count, {k: v / count for k, v in stats.items()}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("n_tokens,batch_size", [(7 * 13 + 6, 3), (2 * 13 + 1, 5), (13 * 4 + 1, 2)])
def test_batches_score_each_window_as_alone(preset, n_tokens, batch_size):
    """Odd splits: a short last window, a short last batch, fewer windows than a batch, and an
    exact fit. Total NLL, token count and the mixers' token-mean statistics match each window's
    own forward (float64: 1e-10 relative; 1e-6 for a statistic taken in float32)."""
    model, seq_len = _model(preset), 13
    tokens = np.random.default_rng(1).integers(0, 97, n_tokens).astype(np.uint16)
    want_nll, want_count, want_stats = _alone(model, tokens, seq_len)
    stats: dict = {}
    nll, count, _ = total_nll(model, tokens, seq_len, torch.device("cpu"), batch_size, stats=stats)
    assert count == want_count == n_tokens - 1
    assert nll == pytest.approx(want_nll, rel=1e-10)
    assert stats.keys() == want_stats.keys() and (preset == "baseline" or stats)
    for k in want_stats.keys() & LINEAR_STATS:
        assert _close(stats[k], want_stats[k], k), k
