"""Where prepared data lives, and how everything is written: to a temporary name, then renamed.

Every file the suite writes (results, caches, the report, dumps, exported vectors) goes through
`atomic_file` / `atomic_dir`, so this is also the one place where a full, read-only or
forbidden disk becomes one line naming the path and the space it needed (a BenchError), with
the temporary file removed. Temporary names carry the writer's pid, so a later writer can tell
a killed process's leftovers (removed) from a live one's (kept).

The cache holds what later processes trust: tokenised corpora, row tables, and a compiled
operator library that MXNet loads into the training process. So its folders are private to their
owner (0700, whatever the umask), a folder someone else could have written is refused with one
line rather than read, and a file that will be executed is checked against the digest recorded
beside it when it was made (`verified_file`): a planted or truncated one is made again.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from common.errors import BenchError

# Errors of the place written to, not of the program: the user fixes them by freeing space or
# choosing another path, so they are one line, never a traceback.
# ENOENT: a folder that exists but where no file can be made (procfs, sysfs: `--out /proc/x.json`).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                errno.EISDIR, errno.EFBIG, errno.ENOENT}
# A temporary entry without a readable pid (written before pids were part of the name) is
# stale once this old: no build or write in this suite takes an hour.
STALE_SECONDS = 3600
# The space a result file needs, checked before a run: losses of ~3,400 steps at ~25 bytes
# each, plus segments and metadata, stay well under this.
RESULT_BYTES = 256 << 10
_TEMP_NAME = re.compile(r"^\.tmp-.*-p(\d+)-[^-]*$")


def cache_dir() -> Path:
    """SKIPGRAM_BENCH_CACHE, else $XDG_CACHE_HOME/skipgram-bench, else ~/.cache/skipgram-bench."""
    explicit = os.environ.get("SKIPGRAM_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "skipgram-bench"


# Owner-only: no group or other bit survives on a cache folder or what atomic_dir puts in it.
PRIVATE_MODE = 0o700
DIGEST_SUFFIX = ".sha256"  # the file beside a verified one holding its SHA-256 (hex, one line)


def check_private(folder: Path) -> None:
    """Refuse (BenchError, one line) a cache folder that someone else owns or can write: what it
    holds could have been planted there. A missing folder passes; it is made private when made."""
    try:
        info = os.stat(folder)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BenchError(f"cache folder {folder} cannot be read ({os.strerror(exc.errno or 0).lower()}); "
                         f"set SKIPGRAM_BENCH_CACHE to a folder of your own") from None
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a folder"
    elif info.st_uid != os.geteuid():
        problem = f"belongs to another user (uid {info.st_uid}), so what it holds could have been planted"
    elif info.st_mode & 0o022:
        problem = (f"can be written by others (mode {stat.filemode(info.st_mode)}), so what it holds could "
                   f"have been planted")
    else:
        return
    raise BenchError(f"cache folder {folder} {problem}: remove it (what it held is made again) or set "
                     f"SKIPGRAM_BENCH_CACHE to a folder only you can write")


def cache_root() -> Path:
    """cache_dir(), created private (0700) if missing, refused (check_private) if it is not ours alone."""
    root = cache_dir()
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(root, PRIVATE_MODE)
        os.chmod(root, PRIVATE_MODE)  # mkdir's mode is cut by the umask, and a umask may cut the owner's bits
    except FileExistsError:
        pass
    except NotADirectoryError:
        raise BenchError(f"cannot create the cache folder {root}: part of that path is a file; "
                         f"set SKIPGRAM_BENCH_CACHE to a writable folder elsewhere") from None
    except OSError as exc:
        raise write_error(exc, root) from None
    check_private(root)
    return root


def cache_folder(name: str) -> Path:
    """The cache's folder `name` (it may not exist yet), after refusing a cache, or an existing
    folder of that name, that is not private to this user (check_private)."""
    folder = cache_root() / name
    check_private(folder)
    return folder


def file_sha256(path: Path) -> str:
    """The SHA-256 of `path`'s bytes, read a block at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def record_digest(path: Path) -> None:
    """Write `path`'s SHA-256 beside it, atomically: call once the file is whole (a build succeeded)."""
    atomic_write_bytes(digest_path(path), f"{file_sha256(path)}\n".encode("ascii"))


def verified_file(path: Path) -> bool:
    """Whether `path` is exactly the file its recorded digest was taken of (record_digest): False
    for a missing, truncated, replaced or unrecorded one, which the caller makes again."""
    try:
        recorded = digest_path(path).read_text(encoding="ascii", errors="replace").strip()
        return stat.S_ISREG(os.lstat(path).st_mode) and recorded == file_sha256(path)
    except OSError:
        return False


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _fix(path: Path, full: bool = True) -> str:
    """How the user gets out of a failed write to `path` (`full`: for want of space)."""
    try:
        in_cache = path.resolve().is_relative_to(cache_dir().resolve())
    except OSError:
        in_cache = False
    if in_cache:
        return ("free space there or " if full else "") + "set SKIPGRAM_BENCH_CACHE to a writable folder elsewhere"
    return "free space there or choose a path on another disk" if full else "choose a writable path"


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding `path` (its nearest existing ancestor); None if unknown."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def write_error(exc: OSError, path: Path, needed: int | None = None, at_least: bool = False) -> BenchError:
    """The one-line error for a failed write to `path` (the error's own filename when it has one);
    `needed` is the size of the write (a lower bound when `at_least`)."""
    named = Path(exc.filename) if isinstance(exc.filename, (str, os.PathLike)) else None
    temporary = named is not None and any(part.startswith(".tmp-") for part in named.parts)
    where = named if named and not temporary else path  # the user knows no temporary name
    reason = os.strerror(exc.errno).lower() if exc.errno else f"short write, the disk is probably full ({exc})"
    space, full = "", exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, None)
    if full:
        free = free_bytes(where)
        parts = [f"needed {'at least ' if at_least else ''}{_mib(needed)}"] if needed else []
        parts += [f"{_mib(free)} free"] if free is not None else []
        space = f" ({', '.join(parts)})" if parts else ""
    return BenchError(f"cannot write {where}: {reason}{space}; {_fix(where, full)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def is_stale(entry: Path, now: float | None = None) -> bool:
    """A `.tmp-*` entry whose writer is gone: its pid is dead, or it has no pid and is old."""
    match = _TEMP_NAME.match(entry.name)
    if match:
        return int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1)))
    try:
        age = (now or time.time()) - entry.lstat().st_mtime
    except OSError:
        return False
    return entry.name.startswith(".tmp-") and age > STALE_SECONDS


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete what killed writers left in `folder` (a full disk's usual cause); return what went."""
    removed: list[Path] = []
    try:
        entries = [e for e in folder.iterdir() if e.name.startswith(".tmp-")]
    except OSError:
        return removed
    for entry in entries:
        if is_stale(entry):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _make_private(folder: Path) -> None:
    """`folder` and everything in it owner-only (a compiler or numpy made its files by the umask)."""
    os.chmod(folder, PRIVATE_MODE)
    for entry in folder.rglob("*"):
        if not entry.is_symlink():
            os.chmod(entry, stat.S_IMODE(entry.stat().st_mode) & PRIVATE_MODE)


def _prefix(target: Path) -> str:
    return f".tmp-{target.name}-p{os.getpid()}-"


def is_write_failure(exc: OSError) -> bool:
    """An error of the place written to: a listed errno, or a short write without one (numpy's
    `tofile` reports a full disk as "N requested and M written" with no errno)."""
    return exc.errno in WRITE_ERRNOS or (exc.errno is None and "written" in str(exc))


def _in_the_way(folder: Path) -> str:
    """What stops `folder` being made: the first part of its path that is a dangling symbolic link
    or not a folder, in words."""
    for part in (*reversed(folder.parents), folder):
        if part.is_symlink() and not part.exists():
            return f"{part} is a dangling symbolic link (to {os.readlink(part)}, which does not exist)"
        if part.exists() and not part.is_dir():
            return f"{part} is a file, not a folder"
    return "part of that path is a file"


def _make_parent(target: Path, needed: int | None) -> None:
    """Create `target`'s folder; any failure is the path's fault, so it is one line."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise BenchError(f"cannot create folder {target.parent}: {_in_the_way(target.parent)}; "
                         f"{_fix(target.parent, False)}") from None
    except OSError as exc:
        raise write_error(exc, target.parent, needed) from None


def check_writable(path: Path, what: str, needed: int = RESULT_BYTES, folder: bool = False) -> None:
    """Fail now, before any work, if `path` cannot be written later: a run must not train for an
    hour and then lose its result to a typo, a read-only mount or a full disk.

    `path` is a file to be created or replaced (its folder is checked, and created if missing),
    or with `folder=True` a folder to write files into (created if missing). The check writes
    and removes a probe file there, and needs `needed` bytes free. Raises BenchError naming
    `what` (e.g. "--out"), the path and the fix.
    """
    target = path / ".probe" if folder else path
    if not folder and path.is_dir():
        raise BenchError(f"{what} {path} is a folder; name a file")
    if folder and path.exists() and not path.is_dir():
        raise BenchError(f"{what} {path} is not a folder")
    made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]  # deepest first
    try:
        _check_writable(path, what, needed, target)
    except BaseException:  # a refused start leaves no empty folder behind
        for folder_made in made:
            try:
                folder_made.rmdir()
            except OSError:
                break
        raise


def _check_writable(path: Path, what: str, needed: int, target: Path) -> None:
    try:
        _make_parent(target, needed)
        fd, probe = tempfile.mkstemp(prefix=_prefix(target), dir=target.parent)
        os.close(fd)
        os.unlink(probe)
    except BenchError as exc:
        raise BenchError(f"{what}: {exc}") from None
    except OSError as exc:
        if not is_write_failure(exc):
            raise
        raise BenchError(f"{what}: {write_error(exc, path, needed)}") from None
    free = free_bytes(target.parent)
    if free is not None and free < needed:
        raise BenchError(f"{what}: no space for {path}: needs about {_mib(needed)}, {_mib(free)} free; "
                         f"{_fix(target.parent)}")


@contextmanager
def atomic_dir(target: Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; rename it into place only if the block succeeds.
    `target` is a cache folder: it and what the block wrote are private to this user (0700).

    An interrupted run leaves at most a `.tmp-*-p<pid>-*` folder, never a half-written
    `target`, and the next writer in that folder removes it once its pid is dead. A write that
    fails for want of space or permission becomes a BenchError naming the path and `needed`
    (the bytes the block meant to write, where the caller knows them).
    """
    _make_parent(target, needed)
    remove_stale_temps(target.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), dir=target.parent))
    except OSError as exc:
        if is_write_failure(exc):
            raise write_error(exc, target, needed) from None
        raise
    try:
        yield tmp
        try:
            _make_private(tmp)
            os.replace(tmp, target)
        except OSError:  # another process got there first: theirs is as good as ours
            if not target.exists():
                raise
    except OSError as exc:
        if is_write_failure(exc):
            shutil.rmtree(tmp, ignore_errors=True)  # first, so the message counts its space as free
            raise write_error(exc, target, needed) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _position(f: BinaryIO) -> int:
    """Bytes handed to `f` so far (0 when a failed flush left it unable to say)."""
    try:
        return f.tell()
    except (OSError, ValueError):
        return 0


@contextmanager
def atomic_file(path: Path, needed: int | None = None) -> Iterator[BinaryIO]:
    """Yield a file to write; it replaces `path` only once the block succeeds, so readers see
    the old content or the whole new one, never a half-written file.

    A full, read-only or forbidden disk becomes a BenchError naming `path` and the bytes
    needed (`needed`, else at least what had been written when it failed); the temporary
    file is removed whatever happens.
    """
    _make_parent(path, needed)
    remove_stale_temps(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path), dir=path.parent)
    except OSError as exc:
        if is_write_failure(exc):
            raise write_error(exc, path, needed) from None
        raise
    written = 0
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                yield f
            finally:
                written = _position(f)
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would have made it, not mkstemp's 0600
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_write_failure(exc):
            raise write_error(exc, path, needed or written or None, at_least=needed is None) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_in_place(path: Path, what: str) -> int:
    """A read-write descriptor of `path` (created if missing) for a file the suite writes in place
    (a lock): not through a symbolic link (O_NOFOLLOW) nor a hard link (one planted in a folder
    from someone else would have us truncate or write into a file elsewhere). BenchError naming
    `path` and the fix otherwise."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BenchError(f"{path} is a symbolic link; {what} is a plain file of its own: remove it "
                             f"and start again") from None
        if is_write_failure(exc):
            raise write_error(exc, path) from None
        raise BenchError(f"cannot open {path}: {os.strerror(exc.errno or 0).lower()}; remove it and start again") \
            from None
    info = os.fstat(fd)
    problem = None if stat.S_ISREG(info.st_mode) else "is not a plain file (a FIFO, device or folder)"
    if problem is None and info.st_nlink != 1:
        problem = f"is a hard link ({info.st_nlink} names for one file): writing it would change a file elsewhere"
    if problem:
        os.close(fd)
        raise BenchError(f"{path} {problem}; {what} is a plain file of its own: remove it and start again")
    return fd


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see atomic_file)."""
    with atomic_file(path, needed=len(data)) as f:
        f.write(data)
