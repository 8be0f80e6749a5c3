"""One machine probe per suite (and per Dask worker process), handed to every run it starts.

A run's bound must be read against one probe for the whole suite, measured with the best tool
the machine has: numba's all-core streams where the `fused` env exists (the harness's own env
has numpy only), numpy's threads otherwise. Measured once, before the first run, on a machine
doing nothing else of ours; never per run, never per step.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path

from bench.executing import envs
from bench.results import store
from bench.results.schema import MachineProbe
from common.probe import PROBE_VARIABLE, Probe, check, probe, unavailable

NUMBA_ENV = "fused"
PROBE_TIMEOUT = 300  # seconds: numba's first compilation plus a probe on a loaded machine


@functools.lru_cache(maxsize=1)
def machine_probe() -> Probe:
    """This machine's probe: `python -m bench machine --json` in the numba env where it exists,
    else measured here. A probe that fails says why ({"error": ...}): runs then have no bound."""
    python = envs.python_for(NUMBA_ENV, build=False)
    if not python.exists():
        return probe()
    try:
        out = subprocess.run([str(python), "-m", "bench", "machine", "--json"], cwd=envs.ROOT, capture_output=True,
                             text=True, timeout=PROBE_TIMEOUT, env={**os.environ, "PYTHONPATH": str(envs.ROOT)})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return unavailable(f"the probe in {python} did not finish ({exc.__class__.__name__})")
    lines = out.stdout.strip().splitlines()
    try:
        return check(json.loads(lines[-1]))
    except (IndexError, ValueError, TypeError, AttributeError):
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return unavailable(f"the probe in {python} gave no record (exit status {out.returncode}: {tail})")


PROBE_FILE = "machine-probe.json"


def probe_env(result: Probe, folder: Path) -> dict[str, str]:
    """What a run's environment needs to be read against `result`: the path of a file in `folder`
    holding it, checked as it will be read. A file, not the record itself: a variable's value is
    limited in size (a crafted 200 KB probe would stop every worker's start, E2BIG)."""
    path = folder.absolute() / PROBE_FILE
    store.write_json(path, result, MachineProbe)
    return {PROBE_VARIABLE: str(path)}


def summary(result: Probe) -> str:
    """One line for the suite's output."""
    if result.get("error"):
        return f"machine probe: no bound ({result['error']})"
    return (f"machine probe: {result['method']}, {min(result['bandwidth']) / 1e9:.0f}-"
            f"{max(result['bandwidth']) / 1e9:.0f} GB/s over {len(result['sizes'])} working sets, "
            f"{result['peak_flops'] / 1e9:.0f} GFLOP/s float32")
