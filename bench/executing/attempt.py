"""One attempt at one planned run: `python -m bench train` in the run's env, as a subprocess.

Every executor runs a run this way, so a run's losses and timing environment do not depend
on which one ran it. The worker gets a process group of its own (the harness ends the whole
group: the recipe loop's DataLoader processes too) and dies with the process that started it
(PR_SET_PDEATHSIG), so a killed harness leaves no orphan training beside a later --resume.
Each attempt writes its spec, log and partial result under names of its own.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from bench.executing import envs
from bench.executing.memory import oom_kills, out_of_memory
from bench.executing.processes import die_with, end_group
from bench.executing.suite import PlannedRun
from bench.results.schema import failed_result
from bench.results.store import FolderFileError, read_result, write_json
from common.cache import open_in_place
from common.errors import BenchError
from common.evaluate import eval_data_dir
from common.machine import HARNESS_VARIABLE, announce_session, harness_value

Progress = Callable[[int, int], None]
def attempt(run: PlannedRun, data_dir: Path, timeout: float, scratch: Path, progress: Progress | None = None,
            extra_env: Mapping[str, str | None] | None = None, stop: threading.Event | None = None) -> dict:
    """The run's result record (the worker's own, or a failed / timed-out one saying why), with
    the attempt's wall time: process start, data, compilation, training and evaluation.

    `extra_env` sets variables for the worker (None removes one: a Dask nanny's thread limits);
    setting `stop` ends the worker's group and records it failed (a cluster task cancelled)."""
    started = time.perf_counter()
    result = _attempt(run, data_dir, timeout, scratch, progress, extra_env, stop)
    result.setdefault("wall_seconds", time.perf_counter() - started)
    return result


def _attempt(run: PlannedRun, data_dir: Path, timeout: float, scratch: Path, progress: Progress | None,
             extra_env: Mapping[str, str | None] | None, stop: threading.Event | None) -> dict:
    try:
        python = envs.python_for(run.env) if run.env else Path(sys.executable)
    except BenchError as exc:
        return failed_result(run.spec, str(exc))
    # Absolute: the worker runs in the checkout, not in the suite's working directory (a relative --out).
    scratch, data_dir = scratch.absolute(), data_dir.absolute()
    stem = scratch / f"{run.name}.{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{os.getpid()}"
    spec_file, partial, log_path, session = (Path(f"{stem}.{suffix}")
                                             for suffix in ("spec.json", "result.json", "log", "session"))
    write_json(spec_file, run.spec.to_dict())
    cmd = [str(python), "-m", "bench", "train", "--spec", str(spec_file), "--data-dir", str(data_dir),
           "--out", str(partial), "--progress", "--no-download"]
    env = {**os.environ, "PYTHONPATH": str(envs.ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
           HARNESS_VARIABLE: harness_value(session)}
    for name, value in (extra_env or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    if eval_data_dir():
        env["SKIPGRAM_EVAL_DATA"] = str(eval_data_dir())
    log_fd = open_in_place(log_path, "a run's log")  # a full or read-only disk, a planted link: one line
    os.ftruncate(log_fd, 0)
    log = os.fdopen(log_fd, "w")
    kills_before = oom_kills()
    with log:
        proc = subprocess.Popen(cmd, cwd=envs.ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                start_new_session=True, preexec_fn=die_with(os.getpid()))
        try:
            announce_session(session, proc.pid)  # the one group its worker may end
            reader = threading.Thread(target=_follow, args=(proc, progress), daemon=True)
            reader.start()
            if not _wait(proc, timeout, stop):
                end_group(proc)
                return failed_result(run.spec, "cancelled (the suite was stopped); nothing recorded")
            reader.join(timeout=5)
        except subprocess.TimeoutExpired:
            end_group(proc)
            finished = _read_partial(partial, run)  # written, then hung on its way out (a framework's teardown)
            if finished is not None:
                finished["note"] = f"the worker hung after writing its result; ended at the --timeout ({timeout:.0f} s)"
                return finished
            return failed_result(run.spec, f"no result after {timeout:.0f} s (the --timeout); log: {log_path}",
                                 status="timed_out")
        finally:  # a signal, any error, or a finished worker's leftover children: none outlives us
            end_group(proc)
    finished = _read_partial(partial, run)
    if finished is None:
        oom = out_of_memory(proc.returncode, kills_before, oom_kills())
        if oom is not None:
            return failed_result(run.spec, oom)
        how = exit_text(proc.returncode)
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]  # an empty log: the exit says all
        return failed_result(run.spec, f"{how}: {tail[0]}" if tail else how)
    return finished


def _read_partial(partial: Path, run: PlannedRun) -> dict | None:
    """The worker's result, None if it wrote none of this spec; a record it wrote that is not of the
    declared types (a worker of other code) is a failed run saying so, never an ok one."""
    try:
        return read_result(partial, run.key)
    except FolderFileError as exc:
        return failed_result(run.spec, f"its worker wrote an unusable result: {exc}")


def exit_text(returncode: int) -> str:
    """How a process ended, in words: a negative status is the signal that killed it (SIGKILL
    is the OOM killer's or a user's `kill -9`), named, not a bare -9."""
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name} (signal {-returncode})"
    except ValueError:  # a real-time signal has no name: its number, once
        return f"killed by signal {-returncode}"


def _wait(proc: subprocess.Popen, timeout: float, stop: threading.Event | None) -> bool:
    """Wait for the worker to exit (True), or for `stop` (False); TimeoutExpired after `timeout`."""
    if stop is None:
        proc.wait(timeout=timeout)
        return True
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        try:
            proc.wait(timeout=min(0.5, max(deadline - time.monotonic(), 0.01)))
            return True
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                raise
    return False


def _follow(proc: subprocess.Popen, progress: Progress | None) -> None:
    """Pass the worker's 'progress DONE TOTAL' lines on."""
    assert proc.stdout is not None
    for line in proc.stdout:
        parts = line.split()
        if progress and len(parts) == 3 and parts[0] == "progress":
            progress(int(parts[1]), int(parts[2]))
