"""`python -m bench compare BASE NEW`: did something change between two results folders?

A CI job needs a verdict it can act on, not two reports to read by eye. Runs are paired by
their settings (the spec's key without the `repeat` index, never by file name, which is
presentation), and each pair's speed verdict comes with a confidence interval so that the
segment-to-segment noise of a shared machine is not mistaken for a regression.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench.reporting.limit import share_text
from bench.reporting.pages import headless_matplotlib, number, plot_text, render, signed, svg
from bench.reporting.report import load_runs, measurement_warnings
from bench.reporting.roofline import median_bound
from bench.results.schema import MEASURED
from common.cache import atomic_write_bytes
from common.errors import BenchError
from common.spec import RunSpec, spec_key
from common.text import terminal as terminal_text

RESAMPLES = 2000
CONFIDENCE = 0.95
# Below this many 100-step segments on a side, a bootstrap interval is an artefact of the few
# values it resamples (one segment gives a zero-width interval): such pairs get no verdict.
MIN_SEGMENTS = 3
QUALITY = {"WordSim-353": ("wordsim353", "spearman"), "SimLex-999": ("simlex999", "spearman"),
           "analogies": ("analogy", "accuracy")}



METHOD_TEXT = (
    f"Runs are paired by their settings: the SHA-256 key of the whole spec without the repeat index; repeats "
    f"of one spec on a side are pooled. Speed is the ratio NEW/BASE of the medians of the 100-step segment "
    f"rates (examples/s). Its {CONFIDENCE:.0%} interval is a two-level percentile bootstrap: {RESAMPLES:,} "
    f"times, each side's runs are resampled with replacement, then each chosen run's segment rates, and the "
    f"ratio of the resampled medians is taken (seeded by the pair's key, so the same folders give the same "
    f"interval). A pair is faster or slower when the interval lies entirely on that side of 1 and the change is "
    f"at least the threshold; otherwise unchanged. Pairs with fewer than {MIN_SEGMENTS} segments a side get no "
    f"verdict. Segments of one run share its machine's state, so with one run a side the interval measures only "
    f"within-run noise, and a busy neighbour moves a whole run. Give each side repeats, alternated in time with "
    f"the other side's: resampling runs carries their drift into the interval.")


@dataclass
class Folder:
    """One results folder as compare and history read it: suite.json and the run results."""

    path: Path
    meta: dict
    results: list[dict]
    strays: list[str] = field(default_factory=list)  # files in runs/ that are no planned run's: never pooled

    @property
    def created(self) -> str:
        return str(self.meta.get("created", ""))

    @property
    def commit(self) -> str:
        return str(self.meta.get("commit") or "unknown")


def load_side(value: str) -> Folder:
    """One side of a comparison: a results folder, or several (comma-separated) whose runs are
    pooled, e.g. rounds of the same suite alternated in time with the other side's rounds (a
    folder holds one plan and one version of the code, so each round is a folder of its own)."""
    paths = [Path(p) for p in value.split(",") if p]
    if not paths:
        raise BenchError(f"no results folder named in {value!r}")
    seen: dict[Path, Path] = {}
    for path in paths:  # one folder twice would count its runs as two rounds and narrow the interval
        if (twin := seen.setdefault(path.resolve(), path)) is not path:
            raise BenchError(f"{value}: {twin} and {path} are one folder; name each round's folder once")
    folders = [load_folder(p) for p in paths]
    first = folders[0]
    if len(folders) == 1:
        return first
    meta = {**first.meta, "created": min(f.created for f in folders),
            "commit": ",".join(sorted({f.commit for f in folders})), "folders": [str(f.path) for f in folders]}
    return Folder(first.path, meta, [r for f in folders for r in f.results], [s for f in folders for s in f.strays])


def load_folder(path: Path) -> Folder:
    """A results folder, or a one-line BenchError: missing, without suite.json, without runs, corrupt."""
    meta, results, strays = load_runs(path)  # raises for a missing folder and for one without results
    if not meta or "warning" in meta:
        raise BenchError(f"{path / 'suite.json'} is missing or corrupt: is {path} a results folder?")
    for r in results:
        if r["status"] == "corrupt":
            raise BenchError(f"corrupt result in {path / 'runs'}: {r['error']}")
    if not results:
        raise BenchError(f"no run results in {path / 'runs'}")
    stale = [r["_file"] for r in results if r["status"] == "stale"]  # the plan's file, another run's result
    return Folder(path, meta, [r for r in results if r["status"] != "stale"], sorted([*map(str, strays), *stale]))


def settings_key(spec: dict) -> str:
    """What pairs runs: the spec's digest without the repeat index (repeats are pooled)."""
    return spec_key({k: v for k, v in spec.items() if k != "repeat"})


def flatten(record: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts as dotted field names, so differences can be named field by field."""
    flat: dict[str, object] = {}
    for k, v in record.items():
        if isinstance(v, dict) and v:
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def differing(records: list[dict]) -> dict[str, list]:
    """Fields (dotted) whose values are not the same in every record: field -> each record's value."""
    flats = [flatten(r) for r in records]
    names = sorted(set().union(*flats))
    return {n: [f.get(n) for f in flats] for n in names if len({json.dumps(f.get(n)) for f in flats}) > 1}


def group(results: list[dict]) -> dict[str, list[dict]]:
    """Settings key -> the runs with those settings, repeat 0 first."""
    groups: dict[str, list[dict]] = {}
    for r in sorted(results, key=lambda r: r["spec"]["repeat"]):
        groups.setdefault(settings_key(r["spec"]), []).append(r)
    return groups


def names(specs: dict[str, dict]) -> dict[str, str]:
    """Key -> the run's label; labels shared by several settings get the settings that tell them apart."""
    labels = {key: RunSpec.from_dict(spec).label for key, spec in specs.items()}
    out = {}
    for key, label in labels.items():
        twins = [specs[k] for k, other in labels.items() if other == label]
        extra = {k: v[twins.index(specs[key])] for k, v in differing(twins).items() if k != "repeat"}
        out[key] = label + (f" ({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else "")
    return out


def bootstrap_ratio(base: list[list[float]], new: list[list[float]], seed: int) -> tuple[float, float, float]:
    """median(new) / median(base) over the pooled segment rates, and its two-level percentile
    bootstrap interval (see METHOD_TEXT): segments of one run share its machine's state, so runs are
    resampled first, then segments within each; with repeats the interval carries run-to-run drift."""
    rng = np.random.default_rng(seed)

    def medians(runs: list[list[float]]) -> np.ndarray:
        arrays = [np.asarray(r, dtype=float) for r in runs if r]
        out = np.empty(RESAMPLES)
        for i in range(RESAMPLES):
            picked = (arrays[j] for j in rng.integers(len(arrays), size=len(arrays)))
            out[i] = np.median(np.concatenate([a[rng.integers(a.size, size=a.size)] for a in picked]))
        return out

    ratios = medians(new) / medians(base)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    pooled = np.median(np.concatenate([np.asarray(r, float) for r in new if r])) / \
        np.median(np.concatenate([np.asarray(r, float) for r in base if r]))
    return float(pooled), float(low), float(high)


def verdict(ratio: float, low: float, high: float, threshold: float) -> str:
    """Both conditions, so that neither a tiny but certain change nor a large but noisy one is a verdict."""
    if high < 1 and ratio <= 1 - threshold:
        return "slower"
    if low > 1 and ratio >= 1 + threshold:
        return "faster"
    return "unchanged"


def loss_difference(base: list[float], new: list[float]) -> dict:
    """Identical trajectories, or the max |difference| over common steps and the first step (1-based) that differs."""
    n = min(len(base), len(new))
    gap = np.abs(np.asarray(base[:n], dtype=float) - np.asarray(new[:n], dtype=float))
    where = np.flatnonzero(gap != 0)
    first = int(where[0]) + 1 if where.size else (n + 1 if len(base) != len(new) else None)
    return {"identical": first is None, "max_abs_diff": float(gap.max()) if n else None,
            "first_differing_step": first, "steps": [len(base), len(new)]}


def _quality(runs: list[dict], section: str, metric: str) -> float | None:
    values = [((r.get("evaluation") or {}).get(section) or {}).get(metric) for r in runs]
    found = [v for v in values if v is not None]
    return float(np.mean(found)) if found else None


def _env(folder: Folder, run: dict) -> dict:
    """What a run was measured on: its result's env, where it ran (executor, host), the suite's commit and GPUs."""
    return {"commit": folder.meta.get("commit"), "gpus": (folder.meta.get("machine") or {}).get("gpus"),
            **{k: run[k] for k in ("executor", "host") if k in run}, **(run.get("env") or {})}


@dataclass
class Pair:
    """One setting measured on both sides."""

    name: str
    key: str
    base_status: list[str]
    new_status: list[str]
    speed: dict | None = None
    losses: dict | None = None
    quality: dict[str, dict] = field(default_factory=dict)
    environment: dict[str, list] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # why a side's rates may not be a quiet machine's
    roofline: dict = field(default_factory=dict)  # each side's median bound and the share of it reached

    @property
    def verdict(self) -> str:
        if self.speed is None:
            return "not compared"
        return self.speed["verdict"]


def compare_pair(name: str, key: str, base: Folder, base_runs: list[dict], new: Folder, new_runs: list[dict],
                 threshold: float) -> Pair:
    pair = Pair(name, key, [r["status"] for r in base_runs], [r["status"] for r in new_runs])
    pair.environment = differing([_env(base, base_runs[0]), _env(new, new_runs[0])])
    ok_base, ok_new = ([r for r in runs if r["status"] in MEASURED] for runs in (base_runs, new_runs))
    pair.warnings = [f"{side} repeat {r['spec']['repeat']}: {note}"
                     for side, runs in (("base", ok_base), ("new", ok_new))
                     for r in runs for _, note in measurement_warnings(r)]
    if not (ok_base and ok_new):
        return pair
    pair.losses = loss_difference(ok_base[0]["losses"], ok_new[0]["losses"])
    for label, (section, metric) in QUALITY.items():
        b, n = _quality(ok_base, section, metric), _quality(ok_new, section, metric)
        pair.quality[label] = {"base": b, "new": n, "delta": n - b if b is not None and n is not None else None}
    rates_b = [x for r in ok_base for x in r.get("segment_rates") or []]
    rates_n = [x for r in ok_new for x in r.get("segment_rates") or []]
    speed: dict = {"base_median": float(np.median(rates_b)) if rates_b else None,
                   "new_median": float(np.median(rates_n)) if rates_n else None,
                   "segments": [len(rates_b), len(rates_n)]}
    pair.roofline = _roofline(ok_base, ok_new, speed)
    if min(len(rates_b), len(rates_n)) < MIN_SEGMENTS:
        pair.speed = {**speed, "verdict": f"too few segments (< {MIN_SEGMENTS})"}
        return pair
    ratio, low, high = bootstrap_ratio([r.get("segment_rates") or [] for r in ok_base],
                                       [r.get("segment_rates") or [] for r in ok_new], seed=int(key, 16) % 2**32)
    pair.speed = {**speed, "ratio": ratio, "ci": [low, high], "verdict": verdict(ratio, low, high, threshold)}
    return pair


@dataclass
class Comparison:
    base: str
    new: str
    threshold: float
    folders: dict[str, dict]
    pairs: list[Pair]
    only_base: list[dict]
    only_new: list[dict]
    strays: dict[str, list[str]] = field(default_factory=dict)

    @property
    def regressed(self) -> list[Pair]:
        return [p for p in self.pairs if p.verdict == "slower"]


def compare(base: Folder, new: Folder, threshold: float) -> Comparison:
    groups_b, groups_n = group(base.results), group(new.results)
    specs = {k: runs[0]["spec"] for groups in (groups_b, groups_n) for k, runs in groups.items()}
    label = names(specs)
    common = [k for k in groups_b if k in groups_n]
    if not common:
        raise BenchError(f"no run in {new.path} has the settings of a run in {base.path} "
                         f"({len(groups_b)} and {len(groups_n)} settings): nothing to compare")
    pairs = sorted((compare_pair(label[k], k, base, groups_b[k], new, groups_n[k], threshold) for k in common),
                   key=lambda p: p.name)
    only_base, only_new = ([{"name": label[k], "key": k, "status": [r["status"] for r in groups[k]]}
                            for k in sorted(groups, key=lambda k: label[k]) if k not in other]
                           for groups, other in ((groups_b, groups_n), (groups_n, groups_b)))
    folders = {side: {"path": ",".join(f.meta.get("folders") or [str(f.path)]), "created": f.created,
                      "commit": f.commit}
               for side, f in (("base", base), ("new", new))}
    return Comparison(str(base.path), str(new.path), threshold, folders, pairs, only_base, only_new,
                      strays={"base": base.strays, "new": new.strays})


def _roofline(ok_base: list[dict], ok_new: list[dict], speed: dict) -> dict:
    """Each side's median roofline bound, and the share of it its median rate (the ex/s column) reached."""
    out: dict = {}
    for side, runs in (("base", ok_base), ("new", ok_new)):
        limit, rate = median_bound(runs), speed[f"{side}_median"]
        out[f"{side}_bound"] = limit
        out[f"{side}_share"] = rate / limit if limit and rate else None
    return out


def _bound_text(p: Pair) -> str:
    limit = p.roofline.get("new_bound") or p.roofline.get("base_bound")
    return number(limit, 0) if limit else "–"


def _roof_share_text(p: Pair) -> str:
    shares = [p.roofline.get("base_share"), p.roofline.get("new_share")]
    if not any(shares):
        return "–"
    return " → ".join(share_text(x) for x in shares)


def _ratio_text(p: Pair) -> str:
    if p.speed is None or "ratio" not in p.speed:
        return "–"
    low, high = p.speed["ci"]
    return f"{number(p.speed['ratio'])} [{number(low)}, {number(high)}]"


def _loss_text(p: Pair) -> str:
    if p.losses is None:
        return "–"
    if p.losses["identical"]:
        return "identical"
    return f"max {p.losses['max_abs_diff'] or 0:.1e} from step {p.losses['first_differing_step']}"


def _delta(p: Pair, name: str) -> str:
    return signed(p.quality.get(name, {}).get("delta"))


def _row(p: Pair) -> list[str]:
    status = "" if p.speed is not None else f" (base {'/'.join(p.base_status)}, new {'/'.join(p.new_status)})"
    return [p.name + (" !" if p.warnings else ""), number((p.speed or {}).get("base_median"), 0),
            number((p.speed or {}).get("new_median"), 0),
            _ratio_text(p), p.verdict + status, _loss_text(p), *(_delta(p, q) for q in QUALITY),
            _bound_text(p), _roof_share_text(p), ", ".join(k for k in p.environment if k != "commit") or "–"]


HEADER = ["run", "base ex/s", "new ex/s", f"new/base [{CONFIDENCE:.0%} CI]", "verdict", "losses",
          *(f"Δ {q}" for q in QUALITY), "roofline bound", "share of roofline", "env differs"]


def text_table(rows: list[list[str]]) -> str:
    """Aligned columns for a terminal; each cell's control characters escaped (text from a folder)."""
    rows = [[terminal_text(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def environment_changes(c: Comparison) -> dict[str, list]:
    """Every environment field that differs in some pair, with its base and new values (first pair's)."""
    changes: dict[str, list] = {}
    for p in c.pairs:
        for k, v in p.environment.items():
            changes.setdefault(k, v)
    return changes


def terminal(c: Comparison) -> str:
    """The verdicts as a terminal shows them: the text from the folders with its control characters escaped."""
    head = [f"base: {c.base} ({c.folders['base']['created']}, commit {c.folders['base']['commit']})",
            f"new:  {c.new} ({c.folders['new']['created']}, commit {c.folders['new']['commit']})", ""]
    lines = []
    for side, runs in (("base", c.only_base), ("new", c.only_new)):
        for r in runs:
            lines.append(f"only in {side}: {r['name']} ({'/'.join(r['status'])})")
    for side, strays in c.strays.items():
        for stray in strays:
            lines.append(f"stray in {side}: {stray} (not a planned run's file: not compared)")
    warned = [f"  {p.name}, {w}" for p in c.pairs for w in p.warnings]
    if warned:
        lines += ["", "! measurement warnings; read these rates with care:", *warned]
    changes = environment_changes(c)
    if changes:
        lines += ["", "environment, base -> new:"] + [f"  {k}: {v[0]} -> {v[1]}" for k, v in changes.items()]
    counts = {v: sum(p.verdict == v for p in c.pairs) for v in ("slower", "faster", "unchanged")}
    lines += ["", f"{counts['slower']} slower, {counts['faster']} faster, {counts['unchanged']} unchanged "
                  f"of {len(c.pairs)} pairs (threshold {c.threshold:.0%})"]
    table = text_table([HEADER, *(_row(p) for p in c.pairs)])
    return "\n".join([*map(terminal_text, head), table, *map(terminal_text, lines)])


def ratio_figure(c: Comparison) -> str | None:
    """Each pair's ratio with its interval, the threshold band shaded."""
    import matplotlib.pyplot as plt

    pairs = [p for p in c.pairs if p.speed and "ratio" in p.speed]
    if not pairs:
        return None
    colour = {"slower": "#c0392b", "faster": "#27ae60", "unchanged": "#4a7ab5"}
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(pairs) + 1.2))
    ax.axvspan(1 - c.threshold, 1 + c.threshold, color="#eeeeee", label=f"±{c.threshold:.0%} threshold")
    ax.axvline(1, color="#888", lw=1)
    for y, p in enumerate(pairs):
        speed = p.speed
        assert speed is not None  # pairs holds only those with a speed
        low, high = speed["ci"]
        ax.errorbar([speed["ratio"]], [y], xerr=[[speed["ratio"] - low], [high - speed["ratio"]]],
                    fmt="o", capsize=3, color=colour[p.verdict])
    ax.set_yticks(range(len(pairs)), [plot_text(p.name) for p in pairs])
    ax.set(xlabel=f"examples/s, new / base (ratio of medians, {CONFIDENCE:.0%} bootstrap interval)")
    ax.invert_yaxis()
    ax.legend(fontsize=7)
    return svg(fig)


def html_page(c: Comparison) -> str:
    headless_matplotlib()
    return render("compare.html", title="skip-gram bench: compare", heading="skip-gram bench: compare", c=c,
                  folders=[("", [side, f["path"], f["created"], f["commit"]]) for side, f in c.folders.items()],
                  header=HEADER, pairs=[("bad" if p.verdict == "slower" else "", _row(p)) for p in c.pairs],
                  changes=[("", [k, str(v[0]), str(v[1])]) for k, v in environment_changes(c).items()],
                  figure=ratio_figure(c), method=METHOD_TEXT,
                  one_side=[("", [r["name"], side, "/".join(r["status"])])
                            for side, runs in (("base", c.only_base), ("new", c.only_new)) for r in runs],
                  warned=[("", [p.name, w]) for p in c.pairs for w in p.warnings],
                  strays=[("warn", [stray, side]) for side, strays in c.strays.items() for stray in strays])


def write_file(path: Path, text: str) -> None:
    """Atomically, or a one-line BenchError (an unwritable --out is the user's to fix)."""
    try:
        atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as exc:
        raise BenchError(f"cannot write {path}: {exc.strerror}") from None


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.threshold < 1:
        raise BenchError(f"--threshold must be in [0, 1), got {args.threshold}")
    base, new = load_side(args.base), load_side(args.new)
    c = compare(base, new, args.threshold)
    out = Path(args.out) if args.out else None
    json_path = Path(args.json) if args.json else out.with_suffix(".json") if out else new.path / "compare.json"
    record = {**asdict(c), "method": METHOD_TEXT}
    for pair, entry in zip(c.pairs, record["pairs"]):
        entry["verdict"] = pair.verdict
    write_file(json_path, json.dumps(record, indent=1))
    if out:
        write_file(out, html_page(c))
    print(terminal(c))
    print(f"json: {json_path}" + (f"\nhtml: {out}" if out else ""))
    return 1 if c.regressed else 0
