"""Every run read against the machine: its roofline bound (common/roofline.py, stored in each
result as `roofline`) and the share of it the run reached, and the roofline plot.

The share is the run's median rate over its bound. A result without a bound (an older result, a
baseline, a probe that could not run, a GPU we hold no figures for) has no share: "-".
"""
from __future__ import annotations

import numpy as np

from bench.reporting.pages import DRAWABLE, plot_text, svg


def bound(r: dict) -> float | None:
    """The run's bound in examples/s, or None."""
    return (r.get("roofline") or {}).get("bound_examples_per_s")


def share(r: dict) -> float | None:
    """The run's median rate over its bound, or None."""
    limit, rate = bound(r), r.get("rate_median")
    return rate / limit if limit and rate else None


def median_bound(runs: list[dict]) -> float | None:
    """The median bound of several runs of one setting (repeats), or None if none has one."""
    found = [b for r in runs if (b := bound(r))]
    return float(np.median(found)) if found else None


def _attained(r: dict) -> tuple[float, float] | None:
    """(arithmetic intensity in FLOPs/byte, attained FLOP/s) of a finished run with a bound."""
    model, rate = r.get("roofline") or {}, r.get("rate_median")
    examples = (model.get("stats") or {}).get("examples")
    if not (rate and bound(r) and examples and model.get("bytes_per_step") and model.get("flops_per_step")):
        return None
    per_example = model["flops_per_step"] / examples
    intensity, attained = model["flops_per_step"] / model["bytes_per_step"], rate * per_example
    roof = bound(r) * per_example
    if not all(1 / DRAWABLE <= v <= DRAWABLE for v in (intensity, attained, roof)):  # past what a log axis draws
        return None  # (a crafted 5e-324 bytes a step): in the table, not in the figure
    return intensity, attained


def figure(runs: list[dict], label) -> object | None:
    """Arithmetic intensity against attained FLOP rate, one point a run (hollow: its bound), with
    the machine's roofs: the compute roof, and a memory roof for the fastest and the slowest
    bandwidth its probe measured (in cache, and from memory)."""
    import matplotlib.pyplot as plt

    points = [(r, p) for r in runs if (p := _attained(r))]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    machines: dict[str, dict] = {}
    for r, _ in points:
        probe = r["roofline"].get("probe") or {}
        if probe.get("bandwidth") and probe.get("peak_flops"):
            machines.setdefault(probe.get("method", "probe"), probe)
    intensities = [p[0] for _, p in points]
    x = np.geomspace(min(intensities) / 4, max(intensities) * 4, 64)
    for name, probe in machines.items():
        peak = probe["peak_flops"]
        for bandwidth, style in ((max(probe["bandwidth"]), "-"), (min(probe["bandwidth"]), "--")):
            ax.plot(x, np.minimum(x * bandwidth, peak), style, color="#444", lw=1)
            ax.annotate(f"{bandwidth / 1e9:,.0f} GB/s", (x[0], x[0] * bandwidth), fontsize=7, va="bottom")
        ax.axhline(peak, color="#444", lw=0.5, ls=":")
        ax.annotate(plot_text(f"peak {peak / 1e9:,.0f} GFLOP/s ({name})"), (x[-1], peak), fontsize=7, ha="right",
                    va="bottom")
    for r, (intensity, attained) in points:
        fraction = share(r)
        assert fraction is not None  # _attained gave a point: the run has a rate and a bound
        dot, = ax.plot([intensity], [attained], "o", label=plot_text(f"{label(r)}: {100 * fraction:.0f} %"))
        ax.plot([intensity], [attained / fraction], "o", mfc="none", color=dot.get_color())
        ax.plot([intensity, intensity], [attained, attained / fraction], color=dot.get_color(), lw=0.5)
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOPs per compulsory byte)",
           ylabel="FLOP/s attained (model FLOPs x examples/s / B)",
           title="roofline: each run (filled) and its bound (hollow)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return svg(fig)
