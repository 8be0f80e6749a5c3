"""A results folder from someone else is text, never markup: markup put into every string its
JSON files hold (found by walking the JSON, not listed by hand) shows as text on the report,
compare and history pages, and the pages still render. Crafted numbers are one line naming the
file (exit 2), not a traceback.

The folder is real: a short numpy dense and sparse run, the fused twin of the dense one (an
agreement row), and a run that diverges (a failed row), trained on PTB through the harness.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from markupsafe import escape

from bench.executing.suite import make_spec, planned
from bench.reporting.pages import headless_matplotlib, plot_text, svg
from common.spec import OPTIMIZERS, RUNNERS, SAMPLING_MODES, spec_key
from tests.browser import assert_renders
from tests.conftest import run_bench, run_plan
from tests.data.test_bad_input import assert_one_line_error

pytestmark = pytest.mark.envs  # the fused run goes through its own env's interpreter

MARK = "<script>alert(1)</script><img src=x onerror=alert(1)></td>\"' $x$"
RAW = ("<script", "<img", "</td>\"'")  # none of these may reach a page unescaped
# Values the pages branch on (a finished run's status) and a spec's checked vocabulary: left as
# they are in the "populated" variant, so every section still has rows for the marks to reach.
BRANCHED = {"ok", "noisy", "skipped", "cpu", *RUNNERS, *OPTIMIZERS, *SAMPLING_MODES}
SMALL = {"epochs": 1, "max_steps": 300, "batch_size": 64, "embed": 8, "min_freq": 50}  # 3 segments, in seconds


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory, ptb_dir) -> Path:
    out = tmp_path_factory.mktemp("markup") / "real"
    settings = [{"backend": "numpy"}, {"backend": "numpy", "sparse": True}, {"backend": "fused"},
                {"backend": "numpy", "optimizer": "sgd", "lr": 1e300}]
    plan = [planned(make_spec({**SMALL, **extra}, "markup")) for extra in settings]
    results = run_plan(out, plan, ptb_dir, timeout=300)
    assert [r["status"] for r in results] == ["ok", "ok", "ok", "diverged"], [r["error"] for r in results]
    return out


def marked(value: object, keep: set[str]) -> object:
    """`value` with MARK appended to every string in it (object keys aside) but those in `keep`."""
    if isinstance(value, dict):
        return {k: marked(v, keep) for k, v in value.items()}
    if isinstance(value, list):
        return [marked(v, keep) for v in value]
    return value + MARK if isinstance(value, str) and value not in keep else value


def mark_folder(source: Path, target: Path, keep: set[str]) -> Path:
    """A copy of `source` with every JSON file's strings marked; each plan entry's key is its
    marked spec's (as an editor who changed a spec would) and its name is kept (a name is its
    result's file name: a marked one would name no file, and every result would be a stray). One
    result is also copied under a file name of markup: a stray, listed by its name."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock"))
    files = sorted(target.rglob("*.json"))
    assert len(files) >= 5  # suite.json and the four results
    names = [entry["name"] for entry in json.loads((target / "suite.json").read_text())["plan"]]
    for path in files:
        path.write_text(json.dumps(marked(json.loads(path.read_text()), keep)))
    meta = json.loads((target / "suite.json").read_text())
    for entry, name in zip(meta["plan"], names):
        entry["key"], entry["name"] = spec_key(entry["spec"]), name
    (target / "suite.json").write_text(json.dumps(meta))
    first = sorted((target / "runs").glob("*.json"))[0]
    shutil.copy(first, first.with_name("<img src=x onerror=alert(1)>.json"))
    return target


def pages(folder: Path, tmp_path: Path, specs_valid: bool) -> dict[str, Path]:
    """The report, compare (the folder against a copy of itself) and history pages of `folder`.
    Without `specs_valid`, compare and history refuse it in one line (a result of no valid spec)."""
    twin = shutil.copytree(folder, tmp_path / "twin")
    out = {"report": tmp_path / "report.html", "compare": tmp_path / "compare.html",
           "history": tmp_path / "history.html"}
    for command, args in (("report", [str(folder)]),
                          ("compare", [str(folder), str(twin), "--out", str(out["compare"]),
                                       "--json", str(tmp_path / "c.json")]),
                          ("history", [str(folder), str(twin), "--out", str(out["history"])])):
        result = run_bench(command, *args)
        if specs_valid or command == "report":
            assert result.returncode == 0 and not result.stderr, (command, result.stderr[-2000:])
        else:
            assert_one_line_error(result, "corrupt result", "invalid setting")
            del out[command]
    shutil.copy(folder / "index.html", out["report"])
    return out


@pytest.fixture(scope="module", params=["populated", "everything"])
def marked_pages(request, real_folder, tmp_path_factory) -> dict[str, Path]:
    """`populated`: every string but the values pages branch on; `everything`: every string."""
    root = tmp_path_factory.mktemp(request.param)
    keep = BRANCHED if request.param == "populated" else set()
    return pages(mark_folder(real_folder, root / "marked", keep), root, specs_valid=bool(keep))


def section(page: str, heading: str) -> str:
    start = page.index(f"<h2>{heading}")
    return page[start:page.find("<h2>", start + 1)]


def test_no_string_from_the_folder_reaches_a_page_as_markup(marked_pages):
    for name, path in marked_pages.items():
        page = path.read_text()
        for raw in RAW:
            assert raw not in page, (name, raw, page[max(0, page.index(raw) - 300):page.index(raw) + 100])
        assert str(escape(MARK)) in page, name  # the marked strings did reach the page, as text


def test_status_backend_and_file_names_are_shown_as_text(marked_pages, request):
    if request.node.callspec.params["marked_pages"] != "populated":
        pytest.skip("with every string marked no run is finished: the sections below are empty")
    report = marked_pages["report"].read_text()
    failed = section(report, "Failed runs")
    assert f"<td class='l'>diverged{escape(MARK)}</td>" in failed  # a result's status
    assert f"<td class='l'>numpy{escape(MARK)}</td>" in section(report, "Sparse vs dense gradients")  # spec.backend
    agreement = section(report, "Cross-backend agreement")
    assert "fused" in agreement and str(escape(MARK)) in agreement
    assert str(escape("<img src=x onerror=alert(1)>")) + ".json</td>" in section(report, "Strays")  # a file name


def test_marked_pages_render_in_headless_chromium(marked_pages, tmp_path):
    for name, path in marked_pages.items():
        assert_renders(path, tmp_path / name)


@pytest.mark.parametrize("edit, expected", [
    (lambda r: r.update(rate_median="fast"), "rate_median is a string, expected `float | null`"),
    (lambda r: r.update(segment_rates=[float("nan")] * 3), "segment_rates[0] is nan, expected `float` > 0.0"),
    (lambda r: r.update(neighbours={"chip": "chips"}), "neighbours.chip is a string, expected `array`"),
], ids=["a string for a rate", "NaN rates", "a string for neighbours"])
def test_a_mistyped_result_is_one_line_naming_the_file(real_folder, tmp_path, edit, expected):
    folder = shutil.copytree(real_folder, tmp_path / "edited", ignore=shutil.ignore_patterns(".lock"))
    path = sorted((folder / "runs").glob("*.json"))[0]
    result = json.loads(path.read_text())
    edit(result)
    path.write_text(json.dumps(result))
    for args in (["report", str(folder)],
                 ["compare", str(real_folder), str(folder), "--json", str(tmp_path / "c.json")],
                 ["history", str(folder), "--out", str(tmp_path / "h.html")]):
        result = run_bench(*args)
        assert_one_line_error(result, f"{path} is not a file the suite writes ({expected}")
        assert result.returncode == 2
    assert not (folder / "index.html").exists() and not (tmp_path / "h.html").exists()


def test_a_suite_json_that_is_a_list_is_one_line(real_folder, tmp_path):
    folder = shutil.copytree(real_folder, tmp_path / "edited", ignore=shutil.ignore_patterns(".lock"))
    (folder / "suite.json").write_text("[1, 2]")
    for args in (["report", str(folder)], ["history", str(folder), "--out", str(tmp_path / "h.html")]):
        assert_one_line_error(run_bench(*args), f"{folder / 'suite.json'} is not a file the suite writes (the file "
                                                f"is a list, expected `object`)")


def test_a_dollar_in_a_label_is_a_dollar(real_folder, tmp_path):
    """matplotlib reads text between two `$` as TeX (and fails on most of it): a label is literal.
    A copy of a result under a name of TeX is a stray, listed by its name; a plot label of it is drawn as written."""
    folder = shutil.copytree(real_folder, tmp_path / "dollars", ignore=shutil.ignore_patterns(".lock"))
    first = sorted((folder / "runs").glob("*.json"))[0]
    shutil.copy(first, first.with_name("$\\frac{x}{$.json"))
    assert run_bench("report", str(folder)).returncode == 0
    assert "$\\frac{x}{$.json</td>" in (folder / "index.html").read_text()
    import matplotlib.pyplot as plt

    headless_matplotlib()
    fig, ax = plt.subplots()
    ax.plot([1, 2], [1, 2], label=plot_text("$\\frac{x}{$"))
    ax.legend()
    assert "$\\frac{x}{$" in svg(fig)
