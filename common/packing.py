"""The packed layout: a batch's real slots only, flat, so a step computes no padding.

The recipe's rows hold L = 2 * window * (1 + K) slots (60 on PTB), but an example with c
contexts fills only c * (1 + K) of them: on PTB 56 % of a batch's slots are padding, which
every framework computes (gathers, dots, BCE, scatters) and then multiplies by a zero mask.
Packing keeps the stream and its hash as they are and re-lays each batch in `prepare`, before
the clock, the way sequence packing does for padded text (Hugging Face's
DataCollatorWithFlattening, torchtune's `packed=True`):

    ids[s]     the context or noise word of slot s, the real slots of row 0, then row 1, ...
    example[s] the row of the batch slot s belongs to (which center row it dots with)
    label[s]   1 on contexts, 0 on noise words
    weight[s]  1 / (count_b * B): the masked mean over the row, then the mean over the batch

so the loss is sum_s weight[s] * bce(v[center[example[s]]] . u[ids[s]], label[s]), the recipe's
loss exactly (in real arithmetic). Arrays have one fixed length per epoch so graph compilers
see static shapes: the epoch's most real slots in a batch, rounded up to a multiple of a
quantum near 1/16 of it (a power of two, at least 64), so most epochs share one length; on
PTB 14,544 slots at most -> 14,848, against 30,720 padded. Slots past `slots` are padding:
id 0, example 0, label 0, weight 0, so they add nothing to the loss or any gradient.

Lazy Adam's present rows: a padded batch names row 0 in its padding, a packed one in its
tail. Row 0 never occurs in a real slot (it is the vocabulary's <unk>, which subsampling
drops), so its gradient and Adam moments stay zero and its update is 0 / (0 + eps) = 0 in
either layout: the rows whose state changes are exactly the same.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from common.batches import Batch

MIN_QUANTUM = 64


class PackedBatch(NamedTuple):
    center: np.ndarray   # (B,) int32, as in the padded batch
    ids: np.ndarray      # (N,) int32: real slots' words, row by row, then padding (0)
    example: np.ndarray  # (N,) int32: each slot's row in the batch (0 on padding)
    label: np.ndarray    # (N,) float32: 1 on contexts
    weight: np.ndarray   # (N,) float32: 1 / (count_b * B) on real slots, 0 on padding
    slots: int           # how many of the N slots are real (they come first)


def real_slots(batch: Batch) -> int:
    return int(np.count_nonzero(batch.mask))


def rounded(most: int) -> int:
    """`most` rounded up to a quantum near 1/16 of it (a power of two, at least MIN_QUANTUM), so
    that nearby counts share one static shape (and one compiled program)."""
    quantum = max(MIN_QUANTUM, 1 << max(0, (most // 16).bit_length() - 1))
    return max(quantum, -(-most // quantum) * quantum)


def packed_length(batches: Sequence[Batch]) -> int:
    """One length for every batch of an epoch: its most real slots, rounded up to a quantum."""
    return rounded(max((real_slots(b) for b in batches), default=0))


def pack(batch: Batch, length: int) -> PackedBatch:
    """One batch in the packed layout, `length` slots long (at least its real slots)."""
    mask = batch.mask.astype(bool)
    rows, _ = np.nonzero(mask)  # row-major: row 0's slots first, each row's in slot order
    n = rows.size
    if n > length:
        raise ValueError(f"a batch with {n} real slots does not fit a packed length of {length}")
    counts = mask.sum(axis=1, dtype=np.int64)
    per_row = (1.0 / (counts * batch.center.size)).astype(np.float32)

    def padded(values: np.ndarray, dtype: type) -> np.ndarray:
        out: np.ndarray = np.zeros(length, dtype=dtype)
        out[:n] = values
        return out

    return PackedBatch(center=np.ascontiguousarray(batch.center, dtype=np.int32),
                       ids=padded(batch.context_negative[mask], np.int32),
                       example=padded(rows, np.int32),
                       label=padded(batch.label[mask], np.float32),
                       weight=padded(per_row[rows], np.float32),
                       slots=n)


def pack_epoch(batches: Sequence[Batch]) -> list[PackedBatch]:
    """Every batch of an epoch at the epoch's one packed length."""
    length = packed_length(batches)
    return [pack(b, length) for b in batches]


def touched_rows(batch: Batch | PackedBatch) -> tuple[int, int]:
    """Distinct (center, context) rows a batch names in real slots: what a lazy update reads
    and writes (row 0, padding's, excluded: see the module docstring)."""
    ids = batch.ids[:batch.slots] if isinstance(batch, PackedBatch) else batch.context_negative[batch.mask.astype(bool)]
    return int(np.unique(batch.center).size), int(np.unique(ids).size)
