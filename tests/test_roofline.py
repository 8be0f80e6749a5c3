"""The roofline: the cost model's formulas, its PTB count against the count by hand, the probe's
degrade path, and real runs (each in its env, with one real probe) that must not beat their bound."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bench.executing.suite import make_spec, planned
from bench.reporting import roofline as report_roofline
from common import probe as probe_module
from common.batches import Batch, load_dataset
from common.probe import PROBE_VARIABLE, bandwidth_at, cached_probe, check, unavailable
from common.roofline import BatchStats, bound, measure, published_gpu, roofline, step_cost, update_rule
from common.spec import DataSpec
from tests.conftest import run_bench, run_plan, write_text

# A step small enough to count by hand: V 10, D 4, 2 examples of L 6 (12 padded slots), 5 real
# slots, 2 distinct centers and 3 distinct context words.
TINY = BatchStats(examples=2, row_length=6, slots=5, center_rows=2, context_rows=3, batches=1)
FAKE_PROBE = {"method": "test", "threads": 1, "sizes": [1 << 20, 1 << 24], "bandwidth": [100e9, 10e9],
              "peak_flops": 1e12}


@pytest.mark.parametrize("update, layout, expected_bytes, expected_flops", [
    # inputs + gather (16 B x 5 rows) + gradients (2 x 16 x 5) + optimiser; FLOPs (6 D + 10) a slot + update
    ("adam", "padded", (8 + 6 * 12) + 80 + 160 + 6 * 16 * 20, (24 + 10) * 12 + 12 * 4 * 20),
    ("adam", "packed", (8 + 16 * 5) + 80 + 160 + 6 * 16 * 20, (24 + 10) * 5 + 12 * 4 * 20),
    ("lazy_adam", "padded", (8 + 6 * 12) + 80 + 160 + 6 * 16 * 5, (24 + 10) * 12 + 12 * 4 * 5),
    ("lazy_adam", "packed", (8 + 16 * 5) + 80 + 160 + 6 * 16 * 5, (24 + 10) * 5 + 12 * 4 * 5),
    ("sgd", "padded", (8 + 6 * 12) + 80 + 160 + 2 * 16 * 5, (24 + 10) * 12 + 2 * 4 * 5),
    ("sgd", "packed", (8 + 16 * 5) + 80 + 160 + 2 * 16 * 5, (24 + 10) * 5 + 2 * 4 * 5),
])
def test_step_cost_by_hand(update, layout, expected_bytes, expected_flops):
    cost = step_cost(10, 4, TINY, update, layout)
    assert cost.bytes == expected_bytes and cost.flops == expected_flops


def test_working_set_and_update_rule():
    assert step_cost(10, 4, TINY, "adam", "padded").working_set == 16 * 8 * 10 + 80  # w, m, v, grad of 2 tables
    assert step_cost(10, 4, TINY, "lazy_adam", "padded").working_set == 16 * 4 * 5 + 80
    assert update_rule("adam", False) == "adam" and update_rule("adam", True) == "lazy_adam"
    assert update_rule("sgd", True) == update_rule("sgd", False) == "sgd"
    with pytest.raises(ValueError):
        step_cost(10, 4, TINY, "adagrad", "padded")


def test_bound_takes_the_slower_roof():
    cost = step_cost(10, 4, TINY, "adam", "padded")
    assert bound(cost, 2, 1e9, 1e15) == pytest.approx(2 / (cost.bytes / 1e9))   # memory-bound
    assert bound(cost, 2, 1e15, 1e6) == pytest.approx(2 / (cost.flops / 1e6))   # compute-bound
    assert bound(cost, 2, None, 1e6) is None and bound(cost, 2, 1e9, None) is None


def test_bandwidth_is_read_optimistically_so_the_bound_stays_a_bound():
    assert bandwidth_at(FAKE_PROBE, 1 << 20) == pytest.approx(100e9)
    assert bandwidth_at(FAKE_PROBE, 1 << 22) == pytest.approx(100e9)  # between sizes: the smaller size's rate
    assert bandwidth_at(FAKE_PROBE, 1) == pytest.approx(100e9)        # under the smallest: its rate
    assert bandwidth_at(FAKE_PROBE, 1 << 30) == pytest.approx(10e9)
    dip = {**FAKE_PROBE, "sizes": [1 << 20, 1 << 22, 1 << 24], "bandwidth": [100e9, 5e9, 10e9]}
    assert bandwidth_at(dip, 1 << 23) == pytest.approx(10e9)  # a dip under a larger size's rate is the probe's noise
    assert bandwidth_at(unavailable("no"), 1 << 20) is None


def test_measure_counts_real_slots_and_distinct_rows():
    cn = np.array([[3, 3, 4, 0], [5, 3, 0, 0]], np.int32)
    mask = (cn != 0).astype(np.uint8)
    batch = Batch(center=np.array([7, 7], np.int32), context_negative=cn, mask=mask, label=mask.copy())
    stats = measure([batch])
    assert (stats.examples, stats.row_length, stats.slots, stats.center_rows, stats.context_rows) == (2, 4, 5, 1, 3)


def test_ptb_dense_bytes_within_a_quarter_of_the_count_by_hand(ptb_dir):
    """README, "The roofline": 6 arrays (w, m, v read and written) x 2 tables x V x D x 4 B, plus each
    touched row's gradient written and read once."""
    spec = DataSpec(epochs=1)
    dataset = load_dataset(spec, str(ptb_dir), download=False)
    stats = measure(list(dataset.epoch(0)))
    vocab = len(dataset.vocab)
    by_hand = 6 * 2 * vocab * spec.embed * 4 + 2 * (stats.center_rows + stats.context_rows) * spec.embed * 4
    for layout in ("padded", "packed"):
        model = step_cost(vocab, spec.embed, stats, "adam", layout).bytes
        assert abs(model / by_hand - 1) <= 0.25, (layout, model, by_hand)
    assert 400 < stats.center_rows < 512 and 3000 < stats.context_rows < 6000  # PTB's, as README says


# --- the probe's degrade path -----------------------------------------------------------------

def test_a_probe_that_cannot_run_is_no_bound(monkeypatch):
    def broken(sizes):
        raise RuntimeError("cannot start threads\nsecond line")
    monkeypatch.setattr(probe_module, "_numpy_probe", broken)
    result = probe_module.probe(sizes=[1 << 20], use_numba=False)
    assert result["error"] == "the machine probe failed: RuntimeError: cannot start threads"
    record = roofline(10, 4, TINY, "adam", "padded", result)
    assert record["bound_examples_per_s"] is None and record["bandwidth_bytes_per_s"] is None
    assert record["unavailable"] == result["error"] and record["bytes_per_step"] > 0


@pytest.mark.parametrize("figures", [[0.0], [float("nan")], []])
def test_a_probe_without_usable_figures_is_refused(figures):
    result = check({**FAKE_PROBE, "bandwidth": figures, "sizes": [1] * len(figures)})
    assert "no usable figure" in result["error"]


@pytest.mark.parametrize("text, error", [
    ("[1, 2", "is corrupt: not JSON"),
    (json.dumps({**FAKE_PROBE, "sizes": ["1"]}), "sizes[0] is a string"),
    (json.dumps({**FAKE_PROBE, "peak_flops": True}), "peak_flops is a boolean"),
    (json.dumps({**FAKE_PROBE, "sizes": [1, 2, 3]}), "one bandwidth a size"),
    (json.dumps({**FAKE_PROBE, "sizes": [2, 1]}), "sizes increase"),
])
def test_a_handed_probe_that_is_not_one_is_no_bound(monkeypatch, tmp_path, text, error):
    """What a run does with the file its harness handed it: a probe it can use, or no bound saying why."""
    from bench.running.train_command import take_handed_probe

    monkeypatch.setattr(probe_module, "_CACHED", None)
    monkeypatch.setenv(PROBE_VARIABLE, str(write_text(tmp_path / "probe.json", text)))
    take_handed_probe()
    assert cached_probe()["error"].startswith(f"the handed machine probe: {tmp_path / 'probe.json'}")
    assert error in cached_probe()["error"]
    monkeypatch.setattr(probe_module, "_CACHED", None)
    write_text(tmp_path / "probe.json", json.dumps(FAKE_PROBE))
    take_handed_probe()
    assert cached_probe()["peak_flops"] == 1e12


def test_the_numpy_probe_measures_here():
    """The tests env has numpy and no numba: its probe is numpy threads, with real figures."""
    result = probe_module.probe(sizes=[1 << 20, 1 << 22], use_numba=False)
    assert result.get("error") is None, result
    assert result["method"] == "numpy threads" and len(result["bandwidth"]) == 2
    assert all(k[i]["worst"] <= k[i]["median"] <= k[i]["best"] for k in result["kernels"].values() for i in range(2))
    assert result["peak_flops"] > 1e8 and min(result["bandwidth"]) > 1e8


def test_machine_command_prints_the_probe():
    done = run_bench("machine")
    assert done.returncode == 0, done.stderr
    assert "machine probe:" in done.stdout and "peak float32 FMA:" in done.stdout and "GB/s" in done.stdout


def test_published_gpus():
    assert published_gpu("NVIDIA H200")[0] == "H200"
    assert published_gpu("NVIDIA H100 80GB HBM3")[0] == "H100 SXM"
    assert published_gpu("NVIDIA H100 PCIe") is None and published_gpu("NVIDIA A100-SXM4-80GB") is None


def test_report_share_needs_a_bound():
    assert report_roofline.share({"rate_median": 10.0}) is None
    assert report_roofline.share({"rate_median": 10.0, "roofline": {"bound_examples_per_s": None}}) is None
    assert report_roofline.share({"rate_median": 10.0, "roofline": {"bound_examples_per_s": 40.0}}) == 0.25


# --- real runs against their bound -------------------------------------------------------------

@pytest.mark.envs
def test_no_run_beats_its_bound(tmp_path, ptb_dir):
    """The default suite's fastest rows, the fused limit dense, lazy and SGD, and a torch run, on
    PTB through the harness with one real probe: each rate must be below its bound (the model errs
    high, so a run above it would mean the model is wrong)."""
    settings = [{"backend": "fused", "sparse": s} for s in (False, True)]
    settings += [{"backend": "fused", "optimizer": "sgd", "lr": 0.05}, {"backend": "torch"}]
    plan = [planned(make_spec({"epochs": 1, "max_steps": 300, **extra}, "test")) for extra in settings]
    results = run_plan(tmp_path / "suite", plan, ptb_dir, timeout=600)
    for run, result in zip(plan, results):
        assert result is not None and result["status"] == "ok", (run.name, result and result.get("error"))
        model = result["roofline"]
        assert model["update"] == update_rule(run.spec.optimizer, run.spec.sparse) and model["layout"] == "padded"
        assert model["bound_examples_per_s"], model.get("unavailable")
        assert result["rate_median"] <= model["bound_examples_per_s"], (run.name, result["rate_median"], model)


def test_the_suite_records_its_probe_and_a_resume_keeps_it(tmp_path, monkeypatch):
    from bench.executing import suite_command
    from bench.executing.folder import ResultsFolder

    plan = [planned(make_spec({"backend": "numpy", "epochs": 1}, "test"))]
    monkeypatch.setattr(suite_command, "machine_probe", lambda: FAKE_PROBE)
    with ResultsFolder(tmp_path / "suite") as folder:
        folder.adopt(plan, ["test"])
        assert suite_command.suite_probe(folder) == FAKE_PROBE
    assert json.loads((tmp_path / "suite" / "suite.json").read_text())["machine"]["probe"] == FAKE_PROBE
    monkeypatch.setattr(suite_command, "machine_probe", lambda: pytest.fail("a resumed suite probes again"))
    with ResultsFolder(tmp_path / "suite") as folder:
        folder.adopt(plan, ["test"])
        assert suite_command.suite_probe(folder) == FAKE_PROBE


def test_measure_streams_an_epoch_holding_no_batch_it_has_counted(ptb_dir):
    """`roofline --corpus zipf:20M:1M` once held a whole epoch to sample 128 of its batches (OOM
    in 3 GiB): now each chosen batch is counted as it goes by, and the means are the same."""
    import gc
    import weakref

    dataset = load_dataset(DataSpec(epochs=1, batch_size=4096), str(ptb_dir), download=False)
    batches = list(dataset.epoch(0))
    alive: set[int] = set()
    most = 0

    def stream():
        nonlocal most
        for i, batch in enumerate(dataset.epoch(0)):
            copy = Batch(*(a.copy() for a in batch))  # a batch of its own, not a view of a shared chunk
            alive.add(i)
            weakref.finalize(copy.center, alive.discard, i)
            del batch
            gc.collect()
            most = max(most, len(alive))
            yield copy

    streamed = measure(stream(), dataset.batches_per_epoch(0), limit=8)
    assert streamed == measure(batches, limit=8) and streamed.batches == 8
    assert most <= 2  # the batch handed out and the one before it, never the epoch's
    with pytest.raises(ValueError, match="no batch"):
        measure(iter([]), 0)


@pytest.mark.parametrize("vocab", ["0", "-5", "1" + "0" * 400, str(2 ** 31)])
def test_roofline_refuses_a_vocabulary_no_table_can_have(vocab):
    result = run_bench("roofline", "--vocab", vocab, "--no-probe", "--corpus", "zipf:1k:100")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "--vocab must be a whole number from 1 to 2,147,483,647" in line and len(line) < 200
