"""MXNet's run-time operator library: the packed loss as one C++ operator (mxnet_packed_loss.cc).

MXNet 1.9.1 loads custom C++ operators at run time (`mx.library.load`, its lib_api.h and
lib_api.cc ship in the wheel), so no MXNet rebuild is needed: the source is compiled once with
the system's C++ compiler into the user cache, keyed by everything that goes into the build
(source, MXNet's lib_api, compiler, flags), and every later process loads the cached library.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path

import mxnet as mx

from common.cache import atomic_dir, cache_dir

SOURCE = Path(__file__).with_name("mxnet_packed_loss.cc")
OP_NAME = "sgns_packed_loss"
# -march=native: the library is built on, and for, the machine that runs it (the cache key
# holds the compiler's view of that machine). OpenMP: libmxnet.so links the system's libgomp,
# so the operator's threads come from the same runtime (and OMP_NUM_THREADS) as MXNet's own.
FLAGS = ("-shared", "-fPIC", "-O3", "-march=native", "-fopenmp", "-std=c++17")
LOADED: dict[str, str] = {}  # the operator's name -> what built it, once loaded in this process


def _mxnet_dir() -> Path:
    return Path(mx.__file__).parent


def find_compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _describe(compiler: str) -> str:
    """The compiler's first --version line and its resolved -march=native target."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    native = subprocess.run([compiler, "-march=native", "-Q", "--help=target"], capture_output=True, text=True)
    march = next((line.split()[-1] for line in native.stdout.splitlines() if line.strip().startswith("-march=")), "")
    return f"{(version.splitlines() or [compiler])[0]} -march={march}".strip()


def build_library(compiler: str, description: str) -> Path:
    """The operator library for this MXNet and compiler: the cached one, or built now."""
    mxnet = _mxnet_dir()
    lib_api = mxnet / "src" / "lib_api.cc"
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), lib_api.read_bytes(), (mxnet / "include" / "mxnet" / "lib_api.h").read_bytes(),
                 description.encode(), " ".join(FLAGS).encode(), mx.__version__.encode()):
        key.update(hashlib.sha256(part).digest())
    folder = cache_dir() / f"mxnet-ops-{key.hexdigest()[:16]}"
    library = folder / "libskipgram_ops.so"
    if library.exists():
        return library
    with atomic_dir(folder) as tmp:
        command = [compiler, *FLAGS, f"-I{mxnet / 'include'}", f"-I{mxnet / 'include' / 'mxnet'}",
                   "-o", str(tmp / library.name), str(SOURCE), str(lib_api)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not (tmp / library.name).is_file():
            raise RuntimeError(f"{shlex.join(command)} made no library (exit {done.returncode}):\n"
                               f"{done.stderr[-2000:]}")
    return library


def packed_loss_op() -> str | None:
    """The fused packed loss's operator name, built and loaded on first use; None (with a warning
    saying why) where it cannot be built here: the caller then composes the loss from MXNet's
    own operators, the same function, slower."""
    if OP_NAME in LOADED:
        return OP_NAME
    compiler = find_compiler()
    if compiler is None:
        warnings.warn("no C++ compiler (g++, or $CXX) for MXNet's packed loss operator: "
                      "using MXNet's own operators for the packed loss (slower)", stacklevel=2)
        return None
    try:
        description = _describe(compiler)
        mx.library.load(str(build_library(compiler, description)), verbose=False)
    except (OSError, RuntimeError, subprocess.CalledProcessError, mx.base.MXNetError) as exc:
        warnings.warn(f"MXNet's packed loss operator could not be built or loaded ({exc}): "
                      "using MXNet's own operators for the packed loss (slower)", stacklevel=2)
        return None
    LOADED[OP_NAME] = description
    return OP_NAME


def loaded_ops() -> dict[str, str]:
    """Operators loaded in this process and what built them (recorded with a run's versions)."""
    return dict(LOADED)
