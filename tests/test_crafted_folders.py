"""Results folders the schema accepts, crafted as a careless or hostile user would, through every
reader: which file holds which planned run (one rule, store.holds, for report, compare, history
and --resume); the machine probe in suite.json as input; and values at the edges of their types.
Each is one line naming the file and field, or is drawn: never a traceback.

Built on the folder in tests/fixtures/folder-675fcd7 (two short numpy runs, dense and sparse, on a
generated corpus); commands run in this process (bench.cli.main), so an uncaught exception fails
the test. The two resumes at the end run one short numpy run each in the tests env.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.results import store
from tests.test_results import BEFORE, bench, edit, one_line, result_files

SEGMENTS = len(json.loads(result_files(BEFORE)[0].read_text())["segment_rates"])
PROBE = {"schema": 1, "method": "test", "threads": 1, "sizes": [1 << 20, 1 << 24], "bandwidth": [100e9, 10e9],
         "peak_flops": 1e12}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return shutil.copytree(BEFORE, tmp_path / "folder")


def every_reader(capsys, folder: Path, tmp_path: Path) -> dict[str, tuple[int, str, str]]:
    """report, compare (BEFORE against `folder`) and history, each: (status, stdout, stderr)."""
    return {"report": bench(capsys, "report", folder),
            "compare": bench(capsys, "compare", BEFORE, folder, "--json", tmp_path / "c.json",
                             "--out", tmp_path / "c.html"),
            "history": bench(capsys, "history", BEFORE, folder, "--out", tmp_path / "h.html")}


def pair(tmp_path: Path, name: str) -> dict:
    return next(p for p in json.loads((tmp_path / "c.json").read_text())["pairs"] if p["name"] == name)


# --- what counts as a finished run

def test_the_rule_names_the_file_and_the_key():
    entry = {"name": "a", "key": "k1"}
    assert store.holds(entry, Path("runs/a.json"), "k1")
    assert not store.holds(entry, Path("runs/a.json"), "k2")  # another run's result at a's name
    assert not store.holds(entry, Path("runs/b.json"), "k1")  # a's result under another name
    assert store.holds({"name": None, "key": "k1"}, Path("runs/any.json"), "k1")  # no name: the key alone
    assert store.holds({"name": "a", "key": None}, Path("runs/a.json"), "k2")  # a plan from before keys


def test_a_planned_runs_file_holding_another_planned_runs_result_counts_once(folder, tmp_path, capsys):
    dense, sparse = result_files(folder)
    shutil.copy(dense, sparse)  # the sparse run's file now holds the dense run's result
    readers = every_reader(capsys, folder, tmp_path)
    assert all(status == 0 for status, _, _ in readers.values()), readers
    page = (folder / "index.html").read_text()
    assert "1 of 2 runs finished" in page
    assert f"it holds the result of the planned run {dense.stem}, not its own; not counted" in page
    assert pair(tmp_path, "numpy dense cpu")["speed"]["segments"] == [SEGMENTS, SEGMENTS]  # not pooled twice
    assert pair(tmp_path, "numpy dense cpu")["new_status"] == ["ok"]
    assert json.loads((tmp_path / "c.json").read_text())["strays"]["new"] == [str(sparse)]
    status, out, _ = bench(capsys, "suite", "--resume", folder, "--dry-run")
    assert status == 0 and out.count("skip: finished (ok)") == 1 and "run: unreadable or of another spec" in out


@pytest.mark.parametrize("how", ["null names", "no suite.json"])
def test_copies_in_a_folder_without_named_runs_are_strays(folder, tmp_path, capsys, how):
    if how == "null names":
        edit(folder / "suite.json", lambda m: [entry.update(name=None) for entry in m["plan"]])
    else:
        (folder / "suite.json").unlink()
    for path in result_files(folder):
        for copy in range(3):  # 8 files for 2 runs
            shutil.copy(path, path.with_name(f"{path.stem} ({copy}).json"))
    status, _, err = bench(capsys, "report", folder)
    page = (folder / "index.html").read_text()
    assert status == 0 and "2 of 2 runs finished" in page, err
    strays = page[page.index("<h2>Strays"):page.index("<h2>Micro-benchmarks")]
    assert strays.count("<tr class='warn'>") == 6 and " (2).json</td>" in strays
    assert all(f"{p.stem}.json" not in strays for p in result_files(BEFORE))  # the shortest name is the run
    if how == "null names":  # compare and history need a suite.json
        readers = every_reader(capsys, folder, tmp_path)
        assert all(status == 0 for status, _, _ in readers.values()), readers
        assert pair(tmp_path, "numpy sparse cpu")["speed"]["segments"] == [SEGMENTS, SEGMENTS]
        assert len(json.loads((tmp_path / "c.json").read_text())["strays"]["new"]) == 6


# --- values the schema accepts, through every reader

def _roofline(**figures: object) -> dict:
    return {"bytes_per_step": 1e6, "flops_per_step": 1e7, "bandwidth_bytes_per_s": 1e10, "peak_flops_per_s": 1e11,
            "bound_examples_per_s": 1e9, "working_set_bytes": 1e6, "bound_by": "memory", "update": "adam",
            "layout": "padded", "stats": {"examples": 64.0}, "probe": PROBE, **figures}


def _rates(value: float):
    return lambda r: r.update(examples_per_sec=value, rate_median=value, rate_iqr=[value, value],
                              segment_rates=[value] * SEGMENTS, roofline=_roofline())


DRAWN = [
    ("rates of 1e308", _rates(1e308)),
    ("rates of 5e-324", _rates(5e-324)),
    ("peak_rss_bytes 0", lambda r: r["timings"].update(peak_rss_bytes=0)),
    ("bytes_per_step 5e-324", lambda r: r.update(roofline=_roofline(bytes_per_step=5e-324))),
    ("losses of +-1e308", lambda r: r.update(losses=[1e308, -1e308] * 10, epoch_losses=[-1e308], final_loss=1e308)),
    ("a lone surrogate in host", lambda r: r.update(host="node\ud800")),
    ("a lone surrogate in the hostname", lambda r: r["env"].update(hostname="vm\udcff")),
]


@pytest.mark.parametrize("change", [c[1] for c in DRAWN], ids=[c[0] for c in DRAWN])
def test_a_value_at_the_edge_of_its_type_is_drawn_everywhere(folder, tmp_path, capsys, change):
    edit(result_files(folder)[0], change)
    readers = every_reader(capsys, folder, tmp_path)
    for name, (status, _, err) in readers.items():
        assert status in (0, 1) and "Traceback" not in err, (name, err)  # 1: compare's verdict "slower"
    for page in (folder / "index.html", tmp_path / "c.html", tmp_path / "h.html"):
        assert "\ud800" not in page.read_text() and page.stat().st_size > 0
    assert json.loads((tmp_path / "c.json").read_text())["pairs"]


@pytest.mark.parametrize("drop", ["repeat", "runner", "data"])
@pytest.mark.parametrize("with_plan", [True, False], ids=["planned", "no suite.json"])
def test_a_spec_written_without_a_field_is_read_as_the_planner_would(folder, tmp_path, capsys, drop, with_plan):
    """Without its plan, a spec lacking a field with a default reads with that default; with one,
    it is no longer the planned run's spec (its key differs): stale, as --resume redoes it."""
    edit(result_files(folder)[0], lambda r: r["spec"].pop(drop))
    if not with_plan:
        (folder / "suite.json").unlink()
        status, _, err = bench(capsys, "report", folder)
        assert status == 0 and "2 of 2 runs finished" in (folder / "index.html").read_text(), err
        one_line(capsys, ["compare", BEFORE, folder], f"{folder / 'suite.json'} is missing")
        return
    readers = every_reader(capsys, folder, tmp_path)
    assert all(status == 0 for status, _, _ in readers.values()), readers
    assert "1 of 2 runs finished" in (folder / "index.html").read_text()
    status, out, _ = bench(capsys, "suite", "--resume", folder, "--dry-run")
    assert status == 0 and "run: unreadable or of another spec" in out


PROBES = [
    ("strings for sizes", {"sizes": ["1048576", "16777216"]}, "machine.probe.sizes[0] is a string"),
    ("a boolean peak_flops", {"peak_flops": True}, "machine.probe.peak_flops is a boolean"),
    ("mismatched sizes", {"sizes": [1, 2, 3]}, "one bandwidth a size, and this one has 2 for 3 sizes"),
    ("sizes out of order", {"sizes": [1 << 24, 1 << 20]}, "a probe's sizes increase"),
    ("a zero bandwidth", {"bandwidth": [0.0, 1.0]}, "machine.probe.bandwidth[0] is the number 0.0"),
    ("no figures", {"sizes": [], "bandwidth": []}, "must have its sizes, bandwidth and peak_flops"),
]


@pytest.mark.parametrize("change, expected", [p[1:] for p in PROBES], ids=[p[0] for p in PROBES])
def test_a_crafted_probe_is_one_line_naming_the_field_everywhere(folder, tmp_path, capsys, change, expected):
    edit(folder / "suite.json", lambda m: m["machine"].update(probe={**PROBE, **change}))
    reason = f"{folder / 'suite.json'} is not a file the suite writes ("
    for args in (["report", folder], ["compare", BEFORE, folder, "--json", tmp_path / "c.json"],
                 ["history", folder, "--out", tmp_path / "h.html"], ["suite", "--resume", folder, "--dry-run"]):
        one_line(capsys, args, expected, *([] if args[0] == "suite" else [reason]))
    assert not (folder / "index.html").exists()


def test_a_results_probe_of_the_wrong_type_is_one_line_naming_the_field(folder, tmp_path, capsys):
    path = result_files(folder)[0]
    edit(path, lambda r: r.update(roofline=_roofline(probe={"bandwidth": "fast", "peak_flops": True, "method": 3})))
    for args in (["report", folder], ["compare", BEFORE, folder, "--json", tmp_path / "c.json"],
                 ["history", folder, "--out", tmp_path / "h.html"]):
        one_line(capsys, args, f"{path} is not a file the suite writes (", "roofline.probe.")


def test_a_run_faster_than_its_bound_is_a_measurement_warning(folder, tmp_path, capsys):
    path = result_files(folder)[0]
    rate = json.loads(path.read_text())["rate_median"]
    edit(path, lambda r: r.update(roofline=_roofline(bound_examples_per_s=rate / 10)))  # share 1000 %
    status, _, err = bench(capsys, "report", folder)
    page = (folder / "index.html").read_text()
    warnings = page[page.index("<h2>Measurement warnings"):page.index("<h2>Loss curves")]
    assert status == 0 and "faster than its roofline bound: a median" in warnings and "is 1000 % of" in warnings, err
    assert "faster than its bound (1000 %)" in page[page.index("<h2>Summary"):page.index("<h2>Measurement")]
    edit(path, lambda r: r.update(roofline=_roofline(bound_examples_per_s=rate * 2)))  # 50 %: nothing to say
    bench(capsys, "report", folder)
    assert "faster than its roofline bound: a median" not in (folder / "index.html").read_text()


def test_a_huge_probe_with_a_tiny_bandwidth_is_handed_over_and_warned_about(folder, capsys):
    """200 KB of probe, valid but for a machine of 1 byte/s: the run gets it (in a file: in the
    environment it stopped the worker's exec, E2BIG), trains, and its share is a warning."""
    sizes = list(range(1, 25_001))
    edit(folder / "suite.json", lambda m: m["machine"].update(probe={**PROBE, "sizes": sizes,
                                                                      "bandwidth": [1.0] * len(sizes)}))
    assert (folder / "suite.json").stat().st_size > 200_000
    dense = result_files(folder)[0]
    dense.unlink()
    status, _, err = bench(capsys, "suite", "--resume", folder, "--executor", "local")
    assert status == 0, err
    result = json.loads(dense.read_text())
    assert result["status"] == "ok" and len(result["roofline"]["probe"]["sizes"]) == len(sizes)
    assert result["roofline"]["bandwidth_bytes_per_s"] == 1.0
    page = (folder / "index.html").read_text()
    assert "faster than its roofline bound: a median" in page[page.index("<h2>Measurement warnings"):]
