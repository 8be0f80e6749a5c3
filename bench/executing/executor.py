"""Where runs execute, behind one interface (bench/executing/events.py): `local` (one after another
on this machine, the default, no extra package) or `dask` (a Dask distributed cluster,
bench/executing/dask_executor.py). The harness plans, writes results and reports; an executor
only runs and hands results back."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.executing.events import Executor
from common.errors import BenchError


def executor_from_args(args: argparse.Namespace, ptb: Path, scratch: Path) -> Executor:
    """The executor `--executor` names; for dask, connected, so an unreachable scheduler is one
    line before any results folder exists."""
    if args.executor == "local":
        from bench.executing.local_executor import LocalExecutor

        if args.address or args.tls_ca_file or args.tls_cert or args.tls_key:
            raise BenchError("--address and --tls-* name a Dask scheduler: add --executor dask")
        return LocalExecutor(ptb, args.timeout, scratch)
    from bench.executing.dask_executor import ADDRESS_VARIABLE, DaskExecutor

    if getattr(args, "require_quiet", False):
        raise BenchError("--require-quiet watches this machine's load; with --executor dask the runs are on the "
                         "cluster's nodes: start one worker per timing slot instead (README)")
    address = args.address or os.environ.get(ADDRESS_VARIABLE)
    if not address:
        raise BenchError(f"--executor dask needs the scheduler's address: --address tls://HOST:PORT "
                         f"or {ADDRESS_VARIABLE}")
    return DaskExecutor.connect(address, ptb, args.timeout, (args.tls_ca_file, args.tls_cert, args.tls_key))
