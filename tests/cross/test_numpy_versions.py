"""The same stream in every backend env, whatever numpy each has (1.23 for MXNet, 2.x for TF)."""
from __future__ import annotations

import json
import subprocess

import pytest

from bench.executing.envs import python_for
from tests.conftest import run_bench

pytestmark = pytest.mark.envs


def test_streams_agree_across_numpy_versions(ptb_dir):
    args = ("data", "--summary", "--epochs", "2", "--sampling", "dynamic", "--data-dir", str(ptb_dir))
    versions, hashes = {}, {}
    for env in ("mxnet", "tensorflow"):
        python = str(python_for(env))
        result = run_bench(*args, python=python)
        assert result.returncode == 0, result.stderr
        hashes[env] = json.loads(result.stdout)["data_hash"]
        versions[env] = subprocess.run([python, "-c", "import numpy; print(numpy.__version__)"],
                                       capture_output=True, text=True, check=True).stdout.strip()
    assert versions["mxnet"].startswith("1.23") and versions["tensorflow"].startswith("2.")
    local = json.loads(run_bench(*args).stdout)["data_hash"]
    assert hashes["mxnet"] == hashes["tensorflow"] == local

