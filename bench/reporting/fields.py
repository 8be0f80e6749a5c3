"""The fields report, compare and history read from a results folder, and of what type.

A folder from someone else may hold anything JSON can: a string where a rate goes, NaN among the
segment rates (a verdict computed from it would be wrong, not an error), a neighbours entry that
is a string. Each file is checked against its shape once, as it is read, so that the pages' code
can trust it: a mismatch is one line naming the file and the field. Fields are optional (older
results lack newer ones); a field that is present has the type the suite writes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

from common.errors import BenchError


@dataclass(frozen=True)
class Number:
    """A JSON number (not a boolean); `finite` refuses NaN and infinities."""

    finite: bool = False


@dataclass(frozen=True)
class Maybe:
    shape: object


@dataclass(frozen=True)
class Text:
    """Shown as text: a string, a number, a boolean or null."""


@dataclass(frozen=True)
class MapOf:
    """An object with any keys (words, framework names), each value of `shape`."""

    shape: object


SCALAR = Text()
RATE = Number(finite=True)  # what a verdict and a plot are computed from
QUALITY = Maybe({"spearman": Maybe(Number()), "accuracy": Maybe(Number())})
ENV = {"device_name": SCALAR, "hostname": SCALAR, "cpu": SCALAR, "cpu_count": SCALAR, "python": SCALAR,
       "versions": MapOf(SCALAR)}
ROOFLINE = Maybe({"bytes_per_step": Maybe(RATE), "flops_per_step": Maybe(RATE), "bandwidth_bytes_per_s": Maybe(RATE),
                  "peak_flops_per_s": Maybe(RATE), "bound_examples_per_s": Maybe(RATE),
                  "working_set_bytes": Maybe(RATE), "stats": Maybe({"examples": RATE}),
                  "probe": Maybe({"method": SCALAR, "bandwidth": Maybe([RATE]), "peak_flops": Maybe(RATE)})})
RESULT = {
    "status": str, "error": Maybe(str), "spec": dict,  # a spec checks its own fields (RunSpec) "data_hash": SCALAR,
    "losses": [Number()], "epoch_losses": [Number()], "final_loss": Maybe(Number()),
    "segment_rates": [RATE], "rate_median": Maybe(RATE), "rate_iqr": Maybe((RATE, RATE)),
    "examples_per_sec": Maybe(RATE), "wall_seconds": Maybe(RATE),
    "evaluation": Maybe({"wordsim353": QUALITY, "simlex999": QUALITY, "analogy": QUALITY}),
    "vocab_size": Maybe(Number()), "timings": Maybe({"peak_rss_bytes": Maybe(Number()), "peak_memory_bytes": Maybe(Number())}),
    "neighbours": Maybe(MapOf([(str, Number())])), "env": Maybe(ENV), "executor": SCALAR, "host": SCALAR,
    "machine_load": Maybe({"other_cpu_fraction": Maybe(Number()), "loadavg_before": Maybe(Number()),
                           "loadavg_after": Maybe(Number())}),
    "roofline": ROOFLINE,
}
META = {"created": SCALAR, "commit": SCALAR, "argv": [SCALAR], "plan": [{"key": SCALAR}], "warning": SCALAR,
        "machine": Maybe({**ENV, "gpus": [SCALAR], "probe": Maybe(dict)})}


def _kind(value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _mismatch(value: object, shape: object, where: str) -> str | None:
    """Where `value` first departs from `shape`, as 'FIELD is X, not Y'; None if it fits."""
    if isinstance(shape, Maybe):
        return None if value is None else _mismatch(value, shape.shape, where)
    if isinstance(shape, Text):
        fits = value is None or isinstance(value, (str, bool)) or _mismatch(value, Number(), where) is None
        return None if fits else f"{where} is {_kind(value)}, not text or a number"
    if isinstance(shape, Number):
        if isinstance(value, Real) and not isinstance(value, bool) and (math.isfinite(value) or not shape.finite):
            return None
        return f"{where} is {_kind(value)}, not a{' finite' if shape.finite else ''} number"
    if isinstance(shape, type):
        return None if isinstance(value, shape) else f"{where} is {_kind(value)}, not {_kind(shape())}"
    if isinstance(shape, tuple):
        if not isinstance(value, list) or len(value) != len(shape):
            return f"{where} is {_kind(value)}, not a list of {len(shape)}"
        found = (_mismatch(v, s, f"{where}[{i}]") for i, (v, s) in enumerate(zip(value, shape)))
    elif isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where} is {_kind(value)}, not a list"
        found = (_mismatch(v, shape[0], f"{where}[{i}]") for i, v in enumerate(value))
    elif isinstance(shape, MapOf):
        if not isinstance(value, dict):
            return f"{where} is {_kind(value)}, not an object"
        found = (_mismatch(v, shape.shape, f"{where}.{k}") for k, v in value.items())
    else:
        if not isinstance(value, dict):
            return f"{where or 'the file'} is {_kind(value)}, not an object"
        found = (_mismatch(value[k], s, f"{where}.{k}".lstrip(".")) for k, s in shape.items() if k in value)
    return next((m for m in found if m), None)


def check(value: object, shape: object, path: Path) -> None:
    """Raise a one-line BenchError naming `path` unless `value` has `shape`."""
    mismatch = _mismatch(value, shape, "")
    if mismatch:
        raise BenchError(f"{path}: {mismatch}: not a file the suite writes (was it edited?)")
