"""A global batch split across data-parallel ranks, so N ranks compute one process's function.

Strong scaling at the recipe's global batch: rank r of N trains on the r-th of N consecutive
slices of the identical batch (every rank builds the whole stream, so the data hash is one), and
the engines average gradients over ranks (DDP, a strategy's MEAN, pmean, a kvstore's rescale).
The loss is a mean over a batch's rows, so the average of N slice means is the batch's mean
when the slices are equal; the last batch of an epoch may not split equally, and its slices'
losses are scaled by N x rows / B so the average is still exactly the batch's mean:

    mean_b loss_b = sum_r (B_r / B) mean_{b in r} loss_b = (1/N) sum_r (N B_r / B) mean_{b in r} loss_b

A rank's recorded loss is its slice's unscaled mean; `combine` weights them back by rows.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from common.batches import Batch
from common.errors import BenchError

RANK_VARIABLE, WORLD_VARIABLE = "SKIPGRAM_RANK", "SKIPGRAM_WORLD"
# A rank's share of the cores, set by the launcher; each backend sets its framework's threads to it.
THREADS_VARIABLE = "SKIPGRAM_THREADS"


class World(NamedTuple):
    rank: int
    size: int

    @classmethod
    def from_env(cls) -> World:
        """This process's place among the ranks the launcher started (bench/running/data_parallel.py);
        one process of one rank where it started none."""
        env = os.environ  # the launcher's names, else torchrun's (it starts the ranks itself)
        return cls(int(env.get(RANK_VARIABLE, env.get("RANK", "0"))),
                   int(env.get(WORLD_VARIABLE, env.get("WORLD_SIZE", "1"))))


class Shard(NamedTuple):
    batch: Batch   # this rank's consecutive rows of the global batch
    scale: float   # its mean loss's factor: N x rows / B (1.0 for equal slices)


def bounds(rows: int, world: int) -> np.ndarray:
    """The N + 1 slice boundaries of `rows` rows: equal slices, the first ones a row longer when
    `rows` does not divide (np.array_split's rule)."""
    return np.cumsum([0] + [rows // world + (r < rows % world) for r in range(world)])


def shard(batch: Batch, world: World) -> Shard:
    """Rank `world.rank`'s slice of a global batch and its loss factor."""
    rows = batch.center.size
    if rows < world.size:
        raise BenchError(f"a batch of {rows} examples cannot be split across {world.size} workers "
                         f"(the epoch's last batch): use fewer --workers or another --batch-size")
    lo, hi = bounds(rows, world.size)[world.rank:world.rank + 2]
    return Shard(Batch(*(a[lo:hi] for a in batch)), world.size * (hi - lo) / rows)


def combine(losses: Sequence[np.ndarray], rows: Sequence[np.ndarray]) -> np.ndarray:
    """The global batch's per-step loss from each rank's slice means, weighted by each slice's rows."""
    stacked, weights = np.stack(losses).astype(np.float64), np.stack(rows).astype(np.float64)
    return (stacked * weights).sum(axis=0) / weights.sum(axis=0)
