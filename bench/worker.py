"""One training run in this interpreter: the contract between a backend and the harness.

Timing: each epoch's batches are built (data time) and handed to the backend's `prepare`
(transfer time) before the training clock starts, so examples/s counts training alone. The
first step is timed on its own, since it includes compilation and allocator warm-up; the
steady-state rate excludes it. The backend syncs once per `train` call, when it returns
its losses, so every clock reading follows finished device work.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from backends import registry
from common.batches import StreamHash, load_dataset
from common.evaluate import PROBE_WORDS, evaluate, neighbours, write_word2vec
from common.init import initial_weights
from common.machine import machine_info
from common.spec import RunSpec

SCHEMA = 1
Progress = Callable[[int, int], None]  # (steps done, steps total)


def _epoch_loss(losses: np.ndarray, sizes: np.ndarray) -> float:
    """Example-weighted mean, as the recipe's Accumulator(loss sum, count) computes it."""
    return float((losses * sizes).sum() / sizes.sum())


def train(spec: RunSpec, data_dir: str | None = None, download: bool = True, corpus: str | None = None,
          export_vectors: Path | None = None, progress: Progress | None = None) -> dict:
    """Train as `spec` says and return the result record (status ok / diverged)."""
    backend_cls = registry.load(spec.backend)
    clock = time.perf_counter
    t0 = clock()
    dataset = load_dataset(spec.data, data_dir, download, corpus)
    init = initial_weights(spec.data.seed, len(dataset.vocab), spec.data.embed)
    backend = backend_cls(spec, *init)
    timings = {"load_seconds": clock() - t0, "data_seconds": 0.0, "prepare_seconds": 0.0,
               "first_step_seconds": None}
    per_epoch = dataset.batches_per_epoch()
    total_steps = min(spec.max_steps or per_epoch * spec.data.epochs, per_epoch * spec.data.epochs)
    digest, losses, sizes, epoch_seconds, epoch_losses = StreamHash(), [], [], [], []
    status, error = "ok", None
    for epoch in range(spec.data.epochs):
        remaining = total_steps - len(losses)
        if remaining <= 0:
            break
        t = clock()
        batches = [b for _, b in zip(range(remaining), dataset.epoch(epoch))]
        for b in batches:
            digest.update(b)
        timings["data_seconds"] += clock() - t
        t = clock()
        prepared = backend.prepare(batches)
        backend.sync()
        timings["prepare_seconds"] += clock() - t
        t = clock()
        if timings["first_step_seconds"] is None:
            head = backend.train(prepared[:1])
            timings["first_step_seconds"] = clock() - t
            epoch_steps = np.concatenate([head, backend.train(prepared[1:])])
        else:
            epoch_steps = backend.train(prepared)
        epoch_seconds.append(clock() - t)
        epoch_sizes = np.array([b.center.size for b in batches], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(epoch_steps))
        if bad.size:
            keep = bad[0] + 1
            losses.extend(epoch_steps[:keep].tolist())
            sizes.extend(epoch_sizes[:keep].tolist())
            status = "diverged"
            error = f"loss became {epoch_steps[bad[0]]} at step {len(losses)} (epoch {epoch + 1}); lower --lr"
            break
        losses.extend(epoch_steps.tolist())
        sizes.extend(epoch_sizes.tolist())
        epoch_losses.append(_epoch_loss(epoch_steps, epoch_sizes))
        if progress:
            progress(len(losses), total_steps)

    sizes_arr = np.array(sizes)
    train_seconds = float(sum(epoch_seconds))
    steady_examples = float(sizes_arr[1:].sum())
    steady_seconds = train_seconds - (timings["first_step_seconds"] or 0.0)
    center, _ = backend.embeddings()
    tokens = dataset.vocab.tokens
    result = {
        "schema": SCHEMA,
        "status": status,
        "error": error,
        "spec": spec.to_dict(),
        "env": {**machine_info(), "backend": spec.backend, "versions": backend_cls.versions(),
                "device": spec.device, "device_name": backend.device_name()},
        "data_hash": digest.hexdigest(),
        "vocab_size": len(tokens),
        "steps": len(losses),
        "examples": int(sizes_arr.sum()),
        "losses": losses,
        "epoch_losses": epoch_losses,
        "epoch_seconds": epoch_seconds,
        "timings": timings,
        "train_seconds": train_seconds,
        "examples_per_sec": steady_examples / steady_seconds if steady_seconds > 0 and steady_examples else None,
        "final_loss": epoch_losses[-1] if epoch_losses else None,
        "neighbours": {},
        "evaluation": {},
    }
    if status == "ok":
        known = [w for w in PROBE_WORDS if w in set(tokens)]
        result["neighbours"] = {w: neighbours(center, tokens, w, 3) for w in known}
        result["evaluation"] = evaluate(center, tokens)
    if export_vectors is not None:
        write_word2vec(export_vectors, tokens, center)
    return result
