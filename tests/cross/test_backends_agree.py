"""Every backend, each in its own env and process, trains on one spec: same data, same losses.

Tolerance: 1e-4 on every step's loss between any two backends, the same bound each meets
against the float64 reference in its contract tests (two float32 runs may differ by twice
that in principle; observed gaps are ~1e-6, see the closing note of the backends issue).
"""
from __future__ import annotations

import itertools
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from backends.registry import BACKENDS, tox_env
from bench.executing.envs import python_for
from tests.conftest import run_bench

pytestmark = pytest.mark.envs
STEPS = 60


@pytest.fixture(scope="module", params=["dense", "sparse", "dense-packed", "sparse-packed"])
def results(request, ptb_dir, tmp_path_factory) -> dict[str, dict]:
    """Every backend on one spec; on the packed layout each backend that declares it (the float64
    reference stays padded: the same function, so the same losses within the same bound)."""
    out = tmp_path_factory.mktemp(request.param)
    pythons = {name: str(python_for(tox_env(name))) for name in BACKENDS}  # builds missing envs, one at a time

    def train(name: str) -> dict:
        args = ["train", "--backend", name, "--max-steps", str(STEPS), "--lr", "0.01",
                "--data-dir", str(ptb_dir), "--out", str(out / f"{name}.json")]
        if request.param.startswith("sparse"):
            args.append("--sparse")
        if request.param.endswith("packed") and "packed" in BACKENDS[name].layouts:
            args += ["--layout", "packed"]
        run = run_bench(*args, python=pythons[name])
        assert run.returncode == 0, f"{name}: {run.stderr[-2000:]}"
        return json.loads((out / f"{name}.json").read_text())

    # Independent processes, nothing timed: as many at once as there are cores (most of each is start-up).
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(BACKENDS, pool.map(train, BACKENDS)))


def test_all_backends_saw_the_same_data(results):
    hashes = {name: r["data_hash"] for name, r in results.items()}
    assert len(set(hashes.values())) == 1, hashes
    assert all(r["steps"] == STEPS and r["status"] == "ok" for r in results.values())


def test_loss_trajectories_agree(results):
    for a, b in itertools.combinations(results, 2):
        gap = np.max(np.abs(np.array(results[a]["losses"]) - np.array(results[b]["losses"])))
        assert gap <= 1e-4, f"{a} vs {b}: max |loss difference| {gap:.2e}"


def test_results_record_their_environment(results):
    for name, r in results.items():
        env = r["env"]
        assert env["backend"] == name and env["python"].startswith("3.11")
        assert env["cpu"] and env["device_name"]
        assert r["examples_per_sec"] > 0 and len(r["epoch_seconds"]) == 1


def test_each_backend_trained_on_the_layout_asked_for(results, request):
    packed = request.node.callspec.params["results"].endswith("packed")
    for name, r in results.items():
        expected = "packed" if packed and "packed" in BACKENDS[name].layouts else "padded"
        assert r["spec"].get("layout", "padded") == expected, name
