"""Data-parallel runs of the backend under test (SKIPGRAM_BACKEND) on its own engine, end to end through
`python -m bench train --workers 2` (docs/data-parallel.md); skipped with the registry's reason where
the backend declares no engine.

- N = 2 against N = 1, every variant the registry lets run on 2 workers, 200 real PTB steps: each
  step's loss within 1e-5. The two compute one function; they differ by float32 summation order (the
  engine sums two half-batch gradients where one process scatter-adds the whole batch: about 1e-7
  relative a step), which Adam's normalised steps carry on. 1e-5 is ten times inside the contract
  tests' 1e-4 against the float64 reference, so it is a check of the sharding, not of float32.
- Counted bytes equal the engine's model (common.comm.model) on the same steps' SliceRows, built from
  the data layer as the ranks shard: exactly for torch (the same arithmetic: relative 1e-12 for the
  means over steps), within 1 % for the others (issue 32's target).
- Faults: a rank killed fails the run naming it; SIGINT, SIGTERM and SIGKILL of the harness leave no
  process of the run (read from /proc); a port taken is one line naming it; N above the cores the run
  is given (its affinity) runs and is recorded as oversubscribed.
Runs are shared between assertions and kept to the fewest that cover each check (CI time).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from backends import registry
from bench.results.store import load_result
from bench.running import data_parallel, worker
from common import comm
from common.batches import load_dataset
from common.errors import BenchError
from common.sharding import World, shard
from common.spec import DataSpec, RunSpec
from tests.conftest import BACKEND, ROOT, SMALL_STEPS
from tests.test_integrity import gone

ENTRY = registry.info(BACKEND)
REFUSED = registry.refusal(RunSpec(backend=BACKEND, workers=2))
pytestmark = pytest.mark.skipif(REFUSED is not None, reason=str(REFUSED))

STEPS = 200
LOSS_TOLERANCE = 1e-5
BYTES_TOLERANCE = 1e-12 if BACKEND == "torch" else 0.01
DATA = DataSpec(epochs=1, **SMALL_STEPS)


def variants() -> list[RunSpec]:
    """Dense Adam, lazy Adam and SGD (the contract tests' learning rates), those the registry lets run
    on two workers, each on one layout, the layouts taken in turn so that each declared one is trained:
    the fewest runs (a launch costs seconds of CI in every env) that cover every update and layout."""
    specs = []
    for sparse, optimizer in ((False, "adam"), (True, "adam"), (False, "sgd")):
        for layout in ENTRY.layouts[len(specs) % len(ENTRY.layouts):] + ENTRY.layouts:
            spec = RunSpec(backend=BACKEND, data=DATA, sparse=sparse, optimizer=optimizer, layout=layout,
                           lr=0.01 if optimizer == "adam" else 100.0, max_steps=STEPS, workers=2)
            if registry.refusal(spec) is None:
                specs.append(spec)
                break
    return specs


def name(spec: RunSpec) -> str:
    return f"{spec.variant}-{spec.optimizer}-{spec.layout}"


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def train_command(spec: RunSpec, tmp_path: Path, ptb_dir: Path) -> list[str]:
    spec_file = tmp_path / f"{name(spec)}.spec.json"
    spec_file.write_text(json.dumps(spec.to_dict()))
    return [sys.executable, "-m", "bench", "train", "--spec", str(spec_file), "--data-dir", str(ptb_dir),
            "--no-download", "--out", str(tmp_path / f"{name(spec)}.json")]


def one_core() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def modelled(spec: RunSpec, ptb_dir: Path) -> list[list[dict]]:
    """Each rank's per-step record by the engine's model, on the steps the run trained, sharded as
    the ranks shard them."""
    dataset = load_dataset(spec.data, str(ptb_dir), download=False)
    batches = [b for _, b in zip(range(STEPS), dataset.epoch(0))]
    rows = [[comm.slice_rows(shard(b, World(r, spec.workers)).batch) for r in range(spec.workers)] for b in batches]
    return [comm.per_step([comm.model(spec, len(dataset.vocab), step, r, run=rows) for step in rows])
            for r in range(spec.workers)]


@pytest.mark.parametrize("spec", variants(), ids=name)
def test_two_ranks_train_the_one_process_function_and_send_the_modelled_bytes(spec, tmp_path, ptb_dir):
    pinned = spec == variants()[0]  # one run given a single core: two ranks on it are oversubscribed
    done = subprocess.run(train_command(spec, tmp_path, ptb_dir), cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=600, preexec_fn=one_core if pinned else None)
    assert done.returncode == 0, done.stderr[-3000:]
    two = load_result(tmp_path / f"{name(spec)}.json")
    one = worker.train(dataclasses.replace(spec, workers=1), str(ptb_dir), download=False)  # what train runs
    assert two["status"] == one["status"] == "ok" and two["data_hash"] == one["data_hash"]
    gap = np.abs(np.asarray(two["losses"]) - np.asarray(one["losses"]))
    assert gap.shape == (STEPS,) and gap.max() <= LOSS_TOLERANCE, f"worst step {gap.argmax() + 1}: {gap.max():.2e}"

    record = two["communication"]
    cores = 1 if pinned else len(os.sched_getaffinity(0))
    assert (record["cores"], record["oversubscribed"]) == (cores, spec.workers > cores)
    assert record["threads_per_rank"] == max(1, cores // spec.workers)
    assert record["engine"] == ENTRY.engine and len(record["ranks"]) == spec.workers
    expected = modelled(spec, ptb_dir)
    for rank, (counted, model) in enumerate(zip(record["ranks"], expected)):
        assert [(c["name"], c["kind"], c["dtype"]) for c in counted] == \
            [(m["name"], m["kind"], m["dtype"]) for m in model], f"rank {rank}"
        for c, m in zip(counted, model):
            for field in ("elements", "bytes_sent"):
                assert abs(c[field] - m[field]) <= BYTES_TOLERANCE * m[field], (rank, c["name"], field, c, m)
    assert record["bytes_per_step"] > 0
    assert record["bytes_per_step"] == pytest.approx(np.mean([sum(c["bytes_sent"] for c in r) for r in expected]),
                                                     rel=BYTES_TOLERANCE)


# faults

def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children's children too), from /proc."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            children = [int(c) for t in Path(f"/proc/{p}/task").iterdir()
                        for c in (t / "children").read_text().split()]
        except OSError:
            continue
        found += children
        todo += children
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rank_processes(root: int, within: float = 120) -> list[int]:
    """The `bench rank` processes below `root` once all of them have started."""
    deadline = time.time() + within
    while time.time() < deadline:
        ranks = [p for p in descendants(root) if "-m bench rank " in cmdline(p)]
        if len(ranks) == 2:
            return ranks
        time.sleep(0.1)
    raise AssertionError(f"no two ranks below {root}: {[cmdline(p) for p in descendants(root)]}")


def rank_of(pid: int) -> int:
    """The launcher's number of a rank process (torchrun's RANK under torchrun)."""
    variables = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
    return int(variables.get("SKIPGRAM_RANK", variables.get("RANK", "-1")))


LONG = dataclasses.replace(variants()[0], max_steps=None, data=dataclasses.replace(DATA, epochs=5)) \
    if REFUSED is None else None


def test_a_killed_rank_fails_the_run_naming_it(tmp_path, ptb_dir):
    launcher = subprocess.Popen(train_command(LONG, tmp_path, ptb_dir), cwd=ROOT, env=env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ranks = rank_processes(launcher.pid)
        everything = descendants(launcher.pid)
        victim = next(p for p in ranks if rank_of(p) == 1)
        os.kill(victim, signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
        launcher.wait()
    assert launcher.returncode != 0
    assert stderr.strip().splitlines()[-1].startswith("error: rank 1 failed (killed by SIGKILL (signal 9))"), stderr
    assert "Traceback" not in stderr.strip().splitlines()[-1]
    assert all(gone(p) for p in everything), [cmdline(p) for p in everything if not gone(p, 0)]
    assert not (tmp_path / f"{name(LONG)}.json").exists()


# SIGKILL (no handler runs: only the kernel's parent-death signal and the group's end) in every engine's
# env; the harness's own handlers for SIGINT and SIGTERM are framework-free, so once, in torch's (CI time).
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL] if BACKEND == "torch" else [signal.SIGKILL]


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_the_harness_ending_leaves_no_process_of_the_run(tmp_path, ptb_dir, sig):
    suite = tmp_path / "dp.toml"
    settings = {**LONG.to_dict(), **LONG.data.to_dict()}
    settings.pop("data")
    suite.write_text("[[runs]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items() if v is not None))
    python = "SKIPGRAM_PYTHON_" + ENTRY.env.upper().replace("-", "_")
    harness = subprocess.Popen([sys.executable, "-m", "bench", "suite", "--suite", str(suite), "--out",
                                str(tmp_path / "out"), "--data-dir", str(ptb_dir), "--no-baselines"],
                               cwd=ROOT, env={**env(), python: sys.executable}, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        rank_processes(harness.pid)
        everything = descendants(harness.pid)
        harness.send_signal(sig)
        harness.wait(timeout=60)
    finally:
        harness.kill()
        harness.wait()
    left = [f"{p}: {cmdline(p)}" for p in everything if not gone(p, within=15)]
    assert not left, left


def test_a_port_taken_before_the_engine_binds_it_is_one_line(monkeypatch, ptb_dir):
    """The launcher chooses free ports; one taken between its choice and the engine's bind (here: taken
    on purpose, and listening, so no engine may bind it) fails the run in one line naming it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind((data_parallel.HOST, 0))
        held.listen()
        port = held.getsockname()[1]
        monkeypatch.setattr(data_parallel, "free_ports", lambda count: [port] * count)
        signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the launcher hung on a taken port"))
        signal.alarm(180)
        try:
            with pytest.raises(BenchError) as raised:
                data_parallel.train(dataclasses.replace(LONG, max_steps=5), str(ptb_dir), download=False)
        finally:
            signal.alarm(0)
    assert str(raised.value) == (f"port {port} on 127.0.0.1, chosen free, was taken by another process before "
                                 f"the engine could bind it: run again")
