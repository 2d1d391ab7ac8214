"""Tokenizers (DESIGN §1.9): byte-level BPE trained on the train split, GPT-2 BPE, raw bytes.

One class, :class:`Tokenizer`, wraps a Hugging Face ``tokenizers.Tokenizer`` (kinds ``bpe`` and
``gpt2``) or plain UTF-8 bytes (kind ``bytes``). All kinds share one end-of-text token,
``<|endoftext|>``, used to separate documents.

Speed: a Hugging Face tokenizer encodes one string on one thread, and very slowly for a
multi-megabyte string (a WikiText split is one 10 MB document). :meth:`Tokenizer.encode` therefore
cuts long texts into ~64 KB pieces at places where the GPT-2 pre-tokenizer regex cannot join
text across the cut, and encodes the pieces in parallel: the ids are exactly those of encoding
the whole text (tested), in a fraction of the time even on 2 cores (see
docs/performance-notes.md §12).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from muse.config import DataConfig
from muse.data.datasets import DataError

EOS_TOKEN = "<|endoftext|>"
KINDS = ("bpe", "gpt2", "bytes")
_META_FILE = "muse_tokenizer.json"  # kind and eos next to a Hugging Face tokenizer.json

# Safe cut points for byte-level BPE, which pre-tokenizes with the GPT-2 regex
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# Cut just before the last character w of a whitespace run, where w is " ", "\t" or "\n" and
# the next character c is visible ASCII other than "<" (never whitespace, never the start of
# <|endoftext|>, which Hugging Face splits off before pre-tokenizing). Uncut, the run minus w is one
# pre-token (\s+(?!\S) backtracks to leave w) and w starts the next one (" c..." or w alone);
# cut, the first piece ends with that same run (one pre-token at the end of a string) and the
# second starts with w. So pre-tokens, and hence BPE ids, are identical. Cuts are taken at line
# starts ("\n" + indentation) when possible, e.g. before the last space of "\n    def".
_LINE_CUT = re.compile(r"\n[ \t\n]*(?=[!-;=-~])")  # cut at match end - 1
_ANY_CUT = re.compile(r"[ \t\n](?=[!-;=-~])")  # cut at match start (for very long lines)
_PIECE_CHARS = 1 << 16  # target piece length for parallel encoding
_GROUP_PIECES = 256  # pieces per encode_batch call: bounds the memory of HF Encoding objects


def _pieces(text: str, size: int = _PIECE_CHARS) -> list[str]:
    """Cut ``text`` into pieces of about ``size`` characters at safe cut points (see above)."""
    out, start = [], 0
    while len(text) - start > 2 * size:
        pos = start + size
        m = _LINE_CUT.search(text, pos, pos + size)
        if m is not None:
            cut = m.end() - 1
        else:  # no line start within a window: the next cut point anywhere
            m = _ANY_CUT.search(text, pos)
            if m is None:
                break
            cut = m.start()
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


class Tokenizer:
    """Text ↔ token ids. ``kind`` is bpe | gpt2 | bytes; ids are in ``[0, vocab_size)``.

    Build one with :func:`train_bpe`, :func:`gpt2_tokenizer`, :func:`bytes_tokenizer` or
    :func:`build_tokenizer`; persist it with :meth:`save` / :meth:`load`.
    """

    def __init__(self, kind: str, hf: HFTokenizer | None = None):
        if kind not in KINDS:
            raise DataError(f"tokenizer kind must be one of {', '.join(KINDS)}; got {kind!r}")
        if (kind == "bytes") != (hf is None):
            raise DataError("a bytes tokenizer has no Hugging Face tokenizer; bpe and gpt2 need one")
        self.kind = kind
        self._hf = hf
        if hf is None:
            self.vocab_size, self.eos_id = 257, 256
        else:
            eos = hf.token_to_id(EOS_TOKEN)
            if eos is None:
                raise DataError(f"tokenizer has no {EOS_TOKEN} token")
            self.vocab_size, self.eos_id = hf.get_vocab_size(with_added_tokens=True), eos
        # Piece-wise encoding is exact only for the GPT-2 byte-level pre-tokenizer (its regex, no
        # prefix space: each piece would get one) without a normalizer (see _pieces); a foreign
        # tokenizer.json (e.g. beside a Hugging Face checkpoint, muse eval --hf) may differ, and is
        # then encoded text by text.
        pre = hf.pre_tokenizer if hf is not None else None
        self._can_cut = (
            hf is not None and hf.normalizer is None and isinstance(pre, pre_tokenizers.ByteLevel)
            and pre.use_regex and not pre.add_prefix_space
        )

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"

    # ------------------------------------------------------------------ encode / decode

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no eos added). Long texts are encoded in parallel pieces."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, encoded in parallel on all cores (Hugging Face's thread pool)."""
        out: list[list[int]] = [[] for _ in texts]
        for i, ids in self.iter_encode(texts):
            out[i].extend(ids)
        return out

    def iter_encode(self, texts: list[str]) -> Iterator[tuple[int, list[int]]]:
        """Yield ``(text index, ids)`` for consecutive pieces of each text, in order.

        Concatenating the ids of one index gives ``encode(texts[index])``; every text yields at
        least one (possibly empty) piece. Memory stays bounded by one group of pieces, so a
        corpus far larger than RAM as Python ints can be streamed to disk.
        """
        if self._hf is None:
            for i, t in enumerate(texts):
                data = t.encode("utf-8")
                for s in range(0, max(len(data), 1), _PIECE_CHARS):
                    yield i, list(data[s : s + _PIECE_CHARS])
            return
        group: list[tuple[int, str]] = []
        for i, t in enumerate(texts):
            for piece in _pieces(t) if self._can_cut else [t]:
                group.append((i, piece))
                if len(group) == _GROUP_PIECES:
                    yield from self._encode_group(group)
                    group = []
        yield from self._encode_group(group)

    def _encode_group(self, group: list[tuple[int, str]]) -> Iterator[tuple[int, list[int]]]:
        if group:
            encs = self._hf.encode_batch_fast([p for _, p in group], add_special_tokens=False)
            for (i, _), enc in zip(group, encs):
                yield i, enc.ids

    def decode(self, ids) -> str:
        """Text of ``ids``. Bytes that are not valid UTF-8 become U+FFFD; eos becomes its text."""
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise DataError(f"token id {i} is outside the {self.kind} vocabulary [0, {self.vocab_size})")
        if self._hf is not None:
            return self._hf.decode(ids, skip_special_tokens=False)
        eos = EOS_TOKEN.encode()
        return b"".join(eos if i == 256 else bytes((i,)) for i in ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` (the Hugging Face format, or a small marker for bytes) and,
        for Hugging Face kinds, ``muse_tokenizer.json`` with the kind. Returns the json path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id, "eos_token": EOS_TOKEN}
        path = d / "tokenizer.json"
        if self._hf is None:
            path.write_text(json.dumps({"muse_tokenizer": meta}, indent=1))
        else:
            self._hf.save(str(path))
            (d / _META_FILE).write_text(json.dumps(meta, indent=1))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Read a tokenizer written by :meth:`save` (or any byte-level HF ``tokenizer.json``
        with an ``<|endoftext|>`` token, taken as kind ``bpe``)."""
        d = Path(directory)
        path = d / "tokenizer.json"
        if not path.is_file():
            raise DataError(f"no tokenizer.json in {d}")
        text = path.read_text(encoding="utf-8")
        try:
            marker = json.loads(text).get("muse_tokenizer")
        except (json.JSONDecodeError, AttributeError):
            raise DataError(f"{path} is not a tokenizer file (invalid JSON)") from None
        if marker is not None:
            if marker.get("kind") != "bytes":
                raise DataError(f"{path}: unknown muse tokenizer marker {marker!r}")
            return bytes_tokenizer()
        kind = "bpe"
        if (d / _META_FILE).is_file():
            kind = json.loads((d / _META_FILE).read_text()).get("kind", "bpe")
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as e:  # noqa: BLE001 - the HF error type is an opaque Exception
            raise DataError(f"{path}: not a Hugging Face tokenizer ({e})") from None
        return cls(kind, hf)

    def fingerprint(self) -> str:
        """sha256 hex of the kind and the full serialized tokenizer (vocabulary, merges, pre-
        tokenizer, special tokens): any change to how text maps to ids changes it."""
        body = "bytes-v1" if self._hf is None else self._hf.to_str()
        return hashlib.sha256(f"{self.kind}\0{body}".encode()).hexdigest()


# ----------------------------------------------------------------------------- builders


def _byte_level(hf: HFTokenizer) -> HFTokenizer:
    # add_prefix_space=False: text is encoded as-is (GPT-2 behaviour), which is also what makes
    # piece-wise encoding exact.
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def _training_pieces(texts: list[str]) -> Iterator[str]:
    for t in texts:
        yield from _pieces(t)


def train_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``texts`` with at most ``vocab_size`` ids.

    The vocabulary holds the eos token (id 0), the 256 byte symbols and merges up to
    ``vocab_size`` ids in total; it has fewer only if the text runs out of pairs to merge, and
    at least 257 ids whatever ``vocab_size`` says. Training is deterministic: the same texts give
    the same tokenizer (and fingerprint). Long texts are fed in safe pieces, which leaves the
    pre-token counts, and hence the merges, unchanged while letting training run in parallel.
    """
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise DataError(f"vocab_size must be a positive integer; got {vocab_size!r}")
    hf = _byte_level(HFTokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable, no <unk>
        show_progress=False,
    )
    hf.train_from_iterator(_training_pieces(texts), trainer)
    return Tokenizer("bpe", hf)


def gpt2_tokenizer(directory: str | Path) -> Tokenizer:
    """OpenAI's GPT-2 BPE (50,257 ids, eos 50256) from ``encoder.json`` + ``vocab.bpe``
    (or the Hugging Face names ``vocab.json`` + ``merges.txt``) in ``directory``."""
    d = Path(directory).expanduser()
    for vocab_name, merges_name in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
        vocab, merges = d / vocab_name, d / merges_name
        if vocab.is_file() and merges.is_file():
            break
    else:
        raise DataError(
            f"tokenizer gpt2: {d} lacks the GPT-2 files: expected encoder.json + vocab.bpe "
            "(or vocab.json + merges.txt); set --data.tokenizer_dir"
        )
    try:
        hf = _byte_level(HFTokenizer(models.BPE.from_file(str(vocab), str(merges))))
    except Exception as e:  # noqa: BLE001
        raise DataError(f"tokenizer gpt2: cannot read {vocab} / {merges} ({e})") from None
    hf.add_special_tokens([EOS_TOKEN])  # already in the vocab (50256): marks it special only
    return Tokenizer("gpt2", hf)


def bytes_tokenizer() -> Tokenizer:
    """UTF-8 bytes: ids 0..255 are bytes, 256 is eos; 257 ids."""
    return Tokenizer("bytes")


def check_vocab(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Raise if the tokenizer emits ids the model's embedding cannot hold."""
    if tokenizer.vocab_size > vocab_size:
        raise DataError(
            f"tokenizer {tokenizer.kind} has {tokenizer.vocab_size} ids but model.vocab_size is {vocab_size}; "
            f"set --model.vocab_size {tokenizer.vocab_size} or more"
        )


def build_tokenizer(cfg: DataConfig, vocab_size: int, train_docs: list[str]) -> Tokenizer:
    """The tokenizer ``cfg.tokenizer`` names; ``bpe`` is trained on ``train_docs`` with
    ``vocab_size`` ids. Raises DataError if the result has more ids than ``vocab_size``."""
    if cfg.tokenizer == "bpe":
        tok = train_bpe(train_docs, vocab_size)
    elif cfg.tokenizer == "gpt2":
        if not cfg.tokenizer_dir:
            raise DataError("tokenizer gpt2 needs --data.tokenizer_dir DIR with encoder.json + vocab.bpe")
        tok = gpt2_tokenizer(cfg.tokenizer_dir)
    elif cfg.tokenizer == "bytes":
        tok = bytes_tokenizer()
    else:
        raise DataError(f"data.tokenizer must be one of {', '.join(KINDS)}; got {cfg.tokenizer!r}")
    check_vocab(tok, vocab_size)
    return tok
