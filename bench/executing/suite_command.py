"""`python -m bench suite` (what `tox -e bench` runs) and `python -m bench report DIR`.

Everything that can be checked is checked before the first run starts: the plan (typed
settings, its size), the corpus, the folder (writable, free, holding this plan or none).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from bench.executing.envs import naming_variable, work_dir
from bench.executing.folder import ResultsFolder
from bench.executing.gpus import gpus
from bench.executing.executor import executor_from_args
from bench.executing.local_executor import LocalExecutor
from bench.executing.probing import machine_probe, probe_env, summary as probe_summary
from bench.executing.memory import corpus_facts, for_memory
from bench.executing.harness import Harness, Interrupted, say, stop_on_signals
from bench.executing.suite import FRAMEWORKS, QUICK, PlannedRun, default_plan, for_machine, load_suite_file, \
    new_results_dir, parse_names
from bench.reporting import report
from common.cache import check_writable
from common.errors import BenchError
from common.corpora import PTB
from common.ptb import find_ptb
from common.spec import DataSpec

DEVICES = ("cpu", "cuda")
LARGE_PLAN = 200
# For the size warning only: a CPU run of the recipe trains about 50k examples/s (README's table)
# on its corpus's expected examples an epoch, plus about 15 s of start-up and evaluation.
_ESTIMATE_RATE, _RUN_OVERHEAD = 50_000, 15
# Options that shape the plan: with --resume they must spell out the stored one (or be left out).
_PLAN_OPTIONS = ("quick", "backends", "devices", "epochs", "max_steps", "no_baselines", "suite", "corpus")


def resume_command(folder: Path) -> str:
    """What to type to finish `folder`: the same front door the user came in by."""
    if os.environ.get("TOX_ENV_NAME") == "bench":
        return f"tox -e bench -- --resume {folder}"
    return f"python -m bench suite --resume {folder}"


def plan_from_args(args: argparse.Namespace) -> list[PlannedRun]:
    """The plan the options describe, with runs this machine's GPUs or memory cannot serve marked skipped."""
    base = dict(QUICK) if args.quick else {}
    if args.epochs is not None:
        base["epochs"] = args.epochs
    if args.max_steps is not None:
        base["max_steps"] = args.max_steps
    if args.corpus is not None:
        base["corpus"] = args.corpus
    found = gpus()
    # On a cluster each node checks its own GPUs when the run reaches it (dask_executor.node_data_dir).
    here = (lambda plan: for_memory(for_machine(plan, found), args.data_dir, not args.no_download)) \
        if getattr(args, "executor", "local") == "local" else list
    if args.suite:
        return here(load_suite_file(Path(args.suite), base))
    devices = parse_names(args.devices, DEVICES, "device", prefixes=("cuda:",)) if args.devices else \
        ["cpu"] + (["cuda"] if found else [])
    return here(default_plan(parse_names(args.backends, FRAMEWORKS, "backend"), devices, base,
                             baselines=not args.no_baselines))


def _given(args: argparse.Namespace, name: str) -> bool:
    """Whether plan option `name` was given (0 counts: `--epochs 0` must be refused, not ignored)."""
    value = getattr(args, name)
    return value is not None and value is not False and not (name == "backends" and value == ",".join(FRAMEWORKS))


def check_size(plan: list[PlannedRun], yes: bool, data_dir: str | None, download: bool) -> None:
    """A plan over LARGE_PLAN runs starts only with --yes: a typo in a sweep can mean days. Its
    time counts each run's epoch on its own corpus (the expected examples after subsampling)."""
    if len(plan) <= LARGE_PLAN or yes:
        return
    examples = sum(min(r.spec.data.epochs * corpus_facts(r.spec.data, data_dir, download).kept,
                       (r.spec.max_steps or 10**12) * r.spec.data.batch_size) for r in plan)
    hours = (examples / _ESTIMATE_RATE + len(plan) * _RUN_OVERHEAD) / 3600
    raise BenchError(f"the plan has {len(plan)} runs, about {hours:.1f} h on a 2-core CPU at 50k examples/s; "
                     f"add --yes to start it, or --dry-run to list it")


def check_corpora(plan: list[PlannedRun], ptb: Path) -> None:
    """Each distinct corpus and sampling of the runs to start, prepared here once (a generated
    corpus written, a file tokenised, both cached): a file changed since the plan, or settings
    that leave no training example, are one line now rather than a failure in every run."""
    from common.batches import load_dataset  # numpy: not for --dry-run or --help

    seen = set()
    for run in plan:
        d = run.spec.data
        what = (d.corpus, d.corpus_path, d.min_freq, d.subsample, d.seed)
        if run.skip or what in seen:
            continue
        seen.add(what)
        load_dataset(DataSpec(corpus=d.corpus, corpus_path=d.corpus_path, min_freq=d.min_freq,
                              subsample=d.subsample, seed=d.seed), str(ptb), download=False)


def dry_run(plan: list[PlannedRun], folder: ResultsFolder, retry_failed: bool) -> int:
    """Print what would run and what would be skipped, and why; write and start nothing."""
    todo = dict(folder.todo(plan, retry_failed)) if folder.path.exists() else {run: "not run yet" for run in plan}
    runnable = sum(run in todo and not run.skip for run in plan)
    print(f"plan: {len(plan)} runs -> {folder.path} ({runnable} to run, {len(plan) - runnable} skipped)")
    for run in plan:
        env = run.env or "harness"
        variable = naming_variable(env)
        where = f"named by {variable}" if variable \
            else ("built" if (work_dir() / env).exists() or env == "harness" else "to be built by tox")
        why = f"run: {todo[run]}" if run in todo and not run.skip else f"skip: {run.skip}" if run.skip else \
            f"skip: finished ({folder.stored_result(run)['status']}) in {folder.result_path(run)}"
        print(f"  {run.name}  env={env} ({where})  device={run.spec.device}  key={run.key}  {why}")
    return 0


def run(args: argparse.Namespace) -> int:
    if not math.isfinite(args.timeout) or args.timeout <= 0:  # nan would mean no timeout at all
        raise BenchError(f"--timeout must be a finite number of seconds > 0, got {args.timeout:g}")
    if args.resume:
        folder = ResultsFolder(Path(args.resume))
        plan = folder.stored_plan()
        if plan is None:
            raise BenchError(f"{args.resume} holds no suite to resume (no suite.json); start one without --resume")
        if args.out and Path(args.out) != folder.path:
            raise BenchError(f"--resume {args.resume} writes into that folder: drop --out {args.out}")
        if any(_given(args, name) for name in _PLAN_OPTIONS):
            folder.check_plan(plan_from_args(args))  # the same plan spelled out again is fine
    else:
        plan = plan_from_args(args)
        folder = ResultsFolder(Path(args.out) if args.out else new_results_dir())
    if not args.dry_run:
        check_size(plan, args.yes, args.data_dir, not args.no_download)
    uses_ptb = any(run.spec.data.corpus == PTB for run in plan)
    ptb = find_ptb(args.data_dir, not args.no_download).parent if uses_ptb else Path(args.data_dir or ".").absolute()
    if args.dry_run:
        if folder.path.exists():
            folder.check_plan(plan)
        return dry_run(plan, folder, args.retry_failed)
    check_corpora(plan, ptb)
    executor = executor_from_args(args, ptb, folder.logs)  # a cluster that cannot be reached: before any folder
    check_writable(folder.path, "--out", folder=True)
    try:
        with folder, stop_on_signals():
            folder.adopt(plan, ["python", "-m", "bench", *sys.argv[1:]])
            say(f"suite: {len(plan)} runs -> {folder.path} (interrupted? resume with: {resume_command(folder.path)})")
            if isinstance(executor, LocalExecutor):  # a Dask node probes itself (dask_executor.run_task)
                executor.run_env = probe_env(suite_probe(folder))
            harness = Harness(folder, executor, require_quiet=args.require_quiet)
            harness.run(plan, retry_failed=args.retry_failed)
            say(f"report: {report.render(folder.path).resolve()}")
    except Interrupted as stop:
        print(f"error: interrupted by {stop}: the unfinished run was stopped and recorded nothing; "
              f"resume with: {resume_command(folder.path)}", file=sys.stderr)
        return 128 + stop.signum
    return 0


def suite_probe(folder: ResultsFolder) -> dict:
    """The folder's machine probe: the one suite.json holds (a resumed suite keeps the bound its
    first runs were read against), else measured now and recorded there."""
    stored = folder.stored_probe()
    if stored is not None:
        return stored
    result = machine_probe()
    folder.record_probe(result)
    say(probe_summary(result))
    return result


def run_report(args: argparse.Namespace) -> int:
    print(report.render(Path(args.folder)).resolve())
    return 0
