"""`python -m bench train` (one run, the recipe's printout made honest) and `neighbours`."""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

import numpy as np

from bench import worker
from bench.cli import data_spec
from common.cache import atomic_write_bytes
from common.errors import BenchError
from common.evaluate import neighbours, read_word2vec
from common.spec import RunSpec


def run_spec(args: argparse.Namespace) -> RunSpec:
    return RunSpec(backend=args.backend, data=data_spec(args), device=args.device, sparse=args.sparse,
                   optimizer=args.optimizer, lr=args.lr, max_steps=args.max_steps, compile=args.compile)


def write_result(path: Path, result: dict) -> None:
    atomic_write_bytes(path, (json.dumps(result, indent=1) + "\n").encode())


def failed_result(spec: RunSpec, error: str, trace: str | None = None) -> dict:
    return {"schema": worker.SCHEMA, "status": "failed", "error": error, "traceback": trace,
            "spec": spec.to_dict(), "losses": [], "epoch_losses": [], "epoch_seconds": []}


def run(args: argparse.Namespace) -> int:
    spec = run_spec(args)
    out = Path(args.out) if args.out else None
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported as a status instead
                result = worker.train(spec, args.data_dir, not args.no_download, args.corpus,
                                  Path(args.export_vectors) if args.export_vectors else None)
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
        print(f"error: {spec.backend} {result['status']}: {result['error']}", file=sys.stderr)
        return 1
    print(f"loss {result['final_loss']:.3f} (last epoch), {result['examples_per_sec']:.1f} examples/sec "
          f"on {result['env']['device_name']} [{spec.backend} {spec.variant} {spec.optimizer}]")
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
