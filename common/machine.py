"""What a result must say about where it was measured."""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import resource
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import NamedTuple

from common.cache import atomic_write_bytes
from common.errors import BenchError

# Other processes' share of the machine's CPU during a run's clock above which the run is marked
# busy. A CPU run with a thread per core loses about that share of its rate; 0.10 (a fifth of a
# core on the 2-core VM) is the size of the +-10 % drift the README reports between quiet runs.
BUSY_FRACTION = 0.10


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() or None


CODE_PATHS = ("common", "backends", "bench", "pyproject.toml")  # what a run's results depend on


REPO_ROOT = Path(__file__).resolve().parents[1]


def code_version(root: Path = REPO_ROOT) -> str | None:
    """A digest of the code that computes a result: the committed trees of CODE_PATHS plus any
    uncommitted change to them (files git does not track yet are not seen). A README edit or a
    new commit elsewhere leaves it alone; any change to what trains or measures does not."""
    try:
        trees = subprocess.run(["git", "rev-parse", *(f"HEAD:{p}" for p in CODE_PATHS)], cwd=root,
                               capture_output=True, text=True)
        diff = subprocess.run(["git", "diff", "HEAD", "--binary", "--", *CODE_PATHS], cwd=root, capture_output=True)
    except OSError:
        return None
    if trees.returncode != 0 or diff.returncode != 0:
        return None
    return hashlib.sha256(trees.stdout.encode() + diff.stdout).hexdigest()[:12]


# The thread and malloc settings a run's speed depends on (and that a Dask nanny would set).
TIMING_VARIABLES = ("OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MALLOC_TRIM_THRESHOLD_")


def machine_info() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads_env": {k: os.environ[k] for k in TIMING_VARIABLES if k in os.environ},
        "code": code_version(),
    }


def peak_rss_bytes() -> int:
    """This process's peak resident memory: Linux's VmHWM (/proc/self/status), the peak of this
    program's own memory; else getrusage's ru_maxrss (KiB on Linux, bytes on macOS). Not
    ru_maxrss on Linux: exec keeps the high-water mark of the memory it replaces, so a worker
    spawned (vfork) by a large process (a Dask worker, a test runner) would record that one's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024


# --- what else the machine was doing while a run was timed ---------------------------------

STAT = Path("/proc/stat")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# /proc/stat's first line: user nice system idle iowait irq softirq steal guest guest_nice.
# Busy = everything but idle and iowait; guest time is already inside user and nice. Steal is
# time the hypervisor gave this VM's CPUs to another guest: lost to the run all the same.
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)
_STEAL = 7


class CpuSample(NamedTuple):
    """One reading of the whole machine's CPU counters and of this process's own CPU time."""

    wall: float       # time.monotonic()
    busy: float       # CPU-seconds of every process on every CPU since boot (steal included)
    steal: float      # CPU-seconds stolen by the hypervisor since boot
    own: float        # CPU-seconds of this process (all its threads) and its reaped children
    cores: int        # CPUs counted in /proc/stat


def cpu_sample() -> CpuSample | None:
    """Read /proc/stat and this process's rusage; None where there is no /proc/stat (not Linux)."""
    try:
        lines = STAT.read_text().splitlines()
    except OSError:
        return None
    fields = [int(x) for x in lines[0].split()[1:]]
    cores = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    own = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime + _live_descendants_cpu(os.getpid())
    busy = sum(fields[i] for i in _BUSY_FIELDS if i < len(fields)) / _TICK
    steal = (fields[_STEAL] if len(fields) > _STEAL else 0) / _TICK
    return CpuSample(time.monotonic(), busy, steal, own, max(cores, 1))


def _live_descendants_cpu(pid: int) -> float:
    """CPU-seconds of `pid`'s running descendants (a DataLoader's workers, compiler processes):
    the run's own work, which rusage counts only once they are reaped. A child reaped between
    two samples moves from here to RUSAGE_CHILDREN with the same total."""
    total, stack = 0.0, [pid]
    while stack:
        for task in Path(f"/proc/{stack.pop()}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            for child in children:
                stack.append(child)
                try:  # fields after "(comm) ": state is [0]; utime, stime, cutime, cstime are [11:15]
                    fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
                    total += sum(int(x) for x in fields[11:15]) / _TICK
                except (OSError, IndexError, ValueError):
                    pass
    return total


def _delta(before: CpuSample, after: CpuSample) -> CpuSample:
    return CpuSample(after.wall - before.wall, after.busy - before.busy, after.steal - before.steal,
                     after.own - before.own, after.cores)


def _fractions(d: CpuSample) -> dict:
    """CPU-seconds other processes took in a span `d` (all busy time less this process's own),
    and that as a fraction of the machine (wall seconds x cores)."""
    wall = max(d.wall, 1e-9)
    other = max(0.0, d.busy - d.own)
    capacity = wall * d.cores
    return {"wall_seconds": d.wall, "cores": d.cores, "own_cpu_seconds": d.own, "other_cpu_seconds": other,
            "other_cpu_fraction": min(1.0, other / capacity), "steal_fraction": min(1.0, max(0.0, d.steal) / capacity)}


def other_cpu(before: CpuSample, after: CpuSample) -> dict:
    """Between two samples: see _fractions."""
    return _fractions(_delta(before, after))


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


class MachineLoad:
    """What the machine was doing during a run's clock, so a busy machine is named in the
    result instead of hiding in a low rate: the 1-minute load average before and after, and
    the CPU time other processes took from /proc/stat less this process's own (its threads,
    and children it has reaped, such as a DataLoader's workers at the end of each epoch).

    start() / stop() may bracket several spans (each epoch's training clock, leaving out the
    data building between them); stop() returns the totals so far. The 1-minute load average
    lags (an exponential average over about a minute) and counts the run's own threads, so it
    is context; other_cpu_fraction is the measure the report judges by.
    """

    def __init__(self) -> None:
        self._start: CpuSample | None = None
        self._total: CpuSample | None = None
        self._loadavg_before: float | None = None
        self._measurable = True

    def start(self) -> MachineLoad:
        if self._total is None and self._start is None:
            self._loadavg_before = _loadavg()
        self._start = cpu_sample()
        self._measurable &= self._start is not None
        return self

    def stop(self) -> dict:
        """The record for the result: loadavg_before, loadavg_after, other_cpu_fraction (None
        without /proc/stat), other_cpu_seconds, own_cpu_seconds, steal_fraction, wall_seconds, cores."""
        end = cpu_sample()
        if self._start is not None and end is not None:
            span = _delta(self._start, end)
            self._total = span if self._total is None else \
                CpuSample(self._total.wall + span.wall, self._total.busy + span.busy,
                          self._total.steal + span.steal, self._total.own + span.own, span.cores)
        else:
            self._measurable = False
        self._start = None
        load = {"loadavg_before": self._loadavg_before, "loadavg_after": _loadavg()}
        if not self._measurable or self._total is None:
            return {**load, "other_cpu_fraction": None}
        return {**load, **_fractions(self._total)}


def wait_for_quiet(max_wait: float, threshold: float, window: float = 1.0) -> bool:
    """Sample the machine in `window`-second slices until other processes' CPU use (everything
    but this process, which idles while it waits) is below `threshold` of the machine, or
    `max_wait` seconds have passed. True when it became quiet. At least one slice is sampled,
    so max_wait 0 still answers "is it quiet now?". False where /proc/stat cannot be read,
    since quiet cannot be shown there."""
    deadline = time.monotonic() + max_wait
    while True:
        before = cpu_sample()
        time.sleep(window)
        after = cpu_sample()
        if before is None or after is None:
            return False
        if other_cpu(before, after)["other_cpu_fraction"] < threshold:
            return True
        if time.monotonic() + window > deadline:
            return False


# --- a worker that never outlives its harness ------------------------------------------------

# "pid:start time:file" from the harness that started a worker: the harness's identity, and the
# file in which it announces the session it made for that worker (announce_session).
HARNESS_VARIABLE = "SKIPGRAM_HARNESS"


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (field 3 on), None where it cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_identity(pid: int) -> str | None:
    """pid plus its start time (/proc/<pid>/stat field 22): a reused pid is another process."""
    fields = _stat_fields(pid)
    return f"{pid}:{fields[19]}" if fields is not None and len(fields) > 19 else None


def harness_value(announcement: Path) -> str:
    """HARNESS_VARIABLE for a worker this process is about to start in a session of its own;
    once it is started, announce_session(announcement, its pid) says which session that is."""
    return f"{process_identity(os.getpid()) or ''}:{announcement.absolute()}"


def announce_session(announcement: Path, session: int) -> None:
    """Record that `session` (the pid of a child started with start_new_session) is the one this
    harness made: only a worker in exactly that session ever ends its group. Written atomically,
    so a worker reads all of it or nothing."""
    atomic_write_bytes(announcement, f"{session} {process_identity(os.getpid())}\n".encode())


class _Harness(NamedTuple):
    pid: int
    identity: str  # "pid:start time"
    announcement: Path


def _harness(value: str) -> _Harness | None:
    """HARNESS_VARIABLE's parts, None for a value that is no "pid:start time:file"."""
    pid, start, announcement = (value.split(":", 2) + ["", ""])[:3]
    if not (pid.isdigit() and start.isdigit() and announcement):
        return None
    return _Harness(int(pid), f"{pid}:{start}", Path(announcement))


def in_harness_session(value: str) -> bool:
    """Whether this process's group is the session the harness in HARNESS_VARIABLE `value`
    announced: the group leads its session (getpgrp() == getsid(0)) and that session's id is the
    one the harness wrote (the worker's own pid, or a wrapper's that does not exec python). Under
    any other session leader (setsid, cron, systemd, a container's entry shell) this is False."""
    harness = _harness(value)
    if harness is None:
        return False
    try:
        announced = harness.announcement.read_text().split()
    except (OSError, UnicodeDecodeError):
        return False  # not announced (yet, or the harness died before it could): not provably its own
    session = os.getsid(0)
    return os.getpgrp() == session and announced == [str(session), harness.identity]


def exit_with_harness(interval: float = 1.0) -> None:
    """End this process (exit 137) within `interval` of the harness named in HARNESS_VARIABLE
    ending, and its process group with it where that group is the session the harness announced
    (in_harness_session); any other process exits alone. A variable that names no live harness
    and no session of this process's (one copied from a suite's worker) stops here (BenchError).
    PR_SET_PDEATHSIG covers a worker the harness started directly; this also covers one started
    through a wrapper that does not exec python (a shell script named by SKIPGRAM_PYTHON_*, a
    container runner), whose parent is the wrapper.

    The variable is taken out of this process's environment: its children (DataLoader workers,
    a data-parallel launcher's ranks) stay in the group and are ended with it, and never end it."""
    value = os.environ.pop(HARNESS_VARIABLE, None)
    if not value or process_identity(os.getpid()) is None:
        return  # not started by a harness, or no /proc to watch it through
    harness = _harness(value)
    if harness is None or process_identity(harness.pid) != harness.identity:
        if harness is not None and in_harness_session(value):
            _end(group=True)  # the harness died while this process was starting
        raise BenchError(f"{HARNESS_VARIABLE}={value!r} names no running harness (an environment copied from "
                         f"a suite's worker?): unset it to run a worker by hand")

    def watch() -> None:
        while process_identity(harness.pid) == harness.identity:
            time.sleep(interval)
        _end(group=in_harness_session(value))

    threading.Thread(target=watch, name="harness-watch", daemon=True).start()


def _end(group: bool) -> None:
    """Exit 137, taking this process's group with it (a wrapper's other children, DataLoader
    workers, ranks) where `group`."""
    if group:
        with contextlib.suppress(OSError):
            os.killpg(os.getpgrp(), signal.SIGKILL)  # this process included
    os._exit(137)
