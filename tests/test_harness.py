"""The harness: runs survive crashes, hangs and divergence; an interrupted suite resumes."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.executing.suite import FRAMEWORKS, PlannedRun, default_plan, load_suite_file, make_spec, planned
from common.errors import BenchError
from tests.conftest import ROOT, run_bench, run_plan
from tests.data.test_bad_input import assert_one_line_error

pytestmark = pytest.mark.envs  # numpy runs go through the tests env's interpreter


def numpy_run(**settings) -> PlannedRun:
    return planned(make_spec({"backend": "numpy", "epochs": 1, "max_steps": 3, **settings}, "test"))


def test_crash_hang_and_divergence_are_results_and_the_suite_goes_on(tmp_path, ptb_dir):
    plan = [numpy_run(device="cuda"),                                  # exits 2 before writing a result
            numpy_run(optimizer="sgd", lr=1e300, max_steps=5),          # diverges
            numpy_run(seed=1)]                                          # fine
    results = {r["spec"]["device"] + r["spec"]["optimizer"] + str(r["spec"]["data"]["seed"]): r
               for r in run_plan(tmp_path, plan, ptb_dir)}
    crashed, diverged, fine = results["cudaadam0"], results["cpusgd0"], results["cpuadam1"]
    assert crashed["status"] == "failed" and "'cuda' is not available" in crashed["error"]
    assert diverged["status"] == "diverged" and diverged["losses"]
    assert fine["status"] == "ok" and fine["steps"] == 3
    hung = run_plan(tmp_path / "slow", [numpy_run(max_steps=5000)], ptb_dir, timeout=0.5)  # a minute's work
    assert hung[0]["status"] == "timed_out" and "--timeout" in hung[0]["error"]


def test_interrupted_suite_resumes_without_redoing_finished_runs(tmp_path, ptb_dir):
    out = tmp_path / "suite"
    suite = tmp_path / "s.toml"
    suite.write_text('[base]\nepochs = 1\nmax_steps = 3\n[[runs]]\nbackend = "numpy"\nseed = [1, 2, 3]\n'
                     'runner = "backend"\n')
    args = ["suite", "--suite", str(suite), "--out", str(out), "--data-dir", str(ptb_dir)]
    env = {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=ROOT, env={**__import__("os").environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / "runs").glob("*.json")) and time.time() < deadline:
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    first = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert 1 <= len(first) < 3
    resumed = run_bench("suite", "--resume", str(out), "--data-dir", str(ptb_dir))  # the plan is stored
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {len(first)} of 3 runs already finished" in resumed.stderr
    after = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert len(after) == 3 and all(after[name] == mtime for name, mtime in first.items())
    assert (out / "index.html").exists()


@pytest.mark.parametrize("args, fragments", [
    (["--backends", "torch,theano"], ["unknown backend theano", "available: torch, mxnet, tensorflow"]),
    (["--devices", "tpu"], ["unknown device tpu", "available: cpu, cuda"]),
    (["--suite", "nope.toml"], ["suite file nope.toml not found"]),
    (["--resume", "/nonexistent"], ["holds no suite to resume"]),
])
def test_bad_suite_arguments(args, fragments, ptb_dir):
    assert_one_line_error(run_bench("suite", *args, "--data-dir", str(ptb_dir)), *fragments)


@pytest.mark.parametrize("text, fragment", [
    ("[[runs]\nbackend='torch'", "not valid TOML"),
    ("[base]\nepochs = 1\n", "one or more [[runs]]"),
    ("[[runs]]\nbackend = 'torch'\nlearning_rate = 0.1\n", "unknown setting(s) learning_rate"),
    ("[[runs]]\nlr = 0.1\n", "names no backend"),
    ("[[runs]]\nbackend = 'theano'\n", "unknown backend 'theano'"),
    ("[[runs]]\nbackend = 'torch'\nlr = [-1.0]\n", "learning rate must be > 0"),
])
def test_malformed_suite_file(tmp_path, text, fragment):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(BenchError) as caught:
        load_suite_file(path, {})
    assert fragment in str(caught.value)
    assert_one_line_error(run_bench("suite", "--suite", str(path)), fragment)


def test_sweeps_cross_their_lists(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[base]\nepochs = 2\n[[runs]]\nbackend = 'torch'\nsparse = [false, true]\n"
                    "lr = [0.001, 0.01]\nsampling = ['static', 'dynamic']\n")
    plan = load_suite_file(path, {"max_steps": 50})
    assert len(plan) == 8 and len({p.name for p in plan}) == 8
    assert all(p.spec.data.epochs == 2 and p.spec.max_steps == 50 for p in plan)
    named = [p for p in plan if p.name.startswith("torch-sparse-cpu_lr-0.01_max_steps-50_epochs-2_sampling-dynamic_")]
    assert len(named) == 1 and named[0].name.endswith(named[0].key[:8])
    assert json.dumps([p.spec.to_dict() for p in plan])  # serialisable for suite.json


@pytest.mark.parametrize("path", sorted((ROOT / "bench" / "suites").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_suite_files_plan_distinct_runs(path):
    plan = load_suite_file(path, {})
    assert plan and len({p.name for p in plan}) == len(plan)


def test_overhead_suite_alternates_identical_twins():
    """bench/suites/overhead.toml: each worker run right after its bare-loop twin, same spec otherwise."""
    plan = load_suite_file(ROOT / "bench" / "suites" / "overhead.toml", {})
    assert len(plan) == 32 and len({p.name for p in plan}) == 32
    for bare, run in zip(plan[::2], plan[1::2]):
        assert (bare.spec.runner, run.spec.runner) == ("bare-loop", "backend")
        assert {**bare.spec.to_dict(), "runner": "backend"} == run.spec.to_dict()
        assert bare.env == run.env


def test_default_plan_runs_each_framework_in_each_mode_it_declares(monkeypatch):
    """Each framework at its best: dense and sparse, each compiled too where the backend has a
    compiler (TensorFlow's compiled sparse step is its fastest on PTB), and nothing it lacks; on
    the packed layout where a backend declares it, with its dense step padded too (what padding
    costs), except the limit row, which never computes padding; torch's packed pair on 2 DDP ranks."""
    from backends import registry

    for name in ("torch", "fused"):  # two that train packed, whatever the others declare today
        monkeypatch.setitem(registry.BACKENDS, name, registry.BACKENDS[name]._replace(layouts=("padded", "packed")))
    for name in ("mxnet", "tensorflow", "jax"):
        monkeypatch.setitem(registry.BACKENDS, name, registry.BACKENDS[name]._replace(layouts=("padded",)))
    labels = {r.spec.label for r in default_plan(list(FRAMEWORKS), ["cpu"], {})}
    torch = {f"torch {m} packed cpu" for m in ("dense", "sparse", "dense compiled", "sparse compiled")}
    tensorflow = {f"tensorflow {m} cpu" for m in ("dense", "sparse", "dense compiled", "sparse compiled")}
    plain = {f"{b} {m} cpu" for b in ("mxnet", "jax") for m in ("dense", "sparse")}
    limit = {"fused dense packed cpu", "fused sparse packed cpu"}
    parallel = {"torch dense packed cpu x2", "torch sparse packed cpu x2"}  # DDP beside the one-process twins
    assert labels == (torch | {"torch dense cpu"} | tensorflow | plain | limit | parallel
                      | {"recipe-loop", "gensim"})


def test_an_existing_interpreter_can_stand_in_for_a_tox_env(monkeypatch, tmp_path, ptb_dir):
    """SKIPGRAM_PYTHON_<ENV>: machines where the frameworks are installed and tox cannot fetch them."""
    from bench.executing import envs

    monkeypatch.setenv("SKIPGRAM_TOX_WORKDIR", str(tmp_path / "no-tox-envs-here"))
    monkeypatch.setenv("SKIPGRAM_PYTHON_TESTS", sys.executable)
    assert envs.python_for("tests") == Path(sys.executable)
    result = run_plan(tmp_path / "out", [numpy_run(max_steps=2)], ptb_dir)
    assert result[0]["status"] == "ok" and result[0]["steps"] == 2
    monkeypatch.setenv("SKIPGRAM_PYTHON_TESTS", str(tmp_path / "missing-python"))
    with pytest.raises(BenchError, match="SKIPGRAM_PYTHON_TESTS=.* is not an executable python"):
        envs.python_for("tests")
    failed = run_plan(tmp_path / "out2", [numpy_run(max_steps=2)], ptb_dir)
    assert failed[0]["status"] == "failed" and "SKIPGRAM_PYTHON_TESTS" in failed[0]["error"]


def test_an_env_whose_build_was_cut_short_is_built_again(monkeypatch, tmp_path):
    """A harness killed while tox built an env leaves `<env>.building` beside it: that env's
    python exists but its packages may not, so it is built again, not used."""
    from bench.executing import envs

    monkeypatch.setenv("SKIPGRAM_TOX_WORKDIR", str(tmp_path))
    python = tmp_path / "no-such-env" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    assert envs.python_for("no-such-env") == python  # built by tox itself: used as it is
    (tmp_path / "no-such-env.building").touch()
    with pytest.raises(BenchError, match="could not build the 'no-such-env' env with tox"):
        envs.python_for("no-such-env")  # tox is asked again (and knows no such env)
