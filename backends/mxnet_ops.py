"""MXNet's run-time operator library: the packed loss as one C++ operator (mxnet_packed_loss.cc).

MXNet 1.9.1 loads custom C++ operators at run time (`mx.library.load`, its lib_api.h and
lib_api.cc ship in the wheel), so no MXNet rebuild is needed: the source is compiled once with
the system's C++ compiler into the user cache, keyed by everything that goes into the build
(source, MXNet's lib_api, compiler, flags), and every later process loads the cached library.

What is loaded runs inside training, so the cache folder is private to its owner (common.cache),
the library is loaded only when it is exactly the file that was built (its digest, recorded beside
it after the build) and is built again otherwise, and the compiler runs in a process group that
ends with this process (common.processes): a killed run leaves no cc1plus behind.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import warnings
from pathlib import Path

import mxnet as mx

from common.cache import atomic_dir, cache_folder, record_digest, verified_file
from common.errors import BenchError
from common.processes import run_own_group

SOURCE = Path(__file__).with_name("mxnet_packed_loss.cc")
OP_NAME = "sgns_packed_loss"
# -march=native: the library is built on, and for, the machine that runs it (the cache key
# holds the compiler's view of that machine). OpenMP: libmxnet.so links the system's libgomp,
# so the operator's threads come from the same runtime (and OMP_NUM_THREADS) as MXNet's own.
FLAGS = ("-shared", "-fPIC", "-O3", "-march=native", "-fopenmp", "-std=c++17")
LOADED: dict[str, str] = {}  # the operator's name -> what built it, once loaded in this process


def _mxnet_dir() -> Path:
    return Path(mx.__file__).parent


def find_compiler() -> list[str] | None:
    """The C++ compiler as a command: $CXX split as a shell splits it (`ccache g++` is two words),
    else g++ or c++ on PATH. ValueError for a $CXX no shell could split (an open quote)."""
    words = shlex.split(os.environ.get("CXX", ""))
    if words:
        return words
    found = shutil.which("g++") or shutil.which("c++")
    return [found] if found else None


def _run(command: list[str]) -> str:
    """The compiler's stdout; RuntimeError with its command and stderr if it fails."""
    done = run_own_group(command)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def _describe(compiler: list[str]) -> str:
    """The compiler's first --version line and its resolved -march=native target."""
    version = _run([*compiler, "--version"])
    native = run_own_group([*compiler, "-march=native", "-Q", "--help=target"]).stdout
    march = next((line.split()[-1] for line in native.splitlines() if line.strip().startswith("-march=")), "")
    return f"{(version.splitlines() or [shlex.join(compiler)])[0]} -march={march}".strip()


def build_library(compiler: list[str], description: str) -> Path:
    """The operator library for this MXNet and compiler: the cached one, or built now."""
    mxnet = _mxnet_dir()
    lib_api = mxnet / "src" / "lib_api.cc"
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), lib_api.read_bytes(), (mxnet / "include" / "mxnet" / "lib_api.h").read_bytes(),
                 description.encode(), " ".join(FLAGS).encode(), mx.__version__.encode()):
        key.update(hashlib.sha256(part).digest())
    folder = cache_folder(f"mxnet-ops-{key.hexdigest()[:16]}")  # refused if others could write it
    library = folder / "libskipgram_ops.so"
    if verified_file(library):
        return library
    shutil.rmtree(folder, ignore_errors=True)  # cut short, truncated or planted: built again
    with atomic_dir(folder) as tmp:
        command = [*compiler, *FLAGS, f"-I{mxnet / 'include'}", f"-I{mxnet / 'include' / 'mxnet'}",
                   "-o", str(tmp / library.name), str(SOURCE), str(lib_api)]
        _run(command)
        if not (tmp / library.name).is_file():
            raise RuntimeError(f"{shlex.join(command)} made no library")
        record_digest(tmp / library.name)
    if not verified_file(library):  # another process's build took its place: it must be whole too
        raise BenchError(f"the operator library {library} changed while it was built: check nothing else writes "
                         f"into {folder.parent}, then run again")
    return library


def packed_loss_op() -> str | None:
    """The fused packed loss's operator name, built and loaded on first use; None (with a warning
    saying why) where it cannot be built here: the caller then composes the loss from MXNet's
    own operators, the same function, slower."""
    if OP_NAME in LOADED:
        return OP_NAME
    try:
        compiler = find_compiler()
    except ValueError as exc:
        warnings.warn(f"CXX={os.environ.get('CXX')!r} cannot be split into words ({exc}): "
                      "using MXNet's own operators for the packed loss (slower)", stacklevel=2)
        return None
    if compiler is None:
        warnings.warn("no C++ compiler (g++, or $CXX) for MXNet's packed loss operator: "
                      "using MXNet's own operators for the packed loss (slower)", stacklevel=2)
        return None
    try:
        description = _describe(compiler)
        mx.library.load(str(build_library(compiler, description)), verbose=False)
    except (OSError, RuntimeError, mx.base.MXNetError) as exc:
        warnings.warn(f"MXNet's packed loss operator could not be built or loaded ({exc}): "
                      "using MXNet's own operators for the packed loss (slower)", stacklevel=2)
        return None
    LOADED[OP_NAME] = description
    return OP_NAME


def loaded_ops() -> dict[str, str]:
    """Operators loaded in this process and what built them (recorded with a run's versions)."""
    return dict(LOADED)
