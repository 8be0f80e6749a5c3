"""The corpus as arrays, prepared once per file and memory-mapped (as nanoGPT does), and the vocabulary.

Tokenising is the only per-token Python loop in the suite, and it runs once per corpus file:
the result (word ids in first-appearance order, line lengths, counts) is cached under the
file's SHA-256. Vocabularies for any min_freq are then cheap array operations.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.cache import atomic_dir, cache_dir, cache_folder, file_sha256
from common.errors import BenchError
from common.ptb import check_text_file, sha256_file, text_blocks

UNK = "<unk>"
_BLOCK = 1 << 24  # bytes read per tokenising step: bounds memory on large corpora
_FILES = ("word_ids.npy", "line_lengths.npy", "words.txt")
_MANIFEST = "manifest.json"  # the text's digest and each array file's: what makes a cache folder trusted


class CorpusChanged(BenchError):
    """The text read is not of the digest it is known by: edited while (or since) it was planned."""


@dataclass(frozen=True)
class Corpus:
    """Every token of a text file, as ids into `words` (distinct words, first-appearance order)."""

    word_ids: np.ndarray   # (tokens,) int32
    line_lengths: np.ndarray  # (lines,) int64: tokens per line, lines in file order
    words: list[str]
    counts: np.ndarray     # (len(words),) int64
    sha256: str


@dataclass(frozen=True)
class Vocab:
    """The recipe's vocabulary: <unk> at 0 (also padding), then words with count >= min_freq
    by descending count, ties in order of first appearance (as the recipe's stable sort does)."""

    tokens: list[str]
    counts: np.ndarray  # (V,) int64; counts[0] counts every token mapped to <unk>

    def __len__(self) -> int:
        return len(self.tokens)

    def index(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.tokens)}


def _tokenise(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Whitespace tokens per line, the recipe's `[line.split() for line in text.split('\\n')]`,
    and the SHA-256 of exactly the bytes tokenised (one read: a file changed meanwhile cannot
    give arrays of one content under the digest of another)."""
    index: dict[str, int] = {}
    id_chunks: list[np.ndarray] = []
    length_chunks: list[np.ndarray] = []
    digest = hashlib.sha256()
    tail = b""
    blocks = text_blocks(path, _BLOCK)
    while True:
        block = next(blocks, b"")
        digest.update(block)
        data = tail + block
        if block:
            cut = data.rfind(b"\n") + 1
            data, tail = data[:cut], data[cut:]
            if not data:
                continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise BenchError(f"corpus file {path} is not UTF-8 text: replace it with the real file") from None
        lines = [line.split() for line in (text[:-1] if block else text).split("\n")]
        length_chunks.append(np.fromiter(map(len, lines), dtype=np.int64, count=len(lines)))
        flat = itertools.chain.from_iterable(lines)
        count = int(length_chunks[-1].sum())
        id_chunks.append(np.fromiter((index.setdefault(t, len(index)) for t in flat),
                                     dtype=np.int32, count=count))
        if not block:
            break
    word_ids = np.concatenate(id_chunks)
    if word_ids.size == 0:
        raise BenchError(f"corpus file {path} holds no tokens: replace it with the real file")
    return word_ids, np.concatenate(length_chunks), list(index), digest.hexdigest()


def load_corpus(path: Path, expected: str | None = None) -> Corpus:
    """`path` as arrays, tokenised once and cached under the SHA-256 of the bytes tokenised.
    `expected` is the digest the caller knows the text by (a spec's, PTB's); without it, the
    file's digest now. Text read that is not of that digest (the file was edited meanwhile) is
    refused, never cached or used."""
    check_text_file(path)
    digest = expected or sha256_file(path)
    found = cached_corpus(digest)
    if found is not None:
        return found
    word_ids, lengths, words, actual = _tokenise(path)
    if actual != digest:
        raise CorpusChanged(f"corpus file {path} changed while it was read (sha256 {digest} before, {actual} as "
                         f"read): nothing was cached; leave it unchanged while the suite runs, or plan again")
    with atomic_dir(_folder(actual)) as tmp:
        np.save(tmp / "word_ids.npy", word_ids)
        np.save(tmp / "line_lengths.npy", lengths)
        (tmp / "words.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
        manifest = {"sha256": actual, "files": {name: file_sha256(tmp / name) for name in _FILES}}
        (tmp / _MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    found = cached_corpus(actual)
    if found is None:
        raise BenchError(f"the corpus cache {_folder(actual)} changed while it was written: "
                         f"check nothing else writes into {cache_dir()}, then run again")
    return found


def _folder(digest: str) -> Path:
    return cache_folder(f"corpus-{digest[:24]}")


@lru_cache(maxsize=64)
def _verified(folder: Path, digest: str, stamp: tuple) -> bool:
    """Whether `folder` holds the arrays of the text whose SHA-256 is `digest`, whole and
    unchanged since they were written (the manifest's own digests; `stamp`: sizes and mtimes, so
    one process checks a folder once)."""
    try:
        manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
        return manifest["sha256"] == digest and all(
            manifest["files"][name] == file_sha256(folder / name) for name in _FILES)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def cached_corpus(digest: str) -> Corpus | None:
    """A text tokenised here before, found by its SHA-256 alone (the file itself may be gone),
    after checking the cache holds exactly what was written for that digest; a folder that does
    not (cut short, edited, or written by code before the check) is removed and None returned."""
    folder = _folder(digest)
    if not folder.exists():
        return None
    try:
        stamp = tuple((info.st_size, info.st_mtime_ns) for info in
                      (os.stat(folder / name) for name in (*_FILES, _MANIFEST)))
    except OSError:
        stamp = None
    if stamp is not None and _verified(folder, digest, stamp):
        return _mapped(folder, digest)
    shutil.rmtree(folder, ignore_errors=True)
    return None


def _mapped(folder: Path, digest: str) -> Corpus:
    word_ids = np.load(folder / "word_ids.npy", mmap_mode="r")
    words = (folder / "words.txt").read_text(encoding="utf-8").split("\n")[:-1]
    counts = np.bincount(word_ids, minlength=len(words)).astype(np.int64)
    return Corpus(word_ids, np.load(folder / "line_lengths.npy"), words, counts, digest)


def build_vocab(corpus: Corpus, min_freq: int) -> tuple[Vocab, np.ndarray]:
    """The vocabulary, and the map from corpus word ids to vocabulary indices."""
    counts = corpus.counts
    keep = counts >= min_freq
    if UNK in corpus.words:
        keep[corpus.words.index(UNK)] = False
    kept = np.flatnonzero(keep)
    order = kept[np.argsort(-counts[kept], kind="stable")]
    remap = np.zeros(len(corpus.words), dtype=np.int32)
    remap[order] = np.arange(1, order.size + 1, dtype=np.int32)
    vocab_counts = np.concatenate([[counts.sum() - counts[order].sum()], counts[order]])
    tokens = [UNK] + [corpus.words[i] for i in order]
    return Vocab(tokens, vocab_counts.astype(np.int64)), remap
