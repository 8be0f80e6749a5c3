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


def add_commands(commands) -> None:
    suite = commands.add_parser("suite", help="run backends x variants x devices and write the HTML report")
    suite.add_argument("--quick", action="store_true", help=f"1 epoch of {QUICK['max_steps']} steps per run")
    suite.add_argument("--backends", default=",".join(FRAMEWORKS), help="comma-separated (default: all)")
    suite.add_argument("--devices", help="comma-separated: cpu, cuda, cuda:N (default: cpu, plus cuda if a GPU is seen)")
    suite.add_argument("--epochs", type=int)
    suite.add_argument("--max-steps", type=int)
    suite.add_argument("--no-baselines", action="store_true", help="skip the recipe loop and gensim")
    suite.add_argument("--suite", metavar="FILE.toml", help="sweeps to run instead of the default plan")
    suite.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed")
    suite.add_argument("--out", help="results folder (default reports/<UTC time>)")
    suite.add_argument("--resume", metavar="DIR", help="finish an interrupted suite")
    suite.add_argument("--data-dir")
    suite.add_argument("--no-download", action="store_true")
    suite.set_defaults(run=run)
    rep = commands.add_parser("report", help="rebuild DIR/index.html from DIR's stored results")
    rep.add_argument("folder")
    rep.set_defaults(run=run_report)
