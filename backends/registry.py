"""Backend names -> implementations, imported only when asked for (each lives in its own env)."""
from __future__ import annotations

import importlib

from backends.base import Backend
from common.errors import BenchError

BACKENDS = {
    "numpy": ("backends.reference", "NumpyBackend", "tests"),
    "torch": ("backends.pytorch", "TorchBackend", "torch"),
    "mxnet": ("backends.mxnet", "MXNetBackend", "mxnet"),
    "tensorflow": ("backends.tensorflow", "TensorFlowBackend", "tensorflow"),
}


def tox_env(name: str) -> str:
    """The tox env whose interpreter can import backend `name`."""
    check_name(name)
    return BACKENDS[name][2]


def check_name(name: str) -> None:
    if name not in BACKENDS:
        raise BenchError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")


def load(name: str) -> type[Backend]:
    """The backend class, or a BenchError saying why its framework cannot be imported here."""
    check_name(name)
    module_name, class_name, env = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BenchError(f"backend {name!r} cannot be imported in this env ({exc}); "
                         f"run it in its own env: tox -e {env}, or .tox/{env}/bin/python -m bench") from None
    return getattr(module, class_name)


def availability() -> dict[str, str | None]:
    """Each backend -> None if importable here, else the reason it is not."""
    reasons: dict[str, str | None] = {}
    for name in BACKENDS:
        try:
            load(name)
            reasons[name] = None
        except BenchError as exc:
            reasons[name] = str(exc)
    return reasons
