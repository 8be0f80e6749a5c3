"""`compare` and `history` on real results folders (tiny numpy suites run through the harness):
a folder against itself, a planted slowdown, two real repeats (noise), bad input, and the pages."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.executing.suite import PlannedRun, make_spec, planned
from bench.reporting.compare import loss_difference, names, settings_key, verdict
from tests.browser import assert_renders
from tests.conftest import SMALL_STEPS, run_bench, run_plan
from tests.data.test_bad_input import assert_one_line_error

pytestmark = pytest.mark.envs  # numpy runs go through the tests env's interpreter

REPEATS = 3  # per side; each side pools its repeats, and the sides' repeats alternate in time
STEPS = 300  # three 100-step segments a run


def numpy_run(**settings) -> PlannedRun:
    settings = {"backend": "numpy", "epochs": 1, "max_steps": STEPS, **SMALL_STEPS, **settings}
    return planned(make_spec(settings, "test"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory, ptb_dir) -> tuple[Path, Path]:
    """Two folders of the same settings (dense and sparse): repeats 0, 2, 4 in one, 1, 3, 5 in the
    other. One suite runs them in that order, so the two sides alternate on the same machine."""
    root = tmp_path_factory.mktemp("compare")
    plan = [numpy_run(sparse=sparse, repeat=repeat) for repeat in range(2 * REPEATS) for sparse in (False, True)]
    run_plan(root / "both", plan, ptb_dir, timeout=600)
    sides = []
    for side in range(2):
        folder = shutil.copytree(root / "both", root / f"side{side}", ignore=shutil.ignore_patterns(".lock"))
        for path in (folder / "runs").glob("*.json"):
            if json.loads(path.read_text())["spec"]["repeat"] % 2 != side:
                path.unlink()
        sides.append(folder)
    return sides[0], sides[1]


def fixed_rates(result: dict) -> None:
    """Crafted segment rates in place of the measured ones: a verdict is then the comparison's,
    not this machine's load. Each repeat sits 2 % above the one before (run-to-run drift), its
    segments 0.5 % apart, so two sides of one spec differ by about 2 %: noise below a 5 % threshold."""
    level = 1000.0 + 20 * result["spec"]["repeat"]
    result["segment_rates"] = [level + 5 * k for k in range(len(result["segment_rates"]))]


@pytest.fixture(scope="module")
def crafted(folders, tmp_path_factory) -> tuple[Path, Path]:
    """The two real folders with fixed_rates on every run: their losses, environments and pairing
    are real, their speeds are set."""
    root = tmp_path_factory.mktemp("crafted")
    return plant(folders[0], root / "side0", fixed_rates, every=True), \
        plant(folders[1], root / "side1", fixed_rates, every=True)


def compare(base: Path, new: Path, tmp_path: Path, *extra: str):
    result = run_bench("compare", str(base), str(new), "--json", str(tmp_path / "c.json"), *extra)
    record = json.loads((tmp_path / "c.json").read_text()) if (tmp_path / "c.json").exists() else None
    return result, record


def test_a_folder_against_itself_is_unchanged_everywhere(folders, tmp_path):
    result, record = compare(folders[0], folders[0], tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(record["pairs"]) == 2 and not record["only_base"] and not record["only_new"]
    for pair in record["pairs"]:
        assert pair["verdict"] == "unchanged" and pair["speed"]["ratio"] == 1.0
        assert pair["speed"]["segments"] == [REPEATS * STEPS // 100] * 2
        assert pair["losses"]["identical"] and not pair["environment"]
        assert all(q["delta"] == 0 for q in pair["quality"].values())
    assert "0 slower, 0 faster, 2 unchanged of 2 pairs" in result.stdout


def plant(folder: Path, to: Path, change, every: bool = False) -> Path:
    """A copy of a real folder with `change(result)` applied to its numpy dense runs' result files
    (to every run's with `every`)."""
    shutil.copytree(folder, to)
    for path in (to / "runs").glob("*.json"):
        result = json.loads(path.read_text())
        if every or not result["spec"]["sparse"]:
            change(result)
            path.write_text(json.dumps(result))
    return to


def slower_and_retrained(result: dict) -> None:
    result["segment_rates"] = [0.7 * r for r in result["segment_rates"]]
    result["losses"][49] += 1e-3
    result["env"]["versions"]["numpy"] = "0.0-planted"
    result["machine_load"] = {**result["machine_load"], "other_cpu_fraction": 0.5}  # as if measured beside a build


def test_a_planted_30_percent_slowdown_is_flagged(crafted, tmp_path):
    """On fixed rates (fixed_rates), so that the interval is the comparison's, not the load's."""
    slow = plant(crafted[0], tmp_path / "slow", slower_and_retrained)
    meta = json.loads((slow / "suite.json").read_text())
    (slow / "suite.json").write_text(json.dumps({**meta, "commit": "planted"}))
    result, record = compare(crafted[0], slow, tmp_path, "--out", str(tmp_path / "c.html"))
    roof = {p["name"]: p["roofline"] for p in record["pairs"]}["numpy dense cpu"]  # same runs: same bound
    assert roof["base_bound"] == roof["new_bound"] and roof["new_share"] == pytest.approx(0.7 * roof["base_share"])
    assert result.returncode == 1, result.stderr
    pairs = {p["name"]: p for p in record["pairs"]}
    dense, sparse = pairs["numpy dense cpu"], pairs["numpy sparse cpu"]
    assert dense["verdict"] == "slower" and dense["speed"]["ratio"] == pytest.approx(0.7)
    assert dense["speed"]["ci"][1] < 1
    assert dense["losses"] == {"identical": False, "max_abs_diff": pytest.approx(1e-3), "first_differing_step": 50,
                               "steps": [STEPS, STEPS]}
    assert dense["environment"]["versions.numpy"][1] == "0.0-planted"
    assert dense["environment"]["commit"][1] == "planted" and sparse["environment"] == {"commit": [meta["commit"],
                                                                                                  "planted"]}
    assert sparse["verdict"] == "unchanged" and sparse["losses"]["identical"]
    assert re.search(r"numpy dense cpu ! .* 0\.700 \[0\.\d+, 0\.\d+\] +slower +max 1\.0e-03 from step 50",
                     result.stdout)
    planted = [w for w in dense["warnings"] if w.startswith("new ") and "busy machine: other processes took 50%" in w]
    assert len(planted) == REPEATS
    page = (tmp_path / "c.html").read_text()
    assert "<tr class='bad'><td class='l'>numpy dense cpu !</td>" in page and "0.0-planted" in page
    assert "bootstrap" in page and "<svg" in page and "<script" not in page
    assert_renders(tmp_path / "c.html", tmp_path)


def test_two_real_runs_of_one_spec_pair_and_train_identically(folders, tmp_path):
    """Side 1 holds other repeats (other file names): they pair by settings and train identically,
    whatever their speeds on this machine (those are the next test's, on fixed rates)."""
    names = [{p.name for p in (f / "runs").glob("*.json")} for f in folders]
    assert not names[0] & names[1]
    result, record = compare(folders[0], folders[1], tmp_path, "--threshold", "0.05")
    assert len(record["pairs"]) == 2 and not record["only_base"] and not record["only_new"], result.stdout
    for pair in record["pairs"]:
        assert pair["verdict"] in {"unchanged", "slower", "faster"}
        assert pair["speed"]["segments"] == [REPEATS * STEPS // 100] * 2
        assert pair["losses"]["identical"]


def test_two_runs_of_one_spec_whose_speeds_differ_by_noise_are_not_flagged(crafted, tmp_path):
    """The two real folders with fixed rates 2 % apart (fixed_rates): below the 5 % threshold,
    so unchanged, and compare exits 0."""
    result, record = compare(crafted[0], crafted[1], tmp_path, "--threshold", "0.05")
    assert result.returncode == 0, result.stdout
    for pair in record["pairs"]:
        assert pair["verdict"] == "unchanged", pair["speed"]
        assert pair["speed"]["ratio"] == pytest.approx(1065 / 1045)  # pooled medians of repeats 1, 3, 5 and 0, 2, 4
        assert pair["losses"]["identical"]


def test_only_one_side_and_failed_runs_are_listed_not_timed(folders, tmp_path, ptb_dir):
    other = tmp_path / "other"
    plan = [numpy_run(), numpy_run(seed=1, max_steps=3), numpy_run(optimizer="sgd", lr=1e300, max_steps=5)]
    dense = run_plan(other, plan, ptb_dir, timeout=600)[0]
    failed = {**dense, "status": "failed", "error": "planted"}  # a failed record says why (bench/results/schema.py)
    next((other / "runs").glob(f"{plan[0].name}*.json")).write_text(json.dumps(failed))
    result, record = compare(folders[0], other, tmp_path)
    assert result.returncode == 0, result.stderr
    (pair,) = record["pairs"]
    assert pair["verdict"] == "not compared" and pair["new_status"] == ["failed"] and pair["speed"] is None
    assert [r["name"] for r in record["only_base"]] == ["numpy sparse cpu"]
    assert {r["status"][0] for r in record["only_new"]} == {"ok", "diverged"}
    assert "only in new:" in result.stdout and "only in base: numpy sparse cpu" in result.stdout


def test_bad_input_is_one_line(folders, tmp_path, ptb_dir):
    base = str(folders[0])
    assert_one_line_error(run_bench("compare", base, str(tmp_path / "missing")), "not found")
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    assert_one_line_error(run_bench("compare", str(tmp_path / "empty"), base), "no results in")
    corrupt = shutil.copytree(folders[1], tmp_path / "corrupt")
    next((corrupt / "runs").glob("*.json")).write_text('{"status": "ok", "spec": ')
    assert_one_line_error(run_bench("compare", base, str(corrupt)), "corrupt result", "unreadable result")
    no_meta = shutil.copytree(folders[1], tmp_path / "no-meta")
    (no_meta / "suite.json").write_text("{")
    assert_one_line_error(run_bench("compare", base, str(no_meta)), "suite.json is missing or corrupt")
    run_plan(tmp_path / "elsewhere", [numpy_run(seed=1, max_steps=3)], ptb_dir, timeout=600)
    assert_one_line_error(run_bench("compare", base, str(tmp_path / "elsewhere")), "nothing to compare")
    assert_one_line_error(run_bench("compare", base, base, "--threshold", "2"), "--threshold must be in [0, 1)")
    again = f"{base}/../{folders[0].name}"  # the same folder by another spelling: not a second round
    assert_one_line_error(run_bench("compare", f"{base},{again}", str(folders[1])),
                          f"{base} and {again} are one folder", "name each round's folder once")
    assert_one_line_error(run_bench("history", base, str(corrupt)), "corrupt result")


def test_verdict_needs_the_interval_and_the_threshold():
    assert verdict(0.7, 0.6, 0.8, 0.05) == "slower"
    assert verdict(0.97, 0.95, 0.99, 0.05) == "unchanged"  # significant but below the threshold
    assert verdict(0.7, 0.5, 1.1, 0.05) == "unchanged"  # large but inside the noise
    assert verdict(1.3, 1.2, 1.4, 0.05) == "faster"
    assert loss_difference([1.0, 2.0], [1.0, 2.0, 3.0])["first_differing_step"] == 3  # one ran longer


def test_settings_that_share_a_label_are_told_apart_and_repeats_are_not():
    specs = [make_spec({"backend": "torch", **extra}, "test").to_dict()
             for extra in ({}, {"batch_size": 128}, {"repeat": 1})]
    keys = [settings_key(spec) for spec in specs]
    assert keys[0] == keys[2] != keys[1]
    shown = names({keys[0]: specs[0], keys[1]: specs[1]})
    assert shown == {keys[0]: "torch dense cpu (data.batch_size=512)", keys[1]: "torch dense cpu (data.batch_size=128)"}


def test_history_page(folders, tmp_path):
    later = plant(folders[1], tmp_path / "later", slower_and_retrained)
    meta = json.loads((later / "suite.json").read_text())
    (later / "suite.json").write_text(json.dumps({**meta, "created": "2999-01-01T00:00:00+00:00", "commit": "fut"}))
    out = tmp_path / "history.html"
    result = run_bench("history", str(later), str(folders[0]), str(folders[1]), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "history of 2 run settings over 3 folders" in result.stdout
    page = out.read_text()
    titles = re.findall(r"<title>([^<]*)</title>", page)[1:]  # the first is the page's own
    assert len(titles) == 2 * 2 * 3  # two settings x (speed, loss) x three folders
    numpy_version = json.loads(next((folders[0] / "runs").glob("*.json")).read_text())["env"]["versions"]["numpy"]
    assert any(f"commit {meta['commit']}" in t and f"numpy {numpy_version}" in t for t in titles)
    assert any("2999-01-01T00:00:00+00:00, commit fut" in t and "numpy 0.0-planted" in t for t in titles)
    assert f"numpy {numpy_version} → 0.0-planted" in page  # the version mark, on the folder that changed it
    assert page.index(str(folders[0])) < page.index(str(later))  # ordered by date, not by argument
    assert "<script" not in page
    assert_renders(out, tmp_path)


def test_bootstrap_interval_is_seeded(folders, tmp_path):
    first = compare(folders[0], folders[1], tmp_path)[1]
    second = compare(folders[0], folders[1], tmp_path)[1]
    assert [p["speed"]["ci"] for p in first["pairs"]] == [p["speed"]["ci"] for p in second["pairs"]]
    assert all(np.isfinite(p["speed"]["ci"]).all() for p in first["pairs"])


def test_run_to_run_drift_widens_the_interval():
    """Three runs a side whose levels drift (a neighbour moving whole runs), same code: the
    two-level bootstrap resamples runs, so the interval holds 1; pooled into one run, the same
    segments would look like a certain 3 % change."""
    from bench.reporting.compare import bootstrap_ratio

    rng = np.random.default_rng(7)
    base = [list(level + rng.normal(0, 1, 40)) for level in (100, 92, 105)]
    new = [list(level + rng.normal(0, 1, 40)) for level in (97, 108, 89)]
    ratio, low, high = bootstrap_ratio(base, new, seed=0)
    assert low < 1 < high and high - low > 0.1
    _, pooled_low, pooled_high = bootstrap_ratio([sum(base, [])], [sum(new, [])], seed=0)
    assert pooled_high - pooled_low < (high - low) / 2


def test_a_side_may_be_several_folders_whose_runs_are_pooled(folders, tmp_path):
    """Rounds alternated in time are folders of their own (one plan, one code version each):
    side 0 split in two folders compares exactly as side 0 whole."""
    parts = [shutil.copytree(folders[0], tmp_path / f"part{i}") for i in range(2)]
    for i, part in enumerate(parts):
        for path in (part / "runs").glob("*.json"):
            if (json.loads(path.read_text())["spec"]["repeat"] == 0) != (i == 0):
                path.unlink()
    (tmp_path / "whole").mkdir()
    (tmp_path / "split").mkdir()
    _, whole = compare(folders[0], folders[1], tmp_path / "whole")
    result, split = compare(Path(f"{parts[0]},{parts[1]}"), folders[1], tmp_path / "split")
    assert result.returncode == 0, result.stderr
    assert [p["speed"] for p in split["pairs"]] == [p["speed"] for p in whole["pairs"]]
    assert split["folders"]["base"]["path"] == f"{parts[0]},{parts[1]}"
