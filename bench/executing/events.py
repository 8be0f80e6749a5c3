"""What an executor is, and the events it reports: the interface the harness and every executor
share (the factory that picks one, bench/executing/executor.py, imports the executors; they import this)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from bench.executing.suite import PlannedRun

Started = Callable[[PlannedRun], None]
Finished = Callable[[PlannedRun, dict], None]


class Executor(Protocol):
    """Runs planned runs somewhere and hands back each result record as it finishes."""

    name: str

    def run(self, runs: list[PlannedRun], started: Started, finished: Finished) -> None: ...
