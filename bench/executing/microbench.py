"""`python -m bench microbench` (what `tox -e microbench` runs): pytest-benchmark in every
backend's env, one JSON file per env, then the HTML summary (report.render)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from backends.registry import BACKENDS, tox_env
from bench.executing import envs
from bench.executing.folder import ResultsFolder, write_meta
from bench.executing.suite import new_results_dir, parse_names
from bench.reporting import report
from common.cache import check_writable
from common.errors import BenchError


def run(args: argparse.Namespace) -> int:
    names = parse_names(args.backends, tuple(BACKENDS), "backend")
    out = Path(args.out) if args.out else new_results_dir("microbench-")
    folder = out / "microbench"
    ResultsFolder(out).check_ours()
    check_writable(folder, "--out", folder=True)
    with ResultsFolder(out):  # one owner: not beside a suite or another microbench writing there
        if not (out / "suite.json").exists():  # a folder of its own; inside a suite's folder, keep the suite's
            write_meta(out, ["python", "-m", "bench", *sys.argv[1:]], [])
        failed = [name for name in names if not _bench(name, folder / f"{name}.json", args.k)]
        print(f"report: {report.render(out).resolve()}")
    if failed:
        raise BenchError(f"micro-benchmarks failed for {', '.join(failed)}; see the output above")
    return 0


def _bench(name: str, target: Path, k: str | None) -> bool:
    """pytest-benchmark in backend `name`'s env, its JSON to `target`; whether it passed."""
    python = envs.python_for(tox_env(name))
    cmd = [str(python), "-m", "pytest", "tests/microbench", "-m", "microbench", "-q", "-p", "no:cacheprovider",
           "--benchmark-enable", f"--benchmark-json={target}", *(["-k", k] if k else [])]
    env = {**os.environ, "SKIPGRAM_BACKEND": name, "PYTHONPATH": str(envs.ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    print(f"microbench: {name} ({python})", file=sys.stderr)
    return subprocess.run(cmd, cwd=envs.ROOT, env=env).returncode in (0, 5)
