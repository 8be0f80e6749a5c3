"""The report's "What sparse gradients save across workers", on crafted results with fixed rates."""
from __future__ import annotations

from bench.reporting import parallel
from common.comm import SliceRows, model
from common.comm_scaling import WORKER_COUNTS
from common.spec import DataSpec, RunSpec

VOCAB = 6719
# A PTB-like slice profile: slice size -> the mean rows such a slice names.
PROFILE = {512: SliceRows(512, 13437, 461, 4280), 256: SliceRows(256, 6718, 242, 2993),
           128: SliceRows(128, 3359, 124, 1917), 64: SliceRows(64, 1680, 63, 1144),
           32: SliceRows(32, 840, 32, 649), 16: SliceRows(16, 420, 16, 355), 8: SliceRows(8, 210, 8, 189),
           4: SliceRows(4, 105, 4, 99), 2: SliceRows(2, 52, 2, 51), 1: SliceRows(1, 26, 1, 26)}


def result(workers: int, sparse: bool, rate: float, seconds: float | None = None) -> dict:
    spec = RunSpec(backend="torch", data=DataSpec(epochs=1), sparse=sparse, layout="packed", workers=workers)
    out = {"status": "ok", "error": None, "spec": spec.to_dict(), "rate_median": rate, "losses": [0.6],
           "vocab_size": VOCAB, "machine_load": {"other_cpu_fraction": 0.0}}
    if workers > 1:
        sent = sum(c.bytes_sent for c in model(spec, VOCAB, [PROFILE[512 // workers]] * workers, 0))
        out["communication"] = {"engine": "DDP", "threads_per_rank": 1, "cores": 2, "oversubscribed": False,
                                "ranks": [], "bytes_per_step": sent, "seconds_per_step": [seconds, None],
                                "slice_profile": {str(k): list(v) for k, v in PROFILE.items()}}
    return out


def test_each_run_beside_its_twin_with_bytes_share_and_scaling() -> None:
    section = parallel.section([result(1, False, 80_000.0), result(2, False, 32_000.0, seconds=0.004),
                                result(1, True, 50_000.0), result(2, True, 20_000.0)])
    assert section is not None
    rows = {(r["run"], r["workers"]): r for r in section["rows"]}
    dense2 = rows[("torch dense packed cpu", 2)]
    assert dense2["bytes"] == 2 * (2 - 1) / 2 * 2 * VOCAB * 100 * 4  # one ring allreduce of both tables
    assert abs(dense2["step_ms"] - 512 / 32_000 * 1e3) < 1e-9
    assert abs(dense2["share"] - 0.004 / (512 / 32_000)) < 1e-12  # the slowest timed rank over the step
    assert abs(dense2["beyond"] - (1 - (512 / 80_000) / (2 * 512 / 32_000))) < 1e-12
    assert rows[("torch dense packed cpu", 1)]["bytes"] == 0.0 and rows[("torch sparse packed cpu", 2)]["share"] is None


def test_the_crossover_is_named_from_the_modelled_curves() -> None:
    [curves] = parallel.section([result(1, True, 50_000.0), result(2, True, 20_000.0)])["curves"]
    weak = curves["weak"]
    assert [p.workers for p in weak["dense"]] == list(WORKER_COUNTS)
    n = weak["crossover"]
    by_n = {p.workers: (p.bytes_sent, q.bytes_sent) for p, q in zip(weak["dense"], weak["sparse"])}
    assert by_n[n][1] >= by_n[n][0] and by_n[n // 2][1] < by_n[n // 2][0]  # the first N where sparse sends more
    assert f"more from N = {n:,}" in curves["words"]
    assert curves["strong"]["crossover"] is None and "at every N up to 512" in curves["words"]
    assert len(curves["times"]) == 4 and all(len(row) == 5 for row in curves["times"])


def test_no_data_parallel_run_no_section() -> None:
    assert parallel.section([result(1, False, 80_000.0)]) is None
