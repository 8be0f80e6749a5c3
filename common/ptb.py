"""Finding, verifying and (when allowed) downloading the PTB corpus.

Order: --data-dir, then $PTB_DIR, then the user cache, then a download of the recipe's
archive into the cache. A directory that is named but does not hold the corpus is an error,
never a reason to look elsewhere: a typo must not silently train on other data.
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

from common.cache import atomic_dir, cache_dir
from common.errors import BenchError

TRAIN_FILE = "ptb.train.txt"
TRAIN_SHA256 = "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"
# The recipe's archive on the d2l data hub (d2l.DATA_HUB["ptb"]); PTB_URL overrides it.
DEFAULT_URL = "http://d2l-data.s3-accelerate.amazonaws.com/ptb.zip"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_text_file(path: Path) -> None:
    """Reject what cannot be a corpus: missing, empty or binary files."""
    if not path.is_file():
        raise BenchError(f"corpus file {path} not found")
    if path.stat().st_size == 0:
        raise BenchError(f"corpus file {path} is empty: replace it with the real file")
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if b"\0" in head:
        raise BenchError(f"corpus file {path} is binary, not text: replace it with the real file")


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
    cached = cache_dir() / "ptb"
    if (cached / TRAIN_FILE).exists():
        return verify_ptb(cached, "cache folder")
    if not download:
        raise BenchError("PTB not found: pass --data-dir DIR or set PTB_DIR, "
                         "or drop --no-download to fetch it into " + str(cached))
    download_ptb(cached, os.environ.get("PTB_URL", DEFAULT_URL))
    return cached / TRAIN_FILE
