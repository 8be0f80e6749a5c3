"""`python -m bench history FOLDER...`: each run's speed and final loss across results folders.

asv's history graph for this suite: one offline page where a change in speed can be read
against what changed with it. Folders are ordered by their suite.json date; each point says
(as SVG <title> text, a tooltip in any browser) which commit and framework versions made it,
and a vertical mark shows where a framework version changed.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.reporting.compare import Folder, group, load_folder, names, write_file
from bench.reporting.limit import share_text
from bench.reporting.pages import drawable, headless_matplotlib, number, plot_text, render, svg
from bench.reporting.roofline import median_bound
from bench.results.schema import MEASURED


@dataclass
class Point:
    """One run setting in one folder: its repeats pooled."""

    x: int
    folder: Folder
    rates: tuple[float, float, float] | None  # 25th, 50th, 75th percentile of the segment rates
    final_loss: float | None
    versions: dict[str, str]
    bound: float | None = None  # the median roofline bound of its runs (examples/s)


def collect(folders: list[Folder]) -> tuple[dict[str, str], dict[str, list[Point]]]:
    """Settings key -> its points across the folders (in folder order), and key -> display name."""
    series: dict[str, list[Point]] = {}
    specs: dict[str, dict] = {}
    for x, folder in enumerate(folders):
        for key, runs in group(folder.results).items():
            ok = [r for r in runs if r["status"] in MEASURED]
            if not ok:
                continue
            rates = [v for r in ok for v in r.get("segment_rates") or []]
            losses = [r["final_loss"] for r in ok if r.get("final_loss") is not None]
            versions: dict[str, str] = {}
            for r in ok:
                versions.update((r.get("env") or {}).get("versions") or {})
            quartiles = None
            if rates:
                low, mid, high = (float(q) for q in np.percentile(rates, [25, 50, 75]))
                quartiles = (low, mid, high)
            specs.setdefault(key, ok[0]["spec"])
            series.setdefault(key, []).append(Point(x, folder, quartiles, float(np.mean(losses)) if losses else None,
                                                    versions, median_bound(ok)))
    return names(specs), series


def version_changes(series: dict[str, list[Point]]) -> dict[int, set[str]]:
    """Folder index -> 'framework old -> new' for every version that changed on arriving there."""
    marks: dict[int, set[str]] = {}
    for points in series.values():
        for before, after in zip(points, points[1:]):
            for name in sorted(set(before.versions) | set(after.versions)):
                old, new = before.versions.get(name, "–"), after.versions.get(name, "–")
                if old != new:
                    marks.setdefault(after.x, set()).add(f"{name} {old} → {new}")
    return marks


def tooltip(name: str, p: Point) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in sorted(p.versions.items())) or "no versions recorded"
    speed = (f"examples/s {number(p.rates[1], 0)} (IQR {number(p.rates[0], 0)}–{number(p.rates[2], 0)})" if p.rates
             else "no segment rates")
    roof = (f"roofline bound {number(p.bound, 0)} examples/s, share {share_text(p.rates[1] / p.bound)}"
            if p.bound and p.rates else "roofline bound -")
    return (f"{name}\n{p.folder.created}, commit {p.folder.commit}\n{versions}\n{speed}\n{roof}\n"
            f"final loss {number(p.final_loss, 4)}")


def figure(folders: list[Folder], labels: dict[str, str], series: dict[str, list[Point]]) -> str:
    """Speed (median, IQR band) and final loss against folder; points carry <title> tooltips."""
    headless_matplotlib()
    import matplotlib.pyplot as plt

    fig, (speed_ax, loss_ax) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    titles: dict[str, str] = {}
    for key in sorted(series, key=lambda k: labels[k]):
        points = series[key]
        timed = [p for p in points if p.rates]
        line, = speed_ax.plot([p.x for p in timed], [p.rates[1] for p in timed if p.rates], lw=1.2,
                              label=plot_text(labels[key]))
        speed_ax.fill_between([p.x for p in timed], [p.rates[0] for p in timed if p.rates],
                              [p.rates[2] for p in timed if p.rates],
                              color=line.get_color(), alpha=0.15, lw=0)
        bounded = [p for p in points if p.bound]
        speed_ax.plot([p.x for p in bounded], [p.bound for p in bounded], ":", lw=1, color=line.get_color())
        scored = [p for p in points if not math.isnan(drawable([p.final_loss])[0])]
        loss_ax.plot([p.x for p in scored], [p.final_loss for p in scored], lw=1.2, color=line.get_color())
        for ax, shown, value in ((speed_ax, timed, lambda p: p.rates[1]), (loss_ax, scored, lambda p: p.final_loss)):
            for p in shown:
                marker, = ax.plot([p.x], [value(p)], "o", color=line.get_color())
                gid = f"history-point-{len(titles)}"
                marker.set_gid(gid)
                titles[gid] = tooltip(labels[key], p)
    for x, changes in sorted(version_changes(series).items()):
        for ax in (speed_ax, loss_ax):
            ax.axvline(x - 0.5, color="#999", ls="--", lw=1)
        speed_ax.annotate(plot_text("\n".join(sorted(changes))), (x - 0.5, 1), xycoords=("data", "axes fraction"),
                          fontsize=7, va="top", ha="left", xytext=(3, -3), textcoords="offset points")
    speed_ax.set(ylabel="examples/s (median of segments, band: IQR)",
                 title="speed (dotted: each setting's roofline bound)")
    loss_ax.set(ylabel="final loss", title="final loss")
    loss_ax.set_xticks(range(len(folders)), [plot_text(f"{f.created[:16]}\n{f.commit}") for f in folders], fontsize=7,
                       rotation=30, ha="right")
    speed_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return svg(fig, titles)


def folder_rows(folders: list[Folder]) -> list[tuple[str, list[str]]]:
    """Each folder: when, which commit, where, which framework versions, how many runs finished."""
    rows = []
    for f in folders:
        versions: dict[str, str] = {}
        for r in f.results:
            versions.update((r.get("env") or {}).get("versions") or {})
        ok = sum(r["status"] in MEASURED for r in f.results)
        rows.append(("", [f.created, f.commit, str(f.path),
                          ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or "–",
                          f"{ok} of {len(f.results)}"]))
    return rows


def run(args: argparse.Namespace) -> int:
    folders = sorted((load_folder(Path(p)) for p in args.folders), key=lambda f: (f.created, str(f.path)))
    labels, series = collect(folders)
    out = Path(args.out) if args.out else folders[-1].path / "history.html"
    write_file(out, render("history.html", title="skip-gram bench: history", heading="skip-gram bench: history",
                           folders=folder_rows(folders), figure=figure(folders, labels, series) if series else None))
    print(f"history of {len(series)} run settings over {len(folders)} folders: {out}")
    return 0
