"""`python -m bench train` / `neighbours` end to end with the numpy reference (fast, no framework)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bench.running import bare_loop, train_command, worker
from common.batches import StreamHash, load_dataset
from common.errors import BenchError
from common.spec import DataSpec, RunSpec
from tests.conftest import ROOT, run_bench
from tests.data.test_bad_input import assert_one_line_error


def test_train_writes_a_complete_result(ptb_dir, tmp_path):
    out, vectors = tmp_path / "r.json", tmp_path / "v.txt"
    run = run_bench("train", "--backend", "numpy", "--max-steps", "4", "--data-dir", str(ptb_dir),
                    "--out", str(out), "--export-vectors", str(vectors))
    assert run.returncode == 0, run.stderr
    assert "examples/sec" in run.stdout and "chip:" in run.stdout
    r = json.loads(out.read_text())
    assert r["status"] == "ok" and r["error"] is None and r["steps"] == 4 and len(r["losses"]) == 4
    assert r["examples"] == 4 * 512 and r["spec"]["backend"] == "numpy"
    assert set(r["env"]) >= {"python", "cpu", "versions", "device_name", "cpu_count"}
    assert r["final_loss"] == pytest.approx(np.mean(r["losses"]))
    assert len(r["neighbours"]["chip"]) == 3
    digest = StreamHash()
    for _, batch in zip(range(4), load_dataset(DataSpec(), data_dir=str(ptb_dir)).epoch(0)):
        digest.update(batch)
    assert r["data_hash"] == digest.hexdigest()

    gensim = pytest.importorskip("gensim.models")
    kv = gensim.KeyedVectors.load_word2vec_format(str(vectors))
    assert len(kv) == r["vocab_size"] and kv.vector_size == 100
    near = run_bench("neighbours", "--vectors", str(vectors), "--word", "chip", "-k", "3")
    assert near.returncode == 0 and len(near.stdout.strip().splitlines()) == 3
    words = [line.split(": ")[1] for line in near.stdout.strip().splitlines()]
    assert words == [w for w, _ in r["neighbours"]["chip"]]
    assert_one_line_error(run_bench("neighbours", "--vectors", str(vectors), "--word", "zzzq"), "not in the vocabulary")
    assert_one_line_error(run_bench("neighbours", "--vectors", str(out), "--word", "chip"), "word2vec text format")


def test_diverging_run_is_recorded_and_exits_non_zero(ptb_dir, tmp_path):
    out = tmp_path / "r.json"
    run = run_bench("train", "--backend", "numpy", "--optimizer", "sgd", "--lr", "1e300", "--max-steps", "6",
                    "--data-dir", str(ptb_dir), "--out", str(out))
    assert_one_line_error(run, "diverged", "lower --lr")
    r = json.loads(out.read_text())
    assert r["status"] == "diverged" and not np.isfinite(r["losses"][-1])
    assert all(np.isfinite(r["losses"][:-1])) and r["data_hash"]


@pytest.mark.parametrize("args, fragments", [
    (["--backend", "theano"], ["unknown backend 'theano'", "numpy, torch, mxnet, tensorflow, jax"]),
    (["--backend", "numpy", "--device", "cuda"], ["'cuda' is not available", "available: cpu"]),
    (["--backend", "numpy", "--compile"], ["no compiled variant"]),
    (["--backend", "numpy", "--lr", "-1"], ["learning rate must be > 0"]),
    (["--backend", "numpy", "--lr", "inf"], ["learning rate must be > 0 and finite, got inf"]),
    (["--backend", "numpy", "--lr", "nan"], ["learning rate must be > 0 and finite, got nan"]),
    (["--backend", "numpy", "--max-steps", "0"], ["max steps must be >= 1"]),
])
def test_bad_train_settings(ptb_dir, args, fragments):
    assert_one_line_error(run_bench("train", *args, "--data-dir", str(ptb_dir)), *fragments)


def test_backend_missing_from_this_env_says_where_it_lives(ptb_dir):
    pytest.importorskip("numpy")
    try:
        import tensorflow  # noqa: F401
        pytest.skip("tensorflow is importable here")
    except ImportError:
        pass
    run = run_bench("train", "--backend", "tensorflow", "--data-dir", str(ptb_dir))
    assert_one_line_error(run, "cannot be imported", "tox -e tensorflow")


def test_crashing_backend_becomes_a_failed_result(monkeypatch, tmp_path):
    def crash(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory\nmore lines")

    monkeypatch.setattr(worker, "train", crash)
    args = argparse.Namespace(backend="numpy", spec=None, runner="backend", progress=False, device="cpu",
                              sparse=False, optimizer="adam", lr=0.01, max_steps=None, compile=False, graph=False,
                              layout="padded", workers=1, out=str(tmp_path / "r.json"), export_vectors=None,
                              data_dir=None, no_download=True, **DataSpec().to_dict(), corpus="ptb")
    args.__dict__.pop("subsample")
    with pytest.raises(BenchError, match="numpy run failed: RuntimeError: CUDA error: out of memory"):
        train_command.run(args)
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["status"] == "failed" and "out of memory" in r["error"] and "Traceback" in r["traceback"]


def test_bare_loop_trains_exactly_what_the_worker_trains(ptb_dir):
    """The overhead comparison is fair only if both loops do the same work on the same batches."""
    spec = RunSpec(backend="numpy", data=DataSpec(epochs=2), max_steps=4)
    via_worker = worker.train(spec, str(ptb_dir), download=False)
    bare = bare_loop.train(RunSpec.from_dict({**spec.to_dict(), "runner": "bare-loop"}), str(ptb_dir), download=False)
    assert bare["status"] == "ok" and bare["steps"] == via_worker["steps"] == 4
    assert bare["losses"] == via_worker["losses"] and bare["examples"] == via_worker["examples"]
    assert bare["examples_per_sec"] > 0 and bare["data_hash"] is None and bare["evaluation"] == {}


def test_bare_loop_from_the_command_line_and_its_label(ptb_dir, tmp_path):
    out = tmp_path / "r.json"
    run = run_bench("train", "--backend", "numpy", "--runner", "bare-loop", "--max-steps", "3",
                    "--data-dir", str(ptb_dir), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "[numpy dense cpu bare-loop, adam lr 0.002]" in run.stdout
    assert json.loads(out.read_text())["steps"] == 3
    assert_one_line_error(run_bench("train", "--spec", str(_spec_file(tmp_path, repeat=-1))), "repeat must be >= 0")


def _spec_file(folder, **settings):
    path = folder / "spec.json"
    path.write_text(json.dumps({**RunSpec(backend="numpy").to_dict(), **settings}))
    return path


@pytest.mark.parametrize("unbuffered", [False, True], ids=["block-buffered", "unbuffered"])
def test_output_into_a_closed_pipe_is_not_a_traceback(ptb_dir, tmp_path, unbuffered):
    """`python -m bench train ... | head -1`: the reader leaves early; the result file is still whole."""
    out = tmp_path / "r.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(PYTHONPATH=str(ROOT), **({"PYTHONUNBUFFERED": "1"} if unbuffered else {}))
    read, write = os.pipe()
    os.close(read)  # nobody will read: the first print raises BrokenPipeError
    proc = subprocess.run([sys.executable, "-m", "bench", "train", "--backend", "numpy", "--max-steps", "2",
                           "--data-dir", str(ptb_dir), "--out", str(out)], cwd=ROOT, stdout=write,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    os.close(write)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(out.read_text())["steps"] == 2


@pytest.mark.parametrize("args, fragment", [
    (["--workers", "3"], "3 workers cannot split a batch of 512 into equal slices"),
    (["--workers", "2", "--runner", "bare-loop"], "the bare-loop runner trains in one process: drop --workers"),
    (["--workers", "2"], "numpy has no data-parallel engine (drop workers)"),
])
def test_workers_that_cannot_run_are_one_line(args, fragment):
    assert_one_line_error(run_bench("train", "--backend", "numpy", "--no-download", *args), fragment)


def test_a_suite_sweeping_workers_is_refused_where_the_backend_has_no_engine(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text("[[runs]]\nbackend = 'numpy'\nworkers = [1, 2]\n")
    assert_one_line_error(run_bench("suite", "--suite", str(suite), "--dry-run"),
                          "numpy has no data-parallel engine (drop workers)")
