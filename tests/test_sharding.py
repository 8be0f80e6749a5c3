"""The data-parallel arithmetic itself, in float64 (common/sharding.py, docs/data-parallel.md): N ranks'
slice gradients, each times its loss factor and averaged as the engines average them, are the whole
batch's gradient; the slices' losses, combined by rows, are its loss. Both layouts, equal slices and
the epoch's unequal last batch. Tolerance 1e-12: float64 sums of a few thousand terms in another order
(unit roundoff 1.1e-16); a wrong factor (1 instead of N x rows / B) is off by about 1e-3 relative."""
from __future__ import annotations

import numpy as np
import pytest

from backends.reference import NumpyBackend, loss_and_grads, loss_and_grads_packed
from common.batches import Batch, load_dataset
from common.errors import BenchError
from common.init import initial_weights
from common.packing import pack
from common.sharding import World, bounds, combine, shard
from common.spec import RunSpec
from common.zipf import write_zipf_corpus
from tests.conftest import file_spec

TOLERANCE = 1e-12


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> tuple[list[Batch], int]:
    """A real epoch of a small corpus: full batches of 64 and a last one of another size."""
    path = tmp_path_factory.mktemp("zipf") / "z.txt"
    write_zipf_corpus(path, tokens=6_000, vocab=200, seed=3)
    dataset = load_dataset(file_spec(path, batch_size=64, min_freq=2))
    epoch = list(dataset.epoch(0))
    assert epoch[-1].center.size % 64 != 0, "the fixture must end on an unequal batch"
    return [epoch[0], epoch[-1]], len(dataset.vocab)


def grads(layout: str, center_w, context_w, batch: Batch) -> tuple[float, np.ndarray, np.ndarray]:
    """The float64 reference's loss and gradients; packed: its slot weights 1 / (count_b x B) recomputed
    in float64 (common/packing.py stores them in float32, whose rounding would be all this test sees)."""
    if layout == "packed":
        packed = pack(batch, int(batch.mask.sum()))
        counts = batch.mask.sum(axis=1).astype(np.float64)
        weight = np.where(np.arange(packed.ids.size) < packed.slots,
                          1.0 / (counts[packed.example] * batch.center.size), 0.0)
        return loss_and_grads_packed(center_w, context_w, packed._replace(weight=weight))
    return loss_and_grads(center_w, context_w, batch)


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_scaled_slice_gradients_average_to_the_batch_gradient(batches, layout, world):
    epoch, vocab = batches
    center_w, context_w = (w.astype(np.float64) * 40 for w in initial_weights(0, vocab, 16))  # logits far from 0
    for batch in epoch:
        loss, g_center, g_context = grads(layout, center_w, context_w, batch)
        shards = [shard(batch, World(r, world)) for r in range(world)]
        assert sum(s.batch.center.size for s in shards) == batch.center.size
        parts = [grads(layout, center_w, context_w, s.batch) for s in shards]
        mean_center = sum(s.scale * p[1] for s, p in zip(shards, parts)) / world
        mean_context = sum(s.scale * p[2] for s, p in zip(shards, parts)) / world
        assert np.abs(mean_center - g_center).max() <= TOLERANCE * np.abs(g_center).max()
        assert np.abs(mean_context - g_context).max() <= TOLERANCE * np.abs(g_context).max()
        combined = combine([np.array([p[0]]) for p in parts], [np.array([s.batch.center.size]) for s in shards])
        assert abs(combined[0] - loss) <= TOLERANCE * loss


def test_the_reference_backend_steps_by_its_scaled_loss(batches):
    """NumpyBackend.prepare(slices, scales): N ranks' SGD steps from the same weights, averaged, are
    the whole batch's step, on the unequal last batch (factors 1.0 would not be)."""
    epoch, vocab = batches
    batch = epoch[-1]
    world = next(n for n in range(2, 10) if batch.center.size % n)
    init = initial_weights(0, vocab, 16)
    spec = RunSpec(backend="numpy", optimizer="sgd", lr=1.0)
    whole = NumpyBackend(spec, *init)
    whole.train(whole.prepare([batch]))
    deltas, losses, rows = [], [], []
    shards = [shard(batch, World(r, world)) for r in range(world)]
    assert len({s.scale for s in shards}) > 1, "the slices must be unequal for the factors to matter"
    for s in shards:
        rank = NumpyBackend(spec, *init)
        losses.append(rank.train(rank.prepare([s.batch], [s.scale])))
        rows.append(np.array([s.batch.center.size]))
        deltas.append([after - before for after, before in zip(rank.embeddings(), init)])
    for table in range(2):
        averaged = init[table] + sum(d[table] for d in deltas) / world
        expected = whole.embeddings()[table]
        assert np.abs(averaged - expected).max() <= TOLERANCE * np.abs(expected - init[table]).max()
    reference = NumpyBackend(spec, *init).loss_and_grads(batch)[0]
    assert abs(combine(losses, rows)[0] - reference) <= TOLERANCE * reference


def test_slices_are_consecutive_and_refused_below_one_row_each():
    assert bounds(10, 4).tolist() == [0, 3, 6, 8, 10]
    tiny = Batch(*(np.zeros((1, 4), np.int32) for _ in range(4)))._replace(center=np.zeros(1, np.int32))
    with pytest.raises(BenchError, match="cannot be split across 2 workers"):
        shard(tiny, World(1, 2))
