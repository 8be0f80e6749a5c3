"""GPUs as the harness sees them (nvidia-smi, never a framework) and what planning makes of them:
each framework's GPU env, skipped rows for GPUs a framework's wheel has no kernels for, and one
clear error for a GPU the machine does not have. A fake nvidia-smi on PATH stands in for the GPU."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.executing import envs
from bench.executing.gpus import Gpu, gpu_names, gpus
from bench.executing.suite import PlannedRun, default_plan, for_machine, make_spec, planned
from common.errors import BenchError
from common.spec import RunSpec
from tests.conftest import run_bench, run_plan
from tests.data.test_bad_input import assert_one_line_error

H100 = Gpu("NVIDIA H100 80GB HBM3", (9, 0))
A100 = Gpu("NVIDIA A100-SXM4-40GB", (8, 0))


def fake_nvidia_smi(folder: Path, output: str, status: int = 0) -> str:
    """A PATH holding only an nvidia-smi that prints `output` for the query the harness makes."""
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n[ \"$1\" = --query-gpu=name,compute_cap ] || exit 3\n"
                      f"printf '{output}'\nexit {status}\n")
    script.chmod(0o755)
    return str(folder)


def test_gpus_are_parsed_with_their_compute_capability(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "bin",
                                               "NVIDIA H100 80GB HBM3, 9.0\\nNVIDIA A100-SXM4-40GB, 8.0\\n"))
    assert gpus() == [H100, A100]
    assert gpu_names() == ["NVIDIA H100 80GB HBM3 (compute capability 9.0)",
                           "NVIDIA A100-SXM4-40GB (compute capability 8.0)"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # the framework's cuda:0 is then the A100
    assert gpus() == [A100]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpus() == []


def test_no_or_failing_nvidia_smi_means_no_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi at all
    assert gpus() == []
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "bin", "NVIDIA-SMI has failed\\n", status=9))
    assert gpus() == []
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "old", "Tesla K80, [N/A]\\n"))
    assert gpus() == [Gpu("Tesla K80", None)]  # capability unknown: not skipped, the framework decides


def test_cuda_runs_use_each_frameworks_gpu_env():
    plan = {(r.spec.backend, r.spec.device): r.env for r in default_plan(["torch", "mxnet", "tensorflow", "jax"],
                                                                           ["cpu", "cuda"], {}, baselines=False)}
    assert plan[("torch", "cuda")] == plan[("torch", "cpu")] == "torch"
    assert [plan[(b, "cuda")] for b in ("mxnet", "tensorflow", "jax")] == ["mxnet-cuda", "tensorflow-cuda", "jax-cuda"]
    assert [plan[(b, "cpu")] for b in ("mxnet", "tensorflow", "jax")] == ["mxnet", "tensorflow", "jax"]


def test_a_gpu_without_kernels_for_a_framework_plans_a_skipped_row():
    plan = default_plan(["torch", "mxnet", "jax"], ["cuda"], {}, baselines=False)
    on_h100 = for_machine(plan, [H100])
    skipped = {r.spec.label: r.skip for r in on_h100 if r.skip}
    assert set(skipped) == {"mxnet dense cuda", "mxnet dense packed cuda", "mxnet sparse packed cuda"}
    assert all("compute capability 8.6" in why and "is 9.0" in why and "H100" in why for why in skipped.values())
    assert "torch dense graphed packed cuda" in {r.spec.label for r in on_h100}
    assert not any(r.skip for r in for_machine(plan, [A100]))  # Ampere: MXNet's kernels exist
    stored = PlannedRun.from_dict(on_h100[-1].to_dict() if on_h100[-1].skip else
                                  next(r for r in on_h100 if r.skip).to_dict())
    assert stored.skip and stored.skip in skipped.values()  # --resume keeps the reason


def test_a_gpu_the_machine_lacks_is_an_error():
    run = planned(RunSpec(backend="torch", device="cuda:1"))
    with pytest.raises(BenchError, match="has 1 GPU"):
        for_machine([run], [H100])
    with pytest.raises(BenchError, match="nvidia-smi sees no GPU"):
        for_machine([run], [])
    assert for_machine([planned(RunSpec(backend="torch"))], [])[0].skip is None


def test_devices_cuda_without_a_gpu_is_one_line_exit_2(tmp_path):
    path = os.pathsep.join([str(tmp_path), os.path.dirname(os.sys.executable)])
    assert_one_line_error(run_bench("suite", "--devices", "cuda", "--backends", "torch", "--dry-run",
                                    env={"PATH": path}), "nvidia-smi sees no GPU")
    assert_one_line_error(run_bench("train", "--backend", "numpy", "--graph"), "CUDA graphs need a cuda device")


def test_dry_run_shows_skipped_rows_and_gpu_envs(tmp_path, ptb_dir):
    path = os.pathsep.join([fake_nvidia_smi(tmp_path / "bin", "NVIDIA H100 80GB HBM3, 9.0\\n"),
                            os.path.dirname(os.sys.executable)])
    out = run_bench("suite", "--devices", "cuda", "--backends", "torch,mxnet", "--no-baselines", "--dry-run",
                    "--out", str(tmp_path / "out"), "--data-dir", str(ptb_dir),
                    env={"PATH": path, "SKIPGRAM_PYTHON_TORCH": "python3", "CUDA_VISIBLE_DEVICES": "0"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # torch: dense, sparse, each compiled, graphed, all packed, and dense padded; mxnet: the same, less its
    # compiler and graphs
    assert "plan: 9 runs" in lines[0] and "(6 to run, 3 skipped)" in lines[0]
    assert any("torch-sparse-compiled-packed-cuda" in line.split()[0] for line in lines[1:])
    mxnet = [line for line in lines if "mxnet-" in line.split()[0]]
    assert len(mxnet) == 3 and all("env=mxnet-cuda" in line and "skip: mxnet's GPU build has kernels up to "
                                   "compute capability 8.6" in line for line in mxnet)
    graphed = next(line for line in lines if "torch-dense-graphed-packed-cuda" in line)
    assert "env=torch (named by SKIPGRAM_PYTHON_TORCH)" in graphed and "run: not run yet" in graphed
    assert not (tmp_path / "out").exists()


def test_skipped_rows_are_recorded_unstarted_and_reported(tmp_path, ptb_dir):
    from markupsafe import escape

    from bench.reporting import report

    why = "mxnet's GPU build has kernels up to compute capability 8.6 and no PTX; NVIDIA H100 (cuda) is 9.0"
    skip = PlannedRun("mxnet-dense-cuda", make_spec({"backend": "mxnet", "device": "cuda"}, "test"), skip=why)
    fine = planned(make_spec({"backend": "numpy", "epochs": 1, "max_steps": 2}, "test"))
    results = run_plan(tmp_path, [skip, fine], ptb_dir)
    assert results[0]["status"] == "skipped" and results[0]["error"] == why
    assert results[1]["status"] == "ok"
    assert not [p for p in (tmp_path / "logs").iterdir() if p.name.startswith("mxnet")]  # never started
    page = report.render(tmp_path).read_text()
    assert "1 of 2 runs finished, 1 skipped" in page and "Skipped runs" in page and escape(why) in page
    assert "Every run finished." in page  # a skipped row is not a failure


def test_a_gpu_env_is_named_by_its_own_variable_or_its_cpu_envs(monkeypatch, tmp_path):
    assert envs.python_variables("tensorflow-cuda") == ["SKIPGRAM_PYTHON_TENSORFLOW_CUDA", "SKIPGRAM_PYTHON_TENSORFLOW"]
    monkeypatch.delenv("SKIPGRAM_PYTHON_JAX_CUDA", raising=False)
    monkeypatch.setenv("SKIPGRAM_PYTHON_JAX", os.sys.executable)
    assert envs.python_for("jax-cuda", build=False) == Path(os.sys.executable)
    other = tmp_path / "python"
    other.symlink_to(os.sys.executable)
    monkeypatch.setenv("SKIPGRAM_PYTHON_JAX_CUDA", str(other))
    assert envs.python_for("jax-cuda", build=False) == other and envs.naming_variable("jax-cuda").endswith("_CUDA")
    assert envs.python_for("jax", build=False) == Path(os.sys.executable)  # the CPU env never takes the GPU one's


def test_graph_is_left_out_of_older_keys():
    """Specs stored before RunSpec.graph existed keep their keys (resume, compare across folders)."""
    plain = RunSpec(backend="torch", device="cuda")
    assert "graph" not in plain.to_dict() and RunSpec.from_dict(plain.to_dict()) == plain
    graphed = RunSpec(backend="torch", device="cuda", graph=True)
    assert graphed.to_dict()["graph"] is True and graphed.key != plain.key
    assert graphed.label == "torch dense graphed cuda"
