"""The HTML report, built from stored results alone (`python -m bench report DIR`).

One self-contained file from templates/report.html: tables, and matplotlib figures inlined as SVG;
nothing is fetched. This module computes what the page shows; the template lays it out and
formats its numbers (bench/reporting/pages.py).
"""
from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from bench.reporting import roofline
from bench.reporting.limit import LIMIT_BACKEND, limit_rates, share, share_text
from bench.reporting.padding import padding_cost
from bench.reporting.pages import headless_matplotlib, number, plot_text, svg
from bench.reporting.pages import render as render_page
from bench.results import store
from bench.results.schema import MEASURED, SKIPPED, measured, settings_key
from bench.results.store import Unreadable
from common.cache import atomic_write_bytes
from common.errors import BenchError
from common.machine import BUSY_FRACTION
from common.spec import BASELINES, DataSpec, RunSpec, spec_key


def load_results(folder: Path) -> tuple[dict, list[dict]]:
    """Suite metadata and the result of every planned run (bench.results reads and checks each
    file); a file cut short or not JSON, or of a spec the planner would not make, becomes a row
    marked corrupt. A file that is no plain file, too large or too deep, or whose fields are not of
    the types the suite writes, is refused: one line naming it (BenchError). Strays (files in runs/
    that are not a planned run's own) are not results: see store.run_files."""
    if not folder.is_dir():
        raise BenchError(f"results folder {folder} not found")
    try:
        meta = store.load_meta(folder / "suite.json") or {}
    except Unreadable:
        meta = {"warning": f"{folder / 'suite.json'} is corrupt: the plan, date and command are unknown"}
    results = []
    files, strays = store.run_files(folder, meta)
    for path in files:
        try:
            # Refused (a symlink, a FIFO, too large or deep, mistyped): one line, exit 2
            result = store.load_result(path)
        except Unreadable as exc:
            result = _corrupt(path, exc.reason)
        else:
            try:
                RunSpec.from_dict(result["spec"])
            except BenchError as exc:  # a spec the planner would not make
                result = _corrupt(path, str(exc))
            except TypeError as exc:  # data that is not an object
                result = _corrupt(path, exc.__class__.__name__)
        result["_name"] = path.stem
        results.append(result)
    _mark_stale(meta, results)
    _name_by_settings(results)
    if not results and not list((folder / "microbench").glob("*.json")):
        also = f" (only {len(strays)} stray file(s), not this plan's runs)" if strays else ""
        raise BenchError(f"no results in {folder / 'runs'}{also}: run `python -m bench suite` first")
    return meta, results


def _corrupt(path: Path, why: str) -> dict:
    """The row of a result file that is cut short, not JSON, or lacks what every result holds."""
    return {"status": "corrupt", "error": f"{path.name}: unreadable result ({why})", "spec": None}


def _mark_stale(meta: dict, results: list[dict]) -> None:
    """A result of a spec the folder's plan does not hold (left by an earlier run) is not one of
    this suite's: `--resume` would redo the run, and the report must not show it as done. Folders
    written before plans carried keys have nothing to check against."""
    planned = {entry["key"] for entry in meta.get("plan") or [] if isinstance(entry, dict) and entry.get("key")}
    for r in results:
        if planned and r["spec"] and spec_key(r["spec"]) not in planned:
            r["status"], r["error"] = "stale", "a result of a spec this folder's plan does not hold; not counted"


_IN_LABEL = ("backend", "device", "sparse", "compile", "graph", "layout", "runner")


def _name_by_settings(results: list[dict]) -> None:
    """Call each run by its label plus the settings that vary across this folder where it leaves
    the recipe's value (file names carry every non-recipe setting and a key: unique, but long)."""
    flat = {id(r): {**{k: v for k, v in r["spec"].items() if k != "data"}, **r["spec"]["data"]}
            for r in results if r["spec"]}
    keys = {k for f in flat.values() for k in f} - set(_IN_LABEL) - {"corpus_path"}  # a file: by its digest
    varying = [k for k in sorted(keys) if len({json.dumps(f.get(k)) for f in flat.values()}) > 1]
    names = {}
    for r in results:
        if r["spec"]:
            spec = RunSpec.from_dict(r["spec"])
            default = {**RunSpec(backend=spec.backend).to_dict(), **DataSpec().to_dict()}
            # .get: a field added later is absent from specs holding its default (PTB's corpus)
            extras = [f"{k} {str(flat[id(r)].get(k))[:19]}" for k in varying if flat[id(r)].get(k) != default.get(k)]
            names[id(r)] = " ".join([spec.label, *extras])
    taken = list(names.values())
    for r in results:
        if id(r) in names and taken.count(names[id(r)]) == 1:
            r["_name"] = names[id(r)]


def load_microbench(folder: Path) -> list[dict]:
    """pytest-benchmark entries of every env's JSON file in folder/microbench, each file checked
    (bench.results): one cut short is skipped loudly, one of other types refused in one line."""
    entries = []
    for path in sorted((folder / "microbench").glob("*.json")):
        try:
            entries += store.load_microbench(path)
        except Unreadable as exc:
            entries.append({"corrupt": f"{path.name}: unreadable ({exc.reason})"})
    return entries


def microbench(entries: list[dict]) -> dict:
    """Staged step times (backward and optimiser by difference), step cost against V, data."""
    import matplotlib.pyplot as plt

    corrupt = [e["corrupt"] for e in entries if "corrupt" in e]
    entries = [e for e in entries if "corrupt" not in e]
    staged: dict[tuple, dict] = {}
    for e in entries:
        info = e.get("extra_info", {})
        if "stage" in info and "backend" in info:
            staged.setdefault((info["backend"], info["variant"]), {})[info["stage"]] = e["stats"]["median"]
    stages = []
    for (backend, variant), t in sorted(staged.items()):
        fwd, fb, step = t.get("forward"), t.get("forward_backward"), t.get("step")
        stages.append({"backend": backend, "variant": variant, "forward": fwd,
                       "backward": fb - fwd if fb and fwd else None, "optimiser": step - fb if step and fb else None,
                       "step": step, "rate": 512 / step if step else None})
    figures = []
    scaling = [e for e in entries if "vocab" in e.get("extra_info", {})]
    if scaling:
        fig, ax = plt.subplots(figsize=(8, 4))
        curves: dict[str, list] = {}
        for e in scaling:
            info = e["extra_info"]
            curves.setdefault(f"{info['backend']} {info['variant']}", []).append((info["vocab"], e["stats"]["median"]))
        for name, points in sorted(curves.items()):
            points.sort()
            ax.loglog([p[0] for p in points], [p[1] * 1e3 for p in points], marker="o", label=plot_text(name))
        ax.set(xlabel="vocabulary size V", ylabel="step time (ms, median)", title="step cost against vocabulary")
        ax.legend(fontsize=7)
        figures.append(svg(fig))
    grown = [e for e in entries if e.get("extra_info", {}).get("stage") == "scaling"]
    if grown:
        fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 3.5))
        for phase in ("cold", "warm"):
            points = sorted((e["extra_info"]["tokens"], e["stats"]["median"], e["extra_info"]["peak_rss_mib"])
                            for e in grown if e["extra_info"]["phase"] == phase)
            time_ax.loglog([p[0] for p in points], [p[1] for p in points], marker="o", label=phase)
            memory_ax.loglog([p[0] for p in points], [p[2] for p in points], marker="o", label=phase)
        time_ax.set(xlabel="corpus tokens", ylabel="seconds", title="data --summary, whole process")
        memory_ax.set(xlabel="corpus tokens", ylabel="peak RSS (MiB)", title="peak memory")
        time_ax.legend()
        figures.append(svg(fig))
    data = [{"name": e["name"], "median": e["stats"]["median"],
             "rate": e["extra_info"].get("examples", 0) / e["stats"]["median"]}
            for e in entries if e.get("group") == "data"]
    return {"any": bool(entries or corrupt), "corrupt": corrupt, "stages": stages, "figures": figures, "data": data}


def _label(r: dict) -> str:
    return r["_name"]


# A finished run (schema.MEASURED): `noisy` (suite --require-quiet found no quiet machine) trained
# like an ok run, so it is in every figure, and flagged in the summary and under "Measurement warnings".
# A skipped run was planned, never started: the machine cannot serve it (the reason is its error).
# Segment rates' interquartile range over their median above which a run's rate is marked
# unsteady. pyperf warns at a standard deviation over 10 % of the mean (an IQR of 0.135 of the
# median for normal data); segments are not normal (an epoch's last segment is short, sparse
# steps vary with the batch's rows), and quiet runs in the README's suite reach 0.15 (torch
# sparse, gensim), so the bar sits above that.
SPREAD_RATIO = 0.20
# An IQR of fewer segments says little (gensim and the recipe loop have one per epoch).
SPREAD_MIN_SEGMENTS = 4


def measurement_warnings(r: dict) -> list[tuple[str, str]]:
    """Why a finished run's rate may not mean what a quiet machine's would: (short mark for the
    summary's status, the reason in full) for each."""
    if r["status"] not in MEASURED:
        return []
    notes = []
    if r["status"] == "noisy":
        notes.append(("noisy", "status noisy (suite --require-quiet): "
                      + (r.get("error") or "the machine was busy before or during the run")))
    load = r.get("machine_load") or {}
    other = load.get("other_cpu_fraction")
    if other is not None and other > BUSY_FRACTION:
        notes.append((f"busy machine ({other:.0%} to others)",
                      f"busy machine: other processes took {other:.0%} of its CPU during the clock "
                      f"(over {BUSY_FRACTION:.0%}; 1-minute load {number(load.get('loadavg_before'), 1)} before, "
                      f"{number(load.get('loadavg_after'), 1)} after)"))
    rates = r.get("segment_rates") or []
    median, iqr = r.get("rate_median"), r.get("rate_iqr")
    if len(rates) >= SPREAD_MIN_SEGMENTS and median and iqr and (iqr[1] - iqr[0]) / median > SPREAD_RATIO:
        spread = (iqr[1] - iqr[0]) / median
        notes.append((f"unsteady rate (IQR {spread:.0%} of median)",
                      f"unsteady rate: segment rates' IQR is {spread:.0%} of their median "
                      f"(over {SPREAD_RATIO:.0%}, across {len(rates)} segments)"))
    return notes


def warned(results: list[dict]) -> list[tuple[str, list[str]]]:
    """Runs whose rates should be read with care, and why (the thresholds are in the template)."""
    return [(_label(r), [reason for _, reason in notes]) for r in results if (notes := measurement_warnings(r))]


def framework(r: dict) -> str:
    """The summary's group of a run: its backend, the baselines together, unreadable files last."""
    if not r["spec"]:
        return "unreadable"
    return "baselines" if r["spec"]["runner"] in BASELINES else r["spec"]["backend"]


def first_step_seconds(result: dict) -> float | None:
    """A run's one-time cost before its steady rate: its first step (compilation, allocator
    warm-up) plus what its backend compiled or captured ahead of the clock, in prepare."""
    timings = result.get("timings") or {}
    first = timings.get("first_step_seconds")
    return None if first is None else first + (timings.get("compile_seconds") or 0.0)


def summary(results: list[dict]) -> list[tuple[str, list[dict]]]:
    """One row a run, grouped by framework (backends in name order, then the baselines), each
    group's fastest run first: label, where it ran, loss, speed (median, IQR, against the recipe
    loop), quality, status."""
    recipe = [r for r in measured(results, "recipe-loop") if r.get("rate_median")]
    base = recipe[0]["rate_median"] if recipe else None
    limits = limit_rates(results)
    last = ("baselines", "unreadable")
    groups: dict[str, list[dict]] = {g: [] for g in sorted({framework(r) for r in results},
                                                            key=lambda g: (last.index(g) if g in last else -1, g))}
    for r in results:
        spec, ev = r["spec"] or {}, r.get("evaluation") or {}
        speed = r.get("rate_median")
        notes = measurement_warnings(r)
        cls = "" if r["status"] == SKIPPED else "bad" if r["status"] not in MEASURED else "warn" if notes else ""
        marks = "".join(f"; {mark}" for mark, _ in notes if mark != r["status"])  # reasons: "Measurement warnings"
        groups[framework(r)].append({"cls": cls, "label": _label(r), "runner": spec.get("runner", ""),
                     "device": (r.get("env") or {}).get("device_name", spec.get("device", "")),
                     "loss": r.get("final_loss"), "speed": speed, "iqr": r.get("rate_iqr") or [None, None],
                     "up": speed / base if speed and base else None, "share": share(r, limits),
                     "bound": roofline.bound(r), "roof_share": roofline.share(r),
                     "first": first_step_seconds(r),
                     "quality": [((ev.get("wordsim353") or {}).get("spearman")),
                                 ((ev.get("simlex999") or {}).get("spearman")),
                                 ((ev.get("analogy") or {}).get("accuracy"))],
                     "status": r["status"] + marks})
    for rows in groups.values():  # each framework's best run first; unmeasured runs after the rest
        rows.sort(key=lambda row: -(row["speed"] or 0))
    return list(groups.items())


def loss_figures(results: list[dict]):
    import matplotlib.pyplot as plt

    runs = [r for r in measured(results, None) if r["losses"]]
    if not runs:
        return None
    fig, (per_step, per_epoch) = plt.subplots(1, 2, figsize=(12, 4))
    for r in runs:
        losses = np.array(r["losses"])
        window = max(1, min(50, losses.size // 20))
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        per_step.plot(np.arange(smooth.size) + window, smooth, label=plot_text(_label(r)), lw=1)
        if r["epoch_losses"]:
            per_epoch.plot(range(1, len(r["epoch_losses"]) + 1), r["epoch_losses"], marker="o",
                           label=plot_text(_label(r)))
    per_step.set(xlabel="step", ylabel="loss (moving mean)", title="loss per step")
    per_epoch.set(xlabel="epoch", ylabel="example-weighted mean loss", title="loss per epoch")
    per_step.legend(fontsize=7)
    return svg(fig)


def throughput_figure(results: list[dict]):
    """Each finished run's median rate with its IQR; the baselines in a panel of their own, on
    their own scale: gensim (every core, its own SGD) is several times any framework and would
    flatten their bars into one another."""
    import matplotlib.pyplot as plt

    runs = [r for r in measured(results, None) if r.get("rate_median")]
    if not runs:
        return None
    limits = limit_rates(results)
    panels = [(title, chosen) for title, chosen in (
        ("frameworks", [r for r in runs if r["spec"]["runner"] not in BASELINES]),
        ("baselines (their own scale)", [r for r in runs if r["spec"]["runner"] in BASELINES])) if chosen]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 0.4 * len(runs) + 1.2 * len(panels)), squeeze=False,
                             layout="constrained",
                             gridspec_kw={"height_ratios": [len(chosen) + 1 for _, chosen in panels]})
    for ax, (title, chosen) in zip(axes[:, 0], panels):
        medians = [r["rate_median"] for r in chosen]
        iqrs = [r.get("rate_iqr") or (m, m) for m, r in zip(medians, chosen)]
        low = [max(m - q[0], 0) for m, q in zip(medians, iqrs)]
        high = [max(q[1] - m, 0) for m, q in zip(medians, iqrs)]
        bars = ax.barh([plot_text(_label(r)) for r in chosen], medians, xerr=[low, high], color="#4a7ab5", capsize=3)
        for bar, r in zip(bars, chosen):  # each run's share of its fused limit row, where there is one
            if (value := share(r, limits)) is not None:
                ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f"  {share_text(value)} of limit",
                        va="center", fontsize=7)
        ax.set_title(title, fontsize=9, loc="left")
        ax.invert_yaxis()
    axes[-1, 0].set(xlabel="examples/s (median of 100-step segments, bars: IQR; text: share of the fused limit row)")
    return svg(fig)


def batch_size_figure(results: list[dict]):
    """examples/s against batch size, one line per group of runs that differ only in it."""
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict]] = {}
    for r in measured(results):
        if r.get("rate_median"):
            groups.setdefault(settings_key(r["spec"], "data.batch_size"), []).append(r)
    curves = [sorted(runs, key=lambda r: r["spec"]["data"]["batch_size"]) for runs in groups.values() if len(runs) > 1]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    for runs in curves:
        label = RunSpec.from_dict(runs[0]["spec"]).label
        ax.plot([r["spec"]["data"]["batch_size"] for r in runs], [r["rate_median"] for r in runs], marker="o",
                label=plot_text(label))
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="examples/s (median of segments)")
    ax.legend(fontsize=7)
    return svg(fig)


def sparse_answer(results: list[dict]) -> tuple[list[dict], dict[str, float]]:
    """The book's exercise 1, answered from this run's numbers: each backend and device with a
    dense and a sparse run of the same settings; and per device, the fused kernel's sparse/dense
    ratio: the same lazy-Adam math without a framework's sparse machinery."""
    pairs: dict[tuple[str, str, str], dict[str, dict]] = {}
    for r in measured(results):
        s = r["spec"]
        key = (s["backend"], s["device"], settings_key(s, "sparse"))
        pairs.setdefault(key, {})["sparse" if s["sparse"] else "dense"] = r
    rows: list[dict] = []
    limit_ratios: dict[str, float] = {}
    sizes = len({r.get("vocab_size") for r in measured(results)})  # several: each sentence names its V
    for (backend, device, _), pair in sorted(pairs.items(), key=lambda item: (*item[0][:2], _vocab(item[1]))):
        size = f" at V {_vocab(pair):,}" if _vocab(pair) and sizes > 1 else ""
        if len(pair) < 2 or not (pair["dense"].get("rate_median") and pair["sparse"].get("rate_median")):
            continue
        ratio = pair["sparse"]["rate_median"] / pair["dense"]["rate_median"]
        if backend == LIMIT_BACKEND:
            limit_ratios.setdefault(f"{device}{size}", ratio)
        dense_spec = pair["dense"]["spec"]  # plain, compiled and packed: answers of their own
        how = ((" compiled" if dense_spec.get("compile") else "")
               + (" packed" if dense_spec.get("layout") == "packed" else ""))
        rows.append({"backend": backend + how, "device": device, "size": size, "vocab": _vocab(pair), "ratio": ratio,
                     "verdict": "faster" if ratio > 1.05 else "slower" if ratio < 0.95 else "about as fast",
                     "loss": [p.get("final_loss") for p in (pair["dense"], pair["sparse"])],
                     "wordsim": [((p.get("evaluation") or {}).get("wordsim353") or {}).get("spearman")
                                 for p in (pair["dense"], pair["sparse"])]})
    return rows, limit_ratios


def _vocab(pair: dict) -> int:
    return next(iter(pair.values())).get("vocab_size") or 0


def agreement(results: list[dict]) -> tuple[list[dict], object]:
    """Max |loss difference| between backends that trained on the same data hash and settings."""
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = {}
    for r in measured(results):
        groups.setdefault((r["data_hash"], settings_key(r["spec"], "backend", "device", "compile")), []).append(r)
    rows: list[dict] = []
    fig: Any = None  # matplotlib's Figure and Axes once a pair of runs is found
    ax: Any = None
    for (_, settings), runs in groups.items():
        if len(runs) < 2:
            continue
        variant = "sparse" if json.loads(settings)["sparse"] else "dense"
        for a, b in combinations(runs, 2):
            n = min(len(a["losses"]), len(b["losses"]))
            gap = np.abs(np.array(a["losses"][:n]) - np.array(b["losses"][:n]))
            rows.append({"a": _label(a), "b": _label(b), "steps": n, "max": float(gap.max()) if n else None,
                         "mean": float(gap.mean()) if n else None})
        if fig is None:
            fig, ax = plt.subplots(figsize=(10, 3))
        n = min(len(r["losses"]) for r in runs)
        stack = np.array([r["losses"][:n] for r in runs])
        ax.semilogy(np.arange(1, n + 1), stack.max(axis=0) - stack.min(axis=0) + 1e-12, lw=1,
                    label=plot_text(f"{variant}: "
                                    f"{', '.join(r['spec']['backend'] + ' ' + r['spec']['device'] for r in runs)}"))
    if not rows:
        return [], None
    ax.set(xlabel="step", ylabel="max - min loss across backends")
    ax.legend(fontsize=7)
    return rows, svg(fig)


def harness_overhead(results: list[dict]) -> list[dict]:
    """Worker vs bare loop on the same spec (suites/overhead.toml): what the measuring costs."""
    workers = {settings_key(r["spec"], "runner"): r for r in measured(results)}
    pairs: dict[str, list[tuple[float, float, float]]] = {}
    for bare in measured(results, "bare-loop"):
        worker = workers.get(settings_key(bare["spec"], "runner"))
        if worker and all(r.get(k) for r in (worker, bare) for k in ("examples_per_sec", "wall_seconds")):
            name = RunSpec.from_dict(worker["spec"]).label
            pairs.setdefault(name, []).append((worker["examples_per_sec"] / bare["examples_per_sec"],
                                               worker["wall_seconds"] / bare["wall_seconds"],
                                               worker["wall_seconds"] - bare["wall_seconds"]))
    rows = []
    for name, values in sorted(pairs.items()):
        rate, wall, extra = (np.array(v) for v in zip(*values))
        rows.append({"name": name, "pairs": len(values), "rate": [np.median(rate), rate.min(), rate.max()],
                     "wall": [np.median(wall), wall.min(), wall.max()], "extra": np.median(extra)})
    return rows


def neighbours(results: list[dict]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The words asked about (chip first), and each run's nearest words for each."""
    runs = [r for r in measured(results, None) if r.get("neighbours")]
    words = sorted({w for r in runs for w in r["neighbours"]}, key=lambda w: (w != "chip", w))
    return words, [(_label(r), [", ".join(n for n, _ in r["neighbours"].get(w, [])) for w in words]) for r in runs]


def metadata(meta: dict, results: list[dict]) -> dict[str, object]:
    machine: dict = meta.get("machine") or next((r["env"] for r in results if r.get("env")), {})
    versions: dict[str, str] = {}
    for r in results:
        versions.update(((r.get("env") or {}).get("versions")) or {})
    items = {"date": meta.get("created", "–"), "git commit": meta.get("commit") or "–",
             "machine": machine.get("hostname", "–"),
             "CPU": f"{machine.get('cpu', '–')} ({machine.get('cpu_count', '?')} cores)",
             "GPU": ", ".join(str(g) for g in (meta.get("machine") or {}).get("gpus", [])) or "none found",
             "python": machine.get("python", "–"),
             "frameworks": ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or "–",
             "command": " ".join(str(a) for a in meta.get("argv", [])) or "–"}
    if meta.get("warning"):
        items = {"warning": meta["warning"], **items}
    return items


def render(folder: Path) -> Path:
    """Write folder/index.html from folder/suite.json and folder/runs/*.json."""
    headless_matplotlib()
    meta, results = load_results(folder)
    context: dict = {"meta": metadata(meta, results), "results": bool(results),
                     "strays": [path.name for path in store.run_files(folder, meta)[1]],
                     "microbench": microbench(load_microbench(folder))}
    if results:
        agreeing, agreement_figure = agreement(results)
        sparse, limit_ratios = sparse_answer(results)
        from bench.reporting.parallel import section as parallel_section
        from bench.reporting.scale import section as scale_section  # it draws with this module's helpers

        context.update(
            finished=len(measured(results, None)), total=len(results),
            skips=[r for r in results if r["status"] == SKIPPED],
            summary=summary(results), warned=warned(results), loss_figure=loss_figures(results),
            throughput_figure=throughput_figure(results),
            roofline_figure=roofline.figure(measured(results, None), _label), batch_figure=batch_size_figure(results),
            sparse=sparse, limit_ratios=limit_ratios, padding=padding_cost(results), scale=scale_section(results),
            parallel=parallel_section(results),
            agreement=agreeing, agreement_figure=agreement_figure,
            bare_loop=bool(measured(results, "bare-loop")), overhead=harness_overhead(results),
            neighbours=neighbours(results), failed=[r for r in results if r["status"] not in MEASURED + (SKIPPED,)],
            busy_fraction=BUSY_FRACTION, spread_ratio=SPREAD_RATIO, spread_segments=SPREAD_MIN_SEGMENTS)
    out = folder / "index.html"
    atomic_write_bytes(out, render_page("report.html", title="skip-gram bench report", heading="skip-gram bench",
                                        **context).encode("utf-8"))
    return out
