"""Training batches (deterministic per step, resumable) and exhaustive evaluation windows."""

import numpy as np
import pytest
import torch

from muse.data import BatchSampler, DataError, eval_windows


@pytest.fixture
def tokens():
    return np.arange(10_000, dtype=np.uint16)  # token i == position i makes windows checkable


def test_batch_shapes_and_shift(tokens):
    sampler = BatchSampler(tokens, batch_size=4, seq_len=32, seed=1)
    x, y = sampler.get(0)
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # y is x shifted by one token
    assert torch.equal(x[:, 1:], y[:, :-1])
    starts = torch.from_numpy(sampler.starts(0))
    assert torch.equal(x[:, 0], starts)


def test_resume_gives_identical_batches(tokens):
    """Batches depend on (seed, step) only: a sampler created at step 5 (a resumed run)
    yields exactly what an uninterrupted run yields at steps 5..9."""
    run = BatchSampler(tokens, 8, 16, seed=7)
    uninterrupted = [run.get(step) for step in range(10)]
    resumed = BatchSampler(tokens, 8, 16, seed=7)
    for step in range(5, 10):
        x, y = resumed.get(step)
        assert torch.equal(x, uninterrupted[step][0]) and torch.equal(y, uninterrupted[step][1])
    assert not torch.equal(run.get(0)[0], run.get(1)[0])
    assert not torch.equal(run.get(0)[0], BatchSampler(tokens, 8, 16, seed=8).get(0)[0])


def test_ranks_split_one_global_batch(tokens):
    """W processes of B sequences see exactly the windows of one process of W·B sequences (what
    makes FSDP/DDP training match single-process training), each process a different slice."""
    r0 = BatchSampler(tokens, 4, 16, seed=7, rank=0, world_size=2).get(3)[0]
    r1 = BatchSampler(tokens, 4, 16, seed=7, rank=1, world_size=2).get(3)[0]
    assert not torch.equal(r0, r1)
    whole = BatchSampler(tokens, 8, 16, seed=7).get(3)[0]
    assert torch.equal(torch.cat([r0, r1]), whole)
    with pytest.raises(DataError, match="rank 2 must be < world_size 2"):
        BatchSampler(tokens, 8, 16, seed=7, rank=2, world_size=2)


def test_windows_stay_inside_the_split():
    tokens = np.arange(20, dtype=np.uint16)
    sampler = BatchSampler(tokens, batch_size=64, seq_len=19, seed=0)  # only one window fits
    for step in range(5):
        x, y = sampler.get(step)
        assert int(x.min()) == 0 and int(y.max()) == 19
    sampler = BatchSampler(tokens, batch_size=256, seq_len=4, seed=0)
    starts = np.concatenate([sampler.starts(s) for s in range(10)])
    assert starts.min() == 0 and starts.max() == 20 - 5  # every start is reachable, none too late


def test_short_split_is_an_error():
    with pytest.raises(DataError, match=r"the split has 16 tokens, fewer than seq_len \+ 1 = 17"):
        BatchSampler(np.zeros(16, dtype=np.uint16), 2, 16, seed=0)
    with pytest.raises(DataError, match="batch_size must be an integer >= 1"):
        BatchSampler(np.zeros(100, dtype=np.uint16), 0, 16, seed=0)


def test_works_on_a_memmap(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(1000, dtype=np.uint32).tofile(path)
    mm = np.memmap(path, dtype=np.uint32, mode="r", shape=(1000,))
    x, y = BatchSampler(mm, 3, 10, seed=0).get(0)
    assert torch.equal(y, x + 1) and x.dtype == torch.int64


@pytest.mark.parametrize("length, seq_len", [(2, 4), (100, 10), (101, 10), (102, 10), (1000, 7), (5, 64)])
def test_eval_windows_predict_every_token_once(length, seq_len):
    tokens = np.arange(length, dtype=np.uint16)
    windows = list(eval_windows(tokens, seq_len))
    for x, y in windows:
        assert x.shape == y.shape and x.shape[0] == 1 and 1 <= x.shape[1] <= seq_len
        assert x.dtype == torch.int64 and torch.equal(y, x + 1)
    assert all(x.shape[1] == seq_len for x, _ in windows[:-1])  # only the last is shorter
    predicted = torch.cat([y[0] for _, y in windows]).numpy()
    np.testing.assert_array_equal(predicted, tokens[1:])  # each token after the first, once


def test_eval_windows_max_tokens_and_edge_cases():
    tokens = np.arange(1000, dtype=np.uint16)
    windows = list(eval_windows(tokens, 64, max_tokens=200))
    assert sum(x.shape[1] for x, _ in windows) == 256  # stops after the window reaching 200
    assert list(eval_windows(np.zeros(1, dtype=np.uint16), 8)) == []  # nothing to predict
    assert list(eval_windows(np.zeros(0, dtype=np.uint16), 8)) == []
