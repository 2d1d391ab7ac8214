"""Text sources (DESIGN §1.9): each dataset becomes train/valid/test lists of documents.

Datasets:

- ``pystdlib``: the ``.py`` sources of the local Python standard library (no tests, no IDLE,
  no site-packages), one document per file. The offline default: every machine that runs MUSE
  has it.
- ``wikitext-2`` / ``wikitext-103``: from ``data.data_dir`` (tokenized ``train.txt`` /
  ``wiki.train.tokens`` or raw ``wiki.train.raw`` files), else the Hugging Face hub. Each split
  is one document, the whole file, so line structure (and thus the word count) is kept.
- ``text:PATH``: one file (split by lines) or a folder (split by file).

Splits are deterministic: files are assigned by a hash of their relative path, never by
directory order or a random seed, so the same files always give the same splits.

Every source also gets a *fingerprint* (sha256 over names and contents): the tokenized-split
cache is keyed by it, so editing one source file invalidates the cache.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from muse.config import DataConfig

SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """A dataset, tokenizer or cache cannot be used. The message says what to change."""


@dataclass
class TextSplits:
    """A dataset as text: ``docs[split]`` is a list of documents (plain strings)."""

    name: str
    docs: dict[str, list[str]]
    fingerprint: str  # sha256 hex over the source's paths and contents


# ----------------------------------------------------------------------------- counting


def count_words(text: str) -> int:
    """Words as WikiText counts them: whitespace-separated tokens plus one ``<eos>`` per line.

    This is the denominator of word-level perplexity, so numbers compare across tokenizers and
    with the literature (245,569 on the WikiText-2 test split). A final line without a newline
    still counts as a line.
    """
    lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    return len(text.split()) + lines


def count_bytes(text: str) -> int:
    """UTF-8 bytes of ``text``: the denominator of bits-per-byte."""
    return len(text.encode("utf-8"))


# ----------------------------------------------------------------------------- helpers


def _fingerprint(name: str, items: list[tuple[str, str]]) -> str:
    """sha256 over the dataset name and every (label, text) pair, lengths included so that
    moving text from one item to the next changes the hash."""
    h = hashlib.sha256(name.encode())
    for label, text in items:
        data = text.encode("utf-8")
        h.update(f"\0{label}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _path_hash(rel: str) -> int:
    return int.from_bytes(hashlib.sha256(rel.encode("utf-8")).digest()[:8], "big")


def split_files_by_hash(rels: list[str], valid_frac: float = 0.05, test_frac: float = 0.05) -> dict[str, list[str]]:
    """Assign relative paths to splits by the hash of the path: ~90/5/5 % and never empty.

    Paths are ordered by their hash; the first ``max(1, round(5 %))`` go to valid, the next to
    test, the rest to train. Each split is then sorted by path. Needs at least 3 paths.
    """
    if len(rels) < 3:
        raise DataError(f"need at least 3 files to split by file; got {len(rels)}")
    order = sorted(rels, key=lambda r: (_path_hash(r), r))
    n_valid = max(1, round(len(order) * valid_frac))
    n_test = max(1, round(len(order) * test_frac))
    return {
        "valid": sorted(order[:n_valid]),
        "test": sorted(order[n_valid : n_valid + n_test]),
        "train": sorted(order[n_valid + n_test :]),
    }


def split_lines(text: str, valid_frac: float = 0.05, test_frac: float = 0.05) -> dict[str, str]:
    """Split ``text`` into contiguous train / valid / test line ranges (~90/5/5 %), in that order.

    Contiguous ranges (not a line shuffle) keep paragraphs intact and keep valid/test text out of
    the middle of training text. Needs at least 3 lines.
    """
    lines = text.splitlines(keepends=True)
    n = len(lines)
    if n < 3:
        raise DataError(f"need at least 3 lines to split into train/valid/test; got {n}")
    n_valid = max(1, round(n * valid_frac))
    n_test = max(1, round(n * test_frac))
    n_train = n - n_valid - n_test
    return {
        "train": "".join(lines[:n_train]),
        "valid": "".join(lines[n_train : n_train + n_valid]),
        "test": "".join(lines[n_train + n_valid :]),
    }


def _read_utf8(path: Path) -> str | None:
    """File text, or None for files that are not UTF-8 (binaries, legacy encodings)."""
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def _split_docs(name: str, files: dict[str, str]) -> TextSplits:
    """Documents per split from {relative path: text}, split by path hash."""
    parts = split_files_by_hash(sorted(files))
    docs = {s: [files[r] for r in parts[s]] for s in SPLITS}
    items = [(f"{s}/{r}", files[r]) for s in SPLITS for r in parts[s]]
    return TextSplits(name, docs, _fingerprint(name, items))


# ----------------------------------------------------------------------------- pystdlib

# Directory names skipped anywhere in the stdlib tree: test suites (a third of the tree, much of
# it generated data), IDLE, third-party packages and caches.
_STDLIB_SKIP = frozenset({"test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages", "__pycache__"})


def stdlib_files(root: str | Path | None = None) -> dict[str, str]:
    """{relative path: source} for the standard library's ``.py`` files, sorted by path."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataError(f"pystdlib: the Python standard library folder {root} does not exist")
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP and not d.startswith("."))
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                path = Path(dirpath) / fn
                text = _read_utf8(path)
                if text is not None:
                    files[path.relative_to(root).as_posix()] = text
    return dict(sorted(files.items()))


def load_pystdlib(root: str | Path | None = None) -> TextSplits:
    files = stdlib_files(root)
    if len(files) < 3:
        raise DataError(f"pystdlib: found only {len(files)} .py files under {root or sysconfig.get_paths()['stdlib']}")
    return _split_docs("pystdlib", files)


# ----------------------------------------------------------------------------- wikitext

# Accepted file names, one family per naming scheme, in order of preference.
_WIKITEXT_FAMILIES = (
    ("{split}.txt", "tokenized"),  # pytorch/examples naming
    ("wiki.{split}.tokens", "tokenized"),  # wikitext-*-v1.zip
    ("wiki.{split}.raw", "raw"),  # wikitext-*-raw-v1.zip
)
_WIKITEXT_EXPECTED = "train.txt/valid.txt/test.txt, wiki.{train,valid,test}.tokens or wiki.{train,valid,test}.raw"
_HF_CONFIGS = {"wikitext-2": "wikitext-2-raw-v1", "wikitext-103": "wikitext-103-raw-v1"}


def _pretty(name: str) -> str:
    return {"wikitext-2": "WikiText-2", "wikitext-103": "WikiText-103"}.get(name, name)


def load_wikitext_dir(name: str, data_dir: str | Path, splits: tuple[str, ...] = SPLITS) -> TextSplits:
    """WikiText splits from local files. One naming family is used for all splits (never a
    tokenized train file with a raw test file): the first family that has any split file."""
    d = Path(data_dir).expanduser()
    if not d.is_dir():
        raise DataError(f"data.data_dir {d} is not a directory")
    for pattern, _kind in _WIKITEXT_FAMILIES:
        paths = {s: d / pattern.format(split=s) for s in splits}
        if not any(p.is_file() for p in paths.values()):
            continue
        missing = [s for s, p in paths.items() if not p.is_file()]
        if missing:
            found = ", ".join(p.name for p in paths.values() if p.is_file())
            raise DataError(
                f"data.data_dir {d} has no {_pretty(name)} {'/'.join(missing)} split: expected "
                f"{', '.join(pattern.format(split=s) for s in missing)} next to {found}"
            )
        docs, items = {}, []
        for s, p in paths.items():
            text = _read_utf8(p)
            if text is None:
                raise DataError(f"{p} is not UTF-8 text")
            docs[s] = [text]
            items.append((f"{s}/{p.name}", text))
        return TextSplits(name, docs, _fingerprint(name, items))
    raise DataError(f"data.data_dir {d} has no {_pretty(name)} files: expected {_WIKITEXT_EXPECTED}")


def _hf_rows_to_text(rows: list[str]) -> str:
    """Rebuild the raw file from the hub's rows. The hub keeps each line's newline but turns the
    file's blank lines (" \\n") into "": restore them so line (and word) counts match the files."""
    return "".join(r if r else " \n" for r in rows)


def load_wikitext_hub(name: str, splits: tuple[str, ...] = SPLITS) -> TextSplits:
    """WikiText from the Hugging Face hub (``Salesforce/wikitext``, raw configs). Any failure
    (``datasets`` missing, no network, unknown config) becomes a DataError saying what to do."""
    try:
        import datasets  # optional dependency; imported here so MUSE runs without it

        ds = datasets.load_dataset("Salesforce/wikitext", _HF_CONFIGS[name])
        hub_split = {"train": "train", "valid": "validation", "test": "test"}
        docs = {s: [_hf_rows_to_text(list(ds[hub_split[s]]["text"]))] for s in splits}
    except Exception as e:  # noqa: BLE001 - every failure gets the same actionable message
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise DataError(
            f"{name}: no data.data_dir given and the Hugging Face hub could not be used ({reason}); "
            "pass --data.data_dir DIR with train.txt/valid.txt/test.txt"
        ) from None
    items = [(f"{s}/hub:{_HF_CONFIGS[name]}", docs[s][0]) for s in splits]
    return TextSplits(name, docs, _fingerprint(name, items))


# ----------------------------------------------------------------------------- text:PATH


def load_text_path(path: str | Path) -> TextSplits:
    """A text file (contiguous 90/5/5 % line ranges) or a folder of UTF-8 files (split by file
    hash; with fewer than 3 files, their concatenation is split by lines)."""
    p = Path(path).expanduser()
    name = f"text:{path}"
    if p.is_file():
        text = _read_utf8(p)
        if text is None:
            raise DataError(f"{name}: {p} is not UTF-8 text")
        try:
            parts = split_lines(text)
        except DataError as e:
            raise DataError(f"{name}: {e}") from None
        docs = {s: [parts[s]] for s in SPLITS}
        return TextSplits(name, docs, _fingerprint("text", [(f"{s}/{p.name}", parts[s]) for s in SPLITS]))
    if p.is_dir():
        files = {}
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # skip .git and friends
            for fn in sorted(filenames):
                if fn.startswith("."):
                    continue
                text = _read_utf8(Path(dirpath) / fn)
                if text is not None:
                    files[(Path(dirpath) / fn).relative_to(p).as_posix()] = text
        if not files:
            raise DataError(f"{name}: folder {p} has no UTF-8 text files")
        if len(files) >= 3:
            splits = _split_docs("text", files)
            return TextSplits(name, splits.docs, splits.fingerprint)
        text = "".join(t if t.endswith("\n") else t + "\n" for _, t in sorted(files.items()))
        try:
            parts = split_lines(text)
        except DataError as e:
            raise DataError(f"{name}: {e}") from None
        docs = {s: [parts[s]] for s in SPLITS}
        return TextSplits(name, docs, _fingerprint("text", [(s, parts[s]) for s in SPLITS]))
    raise DataError(f"{name}: {p} does not exist")


# ----------------------------------------------------------------------------- dispatch


def load_text_splits(cfg: DataConfig, splits: tuple[str, ...] = SPLITS) -> TextSplits:
    """Load ``cfg.dataset`` as text splits. ``splits`` restricts which splits are read (for
    wikitext, e.g. evaluating on raw valid/test files without a train file)."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise DataError(f"splits must be a non-empty subset of {', '.join(SPLITS)}; got {splits!r}")
    name = cfg.dataset
    if name == "pystdlib":
        out = load_pystdlib()
    elif name in _HF_CONFIGS:
        if cfg.data_dir:
            return load_wikitext_dir(name, cfg.data_dir, splits)
        return load_wikitext_hub(name, splits)
    elif name.startswith("text:") and len(name) > 5:
        out = load_text_path(name[5:])
    else:
        raise DataError(f"unknown dataset {name!r}; use pystdlib, wikitext-2, wikitext-103 or text:PATH")
    if tuple(splits) != SPLITS:  # a subset of splits is a different source: its own fingerprint
        fingerprint = _fingerprint(out.fingerprint, [(s, "") for s in splits])
        out = TextSplits(out.name, {s: out.docs[s] for s in splits}, fingerprint)
    return out
