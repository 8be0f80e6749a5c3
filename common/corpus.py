"""The corpus as arrays, prepared once per file and memory-mapped (as nanoGPT does), and the vocabulary.

Tokenising is the only per-token Python loop in the suite, and it runs once per corpus file:
the result (word ids in first-appearance order, line lengths, counts) is cached under the
file's SHA-256. Vocabularies for any min_freq are then cheap array operations.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cache import atomic_dir, cache_dir
from common.errors import BenchError
from common.ptb import check_text_file, sha256_file

UNK = "<unk>"
_BLOCK = 1 << 24  # bytes read per tokenising step: bounds memory on large corpora


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


def _tokenise(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Whitespace tokens per line, the recipe's `[line.split() for line in text.split('\\n')]`."""
    index: dict[str, int] = {}
    id_chunks: list[np.ndarray] = []
    length_chunks: list[np.ndarray] = []
    tail = b""
    with open(path, "rb") as f:
        while True:
            block = f.read(_BLOCK)
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
    return word_ids, np.concatenate(length_chunks), list(index)


def load_corpus(path: Path) -> Corpus:
    """Tokenise `path` once and cache the arrays; later calls memory-map them."""
    check_text_file(path)
    digest = sha256_file(path)
    folder = _folder(digest)
    if not (folder / "words.txt").exists():
        word_ids, lengths, words = _tokenise(path)
        with atomic_dir(folder) as tmp:
            np.save(tmp / "word_ids.npy", word_ids)
            np.save(tmp / "line_lengths.npy", lengths)
            (tmp / "words.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    return _mapped(folder, digest)


def _folder(digest: str) -> Path:
    return cache_dir() / f"corpus-{digest[:24]}"


def cached_corpus(digest: str) -> Corpus | None:
    """A text tokenised here before, found by its SHA-256 alone (the file itself may be gone)."""
    folder = _folder(digest)
    return _mapped(folder, digest) if (folder / "words.txt").exists() else None


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
