"""Every run read against the fused limit row: the share of the rate that one fused numba pass
over the batch (backends/fused.py) reached on the same machine, in the same suite.

A run's limit is the fused run of the same spec but for how it is executed: same device, same
optimiser and dense/lazy update, same data; backend, compiler, graphs, runner and repeat aside.
Its rate is the median of those fused runs' median segment rates. gensim trains with its own
SGD on its own subsampling, so it has no limit row.
"""
from __future__ import annotations

import numpy as np

from bench.results.schema import settings_key

LIMIT_BACKEND = "fused"
_EXECUTION = ("backend", "compile", "graph", "layout", "runner", "repeat")  # how a run executes, not what it computes


def _computes(spec: dict) -> str:
    """The spec without the fields that only say how a run is executed."""
    return settings_key(spec, *_EXECUTION)


def limit_rates(results: list[dict]) -> dict[str, float]:
    """What each computation's fused runs reached: _computes(spec) -> median examples/s."""
    found: dict[str, list[float]] = {}
    for r in results:
        spec = r.get("spec") or {}
        if spec.get("backend") == LIMIT_BACKEND and spec.get("runner") == "backend" and r.get("rate_median"):
            found.setdefault(_computes(spec), []).append(r["rate_median"])
    return {key: float(np.median(rates)) for key, rates in found.items()}


def share(r: dict, limits: dict[str, float]) -> float | None:
    """r's median rate over its limit row's, or None (no limit row, no rate, or gensim)."""
    spec = r.get("spec") or {}
    if spec.get("runner") == "gensim" or not r.get("rate_median"):
        return None
    limit = limits.get(_computes(spec))
    return r["rate_median"] / limit if limit else None


def share_text(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"
