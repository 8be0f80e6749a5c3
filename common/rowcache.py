"""Draw 0's rows, built once per corpus and sampling settings, then memory-mapped.

Every static epoch (and a dynamic run's first) reshuffles the same rows, so building them
again each epoch and in each backend's process is wasted work: as nanoGPT does with its
tokens, they are prepared once and read through the page cache. Draws larger than
MAX_BYTES are not cached (a 100M-token corpus would need ~7 GB); they stream from the sampler.
"""
from __future__ import annotations

import hashlib
import json
from typing import NamedTuple

import numpy as np

from common.cache import atomic_dir, cache_dir
from common.sampling import Rows, Sampler
from common.spec import DataSpec

MAX_BYTES = 1 << 30
_BUILD_ROWS = 1 << 16


class RowTable(NamedTuple):
    """Memory-mapped rows of every example of a draw, in example order."""

    center: np.ndarray
    context_negative: np.ndarray
    contexts: np.ndarray

    def rows(self, examples: np.ndarray) -> Rows:
        return Rows(self.center[examples], self.context_negative[examples], self.contexts[examples])


def _key(corpus_sha256: str, spec: DataSpec) -> str:
    """Everything that determines draw 0's rows; batch size, epochs and sampling mode do not."""
    fields = {"corpus": corpus_sha256, "seed": spec.seed, "window": spec.window, "noise": spec.noise,
              "min_freq": spec.min_freq, "subsample": spec.subsample, "version": 1}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def cached_rows(corpus_sha256: str, spec: DataSpec, sampler: Sampler) -> RowTable | None:
    """The row table of `sampler`'s draw, built on first use; None when it is too large."""
    n = sampler.draw.centers.size
    if n * spec.row_length * 4 > MAX_BYTES:
        return None
    folder = cache_dir() / f"rows-{_key(corpus_sha256, spec)}"
    names = Rows._fields
    if not folder.exists():
        with atomic_dir(folder) as tmp:
            shapes = {"center": ((n,), np.int32), "context_negative": ((n, spec.row_length), np.int32),
                      "contexts": ((n,), np.uint8)}
            out = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
                   for name, (shape, dtype) in shapes.items()}
            for start in range(0, n, _BUILD_ROWS):
                rows = sampler.rows(np.arange(start, min(n, start + _BUILD_ROWS)))
                for name in names:
                    out[name][start:start + rows.center.size] = getattr(rows, name)
            for array in out.values():
                array.flush()
            del out
    return RowTable(*(np.load(folder / f"{name}.npy", mmap_mode="r") for name in names))
