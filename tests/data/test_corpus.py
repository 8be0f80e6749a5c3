"""Tokenising, caching and the recipe's vocabulary: exact checks."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from common.corpus import UNK, build_vocab, load_corpus
from common.ptb import TRAIN_FILE
from tests.conftest import write_text


def test_lines_and_whitespace_tokens(tmp_path):
    path = write_text(tmp_path / "c.txt", " a b  a\n\nc\ta a\nb")
    corpus = load_corpus(path)
    assert corpus.words == ["a", "b", "c"]
    assert corpus.word_ids.tolist() == [0, 1, 0, 2, 0, 0, 1]
    assert corpus.line_lengths.tolist() == [3, 0, 3, 1]
    assert corpus.counts.tolist() == [4, 2, 1]


def test_cache_is_reused_and_keyed_by_content(tmp_path, isolated_cache):
    path = write_text(tmp_path / "c.txt", "x y z\n")
    first = load_corpus(path)
    folders = sorted(p.name for p in isolated_cache.glob("corpus-*"))
    assert load_corpus(path).sha256 == first.sha256
    assert sorted(p.name for p in isolated_cache.glob("corpus-*")) == folders
    write_text(path, "x y\n")
    assert load_corpus(path).words == ["x", "y"]


def test_vocab_order_ties_by_first_appearance_and_unk_first(tmp_path):
    path = write_text(tmp_path / "c.txt", "d c <unk> b a\na b c d e\nd c b a\nrare\n")
    vocab, remap = build_vocab(load_corpus(path), min_freq=2)
    assert vocab.tokens == [UNK, "d", "c", "b", "a"]  # all count 3: order of first appearance
    assert vocab.counts.tolist() == [3, 3, 3, 3, 3]   # <unk> counts <unk>, e and rare
    corpus = load_corpus(path)
    ids = remap[corpus.word_ids]
    assert [vocab.tokens[i] for i in ids[:5]] == ["d", "c", UNK, "b", "a"]


def test_ptb_vocab_is_the_recipes(ptb_dir):
    """Same list as d2l.Vocab(sentences, min_freq=10): Counter, stable sort by count, <unk> first."""
    corpus = load_corpus(ptb_dir / TRAIN_FILE)
    vocab, _ = build_vocab(corpus, min_freq=10)
    lines = (ptb_dir / TRAIN_FILE).read_text().split("\n")
    counter = collections.Counter(t for line in lines for t in line.split())
    by_freq = sorted(counter.items(), key=lambda x: x[1], reverse=True)
    expected = [UNK] + [t for t, c in by_freq if c >= 10 and t != UNK]
    assert len(vocab) == 6719
    assert vocab.tokens == expected
    assert vocab.counts[1:].tolist() == [counter[t] for t in expected[1:]]
    assert np.all(np.diff(vocab.counts[1:]) <= 0)


@pytest.mark.parametrize("min_freq", [1, 5, 10, 100])
def test_vocab_size_matches_counts(tmp_path, min_freq):
    rng = np.random.default_rng(0)
    text = "\n".join(" ".join(f"w{int(x)}" for x in rng.zipf(1.5, 30)) for _ in range(50))
    corpus = load_corpus(write_text(tmp_path / "z.txt", text))
    vocab, remap = build_vocab(corpus, min_freq)
    assert len(vocab) == 1 + int((corpus.counts >= min_freq).sum())
    assert vocab.counts.sum() == corpus.word_ids.size
    assert remap.max() == len(vocab) - 1
