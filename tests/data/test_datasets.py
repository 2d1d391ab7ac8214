"""Text sources: pystdlib, WikiText (files and hub), text:PATH, counts and errors."""

import sys
import types

import pytest

from muse.config import DataConfig
from muse.data import SPLITS, DataError, count_bytes, count_words, load_text_splits
from muse.data.datasets import split_files_by_hash, stdlib_files

from . import shared


def test_count_words_wikitext2_test_is_the_published_count():
    text = (shared("wikitext-2") / "test.txt").read_text(encoding="utf-8")
    assert count_words(text) == 245_569
    raw = shared("wikitext-2-raw") / "wiki.test.raw"  # same words, real tokens instead of <unk>
    assert count_words(raw.read_text(encoding="utf-8")) == 245_569


def test_count_words_and_bytes_small():
    assert count_words("") == 0
    assert count_words(" \n") == 1  # an empty line is one <eos>
    assert count_words("a b\nc") == 3 + 2  # final line without newline still counts
    assert count_bytes("é€") == 5


def test_wikitext_dir_keeps_files_whole():
    d = shared("wikitext-2")
    splits = load_text_splits(DataConfig(dataset="wikitext-2", data_dir=str(d)))
    assert splits.name == "wikitext-2"
    for s, fname in zip(SPLITS, ("train.txt", "valid.txt", "test.txt")):
        assert splits.docs[s] == [(d / fname).read_text(encoding="utf-8")]
    assert len(splits.fingerprint) == 64


def test_wikitext_raw_valid_test_only(tmp_path):
    d = shared("wikitext-2-raw")
    cfg = DataConfig(dataset="wikitext-2", data_dir=str(d))
    with pytest.raises(DataError, match=r"no WikiText-2 train split: expected wiki\.train\.raw"):
        load_text_splits(cfg)
    splits = load_text_splits(cfg, splits=("valid", "test"))
    assert set(splits.docs) == {"valid", "test"}
    assert count_words(splits.docs["valid"][0]) == 217_646


def test_wikitext_accepts_tokens_names(tmp_path):
    for s in SPLITS:
        (tmp_path / f"wiki.{s}.tokens").write_text(f" = {s} = \n \n")
    splits = load_text_splits(DataConfig(dataset="wikitext-103", data_dir=str(tmp_path)))
    assert splits.docs["valid"] == [" = valid = \n \n"]


def test_wikitext_dir_without_files(tmp_path):
    cfg = DataConfig(dataset="wikitext-2", data_dir=str(tmp_path))
    msg = (
        f"data.data_dir {tmp_path} has no WikiText-2 files: expected train.txt/valid.txt/test.txt, "
        "wiki.{train,valid,test}.tokens or wiki.{train,valid,test}.raw"
    )
    with pytest.raises(DataError) as e:
        load_text_splits(cfg)
    assert str(e.value) == msg
    with pytest.raises(DataError, match="is not a directory"):
        load_text_splits(DataConfig(dataset="wikitext-2", data_dir=str(tmp_path / "nope")))


def test_wikitext_missing_split_is_named(tmp_path):
    (tmp_path / "train.txt").write_text("a\n")
    (tmp_path / "test.txt").write_text("b\n")
    with pytest.raises(DataError, match=rf"{tmp_path} has no WikiText-2 valid split: expected valid\.txt"):
        load_text_splits(DataConfig(dataset="wikitext-2", data_dir=str(tmp_path)))


def test_hub_unavailable_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError) as e:
        load_text_splits(DataConfig(dataset="wikitext-2"))
    msg = str(e.value)
    assert msg.startswith("wikitext-2: no data.data_dir given and the Hugging Face hub could not be used (")
    assert msg.endswith("pass --data.data_dir DIR with train.txt/valid.txt/test.txt")
    assert "\n" not in msg


def test_hub_network_failure(monkeypatch):
    def load_dataset(path, name):
        raise ConnectionError(f"cannot reach hub for {path}/{name}")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(DataError, match=r"wikitext-103-raw-v1\); pass --data.data_dir"):
        load_text_splits(DataConfig(dataset="wikitext-103"))


def test_hub_rows_rebuild_the_raw_file(monkeypatch):
    calls = []

    def load_dataset(path, name):
        calls.append((path, name))
        rows = ["", " = Title = \n", "", " Some text . \n"]  # the hub's form of blank lines is ""
        return {k: {"text": rows} for k in ("train", "validation", "test")}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    splits = load_text_splits(DataConfig(dataset="wikitext-2"))
    assert calls == [("Salesforce/wikitext", "wikitext-2-raw-v1")]
    assert splits.docs["test"] == [" \n = Title = \n \n Some text . \n"]
    assert count_words(splits.docs["test"][0]) == 6 + 4  # 6 tokens, 4 lines


def test_pystdlib_splits():
    a = load_text_splits(DataConfig(dataset="pystdlib"))
    n = {s: len(a.docs[s]) for s in SPLITS}
    total = sum(n.values())
    assert total > 300 and min(n.values()) > 0
    assert 0.85 < n["train"] / total < 0.95
    assert all(isinstance(d, str) for s in SPLITS for d in a.docs[s])
    rels = list(stdlib_files())
    assert "argparse.py" in rels and "json/decoder.py" in rels
    for skipped in ("test", "tests", "idle_test", "idlelib", "site-packages"):
        assert not any(skipped in r.split("/")[:-1] for r in rels), skipped
    assert rels == sorted(rels)
    b = load_text_splits(DataConfig(dataset="pystdlib"))
    assert a.fingerprint == b.fingerprint and a.docs == b.docs


def test_split_files_by_hash_is_stable_and_never_empty():
    for n in (3, 4, 10, 50):
        rels = [f"f{i}.py" for i in range(n)]
        parts = split_files_by_hash(rels)
        assert all(parts[s] for s in SPLITS)
        assert sorted(sum(parts.values(), [])) == sorted(rels)
        assert parts == split_files_by_hash(list(reversed(rels)))  # order-independent
        assert all(p == sorted(p) for p in parts.values())


def test_text_file_contiguous_line_split(tmp_path):
    lines = [f"line {i}\n" for i in range(100)]
    f = tmp_path / "corpus.txt"
    f.write_text("".join(lines))
    splits = load_text_splits(DataConfig(dataset=f"text:{f}"))
    assert "".join(splits.docs[s][0] for s in SPLITS) == "".join(lines)
    assert splits.docs["valid"] == ["".join(lines[90:95])]
    assert splits.docs["test"] == ["".join(lines[95:])]


def test_text_file_too_short(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text("one\ntwo\n")
    with pytest.raises(DataError, match="at least 3 lines"):
        load_text_splits(DataConfig(dataset=f"text:{f}"))


def test_text_folder_split_by_file(tmp_path):
    for i in range(20):
        (tmp_path / "sub" if i % 2 else tmp_path).mkdir(exist_ok=True)
        ((tmp_path / "sub" if i % 2 else tmp_path) / f"doc{i}.md").write_text(f"document {i}\n")
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe\x00\x80")  # not UTF-8: skipped
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")  # hidden: skipped
    splits = load_text_splits(DataConfig(dataset=f"text:{tmp_path}"))
    docs = sum(splits.docs.values(), [])
    assert sorted(docs) == sorted(f"document {i}\n" for i in range(20))
    assert all(splits.docs[s] for s in SPLITS)
    fp = splits.fingerprint
    (tmp_path / "doc0.md").write_text("changed\n")
    assert load_text_splits(DataConfig(dataset=f"text:{tmp_path}")).fingerprint != fp


def test_text_folder_with_few_files_splits_lines(tmp_path):
    (tmp_path / "a.txt").write_text("".join(f"a{i}\n" for i in range(30)))
    (tmp_path / "b.txt").write_text("".join(f"b{i}\n" for i in range(10)))
    splits = load_text_splits(DataConfig(dataset=f"text:{tmp_path}"))
    assert splits.docs["test"] == ["b8\nb9\n"]
    assert all(len(splits.docs[s]) == 1 for s in SPLITS)


def test_text_missing_path(tmp_path):
    with pytest.raises(DataError, match=rf"text:{tmp_path}/missing: {tmp_path}/missing does not exist"):
        load_text_splits(DataConfig(dataset=f"text:{tmp_path}/missing"))
    with pytest.raises(DataError, match="no UTF-8 text files"):
        load_text_splits(DataConfig(dataset=f"text:{tmp_path}"))


def test_bad_splits_argument():
    with pytest.raises(DataError, match="splits must be"):
        load_text_splits(DataConfig(), splits=("training",))
