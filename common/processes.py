"""Child processes that never outlive their parent: a kernel-sent signal when the process that
started them dies (Linux PR_SET_PDEATHSIG), and a process group of their own, ended as a whole.

The harness runs its workers this way (bench/executing/processes.py); a backend runs a compiler
this way (backends/mxnet_ops.py), whose own children (cc1plus, as) would otherwise finish their
work seconds after a killed run, beside the next one.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence

_PR_SET_PDEATHSIG = 1
# The leader of a group run_own_group makes: it runs the command, and on SIGTERM (its parent's
# death, by PR_SET_PDEATHSIG) ends its whole group, the command's own children included.
# A command that cannot be started exits 127 with one line, as a shell's would.
_LEADER = """
import os, signal, subprocess, sys
signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
try:
    code = subprocess.call(sys.argv[1:])
except OSError as exc:
    print(f"cannot run {sys.argv[1]}: {exc.strerror}", file=sys.stderr)
    code = 127
sys.exit(code if code >= 0 else 128 - code)
"""


def die_with(parent: int, sig: int = signal.SIGKILL) -> Callable[[], None]:
    """preexec_fn: send this child `sig` when `parent` dies (Linux), and exit at once if it already has.

    prctl is looked up here, before the fork: the child of a threaded parent (a Dask worker)
    must not dlopen, whose lock another thread may have held at the fork."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the caller's own clean-up still ends the group
        prctl = None

    def arm() -> None:
        if prctl is None:
            return
        prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:
            os._exit(1)
    return arm


def run_own_group(command: Sequence[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run `command` to its end, its output captured as text, in a process group of its own that
    is ended (SIGKILL) however this call exits; and if this process dies first, SIGKILL included,
    the group's leader is told by the kernel and ends the group, grandchildren too (the parent-death
    signal alone reaches only a direct child: `g++` would go, its `cc1plus` finish its work).
    subprocess.TimeoutExpired after `timeout` seconds, the group ended."""
    # Output to files, not pipes: a child the command leaves behind holding them (a wrapper's
    # `sleep &`) must not keep this call waiting for their end after the command has exited.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LEADER, *command], stdout=out, stderr=err,
                                start_new_session=True, preexec_fn=die_with(os.getpid(), signal.SIGTERM))
        try:
            proc.wait(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode(errors="replace"))
    return subprocess.CompletedProcess(list(command), proc.returncode, *texts)
