"""--executor dask on a real cluster: `dask scheduler` and two `dask worker` processes (with
their nannies) on 127.0.0.1, as the README starts them, running numpy runs of a few steps on PTB.

What must hold: a run's losses and data hash are the local executor's, bit for bit; its
child sees the client's thread variables, not the nanny's; each result names executor, host
and worker; a killed worker's `bench train` child dies with it and the run is redone
elsewhere; Ctrl-C ends the cluster's children and `--resume` finishes with the local
executor; an unreachable scheduler is one line before any folder exists; a node without the
corpus gives a failed result naming itself. Workers get no PTB_DIR: they use the client's path.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import distributed  # the tests env has the dask extra: these tests must run, not skip
import pytest

from bench.executing import dask_executor
from bench.executing.suite import load_suite_file
from common.errors import BenchError
from tests.conftest import ROOT, run_bench, write_text
from tests.data.test_bad_input import assert_one_line_error
from tests.test_integrity import gone

pytestmark = pytest.mark.ptb
TWO_RUNS = "[base]\nepochs = 1\nmax_steps = {steps}\n[[runs]]\nbackend = 'numpy'\nsparse = [false, true]\n"
NANNY_SET = ("MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")


class Cluster(NamedTuple):
    address: str
    worker_pids: list[int]  # the `dask worker` processes we started (each a nanny over its worker)


def _spawn(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "dask", *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


@contextmanager
def running_cluster(tmp: Path, workers: int, tls: tuple[str, ...] = ()) -> Iterator[Cluster]:
    """A scheduler and `workers` one-slot workers, started the README's way (about 3-8 s); with
    `tls` (the --tls-* flags and files) a TLS one."""
    env = {k: v for k, v in os.environ.items() if k not in ("PTB_DIR", *NANNY_SET, "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    file = tmp / "scheduler.json"
    protocol = ["--protocol", "tls", *tls] if tls else []
    procs = [_spawn(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(file), *protocol], tmp / "scheduler.log", env)]
    try:
        deadline = time.time() + 60
        while not file.exists() and time.time() < deadline:
            time.sleep(0.1)
        for i in range(workers):
            procs.append(_spawn(["worker", "--scheduler-file", str(file), "--host", "127.0.0.1", "--nthreads", "1",
                                 "--resources", "slot=1", "--no-dashboard", "--name", f"w{i}",
                                 "--local-directory", str(tmp / f"w{i}"), *tls], tmp / f"w{i}.log", env))
        address = json.loads(file.read_text())["address"]
        if not tls:
            with distributed.Client(address, timeout=30) as client:
                client.wait_for_workers(workers, timeout=60)
        yield Cluster(address, [p.pid for p in procs[1:]])
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, ptb_dir: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("dask"), 2) as started:
        yield started


def suite(tmp_path: Path, steps: int) -> str:
    return str(write_text(tmp_path / "s.toml", TWO_RUNS.format(steps=steps)))


def results(folder: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in (folder / "runs").glob("*.json")}


def cluster_children(cluster: Cluster) -> dict[int, int]:
    """`bench train` processes under our workers: {child pid: the worker process that spawned it}."""
    import psutil

    found = {}
    for nanny in cluster.worker_pids:
        for proc in psutil.Process(nanny).children(recursive=True):
            try:
                if proc.cmdline()[1:4] == ["-m", "bench", "train"]:
                    found[proc.pid] = proc.ppid()
            except psutil.Error:
                pass
    return found


def wait_for_children(cluster: Cluster, timeout: float = 60) -> dict[int, int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if children := cluster_children(cluster):
            return children
        time.sleep(0.05)
    raise AssertionError("no run started on the cluster")


@contextmanager
def dask_suite_running(tmp_path: Path, cluster: Cluster, steps: int) -> Iterator[tuple[subprocess.Popen, Path, dict]]:
    """A two-run dask suite in the background, once its runs' children exist: (suite, folder, children)."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "bench", "suite", "--suite", suite(tmp_path, steps), "--out",
                             str(out), "--executor", "dask", "--address", cluster.address], cwd=ROOT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc, out, wait_for_children(cluster)
    finally:
        proc.kill()


def test_dask_unreachable_scheduler_is_one_line_before_any_folder(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    result = run_bench("suite", "--suite", suite(tmp_path, 3), "--out", str(out), "--executor", "dask",
                       "--address", f"tcp://127.0.0.1:{port}")
    assert result.returncode == 2
    assert_one_line_error(result, "cannot reach the Dask scheduler", f"127.0.0.1:{port}")
    assert not out.exists()


def test_dask_runs_match_local_bit_for_bit_with_the_clients_thread_settings(tmp_path, cluster):
    threads = {"OMP_NUM_THREADS": "2", "OMP_PROC_BIND": "close"}
    client_env = {**threads, "SKIPGRAM_DASK_ADDRESS": cluster.address}  # the address from the env
    on_dask = run_bench("suite", "--suite", suite(tmp_path, 20), "--out", str(tmp_path / "dask"),
                        "--executor", "dask", env=client_env)
    assert on_dask.returncode == 0, on_dask.stderr
    local = run_bench("suite", "--suite", suite(tmp_path, 20), "--out", str(tmp_path / "local"), env=client_env)
    assert local.returncode == 0, local.stderr
    remote, here = results(tmp_path / "dask"), results(tmp_path / "local")
    assert len(remote) == 2 and remote.keys() == here.keys()
    for name, result in remote.items():
        assert result["status"] == here[name]["status"] == "ok"
        assert (result["executor"], here[name]["executor"]) == ("dask", "local")
        assert result["host"] == socket.gethostname() and result["worker"].startswith("tcp://127.0.0.1:")
        assert f"on {result['host']} ({result['worker']})" in on_dask.stdout
        assert f"{name.removesuffix('.json')}: started" in on_dask.stdout  # the worker's event reached the client
        assert result["data_hash"] == here[name]["data_hash"]
        assert result["losses"] == here[name]["losses"] and len(result["losses"]) == 20  # bit-identical
        # the client's OpenMP settings went with the task; the nanny's settings did not reach the child
        assert result["env"]["threads_env"] == here[name]["env"]["threads_env"] == threads
        # each read against a probe of the machine it ran on: the local suite's, the node's own
        local_meta, dask_meta = (json.loads((tmp_path / side / "suite.json").read_text()) for side in ("local", "dask"))
        assert here[name]["roofline"]["probe"] == local_meta["machine"]["probe"]
        assert result["roofline"]["probe"].get("bandwidth") and "probe" not in dask_meta["machine"]


def test_dask_killed_worker_takes_its_child_and_the_run_is_redone(tmp_path, cluster):
    with dask_suite_running(tmp_path, cluster, 100) as (proc, out, children):
        child, worker = next(iter(children.items()))
        os.kill(worker, signal.SIGKILL)  # the worker process, under its nanny
        assert gone(child), "the killed worker's bench train child outlived it"
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert_counter_within_total(stdout)
    done = results(out)
    assert len(done) == 2
    # the scheduler reran it on a live worker; had every worker died, it would be failed, saying so
    assert all(r["status"] == "ok" for r in done.values()), [r.get("error") for r in done.values()]


def test_dask_interrupt_ends_the_clusters_children_and_local_resumes(tmp_path, cluster):
    with dask_suite_running(tmp_path, cluster, 60) as (proc, out, children):
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert f"resume with: python -m bench suite --resume {out}" in stderr
    # Every child, the first one seen and any started since: each task's watcher ends its own
    # within a poll (0.5 s) of the cancel, after the suite has exited.
    left = {**children, **cluster_children(cluster)}
    assert all(gone(pid) for pid in left), "a cancelled task's bench train child lived on"
    resumed = run_bench("suite", "--resume", str(out), "--executor", "local")
    assert resumed.returncode == 0, resumed.stderr
    done = results(out)
    assert len(done) == 2 and all(r["status"] == "ok" for r in done.values())
    assert "local" in {r["executor"] for r in done.values()}


def test_dask_node_without_the_corpus_fails_the_run_naming_itself(tmp_path, cluster):
    (run,) = load_suite_file(Path(suite(tmp_path, 3)), {})[:1]
    with distributed.Client(cluster.address, timeout=30) as client:
        result = client.submit(dask_executor.run_task, run.to_dict(), str(tmp_path / "no-ptb"), 60.0,
                               dask_executor.client_timing_env(), None, resources={"slot": 1}, pure=False).result()
    assert result["status"] == "failed" and result["executor"] == "dask"
    assert result["error"].startswith(f"node {socket.gethostname()} (worker {result['worker']}): ")
    assert "does not hold ptb.train.txt" in result["error"]


def test_dask_node_checks_and_child_env(tmp_path, monkeypatch, ptb_dir):
    (run,) = load_suite_file(Path(suite(tmp_path, 3)), {})[:1]
    monkeypatch.delenv("SKIPGRAM_PYTHON_TESTS", raising=False)
    monkeypatch.setenv("SKIPGRAM_TOX_WORKDIR", str(tmp_path / "no-envs"))
    with pytest.raises(BenchError, match="no 'tests' env .*`tox -e tests --notest`"):
        dask_executor.node_data_dir(run, str(ptb_dir), None)
    monkeypatch.delenv("SKIPGRAM_TOX_WORKDIR")
    monkeypatch.setattr(dask_executor, "git_commit", lambda root: "abc")
    with pytest.raises(BenchError, match="at commit abc, the suite's at def"):  # another node's checkout
        dask_executor.node_data_dir(run, str(ptb_dir), ("elsewhere", str(ROOT), "def"))
    here = dask_executor.checkout()  # this very checkout: the code a local run would use, whatever its commit
    assert dask_executor.node_data_dir(run, str(ptb_dir), (*here[:2], "def")) == ptb_dir
    monkeypatch.setenv("PTB_DIR", str(tmp_path))  # the worker's own PTB_DIR wins over the client's path
    with pytest.raises(BenchError, match="the worker's PTB_DIR"):
        dask_executor.node_data_dir(run, str(ptb_dir), here)
    env = dask_executor.child_env({"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": None})
    assert env["OMP_NUM_THREADS"] == "4" and env["MKL_NUM_THREADS"] is None
    assert env["OPENBLAS_NUM_THREADS"] is None and env["MALLOC_TRIM_THRESHOLD_"] is None


FAKE_SBATCH = """#!/usr/bin/env bash
# sbatch for the test: run the job script in a session of its own; its pid is the job id
script=$(mktemp "$FAKE_SLURM_DIR/job.XXXX")
if [ -f "${@: -1}" ]; then cp "${@: -1}" "$script"; else cat > "$script"; fi
setsid bash "$script" > "$script.log" 2>&1 < /dev/null & echo "Submitted batch job $!"
"""
FAKE_SCANCEL = "#!/usr/bin/env bash\nfor id in \"$@\"; do kill -TERM -- -$id 2>/dev/null; done; exit 0\n"


def test_dask_slurm_example_runs_a_suite_through_sbatch(tmp_path, ptb_dir):
    """examples/slurm_cluster.py as a user runs it, with sbatch/scancel that start the job
    scripts here: the jobs' workers join, the suite runs on them, the jobs end with it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        write_text(bin_dir / name, text).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(tmp_path),
           "PTB_DIR": str(ptb_dir)}
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "examples/slurm_cluster.py", "--jobs", "2", "--cpus", "1", "--memory",
                             "2GB", "--", "--suite", suite(tmp_path, 10), "--out", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    done = results(out)
    assert len(done) == 2 and all(r["status"] == "ok" and r["worker"].startswith("tls://") for r in done.values())
    script = next(tmp_path.glob("job.????")).read_text()
    assert "--nthreads 1" in script and "--resources slot=1" in script and "--cpus-per-task=1" in script
    assert "--tls-cert" in script and "tls://" in script  # the cluster's own certificate, made for it
    assert "--no-dashboard" in script  # the workers' plain-HTTP dashboards are off
    assert not list(ROOT.glob(".slurm-tls-*")), "the certificate's folder outlived the script"


def test_dask_runs_no_worker_can_take_are_refused_naming_the_resource(tmp_path, cluster):
    """A cuda plan from a client without a GPU (a login node) is the cluster's to judge: here no
    worker offers GPU=1, so it is refused before it would wait forever."""
    cuda = write_text(tmp_path / "cuda.toml", "[[runs]]\nbackend = 'numpy'\ndevice = 'cuda'\nmax_steps = 3\n")
    result = run_bench("suite", "--suite", str(cuda), "--out", str(tmp_path / "out"), "--executor", "dask",
                       "--address", cluster.address, env={"PATH": "/usr/bin:/bin"})  # and no nvidia-smi here
    assert result.returncode == 2
    assert_one_line_error(result, "offers the resource GPU", "--resources GPU=1")


def tls_flags(folder: Path, name: str) -> tuple[str, ...]:
    """A self-signed certificate and its key (Security.temporary(), as Dask makes them) written
    to files, as the flags --tls-ca-file CERT --tls-cert CERT --tls-key KEY name them."""
    from distributed.security import Security

    made = Security.temporary()
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    write_text(cert, made.tls_ca_file)
    write_text(key, made.tls_client_key).chmod(0o600)
    return "--tls-ca-file", str(cert), "--tls-cert", str(cert), "--tls-key", str(key)


def test_dask_tls_cluster_runs_a_suite_and_refuses_a_stranger(tmp_path, ptb_dir):
    """The README's TLS cluster: a scheduler and a worker started with one certificate; a suite
    given it runs there, a client with another certificate or none is refused in one line."""
    tls, stranger = tls_flags(tmp_path, "ours"), tls_flags(tmp_path, "theirs")
    with running_cluster(tmp_path, 1, tls) as cluster:  # the suite waits for its worker to join
        address = cluster.address
        assert address.startswith("tls://127.0.0.1:")
        out = tmp_path / "out"
        result = run_bench("suite", "--suite", suite(tmp_path, 3), "--out", str(out), "--executor", "dask",
                           "--address", address, *tls, "--no-baselines")
        assert result.returncode == 0, result.stderr
        done = results(out)
        assert len(done) == 2 and all(r["status"] == "ok" and r["worker"].startswith("tls://") for r in done.values())
        for flags, fragment in (((), "give --tls-ca-file, --tls-cert, --tls-key"),
                                (stranger, "it does not trust this certificate")):
            refused = run_bench("suite", "--suite", suite(tmp_path, 3), "--out", str(tmp_path / "no"),
                                "--executor", "dask", "--address", address, *flags)
            assert refused.returncode == 2
            assert_one_line_error(refused, address, fragment)
            assert not (tmp_path / "no").exists()


def test_dask_node_needs_no_ptb_for_a_generated_or_file_corpus(tmp_path, monkeypatch):
    """A node generates a zipf corpus itself and finds a file corpus by its digest (in the run):
    PTB is verified only for PTB runs, so a node without PTB still serves the others."""
    (run,) = load_suite_file(Path(write_text(tmp_path / "z.toml", '[[runs]]\nbackend = "numpy"\n'
                                                                    'corpus = "zipf:20k:1k"\n')), {})
    monkeypatch.setenv("PTB_DIR", str(tmp_path / "no-ptb-here"))
    assert dask_executor.node_data_dir(run, str(tmp_path), None) == tmp_path


def test_dask_node_skips_what_its_memory_cannot_hold(tmp_path, monkeypatch, ptb_dir):
    """The memory check planning does locally, on the node, against the node's own memory: a node
    too small fails the run saying both figures (another node may serve it: --retry-failed)."""
    (run,) = load_suite_file(Path(write_text(tmp_path / "m.toml", '[[runs]]\nbackend = "torch"\n')), {})
    assert dask_executor.node_skip_reason(run, ptb_dir) is None  # PTB fits this machine
    monkeypatch.setattr(dask_executor, "machine_memory", lambda: (2**20, 2**21))  # a 2 MiB node
    reason = dask_executor.node_skip_reason(run, ptb_dir)
    assert reason.startswith("needs about ") and "V 6,719" in reason and "0.0 GiB available of 0.0 GiB" in reason


@pytest.mark.parametrize("address, fragment", [
    ("tcp://", "missing port"),
    ("tcp://host:notaport", "invalid literal"),
    ("ucx://127.0.0.1:8786", "the ucx:// transport"),
    ("foo://x:1", "the foo:// transport"),
    ("tcp://127.0.0.1:99999", "port 99999 is not between 1 and 65535"),
    ("127.0.0.1:8786", "Must include protocol"),
    ("tcp://[::1", "ipv6 needs brackets"),
    ("tcp://:8786", "no host"),
])
def test_dask_address_dask_would_reject_is_one_line_at_once(tmp_path, address, fragment):
    """Each class of address Dask's parser rejects or this suite does not run over: one line, in
    seconds (Dask's own Client ended these in a 20 s hang and a traceback, ucx:// a TypeError)."""
    out = tmp_path / "out"
    started = time.monotonic()
    result = run_bench("suite", "--suite", suite(tmp_path, 3), "--out", str(out), "--executor", "dask",
                       "--address", address, timeout=60)
    assert result.returncode == 2
    assert_one_line_error(result, f"--address {address!r} is not a Dask scheduler address", fragment,
                          "tcp://HOST:PORT or tls://HOST:PORT")
    assert time.monotonic() - started < 15 and not out.exists()


def _garbage(path: Path) -> None:
    write_text(path, "not a certificate\n")


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("spoil, fragment", [
    (lambda p: p.mkdir(), "is a folder or device, not a PEM file"),
    (_garbage, "is not a PEM"),
    (lambda p: None, "not found"),
])
def test_dask_tls_file_that_is_no_pem_file_is_one_line_naming_it(tmp_path, which, spoil, fragment):
    flags = list(tls_flags(tmp_path, "ours"))
    bad = tmp_path / "bad"
    spoil(bad)
    flags[2 * which + 1] = str(bad)
    if which in (1, 2) and fragment == "is not a PEM":
        fragment = "are not a PEM certificate and its private key"
    with pytest.raises(BenchError, match=fragment) as refused:
        dask_executor.client_security("tls://127.0.0.1:8786", tuple(flags[1::2]))
    assert str(bad) in str(refused.value) and "\n" not in str(refused.value)


def test_dask_world_readable_tls_key_is_warned_in_one_line(tmp_path, capsys):
    flags = tls_flags(tmp_path, "ours")
    dask_executor.client_security("tls://127.0.0.1:8786", flags[1::2])
    assert capsys.readouterr().err == ""  # 0600: no warning
    Path(flags[5]).chmod(0o644)
    dask_executor.client_security("tls://127.0.0.1:8786", flags[1::2])
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: --tls-key") and "can be read by every user" in line and "chmod 600" in line


def assert_counter_within_total(output: str) -> None:
    """No `[5/4]`: each progress line's count is at most the plan's runs."""
    import re

    counts = [tuple(map(int, m)) for m in re.findall(r"^\[(\d+)/(\d+)\]", output, re.M)]
    assert counts and all(n <= total for n, total in counts), output


def test_a_run_a_cluster_restarts_keeps_its_place_in_the_count(tmp_path, capsys):
    """A worker dies, the scheduler starts its run elsewhere: `started again` at the same
    place, never a count past the total (it said [3/2])."""
    from bench.executing.folder import ResultsFolder
    from bench.executing.harness import Harness
    from bench.running.train_command import failed_result

    plan = load_suite_file(write_text(tmp_path / "s.toml", "[[runs]]\nbackend = 'numpy'\nseed = [1, 2]\n"), {})

    class Restarting:
        name = "dask"

        def run(self, runs, started, finished):
            for run in runs:
                started(run)
            started(runs[0])  # its worker died: rerun on another
            for run in runs:
                finished(run, failed_result(run.spec, "test"))

    with ResultsFolder(tmp_path / "out") as folder:
        Harness(folder, Restarting()).run(plan)
    err = capsys.readouterr().out
    assert_counter_within_total(err)
    assert f"[1/2] {plan[0].name}: started again" in err and "[2/2]" in err


def test_the_readmes_tls_recipe_keeps_every_dashboard_off_the_network():
    """TLS does not cover Dask's HTTP dashboards: every scheduler and worker docs/cluster.md starts
    binds its dashboard to 127.0.0.1 or has none (the default is 0.0.0.0:8787)."""
    import re

    readme = (ROOT / "docs" / "cluster.md").read_text(encoding="utf-8")
    starts = [line for line in readme.splitlines() if re.search(r"\bdask (scheduler|worker)\b", line)
              and line.startswith("    ")]
    assert len(starts) >= 5
    for line in starts:
        assert "--no-dashboard" in line or "--dashboard-address 127.0.0.1:" in line, line
