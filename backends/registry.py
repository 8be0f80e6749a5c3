"""Backend names -> implementations, imported only when asked for (each lives in its own env).

What the harness must know before it can import a framework (which env, whether a sparse
or compiled variant exists) is declared here, once: `Backend.capabilities()` reads it, adding
the devices the framework sees.
"""
from __future__ import annotations

import importlib
from typing import NamedTuple

from backends.base import Backend
from common.errors import BenchError


class BackendInfo(NamedTuple):
    module: str
    cls: str
    env: str        # the tox env that can import it
    sparse: bool    # has a sparse-gradient variant
    compile: bool   # has a compiled variant


BACKENDS = {
    "numpy": BackendInfo("backends.reference", "NumpyBackend", "tests", sparse=True, compile=False),
    "torch": BackendInfo("backends.pytorch", "TorchBackend", "torch", sparse=True, compile=True),
    "mxnet": BackendInfo("backends.mxnet", "MXNetBackend", "mxnet", sparse=True, compile=False),
    "tensorflow": BackendInfo("backends.tensorflow", "TensorFlowBackend", "tensorflow", sparse=True, compile=True),
    # JAX is always compiled (jit), so it has no separate compiled variant.
    "jax": BackendInfo("backends.jax", "JaxBackend", "jax", sparse=True, compile=False),
}


def info(name: str) -> BackendInfo:
    if name not in BACKENDS:
        raise BenchError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def tox_env(name: str) -> str:
    """The tox env whose interpreter can import backend `name`."""
    return info(name).env


def load(name: str) -> type[Backend]:
    """The backend class, or a BenchError saying why its framework cannot be imported here."""
    entry = info(name)
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        raise BenchError(f"backend {name!r} cannot be imported in this env ({exc}); "
                         f"run it in its own env: tox -e {entry.env}, or .tox/{entry.env}/bin/python -m bench") from None
    return getattr(module, entry.cls)
