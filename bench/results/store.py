"""The one reader and the one writer of a results folder's JSON files (suite.json, runs/*.json,
microbench/*.json), for every command, executor and page.

A folder travels (a colleague's, a CI artefact), so a file in it is read as data from someone
else: a plain file (a symlink, FIFO or device is refused: it could point anywhere or never end),
at most MAX_FILE_BYTES, nested at most MAX_DEPTH deep, and of the types schema.py declares, all
checked here once. Every problem is one line naming the file (a FolderFileError). Files are
written atomically: a reader never sees half a record.
"""
from __future__ import annotations

import copy
import errno
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import msgspec

from bench.results.schema import MachineProbe, Meta, MicrobenchFile, Result
from common.cache import atomic_write_bytes
from common.errors import BenchError
from common.spec import RunSpec, spec_key
from common.text import cap

# What a results folder's JSON files may be: far above any record the suite writes (a result of
# 5 epochs at batch size 512 is about 100 KiB, its nesting 3 deep), far below what hurts a reader.
MAX_FILE_BYTES = 64 << 20
MAX_DEPTH = 32
T = TypeVar("T")


class FolderFileError(BenchError):
    """A results folder's file that cannot be used: `str()` is one line naming it and why."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path} {reason}")


class Unreadable(FolderFileError):
    """Missing, cut short or not JSON: what a crash or a partial copy leaves."""


class Refused(FolderFileError):
    """A file the suite never writes (too large, nested too deep, not a plain file, fields not of
    the types the suite writes): an edited or hostile folder, refused rather than read."""


def open_plain(path: Path, flags: int) -> int:
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
    """The JSON value in `path`, within the limits above; Unreadable or Refused otherwise."""
    with os.fdopen(open_plain(path, os.O_RDONLY), "rb") as f:
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


def check(value: object, shape: type[T], path: Path) -> T:
    """`value` as the record `shape` declares, or Refused naming the file and the first field
    that departs from it (strict: no bool for a number, no string for a rate, no NaN for a rate)."""
    try:
        return msgspec.convert(value, shape, strict=True)
    except msgspec.ValidationError as exc:
        raise Refused(path, f"is not a file the suite writes ({describe(exc, value)}); was it edited?") from None


_JSON_TYPE = {"str": str, "int": int, "float": float, "bool": bool, "null": type(None), "array": list, "object": dict}


def describe(exc: msgspec.ValidationError, value: object) -> str:
    """msgspec's message in the pages' words: 'FIELD is WHAT IT IS, expected WHAT'."""
    text = str(exc)
    match = re.fullmatch(r"(.*?)(?: - at `\$(.*)`)?", text, re.S)
    message, where = (match.group(1), match.group(2) or "") if match else (text, "")
    got = re.search(r", got `(\w+)`", message)
    found, name = _find(value, where, _JSON_TYPE.get(got.group(1)) if got else None)
    name = cap(name, 100)  # an object key from the file may be of any length
    message = re.sub(r", got `\w+`", "", message)
    message = message[:1].lower() + message[1:]
    if message.startswith("object missing"):
        return f"{message} in {name}" if name else message
    if found is not _MISSING and (got or message.startswith(("expected", "invalid"))):
        return f"{name or 'the file'} is {kind(found)}, {message}"
    return f"{name}: {message}" if name else message  # a rule across fields (schema's __post_init__)


_MISSING = object()


def _find(value: object, where: str, of_type: type | None) -> tuple[object, str]:
    """The value at msgspec's path `where` (`.a.b[0]`, `[...]` for an unnamed object key: the first
    key whose value is `of_type`), and the path in dotted words."""
    name = ""
    for part in re.findall(r"\.(\w+)|\[(\d+|\.\.\.)\]", where):
        field, index = part
        if field and isinstance(value, dict) and field in value:
            value, name = value[field], f"{name}.{field}"
        elif index.isdigit() and isinstance(value, list) and int(index) < len(value):
            value, name = value[int(index)], f"{name}[{index}]"
        elif index == "..." and isinstance(value, dict):
            key = next((k for k, v in value.items() if of_type is None or type(v) is of_type), None)
            if key is None:
                return _MISSING, name.lstrip(".")
            value, name = value[key], f"{name}.{key}"
        else:
            return _MISSING, name.lstrip(".")
    return value, name.lstrip(".")


def kind(value: object) -> str:
    """A JSON value's kind in words (a float that is not finite by its value)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"the number {value}" if isinstance(value, (int, float)) and len(str(value)) < 24 else "a number")


def _with_defaults(record: dict, shape: type[msgspec.Struct]) -> dict:
    """`record` with every declared top-level field it lacks at its default (an older file lacks
    the fields added since): readers may index what the schema declares."""
    for field in msgspec.structs.fields(shape):
        if field.name not in record and field.default is not msgspec.UNSET:  # UNSET: absent stays absent
            if field.default is not msgspec.NODEFAULT:
                record[field.name] = copy.copy(field.default)
            elif field.default_factory is not msgspec.NODEFAULT:
                record[field.name] = field.default_factory()
    return record


def load_result(path: Path) -> dict:
    """The result record at `path` for a page to show: whole and of the declared types, with the
    fields it lacks at their defaults (fields not declared kept as they are). Unreadable, or
    Refused (one line)."""
    value = read_json(path)
    check(value, Result, path)
    return _with_defaults(value, Result)  # type: ignore[arg-type]  # check() proved it an object


def read_result(path: Path, key: str) -> dict | None:
    """The result at `path` as it was written (checked, nothing added: the harness adds to it and
    stores it again) if it carries the spec whose key is `key`; None if it is missing, cut short or
    of another spec (the run is redone); Refused if it is no file the suite writes."""
    return _as_written(path, {"key": key})


def load_meta(path: Path) -> dict | None:
    """suite.json, checked; None when the folder has none. Unreadable or Refused otherwise."""
    if not path.exists() and not path.is_symlink():
        return None
    value = read_json(path)
    check(value, Meta, path)
    return value  # type: ignore[return-value]  # check() proved it an object; every field optional (read with .get)


def load_probe(path: Path) -> dict:
    """A machine probe handed to a run in a file (bench/executing/probing.py), checked."""
    value = read_json(path)
    check(value, MachineProbe, path)
    return value  # type: ignore[return-value]  # check() proved it an object


def load_microbench(path: Path) -> list[dict]:
    """The benchmarks of one env's pytest-benchmark file, checked as results are."""
    value = read_json(path)
    check(value, MicrobenchFile, path)
    return value["benchmarks"]  # type: ignore[index]


def record_key(record: dict) -> str | None:
    """The key of the spec a result carries; None for a spec no digest can be taken of."""
    try:
        return spec_key(record["spec"])
    except (TypeError, AttributeError, ValueError):  # `data` that is no object; a value JSON cannot hold
        return None


def holds(entry: dict, path: Path, key: str | None) -> bool:
    """The one rule of which file holds which planned run: a file holds plan entry `entry` when it
    is the entry's own file (runs/NAME.json; any file where the entry has no name) and carries the
    entry's key (any key where the plan predates keys). Report, compare, history and --resume all
    ask this, so a run one of them counts as finished is one the others count, and resume keeps."""
    name, planned = entry.get("name"), entry.get("key")
    return (not _is_name(name) or path.name == f"{name}.json") and (not planned or key == planned)


def result_of(entry: dict, runs: Path) -> dict | None:
    """The result runs/ holds for a planned run with a name (`--resume`, the harness): its own
    file, as read_result reads one, if that file holds it by `holds`."""
    return _as_written(runs / f"{entry['name']}.json", entry)


def _as_written(path: Path, entry: dict) -> dict | None:
    try:
        value = read_json(path)
    except Unreadable:
        return None
    check(value, Result, path)
    record = cast(dict, value)  # check() validated it as a Result object
    return record if holds(entry, path, record_key(record)) else None


def _is_name(name: object) -> bool:
    return isinstance(name, str) and bool(name)


@dataclass
class Held:
    """A file of runs/ read as a run of its folder: its record (fields it lacks at their defaults,
    its spec in full: a spec written without `repeat`, `runner` or `data` reads as the planner's),
    or why it cannot be used: `corrupt` (cut short, not JSON, a spec the planner would not make) or
    `stale` (it holds no run of the plan)."""

    path: Path
    record: dict | None = None
    key: str | None = None  # of the spec as written
    corrupt: str | None = None
    stale: str | None = None


def holding(folder: Path, meta: dict | None) -> tuple[list[Held], list[Path]]:
    """What `folder`'s runs/ holds for its plan, by `holds`: the files read as its runs (by name),
    and its strays, never counted or pooled. Where every planned run has a name, only those names'
    files are read (the others are strays, unread: "x (copy).json", a FIFO); otherwise every file
    is. Either way a planned key counts once: of the files holding one, the one of the shortest
    name (then the first by name) is its run and the rest are strays. A file of the plan's that
    holds no planned run (another run's result copied over it) is `stale`: a run not finished. A
    file Refused (a symlink, mistyped fields) stops the reader: one line naming it."""
    plan = [e for e in (meta or {}).get("plan") or [] if isinstance(e, dict)]
    found = sorted((folder / "runs").glob("*.json"), key=lambda p: (len(p.name), p.name))
    if plan and all(_is_name(e.get("name")) for e in plan):
        names = {f"{e['name']}.json" for e in plan}
        read, strays = [p for p in found if p.name in names], [p for p in found if p.name not in names]
    else:
        read, strays = found, []
    items = list(map(_read_held, read))
    for item in items:
        if item.record is not None and plan and not any(holds(e, item.path, item.key) for e in plan):
            item.stale = _stale_reason(plan, item.key)
    held: list[Held] = []
    seen: set[str] = set()
    for item in items:  # in name order (shortest first): the first of a key's files is its run
        if item.stale is None and item.key is not None:
            if item.key in seen:
                strays.append(item.path)
                continue
            seen.add(item.key)
        held.append(item)
    return sorted(held, key=lambda h: h.path.name), sorted(strays)


def _read_held(path: Path) -> Held:
    try:
        record = load_result(path)
    except Unreadable as exc:
        return Held(path, corrupt=exc.reason)
    try:
        spec = RunSpec.from_dict(record["spec"])
    except BenchError as exc:  # a spec the planner would not make
        return Held(path, corrupt=str(exc))
    except TypeError as exc:  # data that is not an object
        return Held(path, corrupt=exc.__class__.__name__)
    key = record_key(record)
    record["spec"] = spec.to_dict()
    return Held(path, record, key)


def _stale_reason(plan: list[dict], key: str | None) -> str:
    other = next((e.get("name") for e in plan if key and e.get("key") == key), None)
    if _is_name(other):
        return f"it holds the result of the planned run {cap(str(other), 100)}, not its own; not counted"
    return "a result of a spec this folder's plan does not hold; not counted"


def write_json(path: Path, value: Any, shape: type | None = None) -> None:
    """Atomically: a reader (or a crash) never sees half a file. With `shape`, the text is checked
    as a reader will see it first (a numpy scalar written as a plain number is a plain number)."""
    text = json.dumps(value, indent=1) + "\n"
    if shape is not None:
        check(json.loads(text), shape, path)
    atomic_write_bytes(path, text.encode())


def write_result(path: Path, result: dict) -> None:
    """A result record, checked first: the suite never writes what it would refuse to read."""
    write_json(path, result, Result)


def write_meta(path: Path, meta: dict) -> None:
    write_json(path, meta, Meta)
