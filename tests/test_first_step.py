"""Every runner records its first step's time apart, and the report's summary shows it, with what
a backend compiled ahead of the clock added (torch compiled: each batch shape in prepare)."""
from __future__ import annotations

from bench.reporting import report
from bench.running import bare_loop, worker
from common.spec import DataSpec, RunSpec


def test_worker_and_bare_loop_record_the_first_step_and_the_report_shows_it(ptb_dir):
    spec = RunSpec(backend="numpy", data=DataSpec(epochs=1), max_steps=3)
    results = [runner.train(spec, str(ptb_dir), download=False) for runner in (worker, bare_loop)]
    for result in results:
        timings = result["timings"]
        assert timings["first_step_seconds"] > 0 and timings["compile_seconds"] == 0.0
        assert report.first_step_seconds(result) == timings["first_step_seconds"]
    results[0]["timings"]["compile_seconds"] = 2.5  # as a compiled torch run records its prepare's compile
    assert report.first_step_seconds(results[0]) == results[0]["timings"]["first_step_seconds"] + 2.5
    rows = [row for _, group in report.summary([{**r, "_name": name} for r, name in zip(results, ("worker", "bare"))])
            for row in group]
    worker_row = next(row for row in rows if row["label"] == "worker")  # rows run fastest first
    assert worker_row["first"] == results[0]["timings"]["first_step_seconds"] + 2.5


def test_a_result_without_a_first_step_shows_none():
    assert report.first_step_seconds({"timings": {"first_step_seconds": None, "compile_seconds": 1.0}}) is None
    assert report.first_step_seconds({"timings": {}}) is None
