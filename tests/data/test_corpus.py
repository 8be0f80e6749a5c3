"""Tokenising, caching and the recipe's vocabulary: exact checks."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from common.corpus import UNK, build_vocab, load_corpus
from common.errors import BenchError
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


# --- identity is what was used: the cache holds only what matches its name

def test_a_file_edited_while_tokenised_is_refused_and_never_cached(tmp_path, isolated_cache, monkeypatch):
    """An edit between the digest and the last block read: the bytes tokenised are not of the
    digest, so nothing is cached under it; the restored file then tokenises to its own text."""
    import common.corpus as corpus_module

    original = "a b c\n" * 50
    path = write_text(tmp_path / "edited.txt", original)
    real_blocks = corpus_module.text_blocks

    def editing_blocks(p, size):
        for i, block in enumerate(real_blocks(p, 64)):
            if i == 0:
                with open(p, "a") as f:
                    f.write("intruder " * 20 + "\n")
            yield block

    monkeypatch.setattr(corpus_module, "text_blocks", editing_blocks)
    before = set(isolated_cache.glob("corpus-*"))
    with pytest.raises(BenchError, match="changed while it was read"):
        load_corpus(path)
    assert set(isolated_cache.glob("corpus-*")) == before
    monkeypatch.undo()
    write_text(path, original)
    assert load_corpus(path).words == ["a", "b", "c"]


@pytest.mark.parametrize("tamper", ["edit words", "truncate ids", "no manifest"])
def test_a_cache_folder_that_does_not_match_its_digest_is_not_used(tmp_path, isolated_cache, tamper):
    from common.corpus import cached_corpus

    path = write_text(tmp_path / f"{tamper}.txt", "p q r\nq r\n")
    digest = load_corpus(path).sha256
    folder = next(f for f in isolated_cache.glob("corpus-*") if digest.startswith(f.name.removeprefix("corpus-")))
    if tamper == "edit words":
        write_text(folder / "words.txt", "r\nq\np\n")
    elif tamper == "truncate ids":
        (folder / "word_ids.npy").write_bytes((folder / "word_ids.npy").read_bytes()[:-4])
    else:
        (folder / "manifest.json").unlink()
    assert cached_corpus(digest) is None  # a cluster node looking up by digest gets nothing, not wrong text
    corpus = load_corpus(path)  # rebuilt from the file
    assert corpus.words == ["p", "q", "r"] and corpus.word_ids.tolist() == [0, 1, 2, 1, 2]
    assert cached_corpus(digest) is not None


def test_an_edited_generated_corpus_is_not_used_under_its_name(isolated_cache):
    from common import corpora

    zipf = corpora.parse_zipf("zipf:2k:40:7")
    clean = corpora.load("zipf:2k:40:7", None)
    words = list(clean.words)
    path = corpora.generated(zipf)
    write_text(path, "edited text\n" * 100)
    for folder in isolated_cache.glob("corpus-*"):  # even with the tokenised copy gone
        import shutil
        shutil.rmtree(folder)
    assert corpora.load("zipf:2k:40:7", None).words == words  # made again from its name, not the edit
    assert "edited" not in path.read_text()


@pytest.mark.parametrize("text, value", [
    ("9007199254740993", 9007199254740993),  # 2^53 + 1: a float makes it 2^53
    (str(2 ** 63 - 1), 2 ** 63 - 1),
    ("1.5k", 1500),
    ("0.001M", 1000),
])
def test_zipf_seeds_and_sizes_are_exact_integers(text, value):
    from common import corpora

    assert corpora.parse_zipf(f"zipf:1M:10k:{text}").seed == value
    assert corpora.parse_zipf(f"zipf:1M:10k:{text}").name != corpora.parse_zipf(f"zipf:1M:10k:{value - 1}").name


@pytest.mark.parametrize("text, fragment", [
    (str(2 ** 63), r"SEED must be a whole number from 0 to 2\^63 - 1"),
    ("1.0001k", "whole number"),
    ("9" * 5000, "whole number"),
    ("1e3", "whole number"),
])
def test_zipf_sizes_that_are_not_exact_integers_are_refused(text, fragment):
    from common import corpora

    with pytest.raises(BenchError, match=fragment):
        corpora.parse_zipf(f"zipf:1M:10k:{text}")
