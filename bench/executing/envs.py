"""The per-backend virtualenvs (tox envs), found or built on demand.

The harness and the cross-env tests never import a framework: they run `python -m bench`
with the interpreter of the backend's own env, which tox builds from pyproject's extras, or
with one named by SKIPGRAM_PYTHON_<ENV> (a GPU machine's own python, a conda env) where the
frameworks are already installed and nothing can be downloaded.

A GPU env (`jax-cuda`) is named by SKIPGRAM_PYTHON_JAX_CUDA (a dash becomes an underscore) and,
when that is unset, by its CPU env's variable (SKIPGRAM_PYTHON_JAX): on a GPU machine one
python usually has the GPU builds, and a CPU-only interpreter named there fails its cuda runs
with "device 'cuda' is not available", never trains on the CPU instead.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from bench.executing.processes import die_with, end_group
from common.errors import BenchError
from common.processes import run_own_group

ROOT = Path(__file__).resolve().parents[2]
# What a named interpreter is asked once, before any run: a python prints its major version.
_VERSION_CHECK = "import sys; print(sys.version_info[0])"
_CHECK_SECONDS = 120  # a container runner named as the python may start slowly; nothing takes longer
# Variables tox sets for the env it runs in; a nested tox must not inherit them.
_TOX_VARS = ("TOX_ENV_NAME", "TOX_WORK_DIR", "TOX_ENV_DIR", "TOX_PACKAGE", "VIRTUAL_ENV", "PYTHONHOME")


def work_dir() -> Path:
    return Path(os.environ.get("SKIPGRAM_TOX_WORKDIR") or ROOT / ".tox")


GPU_SUFFIX = "-cuda"  # a backend's GPU env is its CPU env's name plus this (backends/registry.py)


def python_variables(env: str) -> list[str]:
    """The variables that may name `env`'s interpreter, first match wins."""
    names = [env] + ([env.removesuffix(GPU_SUFFIX)] if env.endswith(GPU_SUFFIX) else [])
    return ["SKIPGRAM_PYTHON_" + name.upper().replace("-", "_") for name in names]


def naming_variable(env: str) -> str | None:
    """The variable that names `env`'s interpreter now, if any is set."""
    return next((v for v in python_variables(env) if os.environ.get(v)), None)


def chosen_python(env: str) -> Path | None:
    """The interpreter SKIPGRAM_PYTHON_<ENV> names (a path, or a command on PATH), if set."""
    variable = naming_variable(env)
    if variable is None:
        return None
    value = os.environ[variable]
    found = shutil.which(value)
    fix = f"point it at an interpreter that has the {env!r} env's packages, or unset it to let tox build the env"
    if found is None:
        raise BenchError(f"{variable}={value} is not an executable python; {fix}")
    problem = _not_python(found)
    if problem:
        raise BenchError(f"{variable}={value} ({found}) is not a python 3 interpreter: {problem}; {fix}")
    return Path(found)


def ask_named(envs: Iterable[str]) -> None:
    """Ask each interpreter a SKIPGRAM_PYTHON_* names for these envs whether it is a python, now,
    before any run starts: its answer is kept for python_for, which gives a run named so its error,
    and while a run trains its worker is the only process the harness started."""
    for env in set(envs):
        with contextlib.suppress(BenchError):  # said by python_for, in that run's failed result
            chosen_python(env)


@cache
def _not_python(path: str) -> str | None:
    """Why `path` is not a python 3 (run once with -c and its answer kept); None if it is one.
    Without this a wrong program named there fails every run with only its exit status."""
    asked = f"`{path} -c '{_VERSION_CHECK}'`"
    try:
        done = run_own_group([path, "-c", _VERSION_CHECK], timeout=_CHECK_SECONDS)
    except subprocess.TimeoutExpired:
        return f"{asked} gave no answer in {_CHECK_SECONDS} s"
    answer = done.stdout.strip()
    if done.returncode == 0 and answer == "3":
        return None
    shown = f"printed {answer[:60]!r}" if answer else "printed nothing"
    return f"{asked} {shown} and exited with status {done.returncode}"


def python_for(env: str, build: bool = True) -> Path:
    """The interpreter for tox env `env`: SKIPGRAM_PYTHON_<ENV> if set, else the tox env's,
    building it with `tox run --notest` if needed."""
    chosen = chosen_python(env)
    if chosen is not None:
        return chosen
    python = work_dir() / env / "bin" / "python"
    building = work_dir() / f"{env}.building"  # there while a build runs; left behind by one cut short
    if (python.exists() and not building.exists()) or not build:
        return python
    print(f"building the {env!r} env with tox (the first time takes minutes)", flush=True)
    clean = {k: v for k, v in os.environ.items() if k not in _TOX_VARS}
    clean["PATH"] = os.pathsep.join(p for p in clean.get("PATH", "").split(os.pathsep)
                                    if not p.startswith(str(work_dir())))
    building.parent.mkdir(parents=True, exist_ok=True)
    building.touch()
    proc = subprocess.Popen([sys.executable, "-m", "tox", "run", "-e", env, "--notest", "--workdir", str(work_dir())],
                            cwd=ROOT, env=clean, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=die_with(os.getpid()))
    try:
        output, _ = proc.communicate()
    finally:  # interrupted: tox and its pip must not go on installing into the env behind our back
        end_group(proc)
    if proc.returncode != 0 or not python.exists():
        tail = output.strip().splitlines()[-1:] or ["no output"]
        raise BenchError(f"could not build the {env!r} env with tox ({tail[0]}); run `tox -e {env}` to see why")
    building.unlink()
    return python
