"""The slice profile the communication curves are drawn from: exact counts, measured on real batches."""
from __future__ import annotations

import numpy as np

from common.batches import Batch, load_dataset
from common.comm import SliceRows, slice_rows
from common.comm_scaling import Point, crossover, slice_counts, slice_profile, slice_sizes
from common.spec import DataSpec


def test_slice_sizes_halve_down_to_one_example_or_an_odd_size() -> None:
    assert slice_sizes(512) == [512, 256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert slice_sizes(96) == [96, 48, 24, 12, 6, 3]


def test_each_slice_counts_what_slice_rows_counts_on_real_ptb(ptb_dir) -> None:
    dataset = load_dataset(DataSpec(batch_size=64), str(ptb_dir))
    batches = [b for _, b in zip(range(5), dataset.epoch(0))]
    for batch in batches:
        for width in slice_sizes(64):
            one_by_one = [slice_rows(Batch(*(a[lo:lo + width] for a in batch))) for lo in range(0, 64, width)]
            assert slice_counts(batch, width).tolist() == [list(r) for r in one_by_one]
    profile = slice_profile(batches)
    assert set(profile) == set(slice_sizes(64))
    assert profile[64] == SliceRows(*np.mean([slice_rows(b) for b in batches], axis=0))
    assert profile[1].unique_centers == 1.0 and profile[1].centers == 1.0


def test_the_crossover_is_the_first_count_where_the_gather_sends_as_much() -> None:
    dense = [Point(n, 100.0, {}) for n in (2, 4, 8)]
    assert crossover(dense, [Point(2, 40.0, {}), Point(4, 100.0, {}), Point(8, 300.0, {})]) == 4
    assert crossover(dense, [Point(n, 10.0, {}) for n in (2, 4, 8)]) is None
