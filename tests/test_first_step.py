"""Every runner records its first step's time apart, and the report's summary shows it, and what
a backend compiled ahead of the clock (torch compiled: each batch shape in prepare; torch's plain
sparse run: its lazy-Adam pass) in a column of its own: a plain run does not read as slow to start."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench.reporting import report
from bench.running import bare_loop, worker
from common.spec import DataSpec, RunSpec

FIXTURE = Path(__file__).parent / "fixtures" / "folder-675fcd7"


def test_worker_and_bare_loop_record_the_first_step_and_the_report_shows_it(ptb_dir):
    spec = RunSpec(backend="numpy", data=DataSpec(epochs=1), max_steps=3)
    results = [runner.train(spec, str(ptb_dir), download=False) for runner in (worker, bare_loop)]
    for result in results:
        timings = result["timings"]
        assert timings["first_step_seconds"] > 0 and timings["compile_seconds"] == 0.0
        assert report.start_costs(result) == (timings["first_step_seconds"], 0.0)
    results[0]["timings"]["compile_seconds"] = 2.5  # as a compiled torch run records its prepare's compile
    rows = [row for _, group in report.summary([{**r, "_name": name} for r, name in zip(results, ("worker", "bare"))])
            for row in group]
    worker_row = next(row for row in rows if row["label"] == "worker")  # rows run fastest first
    assert (worker_row["first"], worker_row["compile"]) == (results[0]["timings"]["first_step_seconds"], 2.5)


def test_a_result_without_a_first_step_shows_none():
    assert report.start_costs({"timings": {"first_step_seconds": None, "compile_seconds": 1.0}}) == (None, 1.0)
    assert report.start_costs({"timings": {}}) == (None, None)


def test_the_page_shows_a_plain_sparse_runs_compile_apart_from_its_first_step(tmp_path):
    """Crafted as torch's plain sparse run records itself: 22.9 s compiling its lazy-Adam pass in
    prepare, 0.04 s for its first step. The page says 0.04 under "first step" and 22.90 under the
    compile column; nowhere the sum."""
    folder = shutil.copytree(FIXTURE, tmp_path / "folder")
    path = next((folder / "runs").glob("numpy-sparse-*.json"))
    record = json.loads(path.read_text())
    record["timings"].update(first_step_seconds=0.04, compile_seconds=22.9)
    path.write_text(json.dumps(record))
    page = report.render(folder).read_text()
    head = page[page.index("<h2>Summary"):page.index("<h2>Measurement")]
    assert "<th>first step (s)</th><th>compile, ahead of the clock (s)</th>" in head
    row = next(line for line in head.splitlines() if "numpy sparse cpu" in line)
    assert "<td>0.04</td><td>22.90</td>" in row and "22.94" not in page
