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
from collections.abc import Iterator
from contextlib import contextmanager

from bench.executing.events import Executor
from bench.executing.folder import ResultsFolder
from bench.executing.suite import PlannedRun
from bench.results.schema import failed_result
from common.machine import BUSY_FRACTION, wait_for_quiet
from common.text import terminal


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
        self._done: set[str] = set()   # keys: a run a cluster reruns (its worker died) counts once
        self._begun: dict[str, int] = {}  # key -> its place in the order runs began
        self._total = 0
        self._started = time.monotonic()

    def run(self, plan: list[PlannedRun], retry_failed: bool = False) -> None:
        todo = [run for run, _ in self.folder.todo(plan, retry_failed)]
        if len(todo) < len(plan):
            print(f"resuming: {len(plan) - len(todo)} of {len(plan)} runs already finished", file=sys.stderr)
        strays = self.folder.strays(plan)
        if strays:  # a copy of a result is not another run
            print(terminal(f"note: {len(strays)} files in {self.folder.runs} are not a planned run's own "
                           f"(not counted): {', '.join(p.name for p in strays[:5])}"
                           + (", ..." if len(strays) > 5 else "")), file=sys.stderr)
        for run in todo:  # planned skipped: recorded with the reason, never started
            if not run.skip:
                continue
            self.folder.save(run, failed_result(run.spec, run.skip, status="skipped"))
            say(f"{run.name}: skipped, {run.skip}")
        todo = [run for run in todo if not run.skip]
        self._total, self._started = len(todo), time.monotonic()
        if todo:  # nothing left: no executor (a cluster need not even have workers)
            self.executor.run(todo, self._on_start, self._on_finish)

    def _on_start(self, run: PlannedRun) -> None:
        if self.require_quiet:
            self._quiet_before[run.key] = wait_for_quiet(QUIET_WAIT_SECONDS, BUSY_FRACTION)
        again = run.key in self._begun  # a cluster restarting it elsewhere: the same place, said so
        place = self._begun.setdefault(run.key, len(self._begun) + 1)  # not done + 1: a cluster runs several at once
        say(f"[{place}/{self._total}] {run.name}: {'started again' if again else 'started'} "
            f"({run.env or 'harness'} env, {run.spec.device})")

    def _on_finish(self, run: PlannedRun, result: dict) -> None:
        result.setdefault("executor", self.executor.name)
        if self.require_quiet and result["status"] == "ok":
            _mark_noisy(result, self._quiet_before.get(run.key, True))
        self.folder.save(run, result)
        self._done.add(run.key)
        done = len(self._done)
        rate = result.get("examples_per_sec")
        note = f"{rate:,.0f} examples/s" if result["status"] == "ok" and rate else result.get("error") or ""
        elapsed = time.monotonic() - self._started
        left = elapsed / done * (self._total - done)
        where = f" on {result['host']} ({result['worker']})" if result.get("worker") else ""  # a cluster's run
        say(f"[{done}/{self._total}] {run.name}: {result['status']}{where}, {note}"
            + (f"; about {_duration(left)} left" if done < self._total else ""))


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
    """A progress line, flushed: a CI log or `> log` shows it as it happens. It may quote a stored
    plan or result (a skip reason, an error): control characters are escaped."""
    print(terminal(line), flush=True)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
