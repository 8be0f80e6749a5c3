"""The harness's child processes (workers, tox): their own process group, ended as a whole, and a
kernel-sent SIGKILL when the process that started them dies (common.processes.die_with)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess

from common.processes import die_with

__all__ = ["die_with", "end_group"]


def end_group(proc: subprocess.Popen) -> None:
    """Kill the worker's whole process group and reap the worker."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
