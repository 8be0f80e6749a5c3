"""Shared fixtures: an isolated cache, the real PTB (via PTB_DIR or the cache), small corpora."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from common.spec import DataSpec

ROOT = Path(__file__).resolve().parents[1]
# The backend under test: SKIPGRAM_BACKEND (set by each backend's tox env), numpy by default.
BACKEND = os.environ.get("SKIPGRAM_BACKEND", "numpy")
# Real PTB runs with smaller steps than the recipe's (batch 512, embed 100), for tests of the
# harness, compare and the report: they read stored results, not the recipe's numbers, and a
# float64 numpy step is then about a tenth as long. 100 steps still take a few tenths of a second.
SMALL_STEPS = {"batch_size": 128, "embed": 32}


@pytest.fixture(scope="session")
def backend_cls():
    from backends import registry

    return registry.load(BACKEND)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tests never read or write the user's cache; PTB is tokenised once per session."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["SKIPGRAM_BENCH_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def ptb_dir() -> Path:
    """The real PTB, from PTB_DIR (set by CI and tox). Tests that need it skip without it."""
    value = os.environ.get("PTB_DIR")
    if not value:
        pytest.skip("PTB_DIR is not set: point it at the folder holding ptb.train.txt")
    return Path(value)


def file_spec(path: Path, **settings) -> DataSpec:
    """A data spec training on the text file `path` (resolved as `--corpus PATH` is)."""
    from common.corpora import spec_fields
    from common.spec import DataSpec

    return DataSpec(**spec_fields(str(path)), **settings)


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def run_bench(*args: str, python: str = sys.executable, env: dict | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m bench ARGS` in a fresh process, as a user would run it."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([python, "-m", "bench", *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def run_plan(out: Path, plan: list, data_dir: Path, timeout: float = 120) -> list[dict | None]:
    """Run `plan` into results folder `out` as the suite command does; each run's stored result."""
    from bench.executing.folder import ResultsFolder
    from bench.executing.harness import Harness
    from bench.executing.local_executor import LocalExecutor
    from bench.executing.probing import machine_probe, probe_env

    with ResultsFolder(out) as folder:
        folder.adopt(plan, ["python", "-m", "bench", "suite", "(test fixture)"])
        executor = LocalExecutor(data_dir, timeout, folder.logs)
        executor.run_env = probe_env(machine_probe(), folder.logs)  # one probe a test session, as a suite has
        Harness(folder, executor).run(plan)
        return [folder.stored_result(run) for run in plan]
