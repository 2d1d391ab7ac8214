"""Tokenizers: BPE training, GPT-2 files, bytes, persistence, piece-wise encoding, errors."""

import random
import shutil
import sysconfig
from pathlib import Path

import pytest

from muse.config import DataConfig
from muse.data import DataError, Tokenizer, build_tokenizer, bytes_tokenizer, gpt2_tokenizer, train_bpe
from muse.data.tokenizer import _pieces

from . import shared

SAMPLE = "Hello world! Ünïcödé ✓ 中文\n\n\tindented\n    def f(x):  \n        return x  # ok\r\n"


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """~300 KB of real text: a slice of WikiText-2 train plus some Python sources."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = [(stdlib / f).read_text(encoding="utf-8") for f in ("argparse.py", "textwrap.py", "json/decoder.py")]
    try:
        docs.append((shared("wikitext-2") / "train.txt").read_text(encoding="utf-8")[:150_000])
    except pytest.skip.Exception:
        pass
    return docs


@pytest.fixture(scope="module")
def bpe(corpus) -> Tokenizer:
    return train_bpe(corpus, 1000)


def test_bytes_tokenizer():
    tok = bytes_tokenizer()
    assert (tok.kind, tok.vocab_size, tok.eos_id) == ("bytes", 257, 256)
    ids = tok.encode(SAMPLE)
    assert ids == list(SAMPLE.encode("utf-8"))
    assert tok.decode(ids) == SAMPLE
    assert tok.decode([0xE2, 0x82, 65]) == "\ufffdA"  # broken UTF-8 is replaced, not raised
    assert tok.decode([256]) == "<|endoftext|>"


def test_train_bpe_vocab_roundtrip_and_determinism(corpus, bpe):
    assert (bpe.kind, bpe.vocab_size, bpe.eos_id) == ("bpe", 1000, 0)  # enough text: exactly vocab_size
    for text in (SAMPLE, corpus[0][:5000]):
        assert bpe.decode(bpe.encode(text)) == text
    assert len(bpe.encode(corpus[0])) < len(corpus[0].encode()) / 2.5  # it does compress
    again = train_bpe(corpus, 1000)
    assert again.fingerprint() == bpe.fingerprint()
    assert train_bpe(corpus, 900).fingerprint() != bpe.fingerprint()


def test_train_bpe_small_text_gives_fewer_ids():
    tok = train_bpe(["ab ab ab"], 5000)
    assert 257 <= tok.vocab_size < 5000  # the 256 bytes + eos always exist
    assert tok.decode(tok.encode("abc é")) == "abc é"


def test_eos_is_a_single_special_token(bpe):
    ids = bpe.encode("a<|endoftext|>b")
    assert bpe.eos_id in ids and len(ids) == 3


def test_gpt2_tokenizer_matches_openai():
    tok = gpt2_tokenizer(shared("gpt2"))
    assert (tok.kind, tok.vocab_size, tok.eos_id) == ("gpt2", 50257, 50256)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.decode([15496, 995]) == "Hello world"
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    assert tok.encode("<|endoftext|>") == [50256]


def test_gpt2_accepts_hugging_face_names(tmp_path):
    src = shared("gpt2")
    shutil.copy(src / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(src / "vocab.bpe", tmp_path / "merges.txt")
    assert gpt2_tokenizer(tmp_path).encode("Hello world") == [15496, 995]


def test_gpt2_missing_files(tmp_path):
    (tmp_path / "encoder.json").write_text("{}")  # merges missing
    expected = r"lacks the GPT-2 files: expected encoder\.json \+ vocab\.bpe \(or vocab\.json \+ merges\.txt\)"
    with pytest.raises(DataError, match=expected):
        gpt2_tokenizer(tmp_path)


def test_save_load_roundtrip(tmp_path, bpe):
    toks = [bpe, bytes_tokenizer()]
    try:
        toks.append(gpt2_tokenizer(shared("gpt2")))
    except pytest.skip.Exception:
        pass
    for tok in toks:
        d = tmp_path / tok.kind
        assert tok.save(d) == d / "tokenizer.json"
        back = Tokenizer.load(d)
        assert (back.kind, back.vocab_size, back.eos_id) == (tok.kind, tok.vocab_size, tok.eos_id)
        assert back.fingerprint() == tok.fingerprint()
        assert back.encode(SAMPLE) == tok.encode(SAMPLE)
    with pytest.raises(DataError, match="no tokenizer.json"):
        Tokenizer.load(tmp_path / "nothing")


def test_fingerprints_differ_by_kind(bpe):
    assert len({bpe.fingerprint(), bytes_tokenizer().fingerprint()}) == 2


@pytest.mark.parametrize("size", [64, 512, 4096])
def test_piecewise_encoding_is_exact(corpus, size):
    """Cutting text at the safe points never changes the ids (the parallel-encoding premise)."""
    tok = gpt2_tokenizer(shared("gpt2"))
    hf = tok._hf
    texts = corpus[:2] + [corpus[-1][:60_000], SAMPLE * 50, "x\n\ny\n \nz \n w\n\n\n  q\n"]
    for text in texts:
        pieces = _pieces(text, size)
        assert "".join(pieces) == text
        if len(text) > 4 * size:
            assert len(pieces) > 1
        assert [i for p in pieces for i in hf.encode(p, add_special_tokens=False).ids] == hf.encode(text).ids


def test_piecewise_encoding_fuzz(bpe):
    """Random strings rich in whitespace runs, Unicode spaces, CRLF and eos tokens: cutting at
    the safe points must never change the ids (20,000 cases passed during development)."""
    alphabet = [" ", " ", "\t", "\n", "\n", "\r", "a", "b", "1", ".", "'", "s", "é", "\u00a0", "\u3000",
                "<|endoftext|>", "中", "\x0b", "\x1c", "  ", "\n    "]
    rng = random.Random(0)
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        pieces = _pieces(text, rng.randint(1, 12))
        assert "".join(pieces) == text
        ids = [i for p in pieces for i in bpe._hf.encode(p, add_special_tokens=False).ids]
        assert ids == bpe._hf.encode(text, add_special_tokens=False).ids, repr(text)


@pytest.mark.parametrize("pre", [dict(add_prefix_space=True), dict(use_regex=False)])
def test_foreign_byte_level_tokenizer_is_not_cut(tmp_path, bpe, pre):
    """A tokenizer.json from elsewhere (muse eval --hf) whose byte-level pre-tokenizer adds a
    prefix space or skips GPT-2's regex would encode each piece differently: it is encoded whole."""
    from tokenizers import Tokenizer as HFTokenizer, pre_tokenizers

    hf = HFTokenizer.from_str(bpe._hf.to_str())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(**pre)
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.load(tmp_path)
    # several pieces, and ones that start with "\n", where a prefix space would be added
    text = "".join(f"line {i} of text\n" for i in range(12_000))
    assert len(_pieces(text)) > 1
    assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids


def test_encode_batch_matches_encode(bpe, corpus):
    texts = [corpus[-1], "", SAMPLE, corpus[0]]
    assert bpe.encode_batch(texts) == [bpe._hf.encode(t).ids for t in texts]


def test_decode_rejects_out_of_range(bpe):
    with pytest.raises(DataError, match=r"token id 1000 is outside the bpe vocabulary \[0, 1000\)"):
        bpe.decode([1000])


def test_build_tokenizer_dispatch_and_vocab_check(tmp_path):
    gpt2_dir = str(shared("gpt2"))
    tok = build_tokenizer(DataConfig(tokenizer="gpt2", tokenizer_dir=gpt2_dir), 50304, [])
    assert tok.kind == "gpt2"
    with pytest.raises(DataError) as e:
        build_tokenizer(DataConfig(tokenizer="gpt2", tokenizer_dir=gpt2_dir), 4096, [])
    assert str(e.value) == (
        "tokenizer gpt2 has 50257 ids but model.vocab_size is 4096; set --model.vocab_size 50257 or more"
    )
    with pytest.raises(DataError, match="tokenizer bytes has 257 ids but model.vocab_size is 256"):
        build_tokenizer(DataConfig(tokenizer="bytes"), 256, [])
    with pytest.raises(DataError, match="tokenizer bpe has 257 ids but model.vocab_size is 100"):
        build_tokenizer(DataConfig(tokenizer="bpe"), 100, ["some text"])
    with pytest.raises(DataError, match="needs --data.tokenizer_dir"):
        build_tokenizer(DataConfig(tokenizer="gpt2"), 50257, [])
    assert build_tokenizer(DataConfig(tokenizer="bpe"), 300, ["aaaa bbbb aaaa"]).vocab_size <= 300
