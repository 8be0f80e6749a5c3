"""Draw 0's rows, built once per corpus and sampling settings, then memory-mapped.

Every static epoch (and a dynamic run's first) reshuffles the same rows, so building them
again each epoch and in each backend's process is wasted work: as nanoGPT does with its
tokens, they are prepared once and read through the page cache. Draws larger than
MAX_BYTES are not cached (a 100M-token corpus would need ~7 GB); they stream from the sampler.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.cache import atomic_dir, cache_folder, free_bytes
from common.errors import BenchError
from common.sampling import Rows, Sampler
from common.spec import DataSpec

MAX_BYTES = 1 << 30
_BUILD_ROWS = 1 << 16
_HEADER_BYTES = 4096  # an .npy header is at most a few hundred bytes; this is a generous bound


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


def _shapes(n: int, spec: DataSpec) -> dict[str, tuple[tuple[int, ...], type]]:
    return {"center": ((n,), np.int32), "context_negative": ((n, spec.row_length), np.int32),
            "contexts": ((n,), np.uint8)}


def table_bytes(n: int, spec: DataSpec) -> int:
    """Disk space the row table of `n` examples takes, headers included."""
    return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize + _HEADER_BYTES
               for shape, dtype in _shapes(n, spec).values())


def check_space(folder: Path, needed: int) -> None:
    """Refuse to build when the disk cannot hold the table. Writing a memory map past a full disk
    kills the process with SIGBUS (exit 135, no message): the user must see this line instead."""
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise BenchError(f"no space for the row cache in {folder}: it needs {needed / 2**20:,.1f} MiB, "
                         f"{free / 2**20:,.1f} MiB free; free space there or set SKIPGRAM_BENCH_CACHE "
                         f"to a folder on another disk")


def _open_allocated(path: Path, shape: tuple[int, ...], dtype: type) -> np.memmap:
    """A new .npy memory map whose blocks are allocated now, so a disk filled by someone else
    since check_space is an OSError here (ENOSPC) rather than a SIGBUS at some later store."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate
            del array
            raise  # atomic_dir makes it the one-line error, naming the cache folder
    finally:
        os.close(fd)
    return array


def cached_rows(corpus_sha256: str, spec: DataSpec, sampler: Sampler) -> RowTable | None:
    """The row table of `sampler`'s draw, built on first use; None when it is too large."""
    n = sampler.draw.centers.size
    if n * spec.row_length * 4 > MAX_BYTES:
        return None
    folder = cache_folder(f"rows-{_key(corpus_sha256, spec)}")
    names = Rows._fields
    if not folder.exists():
        needed = table_bytes(n, spec)
        with atomic_dir(folder, needed) as tmp:  # removes killed builders' leftovers first
            check_space(folder, needed)
            out = {name: _open_allocated(tmp / f"{name}.npy", shape, dtype)
                   for name, (shape, dtype) in _shapes(n, spec).items()}
            for start in range(0, n, _BUILD_ROWS):
                rows = sampler.rows(np.arange(start, min(n, start + _BUILD_ROWS)))
                for name in names:
                    out[name][start:start + rows.center.size] = getattr(rows, name)
            for array in out.values():
                array.flush()
            del out
    return RowTable(*(np.load(folder / f"{name}.npy", mmap_mode="r") for name in names))
