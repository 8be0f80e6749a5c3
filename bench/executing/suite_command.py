"""`python -m bench suite` (what `tox -e bench` runs) and `python -m bench report DIR`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.reporting import report
from bench.executing.harness import Harness, gpu_names
from bench.executing.suite import FRAMEWORKS, QUICK, default_plan, load_suite_file, new_results_dir, parse_names
from common.errors import BenchError
from common.ptb import find_ptb

DEVICES = ("cpu", "cuda")


def run(args: argparse.Namespace) -> int:
    base = dict(QUICK) if args.quick else {}
    if args.epochs is not None:
        base["epochs"] = args.epochs
    if args.max_steps is not None:
        base["max_steps"] = args.max_steps
    if args.suite:
        plan = load_suite_file(Path(args.suite), base)
    else:
        devices = parse_names(args.devices, DEVICES, "device", prefixes=("cuda:",)) if args.devices else \
            ["cpu"] + (["cuda"] if gpu_names() else [])
        plan = default_plan(parse_names(args.backends, FRAMEWORKS, "backend"), devices, base,
                            baselines=not args.no_baselines)
    ptb = find_ptb(args.data_dir, not args.no_download).parent
    if args.resume:
        out = Path(args.resume)
        if not (out / "suite.json").exists():
            raise BenchError(f"{out} holds no suite to resume (no suite.json); start one without --resume")
    else:
        out = Path(args.out) if args.out else new_results_dir()
    harness = Harness(out, ptb, args.timeout)
    if not args.resume:
        harness.write_plan(plan, ["python", "-m", "bench", *sys.argv[1:]])
    print(f"suite: {len(plan)} runs -> {out} (interrupted? resume with: tox -e bench -- --resume {out})")
    harness.run_all(plan)
    print(f"report: {report.render(out).resolve()}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    print(report.render(Path(args.folder)).resolve())
    return 0
