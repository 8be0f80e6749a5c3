"""The result record's one home (bench/results), as a careless or hostile user meets it: a results
folder written before it still loads, reports, compares and resumes; a crafted record, of any
field a page, `compare`, `history` or `--resume` reads, is one line naming the file; micro-benchmark
files are checked too; strays in runs/ are listed, never counted or pooled; text from a folder
reaches a terminal with its control characters escaped, and a page with each field capped.

The folder in tests/fixtures/folder-675fcd7 was written by the suite at commit 675fcd7 (before the
record had a schema): two short numpy runs, dense and sparse, on a generated corpus. Commands run
in this process (bench.cli.main), so an uncaught exception fails the test instead of printing a
traceback a subprocess test would have to look for.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bench.cli import main
from bench.executing.folder import ResultsFolder
from bench.results import store
from bench.results.schema import failed_result
from common.spec import RunSpec
from common.text import PAGE_FIELD_CHARS, cap, terminal

BEFORE = Path(__file__).parent / "fixtures" / "folder-675fcd7"
ESC = "\x1b]0;owned\x07\x1b[2J"  # retitle the window, clear the screen


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return shutil.copytree(BEFORE, tmp_path / "folder")


def bench(capsys, *args: object) -> tuple[int, str, str]:
    """`python -m bench ARGS` in this process: exit status, stdout, stderr."""
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def one_line(capsys, args: list, *fragments: str) -> None:
    status, _, err = bench(capsys, *args)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def result_files(folder: Path) -> list[Path]:
    return sorted((folder / "runs").glob("*.json"))


def edit(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def test_a_folder_written_before_the_schema_loads_reports_compares_and_resumes(folder, tmp_path, capsys):
    status, out, err = bench(capsys, "report", folder)
    assert status == 0 and not err, err
    page = (folder / "index.html").read_text()
    assert "2 of 2 runs finished" in page and "numpy sparse cpu" in page and "<h2>Strays" not in page
    twin = shutil.copytree(folder, tmp_path / "twin")
    status, out, err = bench(capsys, "compare", folder, twin, "--json", tmp_path / "c.json")
    assert status == 0 and "0 slower, 0 faster, 2 unchanged of 2 pairs" in out, err
    status, out, err = bench(capsys, "history", folder, twin, "--out", tmp_path / "h.html")
    assert status == 0 and "history of 2 run settings over 2 folders" in out, err
    plan = ResultsFolder(folder).stored_plan()
    assert plan and all(ResultsFolder(folder).stored_result(run)["status"] == "ok" for run in plan)
    for run in plan:  # what --resume and the harness read is the record as written: nothing added to it
        path = ResultsFolder(folder).result_path(run)
        assert store.read_result(path, run.key) == json.loads(path.read_text())
    status, out, err = bench(capsys, "suite", "--resume", folder, "--dry-run")
    assert status == 0 and out.count("skip: finished (ok)") == 2, (out, err)


def _nested(field: str, inner: str, value: object):
    return lambda r: r[field].update({inner: value})


# Each a field a page, compare, history or --resume reads, as a crafted file may hold it.
CRAFTED = [
    ("missing losses", lambda r: r.pop("losses"), "an ok run must record its losses"),
    ("a list as data_hash", lambda r: r.update(data_hash=["ab"]), "data_hash is a list, expected `str | null`"),
    ("null timings", lambda r: r.update(timings=None), "timings is null, expected `object`"),
    ("a failed run without an error", lambda r: r.update(status="failed", error=None),
     "a failed run must say why (error)"),
    ("all-zero rates", lambda r: r.update(segment_rates=[0.0] * 3), "segment_rates[0] is the number 0.0, expected "
                                                                    "`float` > 0.0"),
    ("an infinite rate", lambda r: r.update(rate_median=float("inf")), "rate_median is inf, expected `float` <="),
    ("a NaN rate", lambda r: r.update(examples_per_sec=float("nan")), "examples_per_sec is nan, expected `float`"),
    ("an absurd vocab size", lambda r: r.update(vocab_size=10 ** 30), "vocab_size is a number, expected `int` <="),
    ("a vocab size below one", lambda r: r.update(vocab_size=0), "vocab_size is the number 0, expected `int` >= 1"),
    ("a boolean for a count", lambda r: r.update(steps=True), "steps is a boolean, expected `int | null`"),
    ("a number for a status", lambda r: r.update(status=1), "status is the number 1, expected `str`"),
    ("no spec", lambda r: r.pop("spec"), "object missing required field `spec`"),
    ("versions as a list", _nested("env", "versions", ["numpy"]),
     "env.versions is a list, expected `object | null`"),
    ("an IQR of three", lambda r: r.update(rate_iqr=[1.0, 2.0, 3.0]),
     "rate_iqr is a list, expected `array` of length 2"),
    ("a string for a peak", _nested("timings", "peak_rss_bytes", "big"), "timings.peak_rss_bytes is a string"),
    ("a number for neighbours", lambda r: r.update(neighbours={"the": 3}), "neighbours.the is the number 3"),
    ("a list for the record", lambda r: r.clear(), None),
]


@pytest.mark.parametrize("change, expected", [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED])
def test_a_crafted_record_is_one_line_naming_the_file_everywhere(folder, tmp_path, capsys, change, expected):
    path = result_files(folder)[0]
    if expected is None:
        path.write_text("[1, 2]")
        expected = "the file is a list, expected `object`"
    else:
        edit(path, change)
    reason = f"{path} is not a file the suite writes ("
    base = shutil.copytree(BEFORE, tmp_path / "base")
    for args in (["report", folder], ["compare", base, folder, "--json", tmp_path / "c.json"],
                 ["history", folder, "--out", tmp_path / "h.html"], ["suite", "--resume", folder, "--dry-run"]):
        one_line(capsys, args, reason, expected)
    assert not (folder / "index.html").exists() and not (tmp_path / "h.html").exists()


def test_a_status_the_suite_never_writes_is_a_run_that_did_not_finish(folder, tmp_path, capsys):
    """Shown as text on a failed row (pages escape it), never counted, never compared."""
    edit(result_files(folder)[0], lambda r: r.update(status="great"))
    status, _, err = bench(capsys, "report", folder)
    page = (folder / "index.html").read_text()
    assert status == 0 and "1 of 2 runs finished" in page and "<td class='l'>great</td>" in page, err
    status, out, err = bench(capsys, "compare", BEFORE, folder, "--json", tmp_path / "c.json")
    pair = next(p for p in json.loads((tmp_path / "c.json").read_text())["pairs"] if p["new_status"] == ["great"])
    assert status == 0 and pair["verdict"] == "not compared", err


def test_the_writer_refuses_what_the_reader_would(tmp_path):
    """The suite never writes a record it would refuse to read: nothing is left at the path."""
    bad = {**failed_result(RunSpec(backend="numpy"), "x"), "error": None}
    with pytest.raises(store.Refused, match="a failed run must say why"):
        store.write_result(tmp_path / "r.json", bad)
    assert list(tmp_path.iterdir()) == []


COLLECTIVE = {"name": "g", "kind": "allreduce", "dtype": "float32", "elements": 2.0, "bytes_sent": 8.0}
COMMUNICATION = {"engine": "gloo", "threads_per_rank": 1, "cores": 2, "oversubscribed": False, "bytes_per_step": 8.0,
                 "ranks": [[COLLECTIVE]]}


@pytest.mark.parametrize("change, expected", [
    ({}, None),
    ({"oversubscribed": "no"}, "communication.oversubscribed is a string, expected `bool`"),
    ({"ranks": []}, "must list its ranks"),
    ({"bytes_per_step": -1.0}, ">= 0"),
    ({"threads_per_rank": 0}, ">= 1"),
])
def test_a_data_parallel_record_is_typed(tmp_path, change, expected):
    """`communication` (bench/running/data_parallel.py) is checked like every stored field."""
    record = {**failed_result(RunSpec(backend="numpy"), "x"), "communication": {**COMMUNICATION, **change}}
    if expected is None:
        store.write_result(tmp_path / "r.json", record)
        assert store.load_result(tmp_path / "r.json")["communication"] == COMMUNICATION
        return
    with pytest.raises(store.Refused) as refused:
        store.write_result(tmp_path / "r.json", record)
    assert expected in str(refused.value)


def test_a_number_too_long_to_read_is_a_corrupt_row_not_a_traceback(folder, tmp_path, capsys):
    path = result_files(folder)[0]
    path.write_text(path.read_text().replace('"steps": 300', '"steps": ' + "9" * 5000))
    status, _, err = bench(capsys, "report", folder)
    assert status == 0 and f"{path.name}: unreadable result" in (folder / "index.html").read_text(), err
    one_line(capsys, ["compare", BEFORE, folder, "--json", tmp_path / "c.json"], "corrupt result", path.name)


MICROBENCH = {"benchmarks": [
    {"name": "test_stage[forward]", "group": "numpy dense", "stats": {"median": 0.001},
     "extra_info": {"backend": "numpy", "variant": "dense", "stage": "forward", "examples": 512}},
    {"name": "test_vocab[1000]", "group": "numpy step vs vocabulary", "stats": {"median": 0.002},
     "extra_info": {"backend": "numpy", "variant": "dense", "vocab": 1000}},
    {"name": "test_scaling[cold]", "group": "data scaling", "stats": {"median": 0.5},
     "extra_info": {"stage": "scaling", "phase": "cold", "tokens": 100000, "examples": 9000, "peak_rss_mib": 80.5}},
    {"name": "test_data_epoch", "group": "data", "stats": {"median": 0.25}, "extra_info": {"stage": "epoch",
                                                                                         "examples": 343000}},
]}


@pytest.mark.parametrize("change, expected", [
    (lambda m: m["benchmarks"][0]["stats"].update(median="fast"), "benchmarks[0].stats.median is a string"),
    (lambda m: m["benchmarks"][3]["stats"].update(median=0), "benchmarks[3].stats.median is the number 0"),
    (lambda m: m["benchmarks"][1].pop("stats"), "object missing required field `stats` in benchmarks[1]"),
    (lambda m: m["benchmarks"][2]["extra_info"].pop("tokens"), "a scaling benchmark must record tokens"),
    (lambda m: m["benchmarks"][1]["extra_info"].update(vocab=10 ** 30), "benchmarks[1].extra_info.vocab is a number"),
    (lambda m: m["benchmarks"][0]["extra_info"].pop("variant"), "a step benchmark must record its backend and variant"),
    (lambda m: m.update(benchmarks={"a": 1}), "benchmarks is an object, expected `array`"),
], ids=["a string median", "a zero median", "no stats", "scaling without tokens", "an absurd vocab",
        "a step without variant", "benchmarks an object"])
def test_microbench_files_are_checked(folder, capsys, change, expected):
    (folder / "microbench").mkdir()
    path = folder / "microbench" / "numpy.json"
    path.write_text(json.dumps(MICROBENCH))
    status, _, err = bench(capsys, "report", folder)
    page = (folder / "index.html").read_text()
    assert status == 0 and not err and "<td class='l'>numpy</td><td class='l'>dense</td>" in page, err
    edit(path, change)
    one_line(capsys, ["report", folder], f"{path} is not a file the suite writes (", expected)
    path.write_text('{"benchmarks": [')  # cut short: listed on the page, the rest still shown
    status, _, err = bench(capsys, "report", folder)
    assert status == 0 and "numpy.json: unreadable" in (folder / "index.html").read_text(), err


def test_strays_are_listed_never_counted_or_pooled(folder, tmp_path, capsys):
    dense = result_files(folder)[0]
    shutil.copy(dense, dense.with_name(f"{dense.stem} (copy).json"))
    os.mkfifo(folder / "runs" / "a fifo.json")  # never opened: a stray is not read
    status, _, err = bench(capsys, "report", folder)
    page = (folder / "index.html").read_text()
    assert status == 0 and "2 of 2 runs finished" in page, err
    strays = page[page.index("<h2>Strays"):page.index("<h2>Micro-benchmarks")]
    assert f"{dense.stem} (copy).json</td>" in strays and "a fifo.json</td>" in strays
    status, out, _ = bench(capsys, "compare", BEFORE, folder, "--json", tmp_path / "c.json",
                           "--out", tmp_path / "c.html")
    record = json.loads((tmp_path / "c.json").read_text())
    segments = len(json.loads(dense.read_text())["segment_rates"])
    pair = next(p for p in record["pairs"] if p["name"] == "numpy dense cpu")
    assert status == 0 and pair["speed"]["segments"] == [segments, segments] and pair["new_status"] == ["ok"]
    assert f"stray in new: {dense.parent / dense.stem} (copy).json" in out
    assert len(record["strays"]["new"]) == 2 and "(copy).json" in (tmp_path / "c.html").read_text()
    status, out, _ = bench(capsys, "suite", "--resume", folder, "--dry-run")
    assert status == 0 and f"stray: {dense.parent / dense.stem} (copy).json" in out
    assert out.count("skip: finished (ok)") == 2
    (folder / "runs" / "a fifo.json").unlink()
    for path in BEFORE.glob("runs/*.json"):
        (folder / "runs" / path.name).unlink()  # only the stray left: no results, and the error says why
    one_line(capsys, ["report", folder], "no results in", "(only 1 stray file(s), not this plan's runs)")


def test_terminal_text_escapes_control_characters():
    assert terminal(f"host{ESC}\nnext\u202eevil\x9b") == "host\\x1b]0;owned\\x07\\x1b[2J\\nnext\\u202eevil\\x9b"
    assert terminal("plain — text, é, 名前") == "plain — text, é, 名前"
    assert cap("x" * PAGE_FIELD_CHARS) == "x" * PAGE_FIELD_CHARS
    assert cap("x" * (PAGE_FIELD_CHARS + 1)).startswith("x" * PAGE_FIELD_CHARS + "… (501 characters in all")


def test_text_from_a_folder_reaches_the_terminal_escaped(folder, tmp_path, capsys):
    edit(folder / "suite.json", lambda m: m.update(commit=f"c0ffee{ESC}"))
    edit(result_files(folder)[0], lambda r: r["env"].update(hostname=f"host{ESC}"))
    status, out, _ = bench(capsys, "compare", BEFORE, folder, "--json", tmp_path / "c.json")
    assert status == 0 and "\x1b" not in out and "\x07" not in out
    assert "c0ffee\\x1b]0;owned\\x07" in out and "host\\x1b]0;owned" in out
    edit(folder / "suite.json", lambda m: m["plan"][1].update(skip=f"no GPU{ESC}"))
    status, out, _ = bench(capsys, "suite", "--resume", folder, "--dry-run")
    assert status == 0 and "\x1b" not in out and "skip: no GPU\\x1b]0;owned" in out
    # An error naming a file whose name holds control characters is still one line, escaped.
    edit(folder / "suite.json", lambda m: m["plan"][0].update(name=f"run{ESC}\nsecond line"))
    (folder / "runs" / f"run{ESC}\nsecond line.json").symlink_to(tmp_path / "elsewhere.json")
    status, _, err = bench(capsys, "report", folder)
    assert status == 2 and "\x1b" not in err and len(err.strip().splitlines()) == 1 and "is a symbolic link" in err


def test_pages_cap_each_field_and_the_json_keeps_it_whole(folder, tmp_path, capsys):
    huge = 1_000_000
    edit(folder / "suite.json", lambda m: m.update(commit="c" * huge))
    dense, sparse = result_files(folder)
    edit(dense, lambda r: r["env"].update(hostname="h" * huge))
    edit(sparse, lambda r: r.update(status="failed", error="e" * huge))
    twin = shutil.copytree(folder, tmp_path / "twin")
    pages = {"report": folder / "index.html", "compare": tmp_path / "c.html", "history": tmp_path / "h.html"}
    for args in (["report", folder],
                 ["compare", twin, folder, "--json", tmp_path / "c.json", "--out", pages["compare"]],
                 ["history", folder, twin, "--out", pages["history"]]):
        status, _, err = bench(capsys, *args)
        assert status in (0, 1), err
    for name, page in pages.items():
        text = page.read_text()
        assert len(text) < 400_000, (name, len(text))  # each huge field adds at most PAGE_FIELD_CHARS, escaped
        assert f"{huge:,} characters in all" in text, name
    assert json.loads(sparse.read_text())["error"] == "e" * huge
