"""Runs a plan: what is not finished yet goes to an executor; each result is written as it comes.

The harness never imports a framework. A run that cannot get its env, crashes, diverges or
outlives its timeout becomes a result with that status and its reason; the suite goes on.
Where runs execute is the executor's business (`local`: one after another on this machine);
planning, the folder, writing results and telling the user what is happening stay here.
SIGINT, SIGTERM and SIGHUP end the running worker and record nothing for it.
"""
from __future__ import annotations

import signal
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from bench.executing.events import Executor
from bench.executing.folder import ResultsFolder
from bench.executing.suite import PlannedRun
from bench.running.train_command import failed_result
from common.machine import BUSY_FRACTION, wait_for_quiet


class Interrupted(BaseException):
    """A signal asked the harness to stop (BaseException: no `except Exception` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT, SIGTERM, SIGHUP raise Interrupted in the main thread; later ones are ignored
    while the running worker is ended, so cleaning up cannot itself be interrupted."""
    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def handler(signum: int, frame: object) -> None:
        for s in caught:
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in caught}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --require-quiet waits up to this long before each run for other processes to use less than the
# report's busy threshold of the machine (common.machine.BUSY_FRACTION).
QUIET_WAIT_SECONDS = 60


class Harness:
    def __init__(self, folder: ResultsFolder, executor: Executor, require_quiet: bool = False) -> None:
        self.folder, self.executor, self.require_quiet = folder, executor, require_quiet
        self._quiet_before: dict[str, bool] = {}
        self._done = 0
        self._begun = 0
        self._total = 0
        self._started = time.monotonic()

    def run(self, plan: list[PlannedRun], retry_failed: bool = False) -> None:
        todo = [run for run, _ in self.folder.todo(plan, retry_failed)]
        if len(todo) < len(plan):
            print(f"resuming: {len(plan) - len(todo)} of {len(plan)} runs already finished", file=sys.stderr)
        for run in (r for r in todo if r.skip):  # planned skipped: recorded with the reason, never started
            self.folder.save(run, failed_result(run.spec, run.skip, status="skipped"))
            say(f"{run.name}: skipped, {run.skip}")
        todo = [run for run in todo if not run.skip]
        self._total, self._started = len(todo), time.monotonic()
        if todo:  # nothing left: no executor (a cluster need not even have workers)
            self.executor.run(todo, self._on_start, self._on_finish)

    def _on_start(self, run: PlannedRun) -> None:
        if self.require_quiet:
            self._quiet_before[run.key] = wait_for_quiet(QUIET_WAIT_SECONDS, BUSY_FRACTION)
        self._begun += 1  # not done + 1: a cluster runs several at once
        say(f"[{self._begun}/{self._total}] {run.name}: started ({run.env or 'harness'} env, {run.spec.device})")

    def _on_finish(self, run: PlannedRun, result: dict) -> None:
        result.setdefault("executor", self.executor.name)
        if self.require_quiet and result["status"] == "ok":
            _mark_noisy(result, self._quiet_before.get(run.key, True))
        self.folder.save(run, result)
        self._done += 1
        rate = result.get("examples_per_sec")
        note = f"{rate:,.0f} examples/s" if result["status"] == "ok" and rate else result.get("error") or ""
        elapsed = time.monotonic() - self._started
        left = elapsed / self._done * (self._total - self._done)
        where = f" on {result['host']} ({result['worker']})" if result.get("worker") else ""  # a cluster's run
        say(f"[{self._done}/{self._total}] {run.name}: {result['status']}{where}, {note}"
            + (f"; about {_duration(left)} left" if self._done < self._total else ""))


def _mark_noisy(result: dict, quiet_before: bool) -> None:
    """--require-quiet: an ok run is `noisy` when the machine never became quiet before it, or
    other processes took more than BUSY_FRACTION of it during its clock."""
    during = (result.get("machine_load") or {}).get("other_cpu_fraction")
    reasons = ([] if quiet_before else [f"not quiet after waiting {QUIET_WAIT_SECONDS} s"]) + \
        ([f"other processes took {during:.0%} of the CPU during its clock"]
         if during is not None and during > BUSY_FRACTION else [])
    if reasons:
        result["status"], result["error"] = "noisy", "busy machine: " + "; ".join(reasons)


def say(line: str) -> None:
    """A progress line, flushed: a CI log or `> log` shows it as it happens."""
    print(line, flush=True)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
