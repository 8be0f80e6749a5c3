"""The `local` executor: one run after another, each a subprocess of this machine."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.executing import envs
from bench.executing.attempt import attempt
from bench.executing.events import Finished, Started
from bench.executing.suite import PlannedRun


class LocalExecutor:
    """Each run in turn: the default, and the only executor that needs no extra package."""

    name = "local"

    def __init__(self, data_dir: Path, timeout: float, scratch: Path) -> None:
        self.data_dir, self.timeout, self.scratch = data_dir, timeout, scratch
        self.run_env: dict[str, str] = {}  # the suite's machine probe, for every run (bench/executing/probing.py)

    def run(self, runs: list[PlannedRun], started: Started, finished: Finished) -> None:
        envs.ask_named(run.env for run in runs if run.env)
        for run in runs:
            started(run)
            with _bar(run.name) as bar:
                result = attempt(run, self.data_dir, self.timeout, self.scratch, progress=bar, extra_env=self.run_env)
            finished(run, result)


@contextmanager
def _bar(name: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar for one run on a terminal (tqdm); nothing elsewhere."""
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=name, leave=False, disable=not sys.stderr.isatty(), dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()
