"""`python -m bench <command>`: every user-facing entry point, and the one place errors become
a single line on stderr with a non-zero exit."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from bench.options import add_data_args
from common.errors import BenchError
from common.spec import DataSpec
from common.text import terminal


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2, like every other error."""

    commands: argparse._SubParsersAction | None = None

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BenchError(f"{message} (see `{self.prog} --help`)")

    def parse_args(self, args=None, namespace=None):
        """An unknown flag is the subcommand's usage error, so the hint names its --help."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            name = getattr(parsed, "command", None)
            command = self.commands.choices.get(name) if self.commands and name is not None else None
            (command or self).error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    from backends.registry import BACKENDS
    from bench.executing.suite import FRAMEWORKS, QUICK
    from common.spec import LAYOUTS, OPTIMIZERS, RUNNERS, RunSpec

    parser = _Parser(prog="python -m bench", description=__doc__)
    commands = parser.commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    data = commands.add_parser("data", help="summarise or dump the batch stream")
    add_data_args(data, epochs=1)
    mode = data.add_mutually_exclusive_group(required=True)
    mode.add_argument("--summary", action="store_true", help="print one JSON line about the stream")
    mode.add_argument("--dump", metavar="FILE.npz", help="write the first epoch's batches, vocab and init weights")
    data.set_defaults(run="bench.running.data_command:run")

    r = RunSpec(backend="numpy")
    train = commands.add_parser("train", help="train one backend and print loss, speed and neighbours")
    train.add_argument("--backend", help=f"one of {', '.join(BACKENDS)}")
    train.add_argument("--spec", metavar="SPEC.json", help="a whole run spec (as the harness writes it)")
    train.add_argument("--runner", choices=RUNNERS, default=r.runner,
                       help="backend (default); bare-loop (the backend without the worker's bookkeeping); "
                            "or a baseline: recipe-loop (the book's PyTorch loop), gensim")
    train.add_argument("--device", default=r.device, help="cpu, cuda or cuda:N")
    train.add_argument("--sparse", action="store_true", help="row-sparse gradients with lazy Adam")
    train.add_argument("--compile", action="store_true", help="torch.compile (reduce-overhead mode on cuda) / "
                       "an XLA loop per segment, where the backend has it")
    train.add_argument("--graph", action="store_true", help="replay each dense step as one captured CUDA graph "
                       "(cuda only; backends declaring it: torch)")
    train.add_argument("--layout", choices=LAYOUTS, default=r.layout,
                       help="padded: the recipe's (B, L) rows; packed: only the real slots, flat (README)")
    train.add_argument("--workers", type=int, default=r.workers,
                       help="data-parallel ranks, each on the framework's own engine (docs/data-parallel.md): "
                            "the global batch split into N slices, gradients averaged")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=r.optimizer)
    train.add_argument("--lr", type=float, default=r.lr)
    train.add_argument("--max-steps", type=int, help="stop after this many steps")
    train.add_argument("--out", metavar="RESULT.json", help="write the result record here")
    train.add_argument("--progress", action="store_true", help="print 'progress DONE TOTAL' after each epoch")
    train.add_argument("--export-vectors", metavar="FILE.txt", help="center vectors in word2vec text format")
    add_data_args(train, epochs=DataSpec().epochs)
    train.set_defaults(run="bench.running.train_command:run")

    rank = commands.add_parser("rank", help="one rank of a data-parallel run (started by train --workers N)")
    rank.add_argument("--spec", required=True, metavar="SPEC.json", help="the run's spec")
    rank.add_argument("--rank-dir", required=True, metavar="DIR", help="where the ranks write their files and logs")
    rank.add_argument("--data-dir", help="folder holding ptb.train.txt")
    rank.set_defaults(run="bench.running.rank_command:run")

    near = commands.add_parser("neighbours", help="nearest words by cosine in exported vectors")
    near.add_argument("--vectors", required=True, help="a file written by train --export-vectors")
    near.add_argument("--word", required=True)
    near.add_argument("-k", type=int, default=3)
    near.set_defaults(run="bench.running.train_command:run_neighbours")

    suite = commands.add_parser("suite", help="run backends x variants x devices and write the HTML report")
    suite.add_argument("--quick", action="store_true", help=f"1 epoch of {QUICK['max_steps']} steps per run")
    suite.add_argument("--backends", default=",".join(FRAMEWORKS), help="comma-separated (default: all)")
    suite.add_argument("--devices",
                       help="comma-separated: cpu, cuda, cuda:N (default: cpu, plus cuda if a GPU is seen)")
    suite.add_argument("--epochs", type=int)
    suite.add_argument("--max-steps", type=int)
    suite.add_argument("--no-baselines", action="store_true", help="skip the recipe loop and gensim")
    suite.add_argument("--suite", metavar="FILE.toml", help="sweeps to run instead of the default plan")
    suite.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed")
    suite.add_argument("--out", help="results folder (default reports/<UTC time>)")
    suite.add_argument("--resume", metavar="DIR",
                       help="finish an interrupted suite; its plan comes from DIR/suite.json")
    suite.add_argument("--retry-failed", action="store_true", help="with --resume or --out: redo failed and "
                       "timed-out runs too (runs with no valid result are always redone)")
    suite.add_argument("--dry-run", action="store_true", help="print the plan and what would be skipped; run nothing")
    suite.add_argument("--yes", action="store_true", help="start a plan of more than 200 runs")
    suite.add_argument("--require-quiet", action="store_true", help="wait up to 60 s before each run for a quiet "
                       "machine; record a run measured on a busy one as `noisy`, not `ok`")
    suite.add_argument("--corpus", help="every run's corpus: ptb, zipf:TOKENS:WORDS[:SEED] or a text file "
                       "(suite files may sweep `corpus` instead)")
    suite.add_argument("--data-dir")
    suite.add_argument("--no-download", action="store_true")
    suite.add_argument("--executor", choices=("local", "dask"), default="local",
                       help="where runs execute: local (one after another here) or dask (a Dask cluster)")
    suite.add_argument("--address", metavar="tls://HOST:PORT",
                       help="the Dask scheduler for --executor dask (default: $SKIPGRAM_DASK_ADDRESS); tls:// "
                            "with the three files below, or tcp:// (anyone reaching the port runs code on the workers)")
    suite.add_argument("--tls-ca-file", metavar="CA.pem", help="the CA certificate a tls:// scheduler's and workers' "
                       "certificates are signed with (the flags `dask scheduler` and `dask worker` take)")
    suite.add_argument("--tls-cert", metavar="CERT.pem", help="this client's certificate, signed by that CA")
    suite.add_argument("--tls-key", metavar="KEY.pem", help="that certificate's private key")
    suite.set_defaults(run="bench.executing.suite_command:run")

    report = commands.add_parser("report", help="rebuild DIR/index.html from DIR's stored results")
    report.add_argument("folder")
    report.set_defaults(run="bench.executing.suite_command:run_report")

    from bench.reporting.compare import METHOD_TEXT

    comp = commands.add_parser("compare", help="pair two results folders' runs: speed verdicts, losses, quality, env",
                               description=METHOD_TEXT + " Exit status: 1 when some pair is slower, 0 otherwise, "
                               "2 for bad input.")
    comp.add_argument("base", help="results folder measured first (the reference); several, comma-separated, "
                      "pool their runs (rounds alternated with NEW's)")
    comp.add_argument("new", help="results folder(s) to judge against it")
    comp.add_argument("--threshold", type=float, default=0.05, help="smallest change that counts (default 0.05)")
    comp.add_argument("--out", metavar="FILE.html", help="also write an offline HTML page")
    comp.add_argument("--json", metavar="FILE.json",
                      help="where the JSON goes (default: beside --out, else NEW/compare.json)")
    comp.set_defaults(run="bench.reporting.compare:run")

    hist = commands.add_parser("history", help="each run's examples/s and final loss across folders, by date")
    hist.add_argument("folders", nargs="+", metavar="FOLDER", help="results folders (ordered by suite.json's date)")
    hist.add_argument("--out", metavar="FILE.html", help="the page (default: NEWEST_FOLDER/history.html)")
    hist.set_defaults(run="bench.reporting.history:run")

    machine = commands.add_parser("machine", help="probe this machine: memory bandwidth by working set, peak "
                                  "float32 FLOP rate (about two seconds)")
    machine.add_argument("--json", action="store_true", help="print the probe's JSON record")
    machine.set_defaults(run="bench.running.machine_command:run")

    roof = commands.add_parser("roofline", help="the cost model of a step on a corpus: bytes, FLOPs and bounds, "
                               "on this machine and on published GPUs")
    roof.add_argument("--vocab", type=int, help="also model the step at this vocabulary size (same touched rows)")
    roof.add_argument("--no-probe", action="store_true", help="skip this machine (published GPUs only)")
    add_data_args(roof, epochs=1)
    roof.set_defaults(run="bench.running.machine_command:run_roofline")

    micro = commands.add_parser("microbench", help="pytest-benchmark step and data benchmarks in every env")
    micro.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default: all)")
    micro.add_argument("--out", help="folder (default reports/microbench-<UTC time>)")
    micro.add_argument("-k", help="pytest -k expression to select benchmarks")
    micro.set_defaults(run="bench.executing.microbench:run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        module, function = args.run.split(":")  # imported only now: each command pays for its own imports
        run: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), function)
        status = run(args)
        sys.stdout.flush()  # a pipe is block-buffered: a reader that left shows up here, not at print
        return status
    except BenchError as exc:  # one line, whatever text from a file it names holds
        print(f"error: {terminal(exc)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # e.g. `report` under a python without matplotlib
        print(f"error: this command needs the package {exc.name!r}, which {sys.executable} lacks: run it with "
              f".tox/bench/bin/python (tox -e bench --notest builds it) or pip install {exc.name}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`| head`): results are already written; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 141
