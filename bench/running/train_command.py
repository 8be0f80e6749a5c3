"""`python -m bench train` (one run, the recipe's printout made honest) and `neighbours`."""
from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.options import data_spec
from bench.results.schema import failed_result
from bench.results.store import read_json, write_result
from bench.running import worker
from common.cache import check_writable, is_write_failure, write_error
from common.errors import BenchError
from common.evaluate import neighbours, read_word2vec
from common.machine import exit_with_harness
from common.spec import RunSpec


def run_spec(args: argparse.Namespace) -> RunSpec:
    if args.spec:  # the harness passes whole specs as files
        spec = read_json(Path(args.spec))  # the limited reader: a FIFO or a 1 GB file is one line, not a hang
        try:
            return RunSpec.from_dict(spec)  # type: ignore[arg-type]
        except (ValueError, TypeError) as exc:
            raise BenchError(f"cannot read run spec {args.spec}: {exc}") from None
    if not args.backend:
        raise BenchError("train needs --backend (or --spec FILE)")
    return RunSpec(backend=args.backend, data=data_spec(args), device=args.device, sparse=args.sparse,
                   optimizer=args.optimizer, lr=args.lr, max_steps=args.max_steps, compile=args.compile,
                   graph=args.graph, layout=args.layout, runner=args.runner,
                   workers=args.workers)


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
    if spec.workers > 1:
        from bench.running import data_parallel
        return data_parallel.train
    return worker.train


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


# Compilers' caches a run writes into, and the variable that moves each: a full or read-only one
# is the user's to fix, so the error names the file and the variable.
_COMPILER_CACHES = (("NUMBA_CACHE_DIR", ("__pycache__", "numba")), ("TORCHINDUCTOR_CACHE_DIR", ("torchinductor",)),
                    ("TRITON_CACHE_DIR", ("triton",)), ("JAX_COMPILATION_CACHE_DIR", ("jax",)))


def crash_message(backend: str, exc: BaseException) -> str:
    """One line for a run that raised: a write that failed for want of space or permission (its
    own, or one a compiler's cache made, however deeply wrapped) names the file and the fix; any
    other error its type and first line."""
    cause: BaseException | None = exc
    while cause is not None and not (isinstance(cause, OSError) and is_write_failure(cause) and cause.filename):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return f"{backend} run failed: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    assert isinstance(cause, OSError)
    line = str(write_error(cause, Path(str(cause.filename))))
    parts = Path(str(cause.filename)).parts
    variable = next((name for name, marks in _COMPILER_CACHES if any(m in part for m in marks for part in parts)), None)
    if variable:
        line += f" (a compiler's cache: or set {variable} to a writable folder with space)"
    return f"{backend} run failed: {line}"


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
        message = crash_message(spec.backend, exc)
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
