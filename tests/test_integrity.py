"""Result integrity, as a user meets it: a run is its whole spec, a folder has one owner, no
worker outlives its harness, a blow-up is recorded as one, bad settings stop before any work."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench.executing.suite import load_suite_file
from bench.running.worker import DIVERGENCE_BOUND, first_bad_step
from tests.conftest import ROOT, run_bench, write_text
from tests.data.test_bad_input import assert_one_line_error

SWEEP = "[base]\nepochs = 1\nmax_steps = 3\n[[runs]]\nbackend = 'numpy'\nseed = [1, 2]\n"
SLOW = "[[runs]]\nbackend = 'numpy'\nepochs = 1\nmax_steps = 5000\n"  # about a minute: long enough to interrupt


def suite_file(tmp_path: Path, text: str) -> Path:
    return write_text(tmp_path / "s.toml", text)


def start_suite(*args: str, env: dict | None = None) -> subprocess.Popen:
    """A suite in the background, its stdout readable line by line."""
    return subprocess.Popen([sys.executable, "-m", "bench", "suite", *args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def start_wrapped_suite(tmp_path: Path, ptb_dir: Path, script: str) -> subprocess.Popen:
    """A slow suite whose tests-env python is a shell script (`script`, then python with the
    worker's arguments): what SKIPGRAM_PYTHON_* may name instead of an interpreter."""
    wrapper = write_text(tmp_path / "python-wrapper", f'#!/bin/sh\n{script}"{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return start_suite("--suite", str(suite_file(tmp_path, SLOW)), "--out", str(tmp_path / "out"),
                       "--data-dir", str(ptb_dir), env={"SKIPGRAM_PYTHON_TESTS": str(wrapper)})


def wait_for_worker(proc: subprocess.Popen, timeout: float = 120) -> int:
    """The pid of the `bench train` worker the suite started, once its first run has begun."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if ": started (" in line:
            break
    deadline = time.time() + timeout
    while time.time() < deadline:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError("the suite started no worker")


def gone(pid: int, within: float = 60) -> bool:
    """Whether process `pid` has ended (or is a zombie nobody reaps) within `within` seconds."""
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z":
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.05)
    return False


# planning: identity and types

def test_every_setting_is_part_of_a_runs_identity(tmp_path):
    plan = load_suite_file(suite_file(tmp_path, "[[runs]]\nbackend = 'numpy'\nepochs = [1, 2]\n"
                                                "max_steps = [10, 20]\n"), {})
    assert len(plan) == 4 and len({p.name for p in plan}) == 4 and len({p.key for p in plan}) == 4
    again = load_suite_file(suite_file(tmp_path, "[[runs]]\nbackend = 'numpy'\nepochs = [1, 1]\nlr = [0.002, 2e-3]\n"),
                            {})
    assert len(again) == 1  # the same spec twice is one run
    overridden = load_suite_file(suite_file(tmp_path, "[base]\nepochs = 3\n[[runs]]\nbackend = 'numpy'\n"
                                                      "epochs = [2, 4]\n"), {"epochs": 1})
    assert [p.spec.data.epochs for p in overridden] == [1]  # --epochs on the command line means every run


@pytest.mark.parametrize("line, fragment", [
    ("batch_size = '512'", 'batch_size must be an integer, got "512"'),
    ("epochs = 1.5", "epochs must be an integer, got 1.5"),
    ("sparse = 'no'", 'sparse must be true or false, got "no"'),
    ("lr = true", "lr must be a number, got true"),
    ("lr = []", "lr is an empty list"),
    ("seed = 18446744073709551616", "seed must be >= 0 and < 2^63"),
    ("seed = 2024-01-01", 'seed must be an integer, got "2024-01-01"'),
    ("device = 'cuda:x'", "device must be cpu, cuda or cuda:N, got 'cuda:x'"),
])
def test_suite_files_are_typed(tmp_path, line, fragment):
    path = suite_file(tmp_path, f"[[runs]]\nbackend = 'numpy'\n{line}\n")
    out = tmp_path / "out"
    result = run_bench("suite", "--suite", str(path), "--out", str(out))
    assert_one_line_error(result, fragment, f"suite file {path}, [[runs]] #1")
    assert not out.exists()  # nothing made before the error


def test_names_stay_short_enough_for_a_file_system(tmp_path):
    settings = "lr = 0.00123456789\nbeta1 = 0.812345\nbeta2 = 0.9912345\neps = 1.23456e-9\nwindow = 3\n" \
               "noise = 7\nmin_freq = 12\nembed = 64\nsubsample = 0.000123\nseed = 123456789\nrepeat = 3\n"
    (run,) = load_suite_file(suite_file(tmp_path, f"[[runs]]\nbackend = 'numpy'\n{settings}"), {})
    assert len(run.name) <= 130 and run.name.endswith(run.key[:8])


def estimated_hours(refused) -> float:
    """The hours a refused large plan's one line names ("about 2.8 h")."""
    return float(refused.stderr.split("about ")[1].split(" h")[0])


def test_bad_suite_options_stop_before_any_work(tmp_path, ptb_dir):
    out = tmp_path / "out"
    for timeout in ("0", "nan", "inf"):  # nan would mean no timeout, inf none either
        assert_one_line_error(run_bench("suite", "--timeout", timeout, "--out", str(out)),
                              f"--timeout must be a finite number of seconds > 0, got {timeout}")
    big = suite_file(tmp_path, "[[runs]]\nbackend = 'numpy'\nseed = [" + ", ".join(map(str, range(201))) + "]\n")
    refused = run_bench("suite", "--suite", str(big), "--out", str(out))
    assert_one_line_error(refused, "the plan has 201 runs", "add --yes")
    bigger = write_text(tmp_path / "z.toml", "[[runs]]\nbackend = 'numpy'\ncorpus = 'zipf:10M:100k'\nseed = ["
                        + ", ".join(map(str, range(201))) + "]\n")
    refused_bigger = run_bench("suite", "--suite", str(bigger), "--out", str(out))
    assert_one_line_error(refused_bigger, "the plan has 201 runs")
    # each run timed on its own corpus (11x PTB's examples here), not on PTB's (1x)
    assert 5 < estimated_hours(refused_bigger) / estimated_hours(refused) < 40
    listed = run_bench("suite", "--suite", str(big), "--out", str(out), "--dry-run", "--data-dir", str(ptb_dir))
    assert listed.returncode == 0 and "plan: 201 runs" in listed.stdout
    assert not out.exists()
    typo = write_text(tmp_path / "b.toml", "[base]\nepoch = 1\n[[runs]]\nbackend = 'numpy'\n")
    assert_one_line_error(run_bench("suite", "--suite", str(typo)),
                          f"suite file {typo}, [base]: unknown setting(s) epoch")
    not_a_table = write_text(tmp_path / "t.toml", "base = 3\n[[runs]]\nbackend = 'numpy'\n")
    assert_one_line_error(run_bench("suite", "--suite", str(not_a_table)), "expected an optional [base] table")
    assert_one_line_error(run_bench("suite", "--bogus"), "see `python -m bench suite --help`")
    assert_one_line_error(run_bench("--bogus"), "see `python -m bench --help`")


def test_dry_run_lists_the_plan_and_writes_nothing(tmp_path, ptb_dir):
    out = tmp_path / "out"
    result = run_bench("suite", "--suite", str(suite_file(tmp_path, SWEEP)), "--out", str(out), "--dry-run",
                       "--data-dir", str(ptb_dir))
    assert result.returncode == 0, result.stderr
    assert "plan: 2 runs" in result.stdout and result.stdout.count("key=") == 2 and "env=tests" in result.stdout
    assert not out.exists()


def test_a_corpus_that_yields_no_example_is_an_error(tmp_path):
    corpus = write_text(tmp_path / "tiny.txt", "a b c\nd e f\n")
    result = run_bench("train", "--backend", "numpy", "--corpus", str(corpus), "--min-freq", "1", "--max-steps", "2")
    assert_one_line_error(result, "yields no training example")


# divergence

def test_divergence_bound():
    assert first_bad_step(np.array([0.69, 0.6, 0.5])) is None
    assert first_bad_step(np.array([0.69, DIVERGENCE_BOUND * 1.01, np.inf])) == 1
    assert first_bad_step(np.array([0.69, np.nan])) == 1


@pytest.mark.parametrize("lr, status", [(1e6, "diverged"), (0.01, "ok"), (0.002, "ok")])
def test_adam_blowing_up_is_diverged_and_the_recipes_rates_are_not(tmp_path, ptb_dir, lr, status):
    out = tmp_path / "r.json"
    result = run_bench("train", "--backend", "numpy", "--lr", str(lr), "--epochs", "1", "--max-steps", "150",
                       "--data-dir", str(ptb_dir), "--out", str(out))
    record = json.loads(out.read_text())
    assert record["status"] == status, record["error"]
    if status == "diverged":
        assert result.returncode == 1 and "at step " in record["error"] and "10 x ln 2" in record["error"]
        assert record["steps"] < 150 and len(record["segment_rates"]) <= 1  # stopped in its first segment
    else:
        assert result.returncode == 0 and max(record["losses"]) < DIVERGENCE_BOUND


# folders: reuse, resume, ownership

def test_a_folder_is_reused_only_for_its_own_plan(tmp_path, ptb_dir):
    out, sweep = tmp_path / "out", suite_file(tmp_path, SWEEP)
    args = ["--out", str(out), "--data-dir", str(ptb_dir)]
    first = run_bench("suite", "--suite", str(sweep), *args)
    assert first.returncode == 0, first.stderr
    assert "[2/2]" in first.stdout and "started" in first.stdout  # progress lines on a pipe too
    plan = json.loads((out / "suite.json").read_text())["plan"]
    assert [e["key"] for e in plan] and all(e["name"].endswith(e["key"][:8]) for e in plan)

    again = run_bench("suite", "--suite", str(sweep), *args)  # same plan: nothing to redo
    assert again.returncode == 0 and "resuming: 2 of 2 runs already finished" in again.stderr

    other = run_bench("suite", "--suite", str(write_text(tmp_path / "other.toml", SWEEP.replace("2]", "3]"))), *args)
    assert_one_line_error(other, "holds another plan", f"--resume {out}` alone")

    runs = sorted((out / "runs").glob("*.json"))
    stored = json.loads(runs[0].read_text())
    runs[0].write_text(json.dumps({**stored, "spec": {**stored["spec"], "lr": 0.5}}))  # another spec's result
    runs[1].write_text(runs[1].read_text()[:100])                                       # truncated
    page = run_bench("report", str(out))
    assert page.returncode == 0 and "plan does not hold; not counted" in Path(page.stdout.strip()).read_text()
    resumed = run_bench("suite", "--resume", str(out), "--data-dir", str(ptb_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" not in resumed.stderr and "[2/2]" in resumed.stdout
    assert all(json.loads(p.read_text())["status"] == "ok" for p in runs)


def test_failed_runs_are_kept_unless_retried(tmp_path, ptb_dir):
    out = tmp_path / "out"
    path = suite_file(tmp_path, "[[runs]]\nbackend = 'numpy'\nmax_steps = 2\n")
    broken = {"SKIPGRAM_PYTHON_TESTS": "false"}  # the run's interpreter exits 1 at once: a failed run
    assert run_bench("suite", "--suite", str(path), "--out", str(out), "--data-dir", str(ptb_dir),
                     env=broken).returncode == 0
    kept = run_bench("suite", "--resume", str(out), "--data-dir", str(ptb_dir), env=broken)
    assert "resuming: 1 of 1 runs already finished" in kept.stderr
    retried = run_bench("suite", "--resume", str(out), "--retry-failed", "--data-dir", str(ptb_dir), env=broken)
    assert "resuming" not in retried.stderr and "[1/1]" in retried.stdout and "failed" in retried.stdout


def test_a_folder_is_finished_only_by_the_code_that_started_it(tmp_path, ptb_dir):
    out = tmp_path / "out"
    assert run_bench("suite", "--suite", str(suite_file(tmp_path, SWEEP)), "--out", str(out),
                     "--data-dir", str(ptb_dir)).returncode == 0
    meta = json.loads((out / "suite.json").read_text())
    assert meta["code"] and all(json.loads(p.read_text())["env"]["code"] == meta["code"]
                                for p in (out / "runs").glob("*.json"))
    (out / "suite.json").write_text(json.dumps({**meta, "code": "0123456789ab"}))  # as if bench/ changed since
    assert_one_line_error(run_bench("suite", "--resume", str(out), "--data-dir", str(ptb_dir)),
                          "was started by other code (0123456789ab", "start a new folder")


def test_a_corrupt_plan_is_named(tmp_path, ptb_dir):
    out = tmp_path / "out"
    assert run_bench("suite", "--suite", str(suite_file(tmp_path, SWEEP)), "--out", str(out),
                     "--data-dir", str(ptb_dir)).returncode == 0
    (out / "suite.json").write_text('{"plan": [')
    assert_one_line_error(run_bench("suite", "--resume", str(out), "--data-dir", str(ptb_dir)), "suite.json is corrupt")
    page = run_bench("report", str(out))
    assert page.returncode == 0 and "suite.json is corrupt" in Path(page.stdout.strip()).read_text()


def test_one_owner_per_folder(tmp_path, ptb_dir):
    out, slow = tmp_path / "out", suite_file(tmp_path, SLOW)
    owner = start_suite("--suite", str(slow), "--out", str(out), "--data-dir", str(ptb_dir))
    try:
        wait_for_worker(owner)
        second = run_bench("suite", "--suite", str(slow), "--out", str(out), "--data-dir", str(ptb_dir))
        assert_one_line_error(second, "is in use by another suite", f"pid {owner.pid}")
    finally:
        owner.kill()
        owner.wait()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_ends_the_worker_records_nothing_and_says_how_to_resume(tmp_path, ptb_dir, sig):
    out = tmp_path / "out"
    proc = start_suite("--suite", str(suite_file(tmp_path, SLOW)), "--out", str(out), "--data-dir", str(ptb_dir))
    worker = wait_for_worker(proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    assert stderr.strip().splitlines()[-1].endswith(f"resume with: python -m bench suite --resume {out}")
    assert "Traceback" not in stderr and gone(worker)
    assert not list((out / "runs").glob("*.json"))


def test_a_killed_harness_takes_its_worker_with_it(tmp_path, ptb_dir):
    out = tmp_path / "out"
    proc = start_suite("--suite", str(suite_file(tmp_path, SLOW)), "--out", str(out), "--data-dir", str(ptb_dir))
    worker = wait_for_worker(proc)
    proc.kill()  # SIGKILL: no handler runs; PR_SET_PDEATHSIG ends the worker
    proc.wait()
    assert gone(worker)
    resumed = start_suite("--resume", str(out), "--data-dir", str(ptb_dir))  # the folder is free again
    try:
        wait_for_worker(resumed)
    finally:
        resumed.kill()
        resumed.wait()


def test_a_worker_behind_a_wrapper_ends_with_its_harness(tmp_path, ptb_dir):
    """SKIPGRAM_PYTHON_* may name a wrapper that does not exec python (a shell script, a container
    runner): the kernel's parent-death signal then reaches the wrapper only, and the worker
    watches the harness itself."""
    proc = start_wrapped_suite(tmp_path, ptb_dir, "")
    shell = wait_for_worker(proc)
    deadline = time.time() + 120
    while time.time() < deadline and not _children(shell):
        time.sleep(0.05)
    worker = _children(shell)[0]
    proc.kill()
    proc.wait()
    assert gone(shell, within=60) and gone(worker, within=60)  # the watcher polls once a second


def test_a_relative_out_outside_the_checkout_is_written_where_it_names(tmp_path, ptb_dir):
    """The worker runs in the checkout: the suite hands it absolute paths, not ones relative to
    the user's working directory (which made every run fail while the suite exited 0)."""
    plan = suite_file(tmp_path, "[[runs]]\nbackend = 'numpy'\nepochs = 1\nmax_steps = 3\n")
    done = subprocess.run([sys.executable, "-m", "bench", "suite", "--suite", plan.name, "--out", "rel",
                           "--data-dir", os.path.relpath(ptb_dir, tmp_path)], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "rel" / "runs").glob("*.json")]
    assert result["status"] == "ok", result["error"]


def test_a_killed_worker_is_named_by_its_signal(tmp_path, ptb_dir):
    out = tmp_path / "out"
    suite = start_suite("--suite", str(suite_file(tmp_path, SLOW)), "--out", str(out), "--data-dir", str(ptb_dir))
    try:
        os.kill(wait_for_worker(suite), signal.SIGKILL)  # as the OOM killer or `kill -9` would
        suite.communicate(timeout=120)
    finally:
        suite.kill()
    (result,) = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert result["status"] == "failed" and result["error"].startswith("killed by SIGKILL (signal 9)"), result["error"]


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_wrappers_own_child_ends_with_the_harness(tmp_path, ptb_dir):
    """The worker's watcher ends its whole process group, not only itself: what a wrapper named
    by SKIPGRAM_PYTHON_* starts beside python (here a `sleep`) goes too."""
    pid_file = tmp_path / "sleep.pid"
    proc = start_wrapped_suite(tmp_path, ptb_dir, f'sleep 300 &\necho $! > "{pid_file}"\n')
    wait_for_worker(proc)
    sleeper = int(pid_file.read_text())
    try:
        proc.kill()
        proc.wait()
        assert gone(sleeper, within=60)
    finally:
        if not gone(sleeper, within=0):
            os.kill(sleeper, signal.SIGKILL)


def _setsid(script: str, env: dict[str, str]) -> list[str]:
    """`script` run by sh as the leader of a new session (as cron, systemd and container entry
    shells run commands), then `echo survived $?`: printed only if nothing ended sh's group."""
    return ["setsid", "sh", "-c", f"{script}\necho survived $?"], {**os.environ, "PYTHONPATH": str(ROOT), **env}


def _under_setsid(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd, full_env = _setsid(script, env)
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)


def test_a_worker_run_by_hand_under_setsid_with_a_stale_harness_variable_exits_alone(tmp_path):
    """A harness variable copied from a suite's worker names a process that is gone: the worker
    says so in one line and exits, leaving the session it was started in (here sh's) alone."""
    from common.machine import HARNESS_VARIABLE

    stale = f"{os.getpid()}:1:{tmp_path / 'gone.session'}"  # this pid, another start time: a process now gone
    done = _under_setsid(f'"{sys.executable}" -m bench train --backend numpy --max-steps 1',
                         {HARNESS_VARIABLE: stale})
    assert done.stdout.strip() == "survived 2", done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and HARNESS_VARIABLE in lines[0] and "names no running harness" in lines[0], done.stderr


@pytest.mark.parametrize("announced", [None, "another session"])
def test_a_process_in_a_session_the_harness_did_not_make_exits_alone_when_the_harness_ends(tmp_path, announced):
    """A session leader the harness did not start (setsid's sh here) keeps its group when the
    harness a process watches ends, whether the harness announced no session or another one: the
    process exits alone and sh goes on."""
    from common.machine import HARNESS_VARIABLE, process_identity

    harness = subprocess.Popen(["sleep", "300"])
    identity = process_identity(harness.pid)
    assert identity is not None
    announcement = tmp_path / "worker.session"
    if announced:
        announcement.write_text(f"{harness.pid} {identity}\n")  # the harness's own pid: no session sh is in
    code = ("import time; from common.machine import exit_with_harness\n"
            "exit_with_harness(interval=0.05)\nprint('watching', flush=True)\ntime.sleep(300)")
    cmd, env = _setsid(f'"{sys.executable}" -c "{code}"', {HARNESS_VARIABLE: f"{identity}:{announcement}"})
    shell = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert shell.stdout is not None and shell.stdout.readline().strip() == "watching", shell.stderr
        harness.kill()
        harness.wait()  # reaped: a zombie still has its /proc entry
        out, err = shell.communicate(timeout=120)
    finally:
        harness.kill()
        harness.wait()
        shell.kill()
        shell.wait()
    assert out.split() == ["survived", "137"], err


def _session_check(tmp_path: Path, announce: bool, **popen: bool) -> list[str]:
    """What a child started with `popen`'s options by this process as its harness reports, once
    the harness has announced the child's pid as its session (or not): whether it is in the
    harness's session, and the variable as its own children see it (a data-parallel rank's view)."""
    from common.machine import HARNESS_VARIABLE, announce_session, harness_value

    announcement = tmp_path / f"{announce}-{popen}.session"
    code = ("import os, subprocess, sys\nfrom common.machine import HARNESS_VARIABLE, exit_with_harness, "
            "in_harness_session\nsys.stdin.readline()\n"
            "print(in_harness_session(os.environ[HARNESS_VARIABLE]), flush=True)\n"  # before its child's line
            "exit_with_harness()\n"
            "subprocess.run([sys.executable, '-c', 'import os; print(os.environ.get(%r))' % HARNESS_VARIABLE])")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT), HARNESS_VARIABLE: harness_value(announcement)},
                             **popen)
    if announce:
        announce_session(announcement, child.pid)
    out, err = child.communicate("go\n", timeout=120)
    assert child.returncode == 0, err
    return out.split()


def test_only_the_session_the_harness_announced_is_its_workers_group(tmp_path):
    """This test's process as the harness: the child it starts with start_new_session and
    announces leads the harness's session; an unannounced one does not, nor one in this
    process's own group (whatever session that is, announced or not); and none hands the
    variable to its children, so a data-parallel rank never ends the group."""
    assert _session_check(tmp_path, True, start_new_session=True) == ["True", "None"]
    assert _session_check(tmp_path, False, start_new_session=True) == ["False", "None"]
    assert _session_check(tmp_path, True, start_new_session=False) == ["False", "None"]


def test_integrity_tests_run_under_setsid_leave_their_caller_alone():
    """The session tests above, run by a pytest under a session leader of its own (setsid's sh,
    as a cron job or a container's entry shell runs `tox`): they pass and sh survives them."""
    cases = ("stale_harness_variable_exits_alone or did_not_make_exits_alone or only_the_session_the_harness"
             " or wrapper")
    done = _under_setsid(f'"{sys.executable}" -m pytest -q -p no:cacheprovider tests/test_integrity.py -k "{cases}"',
                         {})
    assert done.stdout.strip().endswith("survived 0"), done.stdout[-2000:] + done.stderr[-2000:]


def test_the_recipe_loops_dataloader_workers_end_with_it(tmp_path, ptb_dir):
    """SIGKILL the recipe loop (as the harness's end_group or the OOM killer would): its
    DataLoader workers end at once (their parent-death signal), not at torch's 5 s watchdog."""
    torch_python = Path(os.environ.get("SKIPGRAM_TOX_WORKDIR") or ROOT / ".tox") / "torch" / "bin" / "python"
    if not torch_python.exists():
        pytest.skip(f"no torch env at {torch_python} (the recipe loop needs torch)")
    worker = subprocess.Popen([str(torch_python), "-m", "bench", "train", "--runner", "recipe-loop", "--backend",
                               "torch", "--data-dir", str(ptb_dir), "--no-download", "--epochs", "5"], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(_children(worker.pid)) < 4:
            time.sleep(0.2)
        loaders = _children(worker.pid)
        assert len(loaders) >= 4, "the recipe loop never started its DataLoader workers"
        time.sleep(1)  # past worker_init_fn
        worker.kill()
        worker.wait()
        assert all(gone(pid, within=4) for pid in loaders)  # under torch's 5 s watchdog: the signal did it
    finally:
        worker.kill()
        worker.wait()
        for pid in _children(worker.pid):
            os.kill(pid, signal.SIGKILL)


def test_a_signal_is_named_once_in_a_failed_runs_error():
    from bench.executing.attempt import exit_text

    assert exit_text(-signal.SIGKILL) == "killed by SIGKILL (signal 9)"
    assert exit_text(-40) == "killed by signal 40"  # a real-time signal: its number, once
    assert exit_text(3) == "exit status 3"


@pytest.mark.parametrize("filename, variable", [
    ("/repo/backends/__pycache__/fused.train-40.py311.nbi", "NUMBA_CACHE_DIR"),
    ("/tmp/torchinductor_me/fx/ab.py", "TORCHINDUCTOR_CACHE_DIR"),
    ("/data/results/out.json", None),
])
def test_a_run_that_cannot_write_names_the_file_and_the_fix(filename, variable):
    """A full or read-only place, however deeply a compiler wraps the error: the file, and for a
    compiler's cache the variable that moves it."""
    import errno

    from bench.running.train_command import crash_message

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        except OSError as inner:
            raise RuntimeError("compilation failed") from inner
    except RuntimeError as exc:
        message = crash_message("fused", exc)
    assert f"cannot write {filename}: no space left on device" in message and "\n" not in message
    assert (f"set {variable}" in message) if variable else "set " not in message
