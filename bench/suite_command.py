"""`python -m bench suite` (what `tox -e bench` runs) and `python -m bench report DIR`."""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from bench import report
from bench.harness import Harness, gpu_names
from bench.suite import FRAMEWORKS, QUICK, default_plan, load_suite_file
from common.errors import BenchError
from common.ptb import find_ptb

DEVICES = ("cpu", "cuda")


def _names(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    wrong = [n for n in names if n not in allowed and not (what == "device" and n.startswith("cuda:"))]
    if wrong or not names:
        raise BenchError(f"unknown {what} {', '.join(wrong) or repr(value)}; available: {', '.join(allowed)}")
    return names


def run(args: argparse.Namespace) -> int:
    base = dict(QUICK) if args.quick else {}
    if args.epochs is not None:
        base["epochs"] = args.epochs
    if args.max_steps is not None:
        base["max_steps"] = args.max_steps
    if args.suite:
        plan = load_suite_file(Path(args.suite), base)
    else:
        devices = _names(args.devices, DEVICES, "device") if args.devices else \
            ["cpu"] + (["cuda"] if gpu_names() else [])
        plan = default_plan(_names(args.backends, FRAMEWORKS, "backend"), devices, base,
                            baselines=not args.no_baselines)
    ptb = find_ptb(args.data_dir, not args.no_download).parent
    if args.resume:
        out = Path(args.resume)
        if not (out / "suite.json").exists():
            raise BenchError(f"{out} holds no suite to resume (no suite.json); start one without --resume")
    else:
        out = Path(args.out) if args.out else Path("reports") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
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
