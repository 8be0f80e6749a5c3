"""Determinism of the batch stream, static vs dynamic sampling, chunking and initial weights."""
from __future__ import annotations

import json

import numpy as np
import pytest

import common.rowcache
import common.sampling
from common.batches import StreamHash, load_dataset
from common.init import initial_weights
from common.spec import DataSpec
from common.zipf import write_zipf_corpus
from tests.conftest import file_spec, run_bench


@pytest.fixture(scope="module")
def zipf_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("zipf") / "zipf.txt"
    write_zipf_corpus(path, tokens=60_000, vocab=2_000, seed=3)
    return path


def stream_hash(dataset, epochs=None) -> str:
    digest = StreamHash()
    for _, batch in dataset.stream(epochs):
        digest.update(batch)
    return digest.hexdigest()


def small(zipf_file, **settings):
    return load_dataset(file_spec(zipf_file, min_freq=3, batch_size=64, epochs=2, **settings))


def test_same_settings_same_hash_other_seed_other_hash(zipf_file):
    assert stream_hash(small(zipf_file)) == stream_hash(small(zipf_file))
    assert stream_hash(small(zipf_file)) != stream_hash(small(zipf_file, seed=1))
    assert stream_hash(small(zipf_file)) != stream_hash(small(zipf_file, window=4))


def test_static_reshuffles_the_same_examples_dynamic_redraws_them(zipf_file):
    def epoch_rows(dataset, e):
        rows = [np.concatenate([b.center[:, None], b.context_negative], axis=1) for b in dataset.epoch(e)]
        rows = np.concatenate(rows)
        return rows[np.lexsort(rows.T[::-1])]

    static, dynamic = small(zipf_file), small(zipf_file, sampling="dynamic")
    assert np.array_equal(epoch_rows(static, 0), epoch_rows(static, 1))
    assert not np.array_equal(next(static.epoch(0)).center, next(static.epoch(1)).center)
    assert np.array_equal(epoch_rows(dynamic, 0), epoch_rows(static, 0))  # epoch 0 is the same draw
    assert not np.array_equal(epoch_rows(dynamic, 1), epoch_rows(static, 1))


def test_rows_do_not_depend_on_chunking_or_order(zipf_file, monkeypatch):
    dataset = small(zipf_file)
    sampler = dataset.sampler(0)
    examples = np.arange(sampler.draw.centers.size)
    whole = sampler.rows(examples)
    perm = np.random.default_rng(0).permutation(examples.size)
    for part in np.array_split(perm, 7):
        for full, piece in zip(whole, sampler.rows(part)):
            assert np.array_equal(full[part], piece)
    monkeypatch.setattr(common.rowcache, "MAX_BYTES", 0)  # sample every epoch's rows afresh
    reference = stream_hash(dataset)
    monkeypatch.setattr(common.sampling, "_TOKENS_PER_CHUNK", 1000)
    assert stream_hash(small(zipf_file)) == reference


def test_row_cache_gives_the_sampled_rows(zipf_file, monkeypatch, isolated_cache):
    cached = stream_hash(small(zipf_file, seed=9))
    assert list(isolated_cache.glob("rows-*"))
    monkeypatch.setattr(common.rowcache, "MAX_BYTES", 0)
    assert stream_hash(small(zipf_file, seed=9)) == cached
    assert stream_hash(small(zipf_file, seed=9, sampling="dynamic")) != cached


def test_two_processes_give_identical_streams(ptb_dir):
    runs = [run_bench("data", "--summary", "--epochs", "2", "--data-dir", str(ptb_dir)) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    a, b = (json.loads(r.stdout) for r in runs)
    assert a["data_hash"] == b["data_hash"] and len(a["data_hash"]) == 64
    assert a["batches"] == 2 * 671


def test_dump_is_what_backends_receive(ptb_dir, tmp_path):
    out = tmp_path / "first.npz"
    result = run_bench("data", "--dump", str(out), "--data-dir", str(ptb_dir), "--seed", "4")
    assert result.returncode == 0, result.stderr
    dumped = np.load(out)
    dataset = load_dataset(DataSpec(seed=4), data_dir=str(ptb_dir))
    batches = list(dataset.epoch(0))
    for name in ("center", "context_negative", "mask", "label"):
        assert np.array_equal(dumped[name], np.concatenate([getattr(b, name) for b in batches]))
    assert dumped["tokens"].tolist() == dataset.vocab.tokens
    assert np.array_equal(dumped["counts"], dataset.vocab.counts)
    v, u = initial_weights(4, len(dataset.vocab), 100)
    assert np.array_equal(dumped["init_center"], v) and np.array_equal(dumped["init_context"], u)


def test_initial_weights_are_seeded_xavier_uniform():
    v, u = initial_weights(0, 5000, 100)
    bound = np.sqrt(6 / 5100)
    assert v.shape == u.shape == (5000, 100) and v.dtype == np.float32
    assert np.abs(v).max() <= bound and np.abs(v).max() > 0.99 * bound
    assert abs(v.mean()) < 1e-3 and abs(v.std() - bound / np.sqrt(3)) < 1e-3 * bound * 10
    assert not np.array_equal(v, u)
    assert np.array_equal(v, initial_weights(0, 5000, 100)[0])
    assert not np.array_equal(v, initial_weights(1, 5000, 100)[0])


def test_pairs_counted_in_chunks_equal_the_rows(zipf_file):
    """Sampler.pairs (used when a draw is too large for the row cache) against the rows themselves."""
    sampler = small(zipf_file).sampler(0)
    rows = sampler.rows(np.arange(sampler.draw.centers.size))
    assert sampler.pairs() == int(rows.contexts.sum())
    summary = json.loads(run_bench("data", "--summary", "--corpus", str(zipf_file), "--min-freq", "3",
                                   "--batch-size", "64").stdout)
    assert summary["pairs"] == sampler.pairs() and summary["examples"] == rows.center.size
