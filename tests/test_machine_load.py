"""A busy machine is named, not hidden: results record what else the machine was doing during
their clock, the report marks busy and unsteady runs, and wait_for_quiet sees a hog.

The hog tests load every core on purpose; run them under `flock /tmp/measure.lock` on a
shared machine so they do not disturb someone else's timing run."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.reporting import report
from common.machine import BUSY_FRACTION, MachineLoad, cpu_sample, wait_for_quiet
from common.spec import RunSpec
from tests.conftest import SMALL_STEPS, run_bench

LOAD_FIELDS = {"loadavg_before", "loadavg_after", "other_cpu_fraction", "other_cpu_seconds", "own_cpu_seconds",
               "steal_fraction", "wall_seconds", "cores"}
# With a spinning process on every core, the fair scheduler gives the hogs at least half of the
# machine whatever the run does (it has at most one busy thread per core): 0.3 leaves room for
# /proc/stat's 10 ms ticks and for other processes' share being counted the same way anyway.
HOGGED_FRACTION = 0.3

needs_proc_stat = pytest.mark.skipif(cpu_sample() is None, reason="no /proc/stat (not Linux)")


@contextmanager
def hogs() -> Iterator[None]:
    """One `while True: pass` process pinned to each core this process may use; killed after.
    Started through a shell that exits at once, so they are not this process's descendants:
    the machine-load measure counts a run's live descendants as its own CPU."""
    pids = []
    for core in sorted(os.sched_getaffinity(0)):
        code = f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"
        out = subprocess.run(["sh", "-c", '"$0" -c "$1" >/dev/null 2>&1 & echo $!', sys.executable, code],
                             capture_output=True, text=True, check=True)
        pids.append(int(out.stdout))
    try:
        for pid in pids:  # each spinning (some CPU time of its own), however long a loaded machine takes to start it
            deadline = time.monotonic() + 60
            while _cpu_ticks(pid) < 10 and time.monotonic() < deadline:
                time.sleep(0.05)
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)


def _cpu_ticks(pid: int) -> int:
    """User plus system CPU time of `pid` in clock ticks (/proc/<pid>/stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _train(tmp_path: Path, ptb_dir: Path) -> dict:
    out = tmp_path / "result.json"
    small = [f"--{name.replace('_', '-')}={value}" for name, value in SMALL_STEPS.items()]
    result = run_bench("train", "--backend", "numpy", "--max-steps", "250", *small, "--data-dir", str(ptb_dir),
                       "--out", str(out))
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


def _folder_with(tmp_path: Path, results: dict[str, dict]) -> Path:
    folder = tmp_path / "suite"
    (folder / "runs").mkdir(parents=True)
    for name, result in results.items():
        (folder / "runs" / f"{name}.json").write_text(json.dumps(result))
    return folder


@needs_proc_stat
def test_result_records_machine_load(tmp_path, ptb_dir):
    result = _train(tmp_path, ptb_dir)
    load = result["machine_load"]
    assert set(load) == LOAD_FIELDS
    assert 0.0 <= load["other_cpu_fraction"] <= 1.0 and 0.0 <= load["steal_fraction"] <= 1.0
    assert load["loadavg_before"] >= 0 and load["loadavg_after"] >= 0
    assert load["cores"] == sum(1 for line in Path("/proc/stat").read_text().splitlines()
                                if line.startswith("cpu") and line[3:4].isdigit())
    # The span is the training clock: as long as it, give or take the clock readings around it.
    assert abs(load["wall_seconds"] - result["timings"]["train_seconds"]) < 0.05 + 0.01 * load["wall_seconds"]
    assert 0 < load["own_cpu_seconds"] <= load["wall_seconds"] * load["cores"] * 1.05


@needs_proc_stat
def test_busy_machine_is_recorded_and_marked(tmp_path, ptb_dir):
    with hogs():
        result = _train(tmp_path, ptb_dir)
    assert result["machine_load"]["other_cpu_fraction"] > HOGGED_FRACTION, result["machine_load"]
    page = report.render(_folder_with(tmp_path, {"numpy-dense-cpu": result})).read_text()
    summary = page[page.index("<h2>Summary"):page.index("<h2>Measurement warnings")]
    warnings = page[page.index("<h2>Measurement warnings"):page.index("<h2>Loss curves")]
    assert "ok; busy machine (" in summary and "class='warn'" in summary
    assert "other processes took" in warnings and f"<td class='l'>{RunSpec.from_dict(result['spec']).label}" in warnings


def test_report_marks_unsteady_and_noisy_runs_and_leaves_quiet_ones(tmp_path):
    base = {"status": "ok", "error": None, "spec": RunSpec(backend="numpy").to_dict(), "data_hash": "d",
            "losses": [0.7, 0.6], "epoch_losses": [0.65], "final_loss": 0.65,
            "segment_rates": [1000.0, 1010.0, 990.0, 1005.0], "rate_median": 1002.5, "rate_iqr": [997.5, 1006.25],
            "machine_load": {"other_cpu_fraction": 0.02, "loadavg_before": 0.1, "loadavg_after": 1.0}}
    quiet = copy.deepcopy(base)
    unsteady = copy.deepcopy(base)
    unsteady.update(segment_rates=[500.0, 1000.0, 1500.0, 1000.0], rate_median=1000.0, rate_iqr=[875.0, 1125.0])
    noisy = copy.deepcopy(base)
    noisy.update(status="noisy", error="other processes used 35 % of the CPU for 30 s")
    busy_few_segments = copy.deepcopy(base)
    busy_few_segments.update(segment_rates=[500.0, 1500.0], rate_median=1000.0, rate_iqr=[750.0, 1250.0])
    busy_few_segments["machine_load"]["other_cpu_fraction"] = BUSY_FRACTION + 0.01
    assert report.measurement_warnings(quiet) == []
    assert [m for m, _ in report.measurement_warnings(unsteady)] == ["unsteady rate (IQR 25% of median)"]
    assert [m for m, _ in report.measurement_warnings(noisy)] == ["noisy"]
    assert [m.split(" (")[0] for m, _ in report.measurement_warnings(busy_few_segments)] == ["busy machine"]
    assert report.measurement_warnings({**base, "status": "failed"}) == []
    runs = {"quiet": quiet, "unsteady": unsteady, "noisy": noisy, "busy": busy_few_segments}
    for i, run in enumerate(runs.values()):  # distinct specs, so the report tells them apart
        run["spec"]["lr"] = 0.001 * (i + 1)
    folder = _folder_with(tmp_path, runs)
    page = report.render(folder).read_text()
    label = {name: r["_name"] for name, r in zip(sorted(runs), report.load_results(folder)[1])}
    assert len(set(label.values())) == 4
    assert "4 of 4 runs finished" in page and "Every run finished." in page  # noisy is finished, not failed
    assert ">noisy</td>" in page and "other processes used 35 % of the CPU" in page
    warnings = page[page.index("<h2>Measurement warnings"):page.index("<h2>Loss curves")]
    for name in ("unsteady", "noisy", "busy"):
        assert f"<td class='l'>{label[name]}</td>" in warnings
    assert f"<td class='l'>{label['quiet']}</td>" not in warnings


@needs_proc_stat
def test_wait_for_quiet_sees_a_hog_and_returns_when_quiet_enough():
    with hogs():
        t = time.monotonic()
        assert wait_for_quiet(max_wait=2.0, threshold=0.5) is False  # every core spinning: ~1.0 busy
        assert time.monotonic() - t < 4.0
    t = time.monotonic()
    assert wait_for_quiet(max_wait=10.0, threshold=1.01) is True  # a fraction is never above 1
    assert time.monotonic() - t < 2.0


@needs_proc_stat
def test_machine_load_counts_own_threads_as_own():
    """A process busy on its own is not 'other': own CPU grows with the work, other stays
    what the rest of the machine did (unknown on a shared machine, so only bounded)."""
    load = MachineLoad().start()
    spun = time.process_time() + 0.3
    while time.process_time() < spun:  # 0.3 CPU-seconds of its own, however long a loaded machine takes
        pass
    record = load.stop()
    assert record["own_cpu_seconds"] >= 0.3 - 0.02  # /proc's 10 ms ticks, user and system
    assert record["other_cpu_seconds"] <= record["wall_seconds"] * record["cores"] - record["own_cpu_seconds"] + 0.05


def test_a_live_childs_cpu_is_the_runs_own():
    """The recipe loop's DataLoader workers run beside it all epoch: their CPU is the run's, not
    another process's, before they are reaped too."""
    load = MachineLoad().start()
    code = "import time\nwhile time.process_time() < 1.5: pass\nprint('spun', flush=True)\ntime.sleep(300)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "spun"
        record = load.stop()  # the child still running, 1.5 CPU-seconds spent
    finally:
        child.kill()
        child.wait()
    assert record["own_cpu_seconds"] >= 1.5 - 0.02  # /proc's 10 ms ticks
