"""The report's "What sparse gradients save across workers": each data-parallel run beside its
one-process twin (bytes a step, step time, the communication's share), and the engines' models
carried from the measured slices to 1,024 workers (common/comm_scaling.py), with the worker count
from which a sparse gather stops paying, in words. Everything comes from the stored results."""
from __future__ import annotations

from typing import Any

from bench.reporting.pages import plot_text
from bench.reporting.pages import svg as _svg
from bench.results.schema import measured, settings_key
from common.comm import SliceRows
from common.comm_scaling import BANDWIDTHS_GBIT, Point, crossover, curve
from common.errors import BenchError
from common.spec import RunSpec

TIME_AT = (2, 16, 128, 1024)  # the worker counts the time table shows


def _label(spec: RunSpec) -> str:
    return spec.label.replace(f" x{spec.workers}", "")


def measured_rows(results: list[dict]) -> list[dict]:
    """One row per data-parallel run and per one-process twin of one: N, rate, step time, bytes a
    step (counted), the communication's share of the step where the engine timed it, and the time
    beyond perfect scaling (1 - t1 / (N tN)) against the twin."""
    groups: dict[str, list[dict]] = {}
    for r in measured(results):
        if r.get("rate_median"):
            groups.setdefault(settings_key(r["spec"], "workers"), []).append(r)
    rows = []
    for runs in groups.values():
        if not any(r["spec"].get("workers", 1) > 1 for r in runs):
            continue
        runs.sort(key=lambda r: r["spec"].get("workers", 1))
        one = next((r for r in runs if r["spec"].get("workers", 1) == 1), None)
        for r in runs:
            spec, comm = RunSpec.from_dict(r["spec"]), r.get("communication") or {}
            step = spec.data.batch_size / r["rate_median"]
            beyond = None
            if one is not None and spec.workers > 1:
                beyond = 1 - (spec.data.batch_size / one["rate_median"]) / (spec.workers * step)
            timed = [t for t in comm.get("seconds_per_step") or [] if t is not None]  # by rank
            seconds = max(timed) if timed else None  # the slowest rank's: every rank waits for it
            rows.append({"run": _label(spec), "workers": spec.workers, "rate": r["rate_median"], "step_ms": step * 1e3,
                         "bytes": comm.get("bytes_per_step", 0.0 if spec.workers == 1 else None),
                         "share": seconds / step if seconds is not None else None, "beyond": beyond,
                         "threads": comm.get("threads_per_rank"), "oversubscribed": comm.get("oversubscribed", False),
                         "corpus": spec.data.corpus, "vocab": r.get("vocab_size")})
    return rows


def modelled(results: list[dict]) -> list[dict]:
    """Per framework, layout and vocabulary with a stored slice profile: the dense and sparse curves
    (strong and weak scaling), the crossover N of each, and the table of times at TIME_AT."""
    seen: dict[tuple, dict] = {}
    for r in measured(results):
        comm = r.get("communication") or {}
        if r["spec"].get("workers", 1) > 1 and comm.get("slice_profile") and r.get("vocab_size"):
            run_spec = RunSpec.from_dict(r["spec"])
            seen.setdefault((run_spec.backend, run_spec.layout, run_spec.data.corpus, r["vocab_size"]),
                            {"spec": run_spec, "run": r})
    out = []
    for (backend, layout, corpus, vocab), found in sorted(seen.items()):
        spec: RunSpec = found["spec"]
        profile = {int(k): SliceRows(*v) for k, v in found["run"]["communication"]["slice_profile"].items()}
        entry: dict[str, Any] = {"backend": backend, "layout": layout, "corpus": corpus, "vocab": vocab,
                                 "per_rank": spec.data.batch_size // spec.workers, "batch": spec.data.batch_size}
        try:
            for scaling in ("strong", "weak"):
                dense = curve(_variant(spec, False), vocab, profile, scaling)
                sparse = curve(_variant(spec, True), vocab, profile, scaling)
                entry[scaling] = {"dense": dense, "sparse": sparse, "crossover": crossover(dense, sparse),
                                  "last": max((p.workers for p in dense), default=None)}
        except BenchError:  # a backend without a model (or one that cannot run the other variant)
            continue
        entry["times"] = _times(entry["weak"]["dense"], entry["weak"]["sparse"])
        entry["words"] = _words(entry)
        out.append(entry)
    return out


def _variant(spec: RunSpec, sparse: bool) -> RunSpec:
    return RunSpec.from_dict({**spec.to_dict(), "sparse": sparse, "compile": False})


def _times(dense: list[Point], sparse: list[Point]) -> list[list[str]]:
    """Rows: N, then dense / sparse milliseconds a step at each bandwidth."""
    by_n = {p.workers: p for p in sparse}
    rows = []
    for p in dense:
        if p.workers in TIME_AT and p.workers in by_n:
            q = by_n[p.workers]
            rows.append([f"{p.workers:,}"] + [f"{p.seconds[bw] * 1e3:.3g} / {q.seconds[bw] * 1e3:.3g}"
                                              for bw in BANDWIDTHS_GBIT])
    return rows


def _words(entry: dict) -> str:
    """Where the sparse gather stops paying, for the weak and the strong curve, in words."""
    def one(scaling: str, how: str) -> str:
        found = entry[scaling]
        if found["last"] is None:
            return f"{how}: not modelled"
        if found["crossover"] is None:
            return f"{how}: the sparse gather sends less than the dense allreduce at every N up to {found['last']:,}"
        if found["crossover"] == 2:
            return f"{how}: the sparse gather already sends more than the dense allreduce at N = 2"
        return f"{how}: the sparse gather sends less up to N = {found['crossover'] // 2:,} and more from N = " \
               f"{found['crossover']:,}"
    return "; ".join([one("weak", f"each worker at {entry['per_rank']} examples a step"),
                      one("strong", f"the global batch of {entry['batch']} split N ways")])


def figure(curves: list[dict]) -> str | None:
    """Bytes a rank sends a step against N (weak scaling), dense solid and sparse dashed, one colour a
    framework and layout, one panel a vocabulary."""
    import matplotlib.pyplot as plt

    if not curves:
        return None
    vocabularies = sorted({c["vocab"] for c in curves})
    fig, axes = plt.subplots(1, len(vocabularies), figsize=(5 * len(vocabularies), 3.6), squeeze=False)
    colours: dict[tuple[str, str], str] = {}
    for ax, vocab in zip(axes[0], vocabularies):
        for c in (c for c in curves if c["vocab"] == vocab):
            colour = colours.setdefault((c["backend"], c["layout"]), f"C{len(colours) % 10}")
            for variant, style in (("dense", "-"), ("sparse", "--")):
                points = c["weak"][variant]
                ax.plot([p.workers for p in points], [p.bytes_sent for p in points], style, color=colour, marker=".",
                        label=plot_text(f"{c['backend']} {c['layout']} {variant}"))
        ax.set(xscale="log", yscale="log", xlabel="workers N", ylabel="bytes a rank sends a step",
               title=plot_text(f"V {vocab:,}"))
        ax.legend(fontsize=7)
    return _svg(fig)


def section(results: list[dict]) -> dict | None:
    """What templates/parallel.html shows, or None when the folder holds no data-parallel run."""
    rows = measured_rows(results)
    if not rows:
        return None
    curves = modelled(results)
    return {"rows": rows, "curves": curves, "figure": figure(curves), "bandwidths": BANDWIDTHS_GBIT}
