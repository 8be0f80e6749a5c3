"""`python -m bench rank`: one rank of a data-parallel run, started by the launcher
(bench/running/data_parallel.py) or by the engine's own launcher under it (torchrun).

A rank runs the one-process training loop (bench/running/worker.py) on its slices of every global
batch and writes what the launcher merges: RANK_FILE (its slice losses, rows a step, timings,
segments, its counted communication) and, on rank 0, the center table. It logs
to its own file in the rank folder, and dies with the process that started it and with the
launcher (torchrun starts its ranks in sessions of their own, out of the harness's process group).
It never ends a process group: the launcher's group is the harness's to end.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from bench.executing.processes import die_with
from bench.results.store import write_json
from bench.running import worker
from bench.running.data_parallel import CENTER_FILE, LAUNCHER_VARIABLE, LOG_FILE, RANK_FILE, THREADS_VARIABLE
from bench.running.train_command import crash_message, run_spec
from common.errors import BenchError
from common.machine import TIMING_VARIABLES, process_identity
from common.roofline import for_run
from common.sharding import World
from common.spec import RunSpec


def exit_with_launcher(interval: float = 0.5) -> None:
    """Exit (137) when the parent dies (PR_SET_PDEATHSIG, armed in this process: torchrun's children
    are not started with it) and when the launcher named in LAUNCHER_VARIABLE ends (a rank under
    torchrun, whose own parent may be killed after it)."""
    die_with(os.getppid())()
    launcher = os.environ.get(LAUNCHER_VARIABLE)
    if not launcher or ":" not in launcher:  # no /proc to watch it through: the parent's signal alone
        return
    pid = int(launcher.split(":")[0])

    def watch() -> None:
        while process_identity(pid) == launcher:
            time.sleep(interval)
        os._exit(137)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def log_to(path: Path) -> None:
    """This rank's stdout and stderr, appended to its own log (the launcher names its last line)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def train_rank(spec: RunSpec, data_dir: str | None, rank_dir: Path) -> None:
    """Train this rank's share and write its rank file (rank 0: the center table too)."""
    started = worker.start(spec, data_dir, False, None)
    backend = started.backend
    world = backend.world
    if world.size != spec.workers:
        raise BenchError(f"{spec.backend} joined {world.size} ranks, the spec asks for {spec.workers}: "
                         f"its backend did not join its engine")
    progress = worker_progress if world.rank == 0 else None
    run = worker.run_loop(spec, backend, started.dataset, progress, world)
    device_name = backend.device_name()
    record: dict[str, object] = {
        "rank": world.rank, "world": world.size, "pid": os.getpid(), "data_hash": run.data_hash,
        "losses": run.timeline.losses, "rows": run.rows, "sizes": run.timeline.sizes,
        "epoch_steps": run.epoch_steps, "epoch_seconds": run.epoch_seconds,
        "segments": [list(s) for s in run.timeline.segments],
        "timings": {"load_seconds": started.load_seconds, **run.timings},
        "communication": backend.communication(),
        "communication_seconds": backend.communication_seconds(), "versions": started.backend_cls.versions(),
        "device_name": device_name, "threads": os.environ.get(THREADS_VARIABLE),
        "threads_env": {k: os.environ[k] for k in TIMING_VARIABLES if k in os.environ},
        "vocab_size": len(started.dataset.vocab), "machine_load": run.machine_load,
    }
    if world.rank == 0:
        if run.stats is not None:
            record["roofline"] = for_run(spec, len(started.dataset.vocab), run.stats, device_name)
        np.save(rank_dir / CENTER_FILE, np.asarray(backend.embeddings()[0], dtype=np.float32))
    write_json(rank_dir / RANK_FILE.format(world.rank), record)


def worker_progress(done: int, total: int) -> None:
    print(f"progress {done} {total}", flush=True)


def run(args: argparse.Namespace) -> int:
    """A BenchError is main's one line (the log's last); any other error its traceback, then one line."""
    exit_with_launcher()
    rank_dir = Path(args.rank_dir)
    log_to(rank_dir / LOG_FILE.format(World.from_env().rank))
    spec = run_spec(args)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is the launcher's to judge
            train_rank(spec, args.data_dir, rank_dir)
    except BenchError:
        raise
    except Exception as exc:
        traceback.print_exc()
        raise BenchError(crash_message(spec.backend, exc)) from None
    return 0
