"""The launcher of a data-parallel run: `python -m bench train` with workers > 1 (docs/data-parallel.md).

It imports no framework (the rank processes do): it plans the engine's processes (LAUNCHERS: argv
and variables per process, ports chosen free on 127.0.0.1), starts them in its own process group,
each with PR_SET_PDEATHSIG towards it, waits for them (a rank that fails stops the others and fails
the run naming the rank and its log's last line; the harness's --timeout ends a hung collective),
and merges the rank files into one result record, as the one-process worker writes it plus
`communication`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from backends import registry
from bench.executing.attempt import exit_text
from bench.executing.processes import die_with
from bench.results.store import read_json
from bench.running import worker
from common.batches import Dataset, load_dataset
from common.comm_scaling import slice_profile
from common.errors import BenchError
from common.machine import HARNESS_VARIABLE, MachineLoad, process_identity
from common.sharding import RANK_VARIABLE, THREADS_VARIABLE, WORLD_VARIABLE, combine
from common.spec import RunSpec

HOST = "127.0.0.1"  # local runs: the engines' traffic is neither authenticated nor encrypted
# A rank that finished waits for the others at most this long: they are at most a segment behind
# (the engines step together), so longer means one is stuck in a collective.
GRACE_SECONDS = 120.0
POLL_SECONDS = 0.2
PROFILE_STEPS = 64  # first batches of epoch 0 the slice profile (the modelled curves' rows) is measured on
LAUNCHER_VARIABLE = "SKIPGRAM_LAUNCHER"  # "pid:start time" of the launcher, which no rank may outlive
# What the ranks write in the rank folder (bench/running/rank_command.py), by rank number.
RANK_FILE, LOG_FILE, CENTER_FILE = "rank-{}.json", "rank-{}.log", "center.npy"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", THREADS_VARIABLE)


class Launch(NamedTuple):
    """What every engine's plan is made from."""

    python: str
    rank_args: list[str]   # `-m bench rank ...` after the interpreter
    workers: int
    threads: int           # per rank
    ports: list[int]       # free on HOST, as many as the launcher's PORTS says


class Process(NamedTuple):
    """One process to start: a rank (rank: the launcher's number), or an engine's helper
    (torchrun, which starts the ranks itself; ps-lite's scheduler and server)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    rank: int | None = None


def threads_env(threads: int) -> dict[str, str]:
    return {name: str(threads) for name in THREAD_VARIABLES}


def rank_env(launch: Launch, rank: int) -> dict[str, str]:
    return {RANK_VARIABLE: str(rank), WORLD_VARIABLE: str(launch.workers), **threads_env(launch.threads)}


def plan_torchrun(launch: Launch) -> list[Process]:
    """torchrun starts the N ranks and sets their RANK, WORLD_SIZE, MASTER_ADDR/PORT; OMP_NUM_THREADS
    set here, so it does not force 1. Gloo on the loopback only. The static rendezvous binds its store
    on HOST:port as the server and fails at once when the port is taken; c10d's would connect to
    whatever listens there as a client and wait out its join timeout (600 s, seen with torch 2.13)."""
    argv = [launch.python, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(launch.workers),
            "--rdzv-backend", "static", "--master-addr", HOST, "--master-port", str(launch.ports[0]),
            "--local-addr", HOST, "--max-restarts", "0", "--module", *launch.rank_args[1:]]
    return [Process("torchrun", argv, {WORLD_VARIABLE: str(launch.workers), "GLOO_SOCKET_IFNAME": "lo",
                                       **threads_env(launch.threads)})]


def plan_tf_config(launch: Launch) -> list[Process]:
    """One process per TF_CONFIG worker task, each told the whole cluster and its own index."""
    cluster = {"worker": [f"{HOST}:{p}" for p in launch.ports]}
    return [Process(f"rank {r}", [launch.python, *launch.rank_args],
                    {**rank_env(launch, r), "TF_CONFIG": json.dumps({"cluster": cluster,
                                                                     "task": {"type": "worker", "index": r}})}, r)
            for r in range(launch.workers)]


def plan_jax(launch: Launch) -> list[Process]:
    """One process per rank; rank 0 hosts jax.distributed's coordinator; gloo on the loopback."""
    return [Process(f"rank {r}", [launch.python, *launch.rank_args],
                    {**rank_env(launch, r), "SKIPGRAM_COORDINATOR": f"{HOST}:{launch.ports[0]}",
                     "GLOO_SOCKET_IFNAME": "lo"}, r)
            for r in range(launch.workers)]


def plan_dmlc(launch: Launch) -> list[Process]:
    """ps-lite's scheduler and one server (backends/mxnet_server.py: mxnet imported whole, then the role
    exits when the workers finalise), then the N workers; every node bound to the loopback."""
    dmlc = {"DMLC_PS_ROOT_URI": HOST, "DMLC_PS_ROOT_PORT": str(launch.ports[0]), "DMLC_NUM_SERVER": "1",
            "DMLC_NUM_WORKER": str(launch.workers), "DMLC_NODE_HOST": HOST, "DMLC_INTERFACE": "lo"}
    role = [launch.python, "-m", "backends.mxnet_server"]
    return ([Process("scheduler", role, {**dmlc, "DMLC_ROLE": "scheduler", **threads_env(1)}),
             Process("server", role, {**dmlc, "DMLC_ROLE": "server", **threads_env(launch.threads)})]
            + [Process(f"rank {r}", [launch.python, *launch.rank_args], {**dmlc, "DMLC_ROLE": "worker",
                                                                          **rank_env(launch, r)}, r)
               for r in range(launch.workers)])


# Launcher name (the registry's BackendInfo.launcher) -> (ports it needs for N ranks, its plan).
LAUNCHERS: dict[str, tuple[Callable[[int], int], Callable[[Launch], list[Process]]]] = {
    "torchrun": (lambda n: 1, plan_torchrun),
    "tf_config": (lambda n: n, plan_tf_config),
    "jax": (lambda n: 1, plan_jax),
    "dmlc": (lambda n: 1, plan_dmlc),
}


def cores() -> int:
    """The CPUs this process may run on (its affinity: a container's or taskset's share), not the machine's."""
    return len(os.sched_getaffinity(0))


def threads_per_rank(workers: int, available: int) -> int:
    return max(1, available // workers)


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free on HOST now (bound at once, so distinct, then closed): another
    process may take one before the engine binds it, which fails the run naming the port."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]


def port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def plan(spec: RunSpec, python: str, rank_args: list[str], available: int) -> tuple[list[Process], Launch]:
    """The engine's processes for `spec` (its backend's launcher), with fresh free ports."""
    name = registry.info(spec.backend).launcher
    if name not in LAUNCHERS:
        raise BenchError(f"{spec.backend} has no data-parallel launcher (drop workers)")
    count, make = LAUNCHERS[name]
    launch = Launch(python, rank_args, spec.workers, threads_per_rank(spec.workers, available),
                    free_ports(count(spec.workers)))
    return make(launch), launch


def last_line(path: Path) -> str:
    """A log's last non-empty line (a rank's one-line error), or what says there is none."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(its log is empty)"


_ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


def torchrun_failure(log: Path) -> tuple[int, int] | None:
    """(rank, exit status) of the first rank torchrun saw fail, from its failure summary."""
    with contextlib.suppress(OSError):
        found = _ROOT_CAUSE.search(log.read_text(errors="replace"))
        if found:
            return int(found.group(1)), int(found.group(2))
    return None


class Started(NamedTuple):
    process: Process
    popen: subprocess.Popen
    log: Path


def log_path(rank_dir: Path, process: Process) -> Path:
    return rank_dir / (LOG_FILE.format(process.rank) if process.rank is not None else f"{process.name}.log")


def start(processes: Sequence[Process], rank_dir: Path, base_env: dict[str, str]) -> list[Started]:
    started = []
    for p in processes:
        path = log_path(rank_dir, p)
        with open(path, "ab") as log:
            popen = subprocess.Popen(p.argv, env={**base_env, **p.env}, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=log, cwd=worker_root(), preexec_fn=die_with(os.getpid()))
        started.append(Started(p, popen, path))
    return started


def worker_root() -> Path:
    return Path(__file__).resolve().parents[2]


def failure(run: Started, rank_dir: Path, ports: list[int]) -> str:
    """The run's one-line error for a process that exited non-zero: the rank (torchrun's root cause)
    and its log's last line; a port another process took first, named."""
    taken = [p for p in ports if port_taken(p)]
    if taken:
        return (f"port {taken[0]} on {HOST}, chosen free, was taken by another process before the engine "
                f"could bind it: run again")
    code, log = run.popen.returncode, run.log
    who = run.process.name
    if run.process.name == "torchrun":
        found = torchrun_failure(run.log)
        if found is not None:
            rank, code = found
            who, log = f"rank {rank}", rank_dir / LOG_FILE.format(rank)
    return f"{who} failed ({exit_text(code)}): {last_line(log)}"


def wait(started: list[Started], rank_dir: Path, ports: list[int], progress: worker.Progress | None) -> None:
    """Until every rank (or torchrun) exits 0; a failure, or a rank still running GRACE_SECONDS after
    another finished, ends the run with one line. The caller stops whatever is left. Helpers (ps-lite's
    scheduler and server) exit by themselves when the workers finalise."""
    ranks = [s for s in started if s.process.rank is not None or s.process.name == "torchrun"]
    follow = ProgressFollower(rank_dir / LOG_FILE.format(0), progress)
    seen: dict[int, float] = {}  # index in `started` -> when it was first seen exited
    while True:
        follow.poll()
        now = time.monotonic()
        for i, s in enumerate(started):
            if i not in seen and s.popen.poll() is not None:
                seen[i] = now
        bad = [i for i in seen if started[i].popen.returncode != 0]
        if bad:  # the first seen failing is the cause, the others its victims; of those seen together,
            # one killed by a signal, then the lowest rank
            cause = min(bad, key=lambda i: (seen[i], started[i].popen.returncode >= 0, started[i].process.rank or 0))
            raise BenchError(failure(started[cause], rank_dir, ports))
        done = [s for i, s in enumerate(started) if i in seen and s in ranks]
        if len(done) == len(ranks):
            follow.poll()
            return
        if done and now - min(seen[started.index(s)] for s in done) > GRACE_SECONDS:
            late = next(s for s in ranks if s not in done)
            raise BenchError(f"{late.process.name} did not finish {GRACE_SECONDS:.0f} s after "
                             f"{done[0].process.name} did (a collective that never completed): {last_line(late.log)}")
        time.sleep(POLL_SECONDS)


class ProgressFollower:
    """Rank 0's 'progress DONE TOTAL' lines, passed on as the one-process worker prints them."""

    def __init__(self, path: Path, progress: worker.Progress | None) -> None:
        self.path, self.progress, self.offset = path, progress, 0

    def poll(self) -> None:
        if self.progress is None:
            return
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                text = f.read()
        except OSError:
            return
        end = text.rfind(b"\n") + 1
        self.offset += end
        for line in text[:end].decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "progress" and parts[1].isdigit() and parts[2].isdigit():
                self.progress(int(parts[1]), int(parts[2]))


def stop(started: list[Started]) -> None:
    """SIGKILL every process still running and reap it (torchrun's ranks die with it: their
    PR_SET_PDEATHSIG and their watch of the launcher)."""
    for s in started:
        if s.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                s.popen.send_signal(signal.SIGKILL)
        s.popen.wait()


def show_logs(started: list[Started], lines: int = 20) -> None:
    """Each process's last log lines on stderr (the harness's log of the run): the rank folder goes."""
    for s in started:
        with contextlib.suppress(OSError):
            tail = s.log.read_text(errors="replace").splitlines()[-lines:]
            print(f"--- {s.process.name} (last {len(tail)} lines of its log) ---", *tail, sep="\n", file=sys.stderr)


def child_env() -> dict[str, str]:
    """The ranks' environment: this one's, naming the launcher they must not outlive, and without
    the harness's variable (only the launcher, the group's leader, ends the group)."""
    env = {k: v for k, v in os.environ.items() if k != HARNESS_VARIABLE}
    env[LAUNCHER_VARIABLE] = own_identity()
    env["PYTHONPATH"] = os.pathsep.join([str(worker_root()), *filter(None, [env.get("PYTHONPATH")])])
    return env


RANK_DIR_PREFIX = "skipgram-ranks-"  # then the launcher's identity (pid_start time): whose folder it is


def own_identity() -> str:
    return process_identity(os.getpid()) or str(os.getpid())


def remove_stale_rank_dirs() -> None:
    """Rank folders of launchers that are gone (SIGKILLed with their group: no cleanup ran), which may
    hold a center table of hundreds of MB each."""
    for path in Path(tempfile.gettempdir()).glob(f"{RANK_DIR_PREFIX}*"):
        owner = path.name.removeprefix(RANK_DIR_PREFIX).rsplit("-", 1)[0].replace("_", ":")
        pid = owner.split(":")[0]
        if pid.isdigit() and ":" in owner and process_identity(int(pid)) != owner:
            shutil.rmtree(path, ignore_errors=True)


def check_last_batch(spec: RunSpec, dataset: Dataset) -> None:
    """The epoch's last batch must give every rank a row (common.sharding.shard): one line now, not
    a rank's failure later (epoch 0's draw: a dynamic run's other epochs are checked by the ranks)."""
    examples = dataset.sampler(0).draw.centers.size
    last = examples % spec.data.batch_size
    if 0 < last < spec.workers and worker.total_steps(spec, dataset) >= dataset.batches_per_epoch():
        raise BenchError(f"the epoch's last batch has {last} examples, too few for {spec.workers} workers: "
                         f"use fewer --workers, another --batch-size or --max-steps below "
                         f"{dataset.batches_per_epoch()}")


def train(spec: RunSpec, data_dir: str | None = None, download: bool = True,
          export_vectors: Path | None = None, progress: worker.Progress | None = None) -> dict:
    """Run `spec` on spec.workers ranks and return the merged result record."""
    reason = registry.refusal(spec)
    if reason is not None:
        raise BenchError(reason)
    dataset = load_dataset(spec.data, data_dir, download)  # found (or fetched) once, before any rank starts
    worker.check_vectors(export_vectors, len(dataset.vocab), spec.data.embed)
    check_last_batch(spec, dataset)
    available = cores()
    remove_stale_rank_dirs()
    with tempfile.TemporaryDirectory(prefix=f"{RANK_DIR_PREFIX}{own_identity().replace(':', '_')}-") as tmp:
        rank_dir = Path(tmp)
        spec_file = rank_dir / "spec.json"
        spec_file.write_text(json.dumps(spec.to_dict()))
        rank_args = ["-m", "bench", "rank", "--spec", str(spec_file), "--rank-dir", str(rank_dir)]
        if data_dir is not None:
            rank_args += ["--data-dir", str(Path(data_dir).absolute())]
        processes, launch = plan(spec, sys.executable, rank_args, available)
        load = MachineLoad().start()
        started: list[Started] = []
        try:
            started = start(processes, rank_dir, child_env())
            wait(started, rank_dir, launch.ports, progress)
        except BenchError:
            show_logs(started)
            raise
        finally:
            stop(started)
        machine_load = load.stop()
        ranks = [read_json(rank_dir / RANK_FILE.format(r)) for r in range(spec.workers)]
        center = np.load(rank_dir / CENTER_FILE)
    engine = registry.info(spec.backend).engine or ""
    result = merge(spec, ranks, launch, available, engine, machine_load)  # type: ignore[arg-type]
    profiled = [b for _, b in zip(range(PROFILE_STEPS), dataset.epoch(0))]  # outside every clock
    result["communication"]["slice_profile"] = {str(k): list(v) for k, v in slice_profile(profiled).items()}
    worker.finish(result, dataset.vocab.tokens, center, export_vectors)
    return result


def merge(spec: RunSpec, ranks: list[dict[str, Any]], launch: Launch, available: int, engine: str,
          machine_load: dict | None) -> dict:
    """One result from the ranks' files: the global batch's losses (combined by rows), judged for
    divergence; rates from the global examples over rank 0's segment times; the communication."""
    hashes = {r["data_hash"] for r in ranks}
    if len(hashes) != 1:
        raise BenchError(f"the ranks trained on different streams (data hashes {', '.join(sorted(hashes))})")
    lengths = {len(r["losses"]) for r in ranks}
    if len(lengths) != 1:
        raise BenchError(f"the ranks trained different numbers of steps ({', '.join(map(str, sorted(lengths)))})")
    first = ranks[0]
    losses = combine([np.asarray(r["losses"]) for r in ranks], [np.asarray(r["rows"]) for r in ranks])
    sizes = list(first["sizes"])
    bad = worker.first_bad_step(losses)
    status, error = "ok", None
    keep = losses.size if bad is None else bad + 1
    epoch_losses: list[float] = []
    epoch_seconds: list[float] = []
    done = 0
    for steps, seconds in zip(first["epoch_steps"], first["epoch_seconds"]):
        if done >= keep:
            break
        span = slice(done, min(done + steps, keep))
        if bad is not None and span.stop == keep:
            epoch = len(epoch_seconds) + 1
            status, error = "diverged", worker.divergence(losses, bad, 0) + f" (epoch {epoch})"
        else:
            epoch_losses.append(float(np.average(losses[span], weights=sizes[span])))
        epoch_seconds.append(seconds)
        done += steps
    timeline = worker.Timeline()
    timeline.losses, timeline.sizes = losses[:keep].tolist(), sizes[:keep]
    timeline.segments = [(int(e), float(s)) for e, s in first["segments"]]
    timeline.first_step_seconds = first["timings"]["first_step_seconds"]
    timings = dict(first["timings"])
    peaks = [r["timings"].get("peak_rss_bytes") for r in ranks]
    timings["peak_rss_bytes"] = max(p for p in peaks if p is not None) if any(p is not None for p in peaks) else None
    env = {"backend": spec.backend, "versions": first["versions"], "device_name": first["device_name"]}
    result = worker.record(spec, status, error, env, first["data_hash"], timeline, epoch_losses, epoch_seconds,
                           timings, machine_load)
    result["env"]["threads_env"] = first["threads_env"]  # a rank's, which the launcher set (not its own)
    if "roofline" in first:
        result["roofline"] = first["roofline"]
    collectives = [list(r["communication"]) for r in ranks]
    result["communication"] = {
        "engine": engine, "threads_per_rank": launch.threads, "cores": available,
        "oversubscribed": spec.workers > available, "ranks": collectives,
        "bytes_per_step": float(np.mean([sum(c["bytes_sent"] for c in rank) for rank in collectives])),
        "seconds_per_step": [r.get("communication_seconds") for r in ranks],
    }
    return result
