"""What a data-parallel step would send at N workers, and how long that takes on a network.

The engines' models (common/comm.py) are fed with the rows a rank's slice really names, measured
from the data layer on the run's own batches for every slice size a power of two from the batch
down to one example (`slice_profile`, stored in a result), so the curves need nothing but a
stored result. Two ways to add workers:

    strong  the run's global batch split N ways (N up to the batch): each slice names fewer rows
    weak    every worker keeps the run's slice: the global batch grows with N (up to 1,024)

A dense allreduce sends about 2 M a rank whatever N is; a sparse gather sends every other rank's
rows, so it grows with N, and `crossover` names the first N from which it sends more. Times are
bytes over bandwidth only: a lower bound that leaves out latency (2 (N - 1) ring steps a collective)
and the reduction's compute, both of which grow with N.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from common import comm
from common.batches import Batch
from common.comm import SliceRows
from common.spec import RunSpec

WORKER_COUNTS = tuple(2 ** k for k in range(1, 11))   # 2 ... 1,024
BANDWIDTHS_GBIT = (10, 25, 100, 400)
PROFILE_BATCHES = 32  # batches the slice profile is measured on, evenly spread over the epoch


def slice_sizes(batch_size: int) -> list[int]:
    """Every power-of-two slice of the batch (the batch itself first), down to one example."""
    sizes, size = [], batch_size
    while size >= 1:
        sizes.append(size)
        if size % 2:
            break
        size //= 2
    return sizes


def slice_profile(batches: Sequence[Batch], limit: int = PROFILE_BATCHES) -> dict[int, SliceRows]:
    """Slice size -> the mean SliceRows of slices of that many consecutive examples of full batches
    (the epoch's last, smaller batch left out), over up to `limit` batches evenly spread."""
    if not batches:
        return {}
    size = batches[0].center.size
    full = [b for b in batches if b.center.size == size]
    chosen = [full[i] for i in np.unique(np.linspace(0, len(full) - 1, min(limit, len(full))).astype(int))]
    profile = {}
    for width in slice_sizes(size):
        rows = np.array([slice_counts(b, width) for b in chosen])  # (batches, slices, 4)
        profile[width] = SliceRows(*(float(v) for v in rows.reshape(-1, 4).mean(axis=0)))
    return profile


def slice_counts(batch: Batch, width: int) -> np.ndarray:
    """(slices, 4): each `width`-example slice's SliceRows, by one sort of (slice, id) keys per table
    rather than one np.unique per slice (a batch has up to 512 slices)."""
    n = batch.center.size // width
    real = batch.mask.astype(bool)
    rows, _ = np.nonzero(real)
    span = np.int64(max(int(batch.center.max(initial=0)), int(batch.context_negative.max(initial=0))) + 1)

    def distinct(slice_of: np.ndarray, ids: np.ndarray) -> np.ndarray:
        keys = np.unique(slice_of.astype(np.int64) * span + ids)
        return np.bincount(keys // span, minlength=n)

    centers = np.full(n, width)
    contexts = np.bincount(rows // width, minlength=n)
    return np.stack([centers, contexts, distinct(np.arange(batch.center.size) // width, batch.center),
                     distinct(rows // width, batch.context_negative[real])], axis=1)


class Point(NamedTuple):
    workers: int
    bytes_sent: float                 # per rank per step, all collectives
    seconds: dict[int, float]         # bandwidth in Gb/s -> bytes_sent over it


def _point(spec: RunSpec, vocab: int, rows: SliceRows, workers: int) -> Point:
    """Rank 0 of `workers` ranks whose slices each name `rows` (the mean slice: a model of the typical
    rank; engines that pad to the longest slice send a little more than this)."""
    scaled = dataclasses.replace(spec, workers=workers, data=dataclasses.replace(
        spec.data, batch_size=int(round(rows.centers)) * workers))
    sent = sum(c.bytes_sent for c in comm.model(scaled, vocab, [rows] * workers, 0))
    return Point(workers, sent, {bw: sent * 8 / (bw * 1e9) for bw in BANDWIDTHS_GBIT})


def curve(spec: RunSpec, vocab: int, profile: dict[int, SliceRows], scaling: str) -> list[Point]:
    """Bytes and seconds a step against N, for `spec`'s engine and variant (its own workers ignored)."""
    batch = spec.data.batch_size
    if scaling == "strong":
        return [_point(spec, vocab, profile[batch // n], n) for n in WORKER_COUNTS
                if batch % n == 0 and batch // n in profile]
    per_rank = batch // spec.workers
    if per_rank not in profile:
        return []
    return [_point(spec, vocab, profile[per_rank], n) for n in WORKER_COUNTS]


def crossover(dense: Sequence[Point], sparse: Sequence[Point]) -> int | None:
    """The first modelled N at which the sparse gather sends at least the dense allreduce's bytes."""
    by_n = {p.workers: p.bytes_sent for p in dense}
    return next((p.workers for p in sparse if p.workers in by_n and p.bytes_sent >= by_n[p.workers]), None)
