"""The HTML report, built from stored results alone (`python -m bench report DIR`).

One self-contained file: tables, and matplotlib figures inlined as SVG; nothing is fetched.
"""
from __future__ import annotations

import html
import io
import json
from itertools import combinations
from pathlib import Path

import numpy as np

from bench.reporting.limit import LIMIT_BACKEND, limit_rates, share, share_text
from common.cache import atomic_write_bytes
from common.errors import BenchError
from common.machine import BUSY_FRACTION
from common.spec import DataSpec, RunSpec, spec_key

METHODOLOGY = """
<p><b>examples/s</b> counts center words (examples) per second of training in steady state: from the
second step on, with the epoch's batches already built and on the device (data and transfer time are
recorded separately in each result). Training runs in segments of 100 steps with one device sync each;
the table gives the median over segments and the interquartile range. The first step, which includes
compilation and allocator warm-up, is reported on its own: <b>first step (s)</b>, with what a backend
compiled or captured for each batch shape before the clock (torch <i>compiled</i> and <i>graphed</i>) added to it;
the recipe loop's counts from its epoch's start (its DataLoader workers start then). The <b>recipe loop</b> is timed as the book times
it: the whole epoch, DataLoader collation included. <b>gensim</b> counts the words it trained on after
its own subsampling, per second of <code>train()</code>, on every core.</p>
<p>The book prints <code>metric[1] / timer.stop()</code> as tokens/sec: the examples of <i>all</i> epochs
divided by the <i>last</i> epoch's time, which overstates the rate by about the number of epochs; and its
loss is the running mean over all epochs. Here the loss is each epoch's example-weighted mean.</p>
<p><b>On a GPU</b> every framework computes in full float32: TF32 is off (torch's
<code>allow_tf32 = False</code> and matmul precision "highest", TensorFlow's
<code>enable_tensor_float_32_execution(False)</code>, JAX's dots at <code>Precision.HIGHEST</code>, MXNet under
<code>NVIDIA_TF32_OVERRIDE=0</code>), so GPU losses match the CPU's to the contract tests' tolerances. The epoch is
on the device before the clock starts; <i>graphed</i> torch replays each step as one captured CUDA graph, torch
<i>compiled</i> on cuda is <code>torch.compile(mode="reduce-overhead")</code>, TensorFlow <i>compiled</i> runs a
segment as one XLA loop on a GPU (one XLA program per step on the CPU), JAX a segment as <code>lax.scan</code>s. Peak device memory, where the framework reports
it, is each result's <code>timings.peak_memory_bytes</code>. A run the machine's GPU cannot serve (a wheel without
kernels for its compute capability) is <i>skipped</i>, with the reason, and never falls back to the CPU.</p>
<p>Rates are comparable only within one run of the suite on one machine: ratios measured side by side mean
more than absolute figures on a shared machine.</p>
"""

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr.bad td{background:#fdecea}tr.warn td{background:#fff6dc}.answer{background:#eef6ee;padding:.8em;
border-left:4px solid #4a4}code{background:#f5f5f5}svg{max-width:100%;height:auto}"""


def load_results(folder: Path) -> tuple[dict, list[dict]]:
    """Suite metadata and every result; a corrupt file becomes a row marked as such."""
    if not folder.is_dir():
        raise BenchError(f"results folder {folder} not found")
    meta: dict = {}
    if (folder / "suite.json").exists():
        try:
            meta = json.loads((folder / "suite.json").read_text())
        except ValueError:
            meta = {"warning": f"{folder / 'suite.json'} is corrupt: the plan, date and command are unknown"}
    results = []
    for path in sorted((folder / "runs").glob("*.json")):
        try:
            result = json.loads(path.read_text())
            RunSpec.from_dict(result["spec"])
            result["status"]  # noqa: B018 (a result must say how it ended)
        except (ValueError, KeyError, TypeError, BenchError) as exc:
            result = {"status": "corrupt", "error": f"{path.name}: unreadable result ({exc.__class__.__name__})",
                      "spec": None}
        result["_name"] = path.stem
        results.append(result)
    _mark_stale(meta, results)
    _name_by_settings(results)
    if not results and not list((folder / "microbench").glob("*.json")):
        raise BenchError(f"no results in {folder / 'runs'}: run `python -m bench suite` first")
    return meta, results


def _mark_stale(meta: dict, results: list[dict]) -> None:
    """A result of a spec the folder's plan does not hold (left by an earlier run) is not one of
    this suite's: `--resume` would redo the run, and the report must not show it as done. Folders
    written before plans carried keys have nothing to check against."""
    planned = {entry["key"] for entry in meta.get("plan") or [] if isinstance(entry, dict) and entry.get("key")}
    for r in results:
        if planned and r["spec"] and spec_key(r["spec"]) not in planned:
            r["status"], r["error"] = "stale", "a result of a spec this folder's plan does not hold; not counted"


_IN_LABEL = ("backend", "device", "sparse", "compile", "graph", "runner")


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
    """pytest-benchmark entries of every env's JSON file in folder/microbench (corrupt files skipped loudly)."""
    entries = []
    for path in sorted((folder / "microbench").glob("*.json")):
        try:
            entries += json.loads(path.read_text())["benchmarks"]
        except (ValueError, KeyError) as exc:
            entries.append({"corrupt": f"{path.name}: unreadable ({exc.__class__.__name__})"})
    return entries


def microbench_section(entries: list[dict]) -> str:
    """Staged step times (backward and optimiser by difference), step cost against V, data."""
    import matplotlib.pyplot as plt

    if not entries:
        return "<p>No micro-benchmarks in this folder (run <code>tox -e microbench -- --out DIR</code>).</p>"
    parts = [f"<p class='bad'>{html.escape(e['corrupt'])}</p>" for e in entries if "corrupt" in e]
    entries = [e for e in entries if "corrupt" not in e]
    staged: dict[tuple, dict] = {}
    for e in entries:
        info = e.get("extra_info", {})
        if "stage" in info and "backend" in info:
            staged.setdefault((info["backend"], info["variant"]), {})[info["stage"]] = e["stats"]["median"]
    if staged:
        rows = []
        for (backend, variant), t in sorted(staged.items()):
            fwd, fb, step = t.get("forward"), t.get("forward_backward"), t.get("step")
            ms = lambda x: f"{x * 1e3:.2f}" if x is not None else "–"  # noqa: E731
            rows.append(f"<tr><td class='l'>{backend}</td><td class='l'>{variant}</td><td>{ms(fwd)}</td>"
                        f"<td>{ms(fb - fwd if fb and fwd else None)}</td><td>{ms(step - fb if step and fb else None)}</td>"
                        f"<td>{ms(step)}</td><td>{_fmt(512 / step if step else None, 0)}</td></tr>")
        parts.append("<table><tr><th class='l'>backend</th><th class='l'>variant</th><th>forward ms</th>"
                     "<th>backward ms</th><th>optimiser ms</th><th>step ms</th><th>examples/s</th></tr>"
                     + "".join(rows) + "</table><p>Medians of 30 timed steps on real PTB batches of 512; backward = "
                     "(forward+backward) - forward, optimiser = step - (forward+backward).</p>")
    scaling = [e for e in entries if "vocab" in e.get("extra_info", {})]
    if scaling:
        fig, ax = plt.subplots(figsize=(8, 4))
        curves: dict[str, list] = {}
        for e in scaling:
            info = e["extra_info"]
            curves.setdefault(f"{info['backend']} {info['variant']}", []).append((info["vocab"], e["stats"]["median"]))
        for name, points in sorted(curves.items()):
            points.sort()
            ax.loglog([p[0] for p in points], [p[1] * 1e3 for p in points], marker="o", label=name)
        ax.set(xlabel="vocabulary size V", ylabel="step time (ms, median)", title="step cost against vocabulary")
        ax.legend(fontsize=7)
        parts.append(_svg(fig))
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
        parts.append(_svg(fig))
    data = [e for e in entries if e.get("group") == "data"]
    if data:
        parts.append("<table><tr><th class='l'>data benchmark</th><th>median s</th><th>examples/s</th></tr>" + "".join(
            f"<tr><td class='l'>{html.escape(e['name'])}</td><td>{e['stats']['median']:.4f}</td>"
            f"<td>{_fmt(e['extra_info'].get('examples', 0) / e['stats']['median'], 0)}</td></tr>" for e in data)
            + "</table>")
    return "".join(parts)


def _label(r: dict) -> str:
    return r["_name"]


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{x:,.{digits}f}" if isinstance(x, float) else str(x)


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


# A finished run: `noisy` (suite --require-quiet found no quiet machine) trained like an ok run,
# so it is in every figure, and flagged in the summary and under "Measurement warnings".
FINISHED = ("ok", "noisy")
SKIPPED = "skipped"  # planned, never started: the machine cannot serve it (the reason is its error)
# Segment rates' interquartile range over their median above which a run's rate is marked
# unsteady. pyperf warns at a standard deviation over 10 % of the mean (an IQR of 0.135 of the
# median for normal data); segments are not normal (an epoch's last segment is short, sparse
# steps vary with the batch's rows), and quiet runs in the README's suite reach 0.15 (torch
# sparse, gensim), so the bar sits above that.
SPREAD_RATIO = 0.20
# An IQR of fewer segments says little (gensim and the recipe loop have one per epoch).
SPREAD_MIN_SEGMENTS = 4


def _ok(results: list[dict], runner: str | None = "backend") -> list[dict]:
    return [r for r in results if r["status"] in FINISHED and (runner is None or r["spec"]["runner"] == runner)]


def measurement_warnings(r: dict) -> list[tuple[str, str]]:
    """Why a finished run's rate may not mean what a quiet machine's would: (short mark for the
    summary's status, the reason in full) for each."""
    if r["status"] not in FINISHED:
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
                      f"(over {BUSY_FRACTION:.0%}; 1-minute load {_fmt(load.get('loadavg_before'), 1)} before, "
                      f"{_fmt(load.get('loadavg_after'), 1)} after)"))
    rates = r.get("segment_rates") or []
    median, iqr = r.get("rate_median"), r.get("rate_iqr")
    if len(rates) >= SPREAD_MIN_SEGMENTS and median and iqr and (iqr[1] - iqr[0]) / median > SPREAD_RATIO:
        spread = (iqr[1] - iqr[0]) / median
        notes.append((f"unsteady rate (IQR {spread:.0%} of median)",
                      f"unsteady rate: segment rates' IQR is {spread:.0%} of their median "
                      f"(over {SPREAD_RATIO:.0%}, across {len(rates)} segments)"))
    return notes


def warnings_section(results: list[dict]) -> str:
    """Runs whose rates should be read with care, and why; the thresholds, always."""
    rows = [f"<tr class='warn'><td class='l'>{html.escape(_label(r))}</td><td class='l'>"
            + "<br>".join(html.escape(reason) for _, reason in notes) + "</td></tr>"
            for r in results if (notes := measurement_warnings(r))]
    rule = (f"<p>A run is marked when other processes took more than {BUSY_FRACTION:.0%} of the machine's CPU "
            f"during its training clock (from /proc/stat, less the run's own CPU time), when its 100-step "
            f"segment rates' interquartile range exceeds {SPREAD_RATIO:.0%} of their median, or when "
            f"<code>--require-quiet</code> found the machine busy before or during the run (status "
            f"<code>noisy</code>). "
            f"Such rates are likely low or unsteady: rerun them on a quiet machine before comparing.</p>")
    if not rows:
        return rule + "<p>No run was marked.</p>"
    return rule + "<table><tr><th class='l'>run</th><th class='l'>warning</th></tr>" + "".join(rows) + "</table>"


def _settings_key(spec: dict, *ignore: str) -> str:
    """A spec as a comparable string without the `ignore`d fields (data fields as "data.NAME"):
    runs with equal keys differ only in those fields."""
    data_ignored = {name.removeprefix("data.") for name in ignore if name.startswith("data.")}
    kept = {k: v for k, v in spec.items() if k not in ignore}
    kept["data"] = {k: v for k, v in spec["data"].items() if k not in data_ignored}
    return json.dumps(kept, sort_keys=True)


def first_step_seconds(result: dict) -> float | None:
    """A run's one-time cost before its steady rate: its first step (compilation, allocator
    warm-up) plus what its backend compiled or captured ahead of the clock, in prepare."""
    timings = result.get("timings") or {}
    first = timings.get("first_step_seconds")
    return None if first is None else first + (timings.get("compile_seconds") or 0.0)


def summary_table(results: list[dict]) -> str:
    recipe = [r for r in _ok(results, "recipe-loop") if r.get("rate_median")]
    base = recipe[0]["rate_median"] if recipe else None
    limits = limit_rates(results)
    rows = []
    for r in results:
        spec, ev = r["spec"] or {}, r.get("evaluation") or {}
        speed = r.get("rate_median")
        iqr = r.get("rate_iqr") or [None, None]
        up = f"{speed / base:.1f}x" if speed and base else "–"
        notes = measurement_warnings(r)
        cls = "" if r["status"] == SKIPPED else " class='bad'" if r["status"] not in FINISHED \
            else " class='warn'" if notes else ""
        marks = "".join(f"; {mark}" for mark, _ in notes if mark != r["status"])  # reasons: "Measurement warnings"
        rows.append(f"<tr{cls}><td class='l'>{html.escape(_label(r))}</td><td class='l'>{spec.get('runner', '')}</td>"
                    f"<td class='l'>{html.escape(str((r.get('env') or {}).get('device_name', spec.get('device', ''))))}</td>"
                    f"<td>{_fmt(r.get('final_loss'))}</td><td>{_fmt(speed, 0)}</td>"
                    f"<td>{_fmt(iqr[0], 0)} – {_fmt(iqr[1], 0)}</td><td>{up}</td><td>{share_text(share(r, limits))}</td>"
                    f"<td>{_fmt(first_step_seconds(r), 2)}</td>"
                    f"<td>{_fmt((ev.get('wordsim353') or {}).get('spearman'))}</td>"
                    f"<td>{_fmt((ev.get('simlex999') or {}).get('spearman'))}</td>"
                    f"<td>{_fmt((ev.get('analogy') or {}).get('accuracy'))}</td>"
                    f"<td class='l'>{html.escape(r['status'] + marks)}</td></tr>")
    head = ("<tr><th class='l'>run</th><th class='l'>runner</th><th class='l'>device</th><th>final loss</th>"
            "<th>examples/s (median)</th><th>IQR</th><th>vs recipe loop</th><th>share of fused limit</th><th>first step (s)</th>"
            "<th>WordSim-353</th><th>SimLex-999</th>"
            "<th>analogies</th><th class='l'>status</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def loss_figures(results: list[dict]) -> str:
    import matplotlib.pyplot as plt

    runs = [r for r in _ok(results, None) if r["losses"]]
    if not runs:
        return "<p>No finished run recorded losses.</p>"
    fig, (per_step, per_epoch) = plt.subplots(1, 2, figsize=(12, 4))
    for r in runs:
        losses = np.array(r["losses"])
        window = max(1, min(50, losses.size // 20))
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        per_step.plot(np.arange(smooth.size) + window, smooth, label=_label(r), lw=1)
        if r["epoch_losses"]:
            per_epoch.plot(range(1, len(r["epoch_losses"]) + 1), r["epoch_losses"], marker="o", label=_label(r))
    per_step.set(xlabel="step", ylabel="loss (moving mean)", title="loss per step")
    per_epoch.set(xlabel="epoch", ylabel="example-weighted mean loss", title="loss per epoch")
    per_step.legend(fontsize=7)
    return _svg(fig)


def throughput_figure(results: list[dict]) -> str:
    import matplotlib.pyplot as plt

    runs = [r for r in _ok(results, None) if r.get("rate_median")]
    if not runs:
        return "<p>No rates recorded.</p>"
    medians = [r["rate_median"] for r in runs]
    low = [m - r["rate_iqr"][0] for m, r in zip(medians, runs)]
    high = [r["rate_iqr"][1] - m for m, r in zip(medians, runs)]
    limits = limit_rates(results)
    fig, ax = plt.subplots(figsize=(10, 0.4 * len(runs) + 1))
    bars = ax.barh([_label(r) for r in runs], medians, xerr=[low, high], color="#4a7ab5", capsize=3)
    for bar, r in zip(bars, runs):  # each run's share of its fused limit row, where there is one
        if (value := share(r, limits)) is not None:
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f"  {share_text(value)} of limit",
                    va="center", fontsize=7)
    ax.set(xlabel="examples/s (median of 100-step segments, bars: IQR; text: share of the fused limit row)")
    ax.invert_yaxis()
    return _svg(fig)


def batch_size_figure(results: list[dict]) -> str | None:
    """examples/s against batch size, one line per group of runs that differ only in it."""
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict]] = {}
    for r in _ok(results):
        if r.get("rate_median"):
            groups.setdefault(_settings_key(r["spec"], "data.batch_size"), []).append(r)
    curves = [sorted(runs, key=lambda r: r["spec"]["data"]["batch_size"]) for runs in groups.values() if len(runs) > 1]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    for runs in curves:
        label = RunSpec.from_dict(runs[0]["spec"]).label
        ax.plot([r["spec"]["data"]["batch_size"] for r in runs], [r["rate_median"] for r in runs], marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="examples/s (median of segments)")
    ax.legend(fontsize=7)
    return _svg(fig)


def sparse_answer(results: list[dict]) -> str:
    """The book's exercise 1, answered from this run's numbers."""
    pairs = {}
    for r in _ok(results):
        s = r["spec"]
        key = (s["backend"], s["device"], _settings_key(s, "sparse"))
        pairs.setdefault(key, {})["sparse" if s["sparse"] else "dense"] = r
    rows, sentences, limit_ratios = [], [], {}
    sizes = len({r.get("vocab_size") for r in _ok(results)})  # several: each sentence names its V
    for (backend, device, _), pair in sorted(pairs.items(), key=lambda item: (*item[0][:2], _vocab(item[1]))):
        if len(pair) < 2 or not (pair["dense"].get("rate_median") and pair["sparse"].get("rate_median")):
            continue
        ratio = pair["sparse"]["rate_median"] / pair["dense"]["rate_median"]
        size = f" at V {_vocab(pair):,}" if _vocab(pair) and sizes > 1 else ""
        if backend == LIMIT_BACKEND:
            limit_ratios.setdefault((device, size), ratio)
        ws = [(p.get("evaluation") or {}).get("wordsim353", {}).get("spearman") for p in (pair["dense"], pair["sparse"])]
        rows.append(f"<tr><td class='l'>{backend}</td><td class='l'>{device}</td><td>{_vocab(pair):,}</td><td>{ratio:.2f}x</td>"
                    f"<td>{_fmt(pair['dense'].get('final_loss'))} / {_fmt(pair['sparse'].get('final_loss'))}</td>"
                    f"<td>{_fmt(ws[0])} / {_fmt(ws[1])}</td></tr>")
        verdict = "faster" if ratio > 1.05 else "slower" if ratio < 0.95 else "about as fast"
        sentences.append(f"{backend} on {device}{size}: sparse gradients were {verdict} ({ratio:.2f}x the dense rate)")
    if not rows:
        return "<p>No backend finished both a dense and a sparse run on the same settings.</p>"
    for (device, size), ratio in limit_ratios.items():  # the same lazy-Adam math without a framework's sparse machinery
        sentences.append(f"at the limit (the fused kernel on {device}{size}) lazy Adam ran at {ratio:.2f}x dense, so a "
                         "framework's ratio below that is the cost of its sparse path, not of lazy Adam")
    answer = ("<p class='answer'><b>Does sparse_grad accelerate training?</b> In this run: "
              + "; ".join(sentences) + ". Lazy Adam also changes the math (only the batch's rows move, eps beside "
              "the uncorrected sqrt(v)), so compare the losses and WordSim scores too.</p>")
    head = "<tr><th class='l'>backend</th><th class='l'>device</th><th>V</th><th>sparse / dense speed</th><th>final loss dense / sparse</th><th>WordSim dense / sparse</th></tr>"
    return answer + f"<table>{head}{''.join(rows)}</table>"


def _vocab(pair: dict) -> int:
    return next(iter(pair.values())).get("vocab_size") or 0


def agreement(results: list[dict]) -> str:
    """Max |loss difference| between backends that trained on the same data hash and settings."""
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = {}
    for r in _ok(results):
        groups.setdefault((r["data_hash"], _settings_key(r["spec"], "backend", "device", "compile")), []).append(r)
    rows, fig, ax = [], None, None
    for (_, settings), runs in groups.items():
        if len(runs) < 2:
            continue
        variant = "sparse" if json.loads(settings)["sparse"] else "dense"
        for a, b in combinations(runs, 2):
            n = min(len(a["losses"]), len(b["losses"]))
            gap = np.abs(np.array(a["losses"][:n]) - np.array(b["losses"][:n]))
            rows.append(f"<tr><td class='l'>{_label(a)}</td><td class='l'>{_label(b)}</td><td>{n}</td>"
                        f"<td>{gap.max():.2e}</td><td>{gap.mean():.2e}</td></tr>")
        if fig is None:
            fig, ax = plt.subplots(figsize=(10, 3))
        n = min(len(r["losses"]) for r in runs)
        stack = np.array([r["losses"][:n] for r in runs])
        ax.semilogy(np.arange(1, n + 1), stack.max(axis=0) - stack.min(axis=0) + 1e-12, lw=1,
                    label=f"{variant}: {', '.join(r['spec']['backend'] + ' ' + r['spec']['device'] for r in runs)}")
    if not rows:
        return "<p>No two backends finished the same settings on the same data.</p>"
    ax.set(xlabel="step", ylabel="max - min loss across backends")
    ax.legend(fontsize=7)
    head = "<tr><th class='l'>run</th><th class='l'>run</th><th>steps</th><th>max |Δloss|</th><th>mean |Δloss|</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>" + _svg(fig)


def harness_overhead(results: list[dict]) -> str:
    """Worker vs bare loop on the same spec (suites/overhead.toml): what the measuring costs."""
    workers = {_settings_key(r["spec"], "runner"): r for r in _ok(results)}
    pairs: dict[str, list[tuple[float, float, float]]] = {}
    for bare in _ok(results, "bare-loop"):
        worker = workers.get(_settings_key(bare["spec"], "runner"))
        if worker and worker.get("examples_per_sec") and bare.get("examples_per_sec"):
            name = RunSpec.from_dict(worker["spec"]).label
            pairs.setdefault(name, []).append((worker["examples_per_sec"] / bare["examples_per_sec"],
                                               worker["wall_seconds"] / bare["wall_seconds"],
                                               worker["wall_seconds"] - bare["wall_seconds"]))
    if not pairs:
        return "<p>No run has a finished bare-loop twin.</p>"
    rows = []
    for name, values in sorted(pairs.items()):
        rate, wall, extra = (np.array(v) for v in zip(*values))
        rows.append(f"<tr><td class='l'>{html.escape(name)}</td><td>{len(values)}</td>"
                    f"<td>{np.median(rate):.3f} ({rate.min():.3f} – {rate.max():.3f})</td>"
                    f"<td>{np.median(wall):.3f} ({wall.min():.3f} – {wall.max():.3f})</td>"
                    f"<td>{np.median(extra):+.2f}</td></tr>")
    head = ("<tr><th class='l'>run</th><th>pairs</th><th>examples/s, worker / bare loop: median (range)</th>"
            "<th>process wall time, worker / bare loop</th><th>extra wall seconds (median)</th></tr>")
    note = ("<p>Each pair is the same spec run through the suite's worker and through <code>bench/bare_loop.py</code> "
            "(the loop a user would write: no stream hash, no 100-step segments, no evaluation), one after the "
            "other. A rate ratio of 1 means the worker's bookkeeping does not slow training; the wall-time ratio "
            "also counts what the worker does outside the clock (hashing the stream, neighbours and word-pair "
            "scores, the result file).</p>")
    return note + f"<table>{head}{''.join(rows)}</table>"


def neighbours_table(results: list[dict]) -> str:
    runs = [r for r in _ok(results, None) if r.get("neighbours")]
    if not runs:
        return "<p>No neighbours recorded.</p>"
    words = sorted({w for r in runs for w in r["neighbours"]}, key=lambda w: (w != "chip", w))
    head = "<tr><th class='l'>run</th>" + "".join(f"<th class='l'>{html.escape(w)}</th>" for w in words) + "</tr>"
    rows = ["<tr><td class='l'>" + html.escape(_label(r)) + "</td>" + "".join(
        "<td class='l'>" + html.escape(", ".join(n for n, _ in r["neighbours"].get(w, []))) + "</td>" for w in words)
        + "</tr>" for r in runs]
    return f"<table>{head}{''.join(rows)}</table>"


def skipped(results: list[dict]) -> str:
    """Runs planned but not started, because this machine cannot serve them (not failures)."""
    rows = [f"<tr><td class='l'>{html.escape(_label(r))}</td><td class='l'>{html.escape(str(r.get('error')))}</td></tr>"
            for r in results if r["status"] == SKIPPED]
    return "<table><tr><th class='l'>run</th><th class='l'>why it was not run</th></tr>" + "".join(rows) + "</table>"


def failures(results: list[dict]) -> str:
    bad = [r for r in results if r["status"] not in FINISHED + (SKIPPED,)]
    if not bad:
        return "<p>Every run finished.</p>"
    rows = [f"<tr class='bad'><td class='l'>{html.escape(_label(r))}</td><td class='l'>{r['status']}</td>"
            f"<td class='l'>{html.escape(str(r.get('error')))}</td></tr>" for r in bad]
    return "<table><tr><th class='l'>run</th><th class='l'>status</th><th class='l'>reason</th></tr>" + "".join(rows) + "</table>"


def metadata(meta: dict, results: list[dict]) -> str:
    machine = meta.get("machine") or next((r["env"] for r in results if r.get("env")), {})
    versions: dict[str, str] = {}
    for r in results:
        versions.update(((r.get("env") or {}).get("versions")) or {})
    items = {"date": meta.get("created", "–"), "git commit": meta.get("commit") or "–",
             "machine": machine.get("hostname", "–"), "CPU": f"{machine.get('cpu', '–')} ({machine.get('cpu_count', '?')} cores)",
             "GPU": ", ".join(meta.get("machine", {}).get("gpus", [])) or "none found",
             "python": machine.get("python", "–"),
             "frameworks": ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or "–",
             "command": " ".join(meta.get("argv", [])) or "–"}
    if meta.get("warning"):
        items = {"warning": meta["warning"], **items}
    return "<table>" + "".join(f"<tr><th class='l'>{k}</th><td class='l'>{html.escape(str(v))}</td></tr>"
                               for k, v in items.items()) + "</table>"


def render(folder: Path) -> Path:
    """Write folder/index.html from folder/suite.json and folder/runs/*.json."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    from bench.reporting.scale import section as scale_section  # it draws with this module's helpers

    meta, results = load_results(folder)
    if not results:  # a micro-benchmark folder
        sections = [("Run", metadata(meta, results)), ("Micro-benchmarks", microbench_section(load_microbench(folder)))]
        return _write(folder, sections)
    ok, skips = len(_ok(results, None)), sum(r["status"] == SKIPPED for r in results)
    sections = [
        ("Run", metadata(meta, results)),
        ("Summary", f"<p>{ok} of {len(results)} runs finished" + (f", {skips} skipped" if skips else "") + ".</p>"
         + summary_table(results)),
        ("Measurement warnings", warnings_section(results)),
        ("Loss curves", loss_figures(results)),
        ("Throughput", throughput_figure(results)),
        *([("Throughput against batch size", curve)] if (curve := batch_size_figure(results)) else []),
        *([("Scale: vocabulary size", section)] if (section := scale_section(results)) else []),
        ("Sparse vs dense gradients", sparse_answer(results)),
        ("Cross-backend agreement", agreement(results)),
        *([("Harness overhead", harness_overhead(results))] if _ok(results, "bare-loop") else []),
        ("Nearest neighbours (cosine, center vectors)", neighbours_table(results)),
        *([("Skipped runs", skipped(results))] if skips else []),
        ("Failed runs", failures(results)),
        ("Micro-benchmarks", microbench_section(load_microbench(folder))),
        ("Methodology", METHODOLOGY),
    ]
    return _write(folder, sections)


def page(sections: list[tuple[str, str]], title: str = "skip-gram bench report",
         heading: str = "skip-gram bench") -> str:
    """One offline HTML page in the report's style (compare and history pages use it too)."""
    body = "".join(f"<h2>{name}</h2>{content}" for name, content in sections)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(heading)}</h1>{body}</body></html>")


def _write(folder: Path, sections: list[tuple[str, str]]) -> Path:
    out = folder / "index.html"
    atomic_write_bytes(out, page(sections).encode("utf-8"))
    return out
