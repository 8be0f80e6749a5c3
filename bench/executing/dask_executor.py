"""The `dask` executor: a suite's runs fan out over a Dask distributed cluster.

One Dask worker is one timing slot (a GPU, or a group of pinned cores; `--nthreads 1`): a
cuda run asks for the resource `GPU=1`, any other run for `slot=1`, so two runs never share
a GPU or a core. Each task calls attempt() on its worker's node, exactly as a local run
does, and returns the result record as its value; the harness on the client writes it, so
results need no shared filesystem. The envs and PTB are found on the node; a node that
lacks one gives that run a failed result naming the node and what is missing.

Why the timing variables travel with each task: Dask's nanny sets OMP_NUM_THREADS,
MKL_NUM_THREADS, OPENBLAS_NUM_THREADS=1 and MALLOC_TRIM_THRESHOLD_=65536 in its worker, and
a `bench train` child would inherit them: every timing would silently change. The client
sends what a local run's child would see (set or unset) and the task removes the rest.

`distributed` is imported only when this executor is chosen: `local` needs no extra package.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from pathlib import Path

from bench.executing import envs
from bench.executing.attempt import attempt
from bench.executing.executor import Finished, Started
from bench.executing.gpus import gpus
from bench.executing.suite import PlannedRun, skip_reason
from bench.running.train_command import failed_result
from common.errors import BenchError
from common.machine import TIMING_VARIABLES, git_commit
from common.ptb import verify_ptb

ADDRESS_VARIABLE = "SKIPGRAM_DASK_ADDRESS"
STARTED_TOPIC = "skipgram-started"  # a worker's event when it begins a run
CONNECT_SECONDS = 10
Checkout = tuple[str, str, "str | None"]
WORKER_WAIT_SECONDS = 60
TLS_FLAGS = ("--tls-ca-file", "--tls-cert", "--tls-key")  # the names `dask scheduler` and `dask worker` use
Tls = tuple["str | None", "str | None", "str | None"]  # their values: CA file, certificate, key
_INSTALL_HINT = "pip install 'skipgram-bench[dask]' (tox's bench and tests envs have it)"


def client_security(address: str, tls: Tls) -> object | None:
    """Dask's Security for a client of `address`: the three files for a `tls://` scheduler
    (from the flags, else Dask's distributed.comm.tls configuration), none for `tcp://`.
    Checked here, so a missing file is one line, not a TypeError deep in Dask."""
    from distributed.security import Security

    flags = dict(zip(TLS_FLAGS, tls))
    given = {flag: value for flag, value in flags.items() if value}
    if not address.startswith("tls://"):
        if given:
            raise BenchError(f"{', '.join(given)} secure a tls:// scheduler, but --address is {address}: start the "
                             f"scheduler with TLS and use --address tls://HOST:PORT (README)")
        return None
    configured = Security()  # dask's config (distributed.comm.tls.*) when no flag names a file
    if not given and configured.tls_ca_file and configured.tls_client_cert:
        return configured
    missing = [flag for flag, value in flags.items() if not value]
    if missing:
        raise BenchError(f"--address {address} is a TLS scheduler: give {', '.join(missing)} (the CA file, "
                         f"certificate and key the scheduler and workers were started with; README)")
    for flag, value in flags.items():
        if not os.access(value, os.R_OK):
            raise BenchError(f"{flag} {value}: {'cannot be read' if os.path.exists(value) else 'not found'}")
    ca, cert, key = tls
    return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True)


def run_resources(run: PlannedRun) -> dict[str, float]:
    """What a run occupies: one GPU, or one slot of pinned cores (what the README's workers offer)."""
    return {"GPU": 1} if run.spec.device.startswith("cuda") else {"slot": 1}


def client_timing_env() -> dict[str, str | None]:
    """The timing variables as a local run's child would see them here (None: unset), plus any
    other variable this Dask version's nanny sets, so the task can remove it."""
    names = set(TIMING_VARIABLES) | set(_nanny_variables())
    return {name: os.environ.get(name) for name in sorted(names)}


def _nanny_variables() -> list[str]:
    """What Dask's nanny puts into its worker's environment before starting it."""
    import dask

    return list(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})


class DaskExecutor:
    """Submits every run at once; the scheduler hands each to a worker with its resource free."""

    name = "dask"

    def __init__(self, client: object, data_dir: Path, timeout: float) -> None:
        self.client, self.data_dir, self.timeout = client, data_dir, timeout
        self.address = getattr(client, "scheduler").address

    @classmethod
    def connect(cls, address: str, data_dir: Path, timeout: float, tls: Tls = (None, None, None)) -> "DaskExecutor":
        """A client of the scheduler at `address`; over TLS (`tls://`) with the CA file,
        certificate and key in `tls` (or in Dask's configuration). Refused in one line."""
        try:
            from distributed import Client
        except ImportError:
            raise BenchError(f"--executor dask needs the `distributed` package: {_INSTALL_HINT}") from None
        security = client_security(address, tls)
        # Its client logs a traceback when the scheduler goes away; run() says that in one line.
        for name in ("distributed", "distributed.client"):  # dask's config sets the client's level apart
            logging.getLogger(name).setLevel(logging.CRITICAL)
        try:
            client = Client(address, timeout=CONNECT_SECONDS, set_as_default=False, security=security)
        except (OSError, TimeoutError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else "no answer"
            hint = "it does not trust this certificate: give the --tls-ca-file, --tls-cert, --tls-key it was " \
                   "started with" if "TLS" in reason or "SSL" in reason else \
                   f"start it with `dask scheduler` or fix --address / {ADDRESS_VARIABLE} (tls:// for a TLS scheduler)"
            raise BenchError(f"cannot reach the Dask scheduler at {address} ({exc.__class__.__name__}: "
                             f"{reason}); {hint}") from None
        return cls(client, data_dir, timeout)

    def run(self, runs: list[PlannedRun], started: Started, finished: Finished) -> None:
        """Submit all runs, hand back each result as it arrives; on any exit (Ctrl-C included)
        cancel what is left: each task's watcher then ends its `bench train` child."""
        from distributed import as_completed

        futures: dict = {}
        by_key = {run.key: run for run in runs}

        def on_start(event: tuple) -> None:  # on the client's event loop thread
            run = by_key.get(event[1].get("key"))
            if run is not None:
                started(run)

        self.client.subscribe_topic(STARTED_TOPIC, on_start)
        try:
            self._check_workers(runs)
            env, code = client_timing_env(), checkout()
            for run in runs:
                future = self.client.submit(run_task, run.to_dict(), str(self.data_dir), self.timeout, env, code,
                                            key=f"skipgram-{run.name}-{os.urandom(4).hex()}", pure=False,
                                            resources=run_resources(run))
                futures[future] = run
            for future in as_completed(list(futures), loop=self.client.loop):
                run = futures.pop(future)
                finished(run, self._result(run, future, len(futures)))
        finally:
            if futures:
                self.client.cancel(list(futures), force=True)
            self.client.close()

    def _check_workers(self, runs: list[PlannedRun]) -> None:
        """Refuse runs no worker can take (they would wait forever): say which resource is missing."""
        if not self.client.scheduler_info(n_workers=-1)["workers"]:
            print(f"waiting up to {WORKER_WAIT_SECONDS} s for a worker to join {self.address}", file=sys.stderr)
            try:
                self.client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
            except TimeoutError:
                raise BenchError(f"the Dask scheduler at {self.address} has no workers; start them as the "
                                 f"README says (`dask worker {self.address} --nthreads 1 --resources slot=1`)") from None
        offered: set[str] = set()
        for worker in self.client.scheduler_info(n_workers=-1)["workers"].values():
            offered |= {name for name, amount in (worker.get("resources") or {}).items() if amount >= 1}
        for resource in sorted({name for run in runs for name in run_resources(run)} - offered):
            names = [run.name for run in runs if resource in run_resources(run)]
            raise BenchError(f"no worker of {self.address} offers the resource {resource} that {len(names)} run(s) "
                             f"need (e.g. {names[0]}); start workers with `--resources {resource}=1` (README)")

    def _result(self, run: PlannedRun, future: object, unfinished: int) -> dict:
        """The task's value, or a failed record saying why the cluster could not produce one."""
        from distributed import KilledWorker

        if future.cancelled():  # not by us: the client lost the scheduler
            raise BenchError(f"lost the Dask scheduler at {self.address}; finished results are kept, the "
                             f"{unfinished + 1} unfinished run(s) recorded nothing: finish them with --resume "
                             f"(any executor)")
        try:
            return future.result()
        except KilledWorker as exc:
            reason = f"the Dask workers that ran it died each time ({exc}); nothing recorded of its own"
        except Exception as exc:  # the task itself raised: a bug, or an incompatible node
            reason = f"the Dask task raised {exc.__class__.__name__}: {exc}"
        return {**failed_result(run.spec, reason), "executor": self.name, "host": None, "worker": None}


# --- on the worker --------------------------------------------------------------------------

def run_task(entry: dict, client_data_dir: str, timeout: float, timing_env: dict[str, str | None],
             code: Checkout | None) -> dict:
    """One run on this worker: the node's env and corpus, the client's timing variables, and a
    watcher that ends the child if the task is cancelled (Ctrl-C, or the client gone)."""
    from distributed import get_worker

    worker = get_worker()
    where = {"executor": DaskExecutor.name, "host": socket.gethostname(), "worker": worker.address}
    run = PlannedRun.from_dict(entry)
    worker.log_event(STARTED_TOPIC, {"key": run.key, **where})  # the client prints its "started" line
    try:
        data_dir = node_data_dir(run, client_data_dir, code)
        skip = skip_reason(run.spec, gpus())  # what planning does on a local machine, here on the node
    except BenchError as exc:
        return {**failed_result(run.spec, f"node {where['host']} (worker {where['worker']}): {exc}"), **where}
    if skip:  # failed, not skipped: another node's GPU may serve it (--resume --retry-failed)
        return {**failed_result(run.spec, f"node {where['host']} cannot run it: {skip}"), **where}
    scratch = Path(worker.local_directory) / "skipgram-bench"
    scratch.mkdir(parents=True, exist_ok=True)
    stop, done = threading.Event(), threading.Event()
    watcher = threading.Thread(target=_watch, args=(worker, worker.get_current_task(), stop, done), daemon=True)
    watcher.start()
    try:
        result = attempt(run, data_dir, timeout, scratch, extra_env=child_env(timing_env), stop=stop)
    finally:
        done.set()
    return {**result, **where}


def checkout() -> Checkout:
    """Which code this process runs: its host, checkout folder and commit."""
    return socket.gethostname(), str(envs.ROOT), git_commit(envs.ROOT)


def node_data_dir(run: PlannedRun, client_data_dir: str, code: Checkout | None) -> Path:
    """Check this node can do the run and return its corpus folder: the worker's own $PTB_DIR
    if set (nodes mount data in different places), else the client's folder. Raises BenchError
    saying what the node lacks."""
    ours = checkout()
    if code and code[:2] != ours[:2] and code[2] and ours[2] and code[2] != ours[2]:  # another node's copy
        raise BenchError(f"its checkout {envs.ROOT} is at commit {ours[2]}, the suite's at {code[2]}; "
                         f"update it so every node runs the same code")
    if run.env:
        python = envs.python_for(run.env, build=False)  # building here would race the node's other workers
        if not python.exists():
            raise BenchError(f"no {run.env!r} env ({python} is missing); build it on that node with "
                             f"`tox -e {run.env} --notest`, or set {envs.python_variables(run.env)[0]} for its workers")
    if os.environ.get("PTB_DIR"):
        return verify_ptb(Path(os.environ["PTB_DIR"]), "the worker's PTB_DIR").parent
    return verify_ptb(Path(client_data_dir), "the suite's corpus folder (set PTB_DIR for workers where it differs)"
                      ).parent


def child_env(timing_env: dict[str, str | None]) -> dict[str, str | None]:
    """extra_env for attempt(): the client's timing variables, and every variable this worker's
    nanny set that the client does not have removed (None)."""
    return {**{name: None for name in _nanny_variables()}, **timing_env}


def _watch(worker: object, key: object, stop: threading.Event, done: threading.Event) -> None:
    """Set `stop` once nobody can want this task's result: cancelled by the client, released
    because the client is gone, or the worker closing (it lost the scheduler). Dask cannot
    interrupt a running task; this ends its child."""
    while not done.wait(0.5):
        task = worker.state.tasks.get(key)
        if task is None or task.state not in ("executing", "long-running", "resumed") or \
                worker.status.name not in ("running", "paused"):
            stop.set()
            return
