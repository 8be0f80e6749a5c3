"""Child processes that never outlive their parent: their own process group, ended as a whole,
and a kernel-sent SIGKILL when the process that started them dies (Linux PR_SET_PDEATHSIG)."""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with(parent: int) -> Callable[[], None]:
    """preexec_fn: SIGKILL this child when `parent` dies (Linux), and at once if it already has.

    prctl is looked up here, before the fork: the child of a threaded parent (a Dask worker)
    must not dlopen, whose lock another thread may have held at the fork."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the harness's signal handlers still end the group
        prctl = None

    def arm() -> None:
        if prctl is None:
            return
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)
    return arm


def end_group(proc: subprocess.Popen) -> None:
    """Kill the worker's whole process group and reap the worker."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
