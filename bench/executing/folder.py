"""A results folder: one plan (suite.json), the results of that plan's keys (runs/), one owner.

The owner holds an OS lock on `.lock` (fcntl.flock): it dies with the process, so a killed
harness never leaves a folder locked, and a second harness on the same folder is refused
while the first lives. A stored result counts as finished only if it parses, names how it
ended, and carries exactly the spec of the planned run (its key).
"""
from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from bench.executing.envs import ROOT
from bench.executing.gpus import gpu_names
from bench.executing.suite import PlannedRun
from bench.running.train_command import write_result
from common.errors import BenchError
from common.machine import code_version, git_commit, machine_info
from common.spec import spec_key

FINISHED = ("ok", "diverged", "noisy", "skipped")  # a result of the spec (or why none can be had); kept on resume
RETRYABLE = ("failed", "timed_out")      # kept too, unless --retry-failed


class ResultsFolder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs = path / "runs"
        self.logs = path / "logs"
        self._lock: int | None = None

    # ownership
    def lock(self) -> None:
        """Become the folder's one owner, or refuse with the holder's pid."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise BenchError(f"{self.path} is in use by another suite (pid {holder}); wait for it to finish, "
                             f"stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock = fd
        self.runs.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the flock
            self._lock = None

    def __enter__(self) -> "ResultsFolder":
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    # the plan
    def stored_plan(self) -> list[PlannedRun] | None:
        """The plan in suite.json; None when the folder has none. A corrupt one is an error."""
        meta = self._meta()
        return None if meta is None else self._plan(meta)

    def _plan(self, meta: dict) -> list[PlannedRun]:
        try:
            return [PlannedRun.from_dict(entry) for entry in meta["plan"]]
        except (KeyError, TypeError, BenchError) as exc:
            raise self._corrupt(exc) from None

    def _meta(self) -> dict | None:
        path = self.path / "suite.json"
        if not path.exists():
            return None
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise self._corrupt(exc) from None
        if not isinstance(meta, dict):
            raise self._corrupt(TypeError("not a JSON object"))
        return meta

    def _corrupt(self, exc: Exception) -> BenchError:
        return BenchError(f"{self.path / 'suite.json'} is corrupt ({exc.__class__.__name__}: {exc}); its results "
                          f"cannot be matched to a plan: start the suite in a new folder")

    def check_plan(self, plan: list[PlannedRun]) -> bool:
        """Whether the folder already holds `plan` and was started by this code; an error if it
        holds another plan, or another version of the code would add results to it."""
        meta = self._meta()
        if meta is None:
            return False
        stored = self._plan(meta)
        started, now = meta.get("code"), code_version()
        if started and now and started != now:
            raise BenchError(f"{self.path} was started by other code ({started}; this checkout's common/, backends/, "
                             f"bench/ are {now}): its results would mix two versions; finish it with the code it "
                             f"began with (its commit is in suite.json), or start a new folder")
        ours, theirs = {r.key for r in plan}, {r.key for r in stored}
        if ours != theirs:
            raise BenchError(f"{self.path} holds another plan ({len(theirs - ours)} of its {len(theirs)} runs are not "
                             f"in this one, {len(ours - theirs)} of these are new); finish it with `--resume "
                             f"{self.path}` alone, or choose another --out")
        return True

    def adopt(self, plan: list[PlannedRun], argv: list[str]) -> None:
        """Record `plan` in a new folder, or check it is the plan the folder already holds."""
        if not self.check_plan(plan):
            write_meta(self.path, argv, [run.to_dict() for run in plan])

    # results
    def result_path(self, run: PlannedRun) -> Path:
        return self.runs / f"{run.name}.json"

    def stored_result(self, run: PlannedRun) -> dict | None:
        """The run's result if it is a whole, readable record of exactly this spec that says how it ended."""
        result = read_result(self.result_path(run), run.key)
        return result if result is not None and result.get("status") in FINISHED + RETRYABLE else None

    def todo(self, plan: list[PlannedRun], retry_failed: bool) -> list[tuple[PlannedRun, str]]:
        """The runs to do, each with why: no result, an unusable one, or (when asked) a failed one."""
        todo = []
        for run in plan:
            result = self.stored_result(run)
            if result is None:
                why = "unreadable or of another spec" if self.result_path(run).exists() else "not run yet"
                todo.append((run, why))
            elif retry_failed and result["status"] in RETRYABLE:
                todo.append((run, f"{result['status']} before (--retry-failed)"))
        return todo

    def save(self, run: PlannedRun, result: dict) -> None:
        write_result(self.result_path(run), result)


def read_result(path: Path, key: str) -> dict | None:
    """The result record at `path` if it parses and carries the spec whose key is `key`."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or not isinstance(result.get("spec"), dict):
        return None
    return result if spec_key(result["spec"]) == key else None


def write_meta(folder: Path, argv: list[str], plan: list[dict]) -> None:
    """folder/suite.json: when, which commit, which machine, what command, what was planned."""
    meta = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(ROOT),
            "code": code_version(ROOT),
            "argv": argv, "machine": {**machine_info(), "gpus": gpu_names()}, "plan": plan}
    folder.mkdir(parents=True, exist_ok=True)
    write_result(folder / "suite.json", meta)
