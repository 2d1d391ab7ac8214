"""Evaluation: per-token and word-level perplexity, bits per byte, throughput (DESIGN.md §2).

Perplexity is exp(mean NLL per token) over non-overlapping windows of the split; word-level
perplexity is exp(total NLL / number of words), which compares across tokenizers; bits per byte
is total NLL / (ln 2 · UTF-8 bytes). All three use the same total NLL of every predicted token.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import torch

from muse.data import eval_windows


def _batched(windows, batch_size: int):
    """Group equal-length windows so the full ones run as batches and the short tail alone."""
    batch: list = []
    for x, y in windows:
        if batch and (len(batch) == batch_size or batch[0][0].shape != x.shape):
            yield torch.cat([b[0] for b in batch]), torch.cat([b[1] for b in batch])
            batch = []
        batch.append((x, y))
    if batch:
        yield torch.cat([b[0] for b in batch]), torch.cat([b[1] for b in batch])


@torch.no_grad()
def total_nll(
    model,
    tokens: np.ndarray,
    seq_len: int,
    device: torch.device,
    batch_size: int = 8,
    max_tokens: int = 0,
    autocast: contextlib.AbstractContextManager | None = None,
    stats: dict | None = None,
) -> tuple[float, int, float]:
    """Sum of next-token NLL over the split's windows: (nll, predicted tokens, seconds).

    ``stats``, if given, is filled with the mixers' diagnostics (``MuseLM.mixer_stats``: memory
    fidelity, slot use, effective rank, ...) averaged over the batches, weighted by their tokens.

    In a process group of several processes (DDP, FSDP) each one scores every world-th batch and
    the sums are all-reduced, so every process returns the whole split's totals. Every process
    runs the same number of forwards (one that has no batch left repeats a batch with weight 0):
    an FSDP forward gathers parameters from all of them.
    """
    from muse.distributed import all_reduce_sum, is_distributed

    was_training = model.training
    model.eval()
    rank, world = 0, 1
    if is_distributed():
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # (nll, tokens)
    want_stats = stats is not None and hasattr(model, "mixer_stats")  # not e.g. a Hugging Face model
    keys: list[str] = []  # the mixers' statistics, known after the first forward (the same on every rank)
    sums = torch.zeros(0, dtype=torch.float64, device=device)  # their token-weighted sums

    def score(x: torch.Tensor, y: torch.Tensor, weight: float) -> None:
        nonlocal keys, sums
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast or contextlib.nullcontext():
            loss = model(x, y).loss
        totals[0] += loss.double() * weight
        totals[1] += weight
        if want_stats:
            got = model.mixer_stats()
            if not keys:
                keys = sorted(got)
                sums = torch.zeros(len(keys), dtype=torch.float64, device=device)
            sums += torch.tensor([got[k] for k in keys], dtype=torch.float64, device=device) * weight

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    first, batches, mine = None, 0, 0
    for i, (x, y) in enumerate(_batched(eval_windows(tokens, seq_len, max_tokens), batch_size)):
        batches += 1
        first = first or (x, y)
        if i % world == rank:
            score(x, y, float(y.numel()))
            mine += 1
    for _ in range(-(-batches // world) - mine):  # as many forwards as the process with the most
        score(*first, 0.0)
    all_reduce_sum(totals)
    all_reduce_sum(sums)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    model.train(was_training)
    nll, count = totals.tolist()
    if stats is not None and count:
        stats.update({k: v / count for k, v in zip(keys, sums.tolist())})
    return nll, int(count), time.perf_counter() - t0


def metrics(nll: float, count: int, seconds: float, words: int | None, nbytes: int | None) -> dict:
    loss = nll / max(count, 1)
    return {
        "tokens": count,
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "words": words,
        "word_perplexity": math.exp(min(nll / words, 700.0)) if words else None,
        "bytes": nbytes,
        "bits_per_byte": nll / (math.log(2) * nbytes) if nbytes else None,
        "tokens_per_s": count / seconds if seconds > 0 else None,
    }


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def score(model, tokens: np.ndarray, stats: dict, seq_len: int, dev: torch.device, batch_size: int,
          max_tokens: int) -> dict:
    """``metrics`` of ``model`` on one prepared split (its token memmap and its ``stats``), plus
    the peak GPU memory: what ``muse eval`` reports for a run and for ``--hf`` alike."""
    if batch_size < 1:  # _batched would put the whole split into one batch
        raise ValueError(f"--batch-size must be >= 1; got {batch_size}")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    mixer_stats: dict[str, float] = {}
    nll, count, seconds = total_nll(model, tokens, seq_len, dev, batch_size, max_tokens, stats=mixer_stats)
    full = max_tokens == 0
    # word and byte normalisers only apply when the whole split was scored
    out = metrics(nll, count, seconds, stats["words"] if full else None, stats["bytes"] if full else None)
    out["peak_memory_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    out.update(mixer_stats)  # e.g. memory_fidelity, slot_utilisation, effective_slots (holographic)
    return out


def evaluate_checkpoint(
    path: str | Path,
    split: str = "test",
    dataset: str | None = None,
    data_dir: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    max_tokens: int = 0,
    tag: str = "last",
    int8: bool = False,
    cache_dir: str | None = None,
) -> dict:
    """Load a run or checkpoint dir and evaluate it on a split (``muse eval``)."""
    from muse.data import prepare_data
    from muse.runtime import load_for_inference, resolve_device

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {batch_size}")
    dev = resolve_device(device)
    model, cfg, tokenizer, ckpt_dir, state = load_for_inference(path, dev, tag, int8=int8)
    if dataset is not None and dataset != cfg.data.dataset:
        cfg.data.dataset, cfg.data.data_dir = dataset, None  # the run's data_dir holds its own dataset
    if data_dir is not None:
        cfg.data.data_dir = data_dir
    if cache_dir is not None:
        cfg.data.cache_dir = cache_dir
    cfg.data.__post_init__()
    data = prepare_data(cfg.data, cfg.model.vocab_size, tokenizer=tokenizer)
    if split not in data.tokens:
        raise ValueError(f"--split must be one of {', '.join(data.tokens)}; got {split!r}")
    out = {
        "checkpoint": str(ckpt_dir),
        "step": state.get("step"),
        "dataset": cfg.data.dataset,
        "split": split,
        "tokenizer": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "seq_len": cfg.seq_len,
        "device": _device_name(dev),
        "torch": torch.__version__,
        "int8": int8,
    }
    out.update(score(model, data.tokens[split], data.stats[split], cfg.seq_len, dev, batch_size, max_tokens))
    return out


def evaluate_hf(
    path: str | Path,
    dataset: str,
    data_dir: str | None = None,
    split: str = "test",
    seq_len: int = 0,
    batch_size: int = 8,
    device: str = "auto",
    max_tokens: int = 0,
    cache_dir: str | None = None,
) -> dict:
    """Score a local Hugging Face checkpoint folder zero-shot on a split (``muse eval --hf``), with
    its own tokenizer, through the same windows and metrics as a MUSE run. ``seq_len`` 0: the
    model's position table (n_positions); otherwise at most that."""
    from muse.config import DataConfig
    from muse.data import SPLITS, DataError, prepare_data
    from muse.hf import load_pretrained
    from muse.runtime import resolve_device

    if split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}; got {split!r}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {batch_size}")
    if seq_len < 0:
        raise ValueError(f"--seq-len must be >= 0 (0: the model's n_positions); got {seq_len}")
    data_cfg = DataConfig(dataset=dataset, data_dir=data_dir, **({"cache_dir": cache_dir} if cache_dir else {}))
    dev = resolve_device(device)
    model, tokenizer, facts = load_pretrained(path, dev)
    n = model.max_context
    seq = min(n, seq_len) if n and seq_len else (seq_len or n)
    if not seq:
        raise ValueError(f"--hf {path}: the model's config gives no n_positions; set --seq-len")
    if tokenizer.vocab_size > model.vocab_size:
        raise DataError(
            f"--hf {path}: its tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary holds "
            f"{model.vocab_size}"
        )
    # only the scored split: the others (WikiText's train) would be tokenized for nothing
    data = prepare_data(data_cfg, model.vocab_size, tokenizer=tokenizer, splits=(split,))
    out = {
        "checkpoint": str(Path(path).expanduser()),
        "step": None,
        **facts,
        "dataset": dataset,
        "split": split,
        "tokenizer": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "seq_len": seq,
        "device": _device_name(dev),
        "torch": torch.__version__,
        "int8": False,
    }
    out.update(score(model, data.tokens[split], data.stats[split], seq, dev, batch_size, max_tokens))
    return out
