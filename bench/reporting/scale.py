"""The report's "Scale" section: examples/s and peak memory against vocabulary size, per framework,
dense and sparse, and the vocabulary size from which sparse gradients pay, named in words.

A point is one (backend, device, variant) at one vocabulary size: the median over its repeats of
each run's median segment rate, and the largest peak RSS (the worker process, getrusage) and device
peak among them. The section appears when a folder's runs span two or more vocabulary sizes.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from bench.reporting.pages import number as _fmt
from bench.reporting.pages import plot_text
from bench.reporting.pages import svg as _svg
from bench.results.schema import measured
from common.spec import RunSpec

TIE = 0.05  # the sparse answer's "about as fast" band (report.sparse_answer), and the VM's +-5 % drift within a suite


class Point(NamedTuple):
    vocab: int
    corpus: str
    rate: float | None        # median over repeats of each run's median segment rate
    rates: list[float]        # each repeat's
    rss: int | None           # peak resident bytes of the worker, the largest over repeats
    device_peak: int | None


def points(results: list[dict]) -> dict[tuple[str, str, str], list[Point]]:
    """(backend, device, variant) -> its points by ascending vocabulary size."""
    runs: dict[tuple[str, str, str, int], list[dict]] = {}
    for r in measured(results):
        if r.get("vocab_size") and not (r["spec"].get("compile") or r["spec"].get("graph")):
            s = r["spec"]
            runs.setdefault((s["backend"], s["device"], RunSpec.from_dict(s).variant, r["vocab_size"]), []).append(r)
    found: dict[tuple[str, str, str], list[Point]] = {}
    for (backend, device, variant, vocab), group in sorted(runs.items()):
        rates = [r["rate_median"] for r in group if r.get("rate_median")]
        timings = [r.get("timings") or {} for r in group]
        rss = [t["peak_rss_bytes"] for t in timings if t.get("peak_rss_bytes")]
        dev = [t["peak_memory_bytes"] for t in timings if t.get("peak_memory_bytes")]
        found.setdefault((backend, device, variant), []).append(Point(
            vocab, group[0]["spec"]["data"].get("corpus", "ptb"), float(np.median(rates)) if rates else None,
            rates, max(rss) if rss else None, max(dev) if dev else None))
    return found


def ratios(found: dict[tuple[str, str, str], list[Point]]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(backend, device) -> (V, sparse rate / dense rate) at each size where both were measured."""
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for (backend, device, variant), dense in found.items():
        if variant != "dense":
            continue
        sparse = {p.vocab: p.rate for p in found.get((backend, device, "sparse"), []) if p.rate}
        pairs = [(p.vocab, sparse[p.vocab] / p.rate) for p in dense if p.rate and p.vocab in sparse]
        if pairs:
            out[(backend, device)] = pairs
    return out


def crossover(pairs: list[tuple[int, float]]) -> str:
    """Where sparse starts to pay, in words. A ratio within TIE of 1 is "about as fast" (the run
    to run drift of a shared VM), not a verdict; the crossing of 1 is interpolated on log V and
    log ratio between the two sizes measured either side of it."""
    pays = [ratio > 1 + TIE for _, ratio in pairs]
    low, high = f"{pairs[0][0]:,}", f"{pairs[-1][0]:,}"
    if all(pays):
        return f"sparse pays at every size measured (V {low} to {high})"
    if not any(pays):
        return f"sparse does not pay at any size measured (V {low} to {high})"
    first = pays.index(True)
    if not all(pays[first:]):
        sizes = ", ".join(f"{v:,}" for (v, _), up in zip(pairs, pays) if up)
        return f"sparse pays at V {sizes} only (no single crossover)"
    (v0, r0), (v1, r1) = pairs[first - 1], pairs[first]
    if r0 >= 1 - TIE:
        return f"sparse is about as fast up to V {v0:,} ({r0:.2f}x) and pays from V {v1:,} ({r1:.2f}x)"
    at = math.exp(math.log(v0) + (0 - math.log(r0)) * (math.log(v1) - math.log(v0)) / (math.log(r1) - math.log(r0)))
    return f"sparse pays from V of about {_round(at):,} (slower at {v0:,}, {r1:.2f}x at {v1:,})"


def _round(x: float) -> int:
    """Two significant figures: the crossover is interpolated between sizes a decade apart."""
    digits = max(0, int(math.floor(math.log10(x))) - 1)
    return int(round(x, -digits))


def _mib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2 ** 20:,.0f}"


HEAD = ("backend", "device", "corpus", "V", "dense examples/s", "sparse examples/s", "sparse / dense", "repeats",
        "dense peak RSS (MiB)", "sparse peak RSS (MiB)", "device peak dense / sparse (MiB)")


def rows(found: dict[tuple[str, str, str], list[Point]]) -> list[tuple[str, list[str]]]:
    """The table's rows as text, one per backend, device and size (the template escapes them)."""
    out = []
    for (backend, device, variant), dense in sorted(found.items()):
        if variant != "dense":
            continue
        sparse = {p.vocab: p for p in found.get((backend, device, "sparse"), [])}
        for p in dense:
            q = sparse.get(p.vocab)
            ratio = q.rate / p.rate if q and q.rate and p.rate else None
            out.append(("", [backend, device, p.corpus, f"{p.vocab:,}", _fmt(p.rate, 0), _fmt(q.rate if q else None, 0),
                             _fmt(ratio, 2), f"{len(p.rates)} / {len(q.rates) if q else 0}", _mib(p.rss),
                             _mib(q.rss if q else None),
                             f"{_mib(p.device_peak)} / {_mib(q.device_peak if q else None)}"]))
    return out


def figure(found: dict[tuple[str, str, str], list[Point]]) -> str:
    import matplotlib.pyplot as plt

    fig, (rate_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 4))
    colours: dict[tuple[str, str], str] = {}
    for (backend, device, variant), line in sorted(found.items()):
        colour = colours.setdefault((backend, device), f"C{len(colours) % 10}")
        style = dict(color=colour, marker="o", linestyle="-" if variant == "dense" else "--",
                     label=plot_text(f"{backend} {variant} {device}"))
        rated = [p for p in line if p.rate]
        rate_ax.plot([p.vocab for p in rated], [p.rate for p in rated], **style)
        sized = [p for p in line if p.rss]
        memory_ax.plot([p.vocab for p in sized], [p.rss / 2 ** 20 for p in sized if p.rss], **style)
    rate_ax.set(xscale="log", yscale="log", xlabel="vocabulary size V", ylabel="examples/s (median of repeats)",
                title="speed (solid dense, dashed sparse)")
    memory_ax.set(xscale="log", yscale="log", xlabel="vocabulary size V", ylabel="peak RSS of the worker (MiB)",
                  title="memory")
    rate_ax.legend(fontsize=7)
    return _svg(fig)


def section(results: list[dict]) -> dict | None:
    """What templates/scale.html shows, or None when the runs span fewer than two vocabulary sizes."""
    found = points(results)
    if len({p.vocab for line in found.values() for p in line}) < 2:
        return None
    return {"sentences": [f"{backend} on {device}: {crossover(pairs)}"
                          for (backend, device), pairs in sorted(ratios(found).items())],
            "figure": figure(found), "head": HEAD, "rows": rows(found)}
