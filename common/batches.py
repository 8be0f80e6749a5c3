"""The epoch stream: fixed-shape numpy batches, identical in every process and env.

Rows are built in chunks of whole batches, so a corpus of any size streams in bounded memory.
The data hash digests exactly the arrays a consumer received, in order, so two results
with equal hashes provably trained on the same data.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from common import corpora, rng
from common.corpus import Corpus, Vocab, build_vocab
from common.errors import BenchError
from common.rowcache import RowTable, cached_rows
from common.sampling import Draw, NoiseTable, Rows, Sampler, keep_probability, layout, subsample
from common.spec import DataSpec

_SUBSAMPLE, _SHUFFLE = 11, 12
_ROWS_PER_CHUNK = 1 << 15


class Batch(NamedTuple):
    center: np.ndarray            # (B,) int32
    context_negative: np.ndarray  # (B, L) int32: contexts, then noise words, then padding (0)
    mask: np.ndarray              # (B, L) uint8: 1 on contexts and noise (backends cast it)
    label: np.ndarray             # (B, L) uint8: 1 on contexts


class StreamHash:
    """SHA-256 over every batch's arrays, in order, in a fixed little-endian layout.

    Digesting runs on a helper thread (hashlib releases the GIL), so it overlaps with
    building the next batches or training on them instead of adding to their time.
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._worker = ThreadPoolExecutor(max_workers=1)
        self._pending: Future | None = None

    def _digest_batch(self, arrays: list[np.ndarray]) -> None:
        for array in arrays:
            self._digest.update(array.data)

    def update(self, batch: Batch) -> None:
        """Queue a batch; the single worker digests batches in the order they were queued."""
        arrays = [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")) for a in batch]
        self._pending = self._worker.submit(self._digest_batch, arrays)

    def wait(self) -> None:
        """Block until every queued batch is digested (before a clock that the helper must not disturb)."""
        if self._pending is not None:
            self._pending.result()

    def hexdigest(self) -> str:
        self.wait()
        return self._digest.hexdigest()


@dataclass
class Dataset:
    """A corpus, its vocabulary and the sampling of one DataSpec; yields epochs of batches."""

    spec: DataSpec
    corpus: Corpus
    vocab: Vocab
    remap: np.ndarray

    def __post_init__(self) -> None:
        self._keep = keep_probability(self.vocab, self.spec.subsample)
        self._noise = NoiseTable(self.vocab.counts)
        self._samplers: dict[int, Sampler] = {}

    def sampler(self, epoch: int) -> Sampler:
        """The draw an epoch uses: draw 0 always (static), or a fresh draw per epoch (dynamic)."""
        index = epoch if self.spec.sampling == "dynamic" else 0
        if index not in self._samplers:
            self._samplers.clear()  # keep one draw in memory at a time
            key = rng.stream_key(self.spec.seed, _SUBSAMPLE, index)
            draw: Draw = subsample(self.corpus, self.remap, self._keep, key)
            self._samplers[index] = Sampler(self.spec, draw, self._noise, index)
        return self._samplers[index]

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's shuffle of example indices: a sort by per-example random keys.

        The low bits of each key are replaced by the example's index, so keys are distinct and
        every sort algorithm gives this one order: numpy 2's SIMD quicksort (5x faster than a
        stable sort here) and numpy 1.23's agree.
        """
        n = self.sampler(epoch).draw.centers.size
        low = np.uint64(max(1, (n - 1).bit_length()))
        key = rng.stream_key(self.spec.seed, _SHUFFLE, epoch)
        keys = np.empty(n, dtype=np.uint64)
        for start in range(0, n, _ROWS_PER_CHUNK * 64):  # in chunks: the temporaries stay small
            index = np.arange(start, min(n, start + _ROWS_PER_CHUNK * 64), dtype=np.uint64)
            keys[start:start + index.size] = rng.random_bits(key, index) >> low << low | index
        return np.argsort(keys)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of one epoch; the last partial batch is kept, as the recipe keeps it."""
        source, order = self.rows_source(epoch), self.order(epoch)
        chunk = self.spec.batch_size * max(1, _ROWS_PER_CHUNK // self.spec.batch_size)
        for start in range(0, order.size, chunk):
            yield from _split(source.rows(order[start:start + chunk]), self.spec)

    def rows_source(self, epoch: int) -> Sampler | RowTable:
        """Where an epoch's rows come from: draw 0 (every static epoch) is built once and
        memory-mapped when it fits the row cache; other draws are sampled on the fly."""
        sampler = self.sampler(epoch)
        if sampler.draw_index == 0:
            return cached_rows(self.corpus.sha256, self.spec, sampler) or sampler
        return sampler

    def stream(self, epochs: int | None = None) -> Iterator[tuple[int, Batch]]:
        """(epoch, batch) over `epochs` epochs (the spec's by default)."""
        for e in range(self.spec.epochs if epochs is None else epochs):
            for batch in self.epoch(e):
                yield e, batch

    def batches_per_epoch(self, epoch: int = 0) -> int:
        return -(-self.sampler(epoch).draw.centers.size // self.spec.batch_size)


def _split(rows: Rows, spec: DataSpec) -> Iterator[Batch]:
    """Cut a chunk of rows into batches, expanding the context counts into mask and label."""
    mask, label = layout(rows.contexts, spec.noise, spec.row_length)
    size = spec.batch_size
    for b in range(0, rows.center.shape[0], size):
        yield Batch(rows.center[b:b + size], rows.context_negative[b:b + size], mask[b:b + size], label[b:b + size])


def load_dataset(spec: DataSpec, data_dir: str | None = None, download: bool = True) -> Dataset:
    """The spec's corpus (PTB found and verified as `common.ptb` says, generated, or a file
    checked against its planned digest: `common.corpora`) with its vocabulary and sampling."""
    corpus = corpora.load(spec.corpus, spec.corpus_path, data_dir, download)
    vocab, remap = build_vocab(corpus, spec.min_freq)
    dataset = Dataset(spec, corpus, vocab, remap)
    if dataset.sampler(0).draw.centers.size == 0:  # training on nothing would report a rate of nothing as ok
        raise BenchError(f"corpus {corpora.describe(spec.corpus, spec.corpus_path)} yields no training example "
                         f"(min_freq {spec.min_freq}, subsample {spec.subsample}): lower --min-freq or use a "
                         f"larger corpus")
    return dataset
