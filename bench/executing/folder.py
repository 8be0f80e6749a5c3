"""A results folder: one plan (suite.json), the results of that plan's keys (runs/), one owner.

The owner holds an OS lock on `.lock` (fcntl.flock): it dies with the process, so a killed
harness never leaves a folder locked, and a second harness on the same folder is refused
while the first lives. A stored result counts as finished only if it parses, names how it
ended, and carries exactly the spec of the planned run (its key).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from datetime import datetime, timezone
from pathlib import Path

from bench.executing.envs import ROOT
from bench.executing.gpus import gpu_names
from bench.executing.suite import PlannedRun
from bench.running.train_command import write_result
from common.errors import BenchError
from common.machine import code_version, git_commit, machine_info
from common.spec import spec_key

# What a results folder's JSON files may be: far above any record the suite writes (a result of
# 5 epochs at batch size 512 is about 100 KiB, its nesting 3 deep), far below what hurts a reader.
MAX_FILE_BYTES = 64 << 20
MAX_DEPTH = 32
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
        fd = _open_plain(self.path / ".lock", os.O_RDWR | os.O_CREAT)
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
        path = self.path / "suite.json"
        if not path.exists() and not path.is_symlink():
            return None
        try:
            meta = read_json(path)
        except Unreadable as exc:
            raise self._corrupt(exc.reason) from None
        if not isinstance(meta, dict):
            raise self._corrupt("is corrupt: not a JSON object")
        return meta

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
            write_result(self.path / "suite.json", meta)

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


class FolderFileError(BenchError):
    """A results folder's file that cannot be used: `str()` is one line naming it and why."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path} {reason}")


class Unreadable(FolderFileError):
    """Missing, cut short or not JSON: what a crash or a partial copy leaves."""


class Refused(FolderFileError):
    """A file the suite never writes (too large, nested too deep, not a plain file): an edited
    or hostile folder, refused rather than read."""


def _open_plain(path: Path, flags: int) -> int:
    """A descriptor of `path` if it is a plain file, opened without following a symlink (one
    planted in a folder from someone else would make us read or write wherever it points)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except FileNotFoundError:
        raise Unreadable(path, "is missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused(path, "is a symbolic link; a results folder holds plain files: replace it with "
                                "the file it points to") from None
        raise Unreadable(path, f"cannot be opened ({os.strerror(exc.errno or 0).lower()})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Refused(path, "is not a plain file (a FIFO, device or folder); a results folder holds plain files")
    return fd


def read_json(path: Path) -> object:
    """The JSON value in `path`, read as data from someone else: a plain file (a symlink, FIFO or
    device is Refused: it could point anywhere or never end), at most MAX_FILE_BYTES, nested at
    most MAX_DEPTH deep. Raises Unreadable or Refused, each one line naming the file. The one
    reader of a results folder's suite.json and result files (the harness, report, compare, history)."""
    with os.fdopen(_open_plain(path, os.O_RDONLY), "rb") as f:
        try:
            data = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise Unreadable(path, f"cannot be read ({os.strerror(exc.errno or 0).lower()})") from None
    if len(data) > MAX_FILE_BYTES:
        raise Refused(path, f"is over {MAX_FILE_BYTES >> 20} MiB, larger than any file the suite writes: not read")
    too_deep = Refused(path, f"is nested more than {MAX_DEPTH} levels deep, deeper than any file the suite "
                             f"writes: not read")
    try:
        value = json.loads(data.decode("utf-8"))
    except RecursionError:  # deeper than the parser's own limit
        raise too_deep from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise Unreadable(path, f"is corrupt: not JSON ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    if _depth(value) > MAX_DEPTH:
        raise too_deep
    return value


def _depth(value: object) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iteratively: no recursion limit)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        todo.extend((child, depth + 1) for child in children)
    return deepest


def read_result(path: Path, key: str) -> dict | None:
    """The result record at `path` if it parses and carries the spec whose key is `key`; None if
    it is missing, cut short or of another spec (the run is redone); Refused if it is no file
    the suite writes."""
    try:
        result = read_json(path)
    except Unreadable:
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
