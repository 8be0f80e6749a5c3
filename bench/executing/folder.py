"""A results folder: one plan (suite.json), the results of that plan's keys (runs/), one owner.
Its files are read and written through bench.results (the record's one home).

The owner holds an OS lock on `.lock` (fcntl.flock): it dies with the process, so a killed
harness never leaves a folder locked, and a second harness on the same folder is refused
while the first lives. A stored result counts as finished only if it parses, names how it
ended, and carries exactly the spec of the planned run (its key).
"""
from __future__ import annotations

import fcntl
import os
from datetime import UTC, datetime
from pathlib import Path

from bench.executing.envs import ROOT
from bench.executing.gpus import gpu_names
from bench.executing.suite import PlannedRun
from bench.results import store
from bench.results.schema import CONCLUDED, RETRYABLE
from bench.results.store import FolderFileError, Refused
from common.cache import open_in_place
from common.errors import BenchError
from common.machine import code_version, git_commit, machine_info

# What a results folder holds before its suite.json is written (a start cut short between the
# lock and the plan; a micro-benchmark's probe): anything else there is someone else's.
_BEFORE_PLAN = frozenset({".lock", "runs", "logs", "microbench"})


class ResultsFolder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs = path / "runs"
        self.logs = path / "logs"
        self._lock: int | None = None

    # ownership
    def check_ours(self) -> None:
        """Refuse a folder this suite did not make: one holding anything but a results folder's
        files (a docs folder, `--out .`) would have its index.html replaced. New, empty, or
        holding a suite.json (whose plan check_plan then checks) is ours."""
        try:
            names = sorted(entry.name for entry in os.scandir(self.path))
        except FileNotFoundError:
            return
        except NotADirectoryError:
            raise BenchError(f"--out {self.path} is a file, not a folder: name a new or empty folder") from None
        except OSError as exc:
            raise BenchError(f"--out {self.path} cannot be listed ({os.strerror(exc.errno or 0).lower()}): "
                             f"name a new or empty folder") from None
        if "suite.json" in names:
            return
        theirs = [name for name in names if name not in _BEFORE_PLAN and not name.startswith(".tmp-")]
        if theirs:
            shown = ", ".join(repr(name) for name in theirs[:5]) + (f" and {len(theirs) - 5} more"
                                                                   if len(theirs) > 5 else "")
            raise BenchError(f"--out {self.path} is not a results folder of this suite (no suite.json; it holds "
                             f"{shown}): nothing is written there; name a new or empty folder")

    def lock(self) -> None:
        """Become the folder's one owner, or refuse with the holder's pid."""
        self.check_ours()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = open_in_place(self.path / ".lock", "a results folder's lock")
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
        for folder in (self.runs, self.logs):  # a symlinked runs/ would put results wherever it points
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                self.unlock()
                raise Refused(folder, "is not a plain folder (a symbolic link or a file); a results folder's "
                                      "runs/ and logs/ are its own folders: remove it, or choose another --out")
            folder.mkdir(exist_ok=True)

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the flock
            self._lock = None

    def __enter__(self) -> ResultsFolder:
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
            if not isinstance(meta.get("plan"), list):
                raise BenchError("it holds no list of planned runs")
            plan = [PlannedRun.from_dict(entry) for entry in meta["plan"]]
        except (TypeError, BenchError) as exc:
            raise self._corrupt(f"is corrupt ({exc.__class__.__name__}: {exc})") from None
        for what, values in (("name", [run.name for run in plan]), ("key", [run.key for run in plan])):
            if len(set(values)) < len(values):  # two runs would share one result file, or be one run
                raise self._corrupt(f"is corrupt (two planned runs share the {what} "
                                    f"{next(v for v in values if values.count(v) > 1)!r})")
        return plan

    def _meta(self) -> dict | None:
        try:
            return store.load_meta(self.path / "suite.json")
        except FolderFileError as exc:
            raise self._corrupt(exc.reason) from None

    def _corrupt(self, reason: str) -> BenchError:
        return BenchError(f"{self.path / 'suite.json'} {reason}; its results cannot be matched to a plan: "
                          f"start the suite in a new folder")

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

    def stored_probe(self) -> dict | None:
        """The machine probe suite.json holds (`machine.probe`), if any."""
        meta = self._meta() or {}
        found = (meta.get("machine") or {}).get("probe") if isinstance(meta.get("machine"), dict) else None
        return found if isinstance(found, dict) else None

    def record_probe(self, probe: dict) -> None:
        """Keep the suite's machine probe in suite.json, beside the machine it describes."""
        meta = self._meta()
        if meta is not None and isinstance(meta.get("machine"), dict):
            meta["machine"]["probe"] = probe
            store.write_meta(self.path / "suite.json", meta)

    # results
    def result_path(self, run: PlannedRun) -> Path:
        return self.runs / f"{run.name}.json"

    def stored_result(self, run: PlannedRun) -> dict | None:
        """The run's result if it is a whole, readable record of exactly this spec that says how it ended."""
        result = store.result_of(run.to_dict(), self.runs)  # the rule report and compare count by
        return result if result is not None and result["status"] in CONCLUDED + RETRYABLE else None

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

    def strays(self, plan: list[PlannedRun]) -> list[Path]:
        """Files in runs/ that are not a planned run's own: never counted, never resumed from."""
        own = {self.result_path(run).name for run in plan}
        return sorted(p for p in self.runs.glob("*.json") if p.name not in own)

    def save(self, run: PlannedRun, result: dict) -> None:
        store.write_result(self.result_path(run), result)


def write_meta(folder: Path, argv: list[str], plan: list[dict]) -> None:
    """folder/suite.json: when, which commit, which machine, what command, what was planned."""
    meta = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "commit": git_commit(ROOT),
            "code": code_version(ROOT),
            "argv": argv, "machine": {**machine_info(), "gpus": gpu_names()}, "plan": plan}
    folder.mkdir(parents=True, exist_ok=True)
    store.write_meta(folder / "suite.json", meta)
