"""TensorFlow's byte model (common.comm.model_tensorflow) on hand-counted steps: MWMS's one-pack ring
all-reduce, and its IndexedSlices all-gathers, one row per lookup, padded to the longest rank's."""
from __future__ import annotations

from common.comm import SliceRows, model_tensorflow
from common.spec import DataSpec, RunSpec

D, L = 100, 60  # the recipe's embedding size and padded row length (window 5, 5 noise words)


def sent(spec: RunSpec, rows: list[SliceRows], rank: int = 0) -> dict[str, float]:
    return {c.name: c.bytes_sent for c in model_tensorflow(spec, 6719, rows, rank)}


def test_dense_is_one_ring_allreduce_of_both_tables() -> None:
    spec = RunSpec("tensorflow", data=DataSpec(), workers=2)
    rows = [SliceRows(256, 3000, 200, 1500)] * 2
    assert sent(spec, rows) == {"gradients of both tables (one pack)": 2 * (2 - 1) / 2 * 2 * 6719 * D * 4}
    four = [SliceRows(128, 1500, 100, 900)] * 4
    assert sent(RunSpec("tensorflow", workers=4), four)["gradients of both tables (one pack)"] == 1.5 * 2 * 6719 * D * 4


def test_sparse_gathers_every_lookup_padded_to_the_longest_rank() -> None:
    rows = [SliceRows(256, 3000, 200, 1500), SliceRows(256, 3200, 210, 1600)]
    packed = sent(RunSpec("tensorflow", sparse=True, layout="packed", workers=2), rows)
    assert packed == {"center gradient lengths": 4, "center gradient values": 256 * D * 4,
                      "center gradient indices": 256 * 4, "context gradient lengths": 4,
                      "context gradient values": 3200 * D * 4, "context gradient indices": 3200 * 4}
    padded = sent(RunSpec("tensorflow", sparse=True, layout="padded", workers=2), rows)
    assert padded["context gradient values"] == 256 * L * D * 4  # every slot of the (B, L) rows
    # a rank sends every chunk but its successor's: on three ranks two padded chunks
    three = rows + [SliceRows(255, 2900, 200, 1500)]  # an epoch's last batch of 767 rows
    spec = RunSpec("tensorflow", data=DataSpec(batch_size=768), sparse=True, layout="packed", workers=3)
    values = sent(spec, three, rank=2)
    assert values["context gradient values"] == 2 * 3200 * D * 4 and values["center gradient values"] == 2 * 256 * D * 4
