"""`python -m bench train` (one run, the recipe's printout made honest) and `neighbours`."""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

from bench.running import worker
from bench.options import data_spec
from common.cache import atomic_write_bytes, check_writable
from common.errors import BenchError
from common.machine import exit_with_harness
from common.evaluate import neighbours, read_word2vec
from common.spec import RunSpec


def run_spec(args: argparse.Namespace) -> RunSpec:
    if args.spec:  # the harness passes whole specs as files
        try:
            return RunSpec.from_dict(json.loads(Path(args.spec).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise BenchError(f"cannot read run spec {args.spec}: {exc}") from None
    if not args.backend:
        raise BenchError("train needs --backend (or --spec FILE)")
    return RunSpec(backend=args.backend, data=data_spec(args), device=args.device, sparse=args.sparse,
                   optimizer=args.optimizer, lr=args.lr, max_steps=args.max_steps, compile=args.compile,
                   graph=args.graph, layout=args.layout, runner=args.runner)


def runner(spec: RunSpec) -> Callable[..., dict]:
    """The training function of a run; baselines are imported only when asked for."""
    if spec.runner == "recipe-loop":
        from bench.running import recipe_loop
        return recipe_loop.train
    if spec.runner == "gensim":
        from bench.running import gensim_baseline
        return gensim_baseline.train
    if spec.runner == "bare-loop":
        from bench.running import bare_loop
        return bare_loop.train
    return worker.train


def write_result(path: Path, result: dict) -> None:
    atomic_write_bytes(path, (json.dumps(result, indent=1) + "\n").encode())


def failed_result(spec: RunSpec, error: str, trace: str | None = None, status: str = "failed") -> dict:
    """The record of a run that produced none of its own (crashed, or killed by the harness)."""
    return {"schema": worker.SCHEMA, "status": status, "error": error, "traceback": trace,
            "spec": spec.to_dict(), "losses": [], "epoch_losses": [], "epoch_seconds": []}


def print_progress(done: int, total: int) -> None:
    """The line the harness reads to move a run's progress bar."""
    print(f"progress {done} {total}", flush=True)


def check_outputs(out: Path | None, vectors: Path | None) -> None:
    """Refuse unwritable or full output places now: finding out after training loses the run.
    (The worker checks the vectors' space again once it knows the vocabulary's size.)"""
    if out:
        check_writable(out, "--out")
    if vectors:
        check_writable(vectors, "--export-vectors")


def run(args: argparse.Namespace) -> int:
    exit_with_harness()
    spec = run_spec(args)
    out = Path(args.out) if args.out else None
    vectors = Path(args.export_vectors) if args.export_vectors else None
    check_outputs(out, vectors)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported as a status instead
            result = runner(spec)(spec, args.data_dir, not args.no_download, vectors,
                                  progress=print_progress if args.progress else None)
    except BenchError:
        raise
    except Exception as exc:  # a crashing backend is a result, not a traceback on the user's screen
        message = f"{spec.backend} run failed: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if out:
            write_result(out, failed_result(spec, message, traceback.format_exc()))
        raise BenchError(message + (f" (details in {out})" if out else "")) from None
    if out:
        write_result(out, result)
    if result["status"] != "ok":
        print(f"error: {spec.label} {result['status']}: {result['error']}", file=sys.stderr)
        return 1
    loss = f"loss {result['final_loss']:.3f} (last epoch), " if result["final_loss"] is not None else ""
    rate = result["examples_per_sec"]
    print(f"{loss}{rate:.1f} examples/sec" if rate else f"{loss}too few steps for a rate", end="")
    optimizer = f", {spec.optimizer} lr {spec.lr}" if spec.runner != "gensim" else ""
    print(f" on {result['env']['device_name']} [{spec.label}{optimizer}]")
    for word, near in result["neighbours"].items():
        print(f"{word}: " + ", ".join(f"{w} ({c:.3f})" for w, c in near))
    for name, score in result["evaluation"].items():
        print(f"{name}: {score}")
    return 0


def run_neighbours(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise BenchError(f"-k must be >= 1, got {args.k}")
    tokens, vectors = read_word2vec(Path(args.vectors))
    for word, cos in neighbours(vectors, tokens, args.word, args.k):
        print(f"cosine sim={cos:.3f}: {word}")
    return 0
