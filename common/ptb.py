"""Finding, verifying and (when allowed) downloading the PTB corpus.

Order: --data-dir, then $PTB_DIR, then the user cache, then a download of the recipe's
archive into the cache. A directory that is named but does not hold the corpus is an error,
never a reason to look elsewhere: a typo must not silently train on other data.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from common.cache import atomic_dir, cache_folder
from common.errors import BenchError

TRAIN_FILE = "ptb.train.txt"
TRAIN_SHA256 = "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"
# The recipe's archive on the d2l data hub (d2l.DATA_HUB["ptb"]); PTB_URL overrides it.
DEFAULT_URL = "http://d2l-data.s3-accelerate.amazonaws.com/ptb.zip"


def sha256_file(path: Path) -> str:
    """The file's SHA-256; a NUL byte anywhere refuses it as binary (a corpus is text)."""
    digest = hashlib.sha256()
    for block in text_blocks(path):
        digest.update(block)
    return digest.hexdigest()


def _open_corpus(path: Path) -> BinaryIO:
    """`path` opened for reading bytes; an OSError at open is one line naming the file."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise BenchError(f"corpus file {path} cannot be read ({os.strerror(exc.errno or 0).lower()}): "
                         f"fix its permissions or name another file") from None


def text_blocks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of text file `path`, block by block, in one read: a NUL anywhere (not only in
    the first block) means it is binary, one line."""
    with _open_corpus(path) as f:
        while block := f.read(size):
            nul = block.find(b"\0")
            if nul >= 0:
                raise BenchError(f"corpus file {path} is binary, not text (a NUL byte at offset "
                                 f"{f.tell() - len(block) + nul:,}): replace it with the real file")
            yield block


def check_text_file(path: Path) -> None:
    """Reject what cannot be a corpus before reading it: missing, no plain file (a device such as
    /dev/zero, a FIFO, a folder), a symbolic link loop, a kernel pseudo-file (/proc/self/status:
    a plain file of size 0 whose text is made as it is read), unreadable, empty, or binary in its
    first block."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise BenchError(f"corpus file {path} not found: check the path") from None
    except OSError as exc:
        reason = "is a symbolic link loop" if exc.errno == errno.ELOOP else \
            f"cannot be read ({os.strerror(exc.errno or 0).lower()})"
        raise BenchError(f"corpus file {path} {reason}: name the text file itself") from None
    if stat.S_ISDIR(info.st_mode):
        raise BenchError(f"corpus {path} is a folder: name a text file (or ptb, or zipf:TOKENS:WORDS)")
    if not stat.S_ISREG(info.st_mode):
        raise BenchError(f"corpus file {path} is not a plain file (a device, FIFO or socket): name a text file")
    try:
        first = next(text_blocks(path, 1 << 16), None)
    except OSError as exc:  # opened, then refused to read (/proc/self/mem: EIO)
        raise BenchError(f"corpus file {path} could not be read as text ({os.strerror(exc.errno or 0).lower()}): "
                         f"name a text file") from None
    if info.st_size == 0 and first:  # procfs and sysfs: a size of 0, and text made as it is read
        raise BenchError(f"corpus file {path} is not a regular file (a kernel pseudo-file, as under /proc or "
                         f"/sys: its size reads 0 and its text changes as it is read): copy it to a text file "
                         f"and name that")
    if first is None:
        raise BenchError(f"corpus file {path} is empty: replace it with the real file")


def verify_ptb(directory: Path, origin: str) -> Path:
    """Return the train file of `directory` after checking it is the real PTB."""
    path = directory / TRAIN_FILE
    if not path.is_file():
        raise BenchError(f"{origin} {directory} does not hold {TRAIN_FILE}: "
                         f"point it at the folder with the PTB files")
    check_text_file(path)
    actual = sha256_file(path)
    if actual != TRAIN_SHA256:
        raise BenchError(f"{path} is corrupt or not PTB: sha256 {actual}, expected {TRAIN_SHA256}; "
                         f"restore the original file or delete it to download again")
    return path


def download_ptb(target: Path, url: str) -> None:
    """Fetch the recipe's zip and unpack its ptb/ folder into `target`, atomically."""
    import urllib.request  # only here: it costs every other command 20 ms of start-up

    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            payload = response.read()
    except OSError as exc:
        raise BenchError(f"could not download PTB from {url} ({exc}); "
                         f"pass --data-dir or set PTB_DIR to a local copy") from None
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
    except zipfile.BadZipFile:
        raise BenchError(f"download from {url} is not a zip archive; "
                         f"pass --data-dir or set PTB_DIR to a local copy") from None
    with atomic_dir(target) as tmp:
        for member in archive.namelist():
            name = Path(member).name
            if name.startswith("ptb.") and name.endswith(".txt"):
                (tmp / name).write_bytes(archive.read(member))
        verify_ptb(tmp, "downloaded archive")


def find_ptb(data_dir: str | None = None, download: bool = True) -> Path:
    """Locate a verified ptb.train.txt, downloading into the cache only as the last resort."""
    if data_dir:
        return verify_ptb(Path(data_dir), "--data-dir")
    if os.environ.get("PTB_DIR"):
        return verify_ptb(Path(os.environ["PTB_DIR"]), "PTB_DIR")
    cached = cache_folder("ptb")
    if (cached / TRAIN_FILE).exists():
        return verify_ptb(cached, "cache folder")
    if not download:
        raise BenchError("PTB not found: pass --data-dir DIR or set PTB_DIR, "
                         "or drop --no-download to fetch it into " + str(cached))
    download_ptb(cached, os.environ.get("PTB_URL", DEFAULT_URL))
    return cached / TRAIN_FILE
