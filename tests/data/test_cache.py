"""The tokenized-split cache: layout, reuse without re-tokenizing, atomic writes, stats."""

import json
import resource
import signal

import numpy as np
import pytest

import muse.data.cache as cache
from muse.config import DataConfig
from muse.data import DataError, Tokenizer, bytes_tokenizer, count_words, prepare_data

from . import shared


@pytest.fixture
def corpus_dir(tmp_path):
    """A small text:PATH folder: 12 files, enough for a per-file split."""
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(12):
        (d / f"doc{i:02d}.txt").write_text("".join(f"Document {i} line {j}: the quick brown fox.\n" for j in range(40)))
    return d


def _cfg(corpus_dir, tmp_path, tokenizer="bpe", **kw):
    return DataConfig(dataset=f"text:{corpus_dir}", tokenizer=tokenizer, cache_dir=str(tmp_path / "cache"), **kw)


@pytest.fixture
def count_calls(monkeypatch):
    """Counts tokenizer encodes and tokenizer builds done by prepare_data."""
    calls = {"encode": 0, "build": 0}
    iter_encode, build = Tokenizer.iter_encode, cache.build_tokenizer

    def counting_iter_encode(self, texts):
        calls["encode"] += 1
        return iter_encode(self, texts)

    def counting_build(*args, **kwargs):
        calls["build"] += 1
        return build(*args, **kwargs)

    monkeypatch.setattr(Tokenizer, "iter_encode", counting_iter_encode)
    monkeypatch.setattr(cache, "build_tokenizer", counting_build)
    return calls


def test_prepare_and_reuse(corpus_dir, tmp_path, count_calls):
    cfg = _cfg(corpus_dir, tmp_path)
    first = prepare_data(cfg, 400)
    assert count_calls == {"encode": 3, "build": 1}  # one encode per split, one BPE training
    assert first.tokenizer.kind == "bpe" and first.tokenizer.vocab_size <= 400
    assert first.name == f"text:{corpus_dir}"
    path = first.cache_path
    assert path.parent == tmp_path / "cache" and path.name == f"text-corpus-{first.fingerprint[:16]}"
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "test.bin", "train.bin", "valid.bin"]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["tokenizer"]["kind"] == "bpe"
    for s, arr in first.tokens.items():
        assert isinstance(arr, np.memmap) and arr.dtype == np.uint16
        assert len(arr) == first.stats[s]["tokens"] == meta["splits"][s]["tokens"]
        assert arr.max() < first.tokenizer.vocab_size

    second = prepare_data(cfg, 400)
    assert count_calls == {"encode": 3, "build": 1}  # nothing re-trained, nothing re-tokenized
    assert second.cache_path == path and second.stats == first.stats
    assert second.tokenizer.fingerprint() == first.tokenizer.fingerprint()
    for s in first.tokens:
        np.testing.assert_array_equal(second.tokens[s], first.tokens[s])
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]


def test_documents_joined_by_eos_and_stats(corpus_dir, tmp_path):
    data = prepare_data(_cfg(corpus_dir, tmp_path, tokenizer="bytes"), 257)
    tok = data.tokenizer
    train = np.asarray(data.tokens["train"])
    docs = tok.decode(train.tolist()).split("<|endoftext|>")
    st = data.stats["train"]
    assert len(docs) == st["documents"] and len(train) == st["bytes"] + st["documents"] - 1
    assert st["words"] == sum(count_words(d) for d in docs)
    assert int((train == tok.eos_id).sum()) == st["documents"] - 1


def test_changed_source_or_tokenizer_gets_a_new_entry(corpus_dir, tmp_path):
    a = prepare_data(_cfg(corpus_dir, tmp_path, tokenizer="bytes"), 300)
    (corpus_dir / "doc00.txt").write_text("changed\n")
    b = prepare_data(_cfg(corpus_dir, tmp_path, tokenizer="bytes"), 300)
    c = prepare_data(_cfg(corpus_dir, tmp_path), 300)
    assert len({a.cache_path, b.cache_path, c.cache_path}) == 3


def test_given_tokenizer_is_used_and_checked(corpus_dir, tmp_path, count_calls):
    tok = bytes_tokenizer()
    data = prepare_data(_cfg(corpus_dir, tmp_path), 300, tokenizer=tok)  # cfg says bpe: ignored
    assert data.tokenizer is tok and count_calls["build"] == 0
    with pytest.raises(DataError, match="tokenizer bytes has 257 ids but model.vocab_size is 200"):
        prepare_data(_cfg(corpus_dir, tmp_path), 200, tokenizer=tok)


def test_crash_leaves_no_partial_cache(corpus_dir, tmp_path, monkeypatch):
    cfg = _cfg(corpus_dir, tmp_path, tokenizer="bytes")
    real = cache._tokenize_split
    done = []

    def crash_after_first_split(tokenizer, docs, dtype, path):
        if done:
            raise KeyboardInterrupt("simulated crash")
        done.append(path)
        return real(tokenizer, docs, dtype, path)

    monkeypatch.setattr(cache, "_tokenize_split", crash_after_first_split)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg, 257)
    assert list((tmp_path / "cache").iterdir()) == []  # no entry, no temp folder
    monkeypatch.undo()
    data = prepare_data(cfg, 257)
    assert (data.cache_path / "meta.json").is_file()


def test_token_dtype():
    assert cache._token_dtype(70_000) == np.uint32 and cache._token_dtype(65_535) == np.uint16


def test_wikitext2_gpt2_valid_test(tmp_path):
    cfg = DataConfig(
        dataset="wikitext-2",
        data_dir=str(shared("wikitext-2-raw")),
        tokenizer="gpt2",
        tokenizer_dir=str(shared("gpt2")),
        cache_dir=str(tmp_path),
    )
    data = prepare_data(cfg, 50257, splits=("valid", "test"))
    assert set(data.tokens) == {"valid", "test"}
    assert data.stats["test"]["words"] == 245_569
    assert data.stats["test"]["bytes"] == 1_290_590  # the file size in README
    assert data.tokens["test"].dtype == np.uint16
    text = (shared("wikitext-2-raw") / "wiki.test.raw").read_text(encoding="utf-8")
    np.testing.assert_array_equal(data.tokens["test"][:2000], data.tokenizer.encode(text[:20000])[:2000])
    with pytest.raises(DataError, match="trained on the train split"):
        bpe_cfg = DataConfig(dataset="wikitext-2", data_dir=cfg.data_dir, cache_dir=str(tmp_path))
        prepare_data(bpe_cfg, 4096, splits=("test",))


@pytest.mark.slow
def test_pystdlib_quickstart(tmp_path):
    """The quickstart's data step end to end (about 5 s on 2 cores, then ~0.1 s cached)."""
    cfg = DataConfig(cache_dir=str(tmp_path))
    first = prepare_data(cfg, 4096)
    assert first.tokenizer.vocab_size == 4096 and all(first.stats[s]["tokens"] > 0 for s in first.stats)
    second = prepare_data(cfg, 4096)
    assert second.cache_path == first.cache_path and second.timings["tokenize"] < 0.5


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_failed_cache_write_names_the_cache(corpus_dir, tmp_path):
    """A full disk (here: a file-size limit, the same kind of kernel refusal) while the token
    files are written: one DataError naming the cache and the option to move it, nothing left."""
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # train.bin needs tens of KiB
    try:
        with pytest.raises(DataError) as exc:
            prepare_data(_cfg(corpus_dir, tmp_path, tokenizer="bytes"), 300)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    msg = str(exc.value)
    assert msg.startswith(f"cannot write the data cache {tmp_path / 'cache'}/text-corpus-") and "\n" not in msg
    assert "File too large" in msg and "--data.cache_dir" in msg
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written entry
