"""The HTML report, rendered from real stored results (numpy and torch runs, the baselines,
a diverged run and a corrupt file), read as text and opened in headless Chromium."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from bench.executing.suite import make_spec, planned
from bench.reporting import report
from common.errors import BenchError
from tests.browser import assert_renders
from tests.conftest import ROOT, SMALL_STEPS, run_bench, run_plan
from tests.data.test_bad_input import assert_one_line_error

pytestmark = pytest.mark.envs


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory, ptb_dir):
    out = tmp_path_factory.mktemp("suite")
    settings = [{"backend": b, "sparse": s} for b in ("numpy", "torch", "fused") for s in (False, True)]
    settings += [{"backend": "numpy", "batch_size": 256},  # with numpy dense: a throughput-vs-batch-size curve
                 {"backend": "torch", "runner": "bare-loop"},  # the twin of torch dense: harness overhead
                 {"backend": "torch", "runner": "recipe-loop"}, {"backend": "torch", "runner": "gensim"},
                 {"backend": "numpy", "optimizer": "sgd", "lr": 1e300}]
    # Small embeddings, the recipe's batch size: runs of other batch sizes are labelled with theirs.
    small = {"embed": SMALL_STEPS["embed"]}
    plan = [planned(make_spec({"epochs": 1, "max_steps": 120, **small, **extra}, "fixture")) for extra in settings]
    run_plan(out, plan, ptb_dir, timeout=600)
    meta = json.loads((out / "suite.json").read_text())  # a planned run whose result was cut short
    never_run = planned(make_spec({"backend": "numpy", "epochs": 1, "max_steps": 120, **small, "seed": 99}, "fixture"))
    meta["plan"].append({**never_run.to_dict(), "name": "broken"})
    (out / "suite.json").write_text(json.dumps(meta))
    (out / "runs" / "broken.json").write_text('{"status": "ok", "spec": ')
    first = next((out / "runs").glob(f"{plan[0].name}.json"))
    shutil.copy(first, out / "runs" / f"{plan[0].name} (copy).json")  # a stray: not a run, not counted
    return out


@pytest.fixture(scope="module")
def page(suite_dir) -> str:
    return report.render(suite_dir).read_text()


def test_report_sections_and_numbers(page, suite_dir):
    for heading in ("Summary", "Loss curves", "Throughput", "Throughput against batch size",
                    "Sparse vs dense gradients", "Cross-backend agreement",
                    "Harness overhead", "Nearest neighbours", "Failed runs", "Methodology"):
        assert f"<h2>{heading}" in page
    assert "10 of 12 runs finished" in page  # the diverged run and the corrupt file are not
    assert page.count("<svg") >= 3
    assert "Does sparse_grad accelerate training?" in page and "torch on cpu: sparse gradients were" in page
    assert re.search(r"numpy dense cpu</td><td class='l'>torch dense cpu</td><td>120</td><td>\d\.\d\de-0[5-9]", page)
    assert "broken.json: unreadable result" in page and "diverged" in page and "lower --lr" in page
    strays = page[page.index("<h2>Strays"):page.index("<h2>Micro-benchmarks")]
    assert " (copy).json</td>" in strays and " (copy)" not in page.replace(strays, "")
    assert "x</td>" in page  # speed-up over the recipe loop
    # worker / bare-loop rate ratio, whatever this machine made of it (its value: the next test, on fixed rates)
    assert re.search(r"torch dense cpu</td><td>1</td><td>[\d,]+\.\d{3} \(", page)
    assert "2.13.0" in page and "(test fixture)" in page


def test_harness_overhead_pairs_each_bare_loop_with_its_worker_twin():
    """Fixed rates and wall times: the ratios are the runs', the median and range over the pairs."""
    def ok(runner: str, rate: float, wall: float, seed: int = 0) -> dict:
        spec = make_spec({"backend": "torch", "runner": runner, "seed": seed}, "test").to_dict()
        return {"status": "ok", "spec": spec, "examples_per_sec": rate, "wall_seconds": wall}
    runs = [ok("backend", 900.0, 12.0), ok("bare-loop", 1000.0, 10.0),
            ok("backend", 800.0, 11.0, seed=1), ok("bare-loop", 1000.0, 10.0, seed=1),
            ok("bare-loop", 1000.0, 10.0, seed=2)]  # no worker twin: not a pair
    (row,) = report.harness_overhead(runs)
    assert row["name"] == "torch dense cpu" and row["pairs"] == 2
    assert row["rate"] == pytest.approx([0.85, 0.8, 0.9]) and row["wall"] == pytest.approx([1.15, 1.1, 1.2])
    assert row["extra"] == pytest.approx(1.5)


def test_the_sparse_answer_names_compiled_pairs_apart():
    """TensorFlow plain and compiled each have a dense and a sparse run: two answers, each named."""
    def ok(sparse: bool, compiled: bool, rate: float) -> dict:
        spec = make_spec({"backend": "tensorflow", "sparse": sparse, "compile": compiled}, "test").to_dict()
        return {"status": "ok", "spec": spec, "rate_median": rate, "vocab_size": 6_719}
    rows, _ = report.sparse_answer([ok(False, False, 10.0), ok(True, False, 8.0),
                                    ok(False, True, 20.0), ok(True, True, 25.0)])
    assert {(r["backend"], r["ratio"]) for r in rows} == {("tensorflow", 0.8), ("tensorflow compiled", 1.25)}


def summary_row(page: str, name: str) -> str:
    return re.search(rf"<tr[^>]*><td class='l'>{re.escape(name)}</td>(?:(?!</tr>).)*</tr>", page).group(0)


def test_every_run_is_read_against_the_fused_limit(page):
    """Dense runs (the recipe loop too) against fused dense, sparse ones against fused lazy Adam;
    gensim, with its own SGD and subsampling, against nothing."""
    assert "<th>share of fused limit</th>" in page and "<th>first step (s)</th>" in page
    for name in ("fused dense cpu", "fused sparse cpu"):
        assert "<td>100 %</td>" in summary_row(page, name)
    for name in ("torch dense cpu", "torch sparse cpu", "recipe-loop"):
        share = re.search(r"<td>(\d+) %</td>", summary_row(page, name))
        assert share and int(share.group(1)) > 0, name
    assert " %</td>" not in summary_row(page, "gensim")
    assert "of limit" in page  # the throughput plot's labels
    assert "at the limit (the fused kernel on cpu) lazy Adam ran at" in page


def test_every_run_is_read_against_its_roofline_and_none_beats_it(page, suite_dir):
    """Each worker run carries a bound from the session's one probe, and no finished run beats its
    bound; baselines have none and show "-"."""
    assert "<th>share of roofline</th>" in page and "<h2>Roofline</h2>" in page
    results = [json.loads(p.read_text()) for p in (suite_dir / "runs").glob("*.json") if p.name != "broken.json"]
    bounded = [r for r in results if (r.get("roofline") or {}).get("bound_examples_per_s")]
    assert {r["spec"]["backend"] for r in bounded} == {"numpy", "torch", "fused"}
    for r in bounded:
        if r["status"] == "ok":
            assert r["rate_median"] <= r["roofline"]["bound_examples_per_s"], r["spec"]
    for name in ("torch dense cpu", "fused sparse cpu"):
        assert re.search(r"<td>[\d,]+</td><td>\d+ %</td>", summary_row(page, name)), name
    assert "<td>–</td><td>–</td>" in summary_row(page, "gensim")


def test_report_is_self_contained(page):
    fetched = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page)
    assert all(not url.startswith(("http:", "https:", "//")) for url in fetched), fetched
    assert "<script" not in page


def test_report_command_rebuilds_from_stored_results(suite_dir):
    (suite_dir / "index.html").unlink()
    result = run_bench("report", str(suite_dir))
    assert result.returncode == 0 and (suite_dir / "index.html").exists()


def test_report_of_nothing_is_a_clear_error(tmp_path):
    (tmp_path / "runs").mkdir()
    assert_one_line_error(run_bench("report", str(tmp_path)), "no results in")
    assert_one_line_error(run_bench("report", str(tmp_path / "missing")), "not found")
    with pytest.raises(BenchError):
        report.render(tmp_path)


def test_report_opens_in_headless_chromium(suite_dir, page, tmp_path):
    assert_renders(suite_dir / "index.html", tmp_path)


def test_results_outside_the_plan_are_stale_but_keyless_plans_check_nothing():
    """Folders written before plans carried keys (older commits) keep every result they hold."""
    from common.spec import RunSpec

    spec = RunSpec(backend="numpy").to_dict()
    results = [{"spec": spec, "status": "ok"}, {"spec": {**spec, "lr": 0.5}, "status": "ok"}]
    report._mark_stale({"plan": [{"name": "old-style entry", "spec": spec}]}, results)
    assert [r["status"] for r in results] == ["ok", "ok"]
    report._mark_stale({"plan": [{"key": RunSpec(backend="numpy").key}]}, results)
    assert [r["status"] for r in results] == ["ok", "stale"]


def test_matplotlibs_warnings_stay_off_stderr():
    """A label with glyphs no font has (text from someone's results), a log axis: the page is
    drawn, and stderr stays for errors the user must act on."""
    code = ("from bench.reporting.pages import headless_matplotlib, svg\n"
            "headless_matplotlib()\n"
            "import matplotlib.pyplot as plt\n"
            "fig, ax = plt.subplots()\n"
            "ax.set_title('\\u4e2d \\x07 \\U0001F600')\n"
            "ax.plot([0, 1], [0, 1])\n"
            "ax.set_yscale('log')\n"
            "assert '<svg' in str(svg(fig))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
