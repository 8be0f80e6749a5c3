"""One training run in this interpreter: the contract between a backend and the harness.

Timing: each epoch's batches are built (data time) and handed to the backend's `prepare`
(transfer time) before the training clock starts, so examples/s counts training alone.
Training runs in segments of SEGMENT steps; the backend syncs once per segment, when it
returns that segment's losses, so every clock reading follows finished device work, and
the segments give the spread of the rate. The first step is timed on its own (it includes
compilation and allocator warm-up) and left out of the steady-state rate.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from backends import registry
from backends.base import Backend
from bench.results.schema import SCHEMA
from common.batches import Dataset, StreamHash, load_dataset
from common.cache import check_writable
from common.evaluate import PROBE_WORDS, evaluate, neighbours, write_word2vec
from common.init import initial_weights
from common.machine import MachineLoad, machine_info, peak_rss_bytes
from common.roofline import BatchStats, for_run, measure
from common.spec import RunSpec

SEGMENT = 100
# A model that knows nothing (every logit 0) scores ln 2 on this objective, and the recipe's runs
# (lr 0.002 and 0.01) stay below that after their first steps. Ten times it means predictions
# confidently wrong on average: the run has blown up even while its loss is finite (Adam at
# lr 1e6 reaches 3e13). Fixed rather than relative to step 1, which may already be blown up.
DIVERGENCE_BOUND = 10 * math.log(2)
Progress = Callable[[int, int], None]  # (steps done, steps total)


class Timeline:
    """Losses, batch sizes and timed segments of a run, as they accumulate."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.sizes: list[int] = []
        self.segments: list[tuple[int, float]] = []  # (examples, seconds), steady state only
        self.first_step_seconds: float | None = None

    def run_epoch(self, backend: Backend, prepared: list[Any], sizes: list[int]) -> np.ndarray:
        """The epoch's losses, stopping after the first segment with a diverged step (a blown-up
        run must not train on for the rest of its epoch)."""
        clock = time.perf_counter
        start, losses = 0, []
        if self.first_step_seconds is None:
            t = clock()
            losses.append(backend.train(prepared[:1]))
            self.first_step_seconds, start = clock() - t, 1
        for s in range(start, len(prepared), SEGMENT):
            if losses and first_bad_step(losses[-1]) is not None:
                break
            t = clock()
            losses.append(backend.train(prepared[s:s + SEGMENT]))
            self.segments.append((sum(sizes[s:s + SEGMENT]), clock() - t))
        return np.concatenate(losses) if losses else np.zeros(0)

    def rates(self) -> dict:
        examples = sum(e for e, _ in self.segments)
        seconds = sum(s for _, s in self.segments)
        per_segment = [e / s for e, s in self.segments if s > 0]
        return {
            "examples_per_sec": examples / seconds if seconds > 0 else None,
            "segment_rates": per_segment,
            "rate_median": float(np.median(per_segment)) if per_segment else None,
            "rate_iqr": [float(q) for q in np.percentile(per_segment, [25, 75])] if per_segment else None,
        }


def first_bad_step(losses: np.ndarray) -> int | None:
    """Index of the first loss that is not finite or exceeds DIVERGENCE_BOUND, if any."""
    bad = np.flatnonzero(~(np.isfinite(losses) & (losses <= DIVERGENCE_BOUND)))
    return int(bad[0]) if bad.size else None


def divergence(losses: np.ndarray, i: int, steps_before: int) -> str:
    """The diverged run's message for its first bad step `i` (named 1-based over the whole run)."""
    why = "is not finite" if not np.isfinite(losses[i]) else \
        f"exceeds {DIVERGENCE_BOUND:.2f} (10 x ln 2, ten times an untrained model's loss)"
    return f"loss {losses[i]:.4g} at step {steps_before + i + 1} {why}; lower --lr"


def outcome(losses: list[float]) -> tuple[str, str | None]:
    """Status and error of a loop that checks its losses once, at the end (bare loop, recipe loop)."""
    array = np.asarray(losses, dtype=np.float64)
    bad = first_bad_step(array)
    return ("ok", None) if bad is None else ("diverged", divergence(array, bad, 0))


def record(spec: RunSpec, status: str, error: str | None, env: dict, data_hash: str | None, timeline: Timeline,
           epoch_losses: list[float], epoch_seconds: list[float], timings: dict, machine_load: dict | None) -> dict:
    """The result file's content (docs/design.md, "The contract between the parts"). `machine_load`
    is MachineLoad.stop()'s record over the training clock: what else the machine was doing."""
    return {
        "schema": SCHEMA,
        "status": status,
        "error": error,
        "spec": spec.to_dict(),
        "env": {**machine_info(), "device": spec.device, **env},
        "data_hash": data_hash,
        "steps": len(timeline.losses),
        "examples": int(sum(timeline.sizes)),
        "losses": timeline.losses,
        "epoch_losses": epoch_losses,
        "epoch_seconds": epoch_seconds,
        "timings": timings,
        "machine_load": machine_load,
        **timeline.rates(),
        "final_loss": epoch_losses[-1] if epoch_losses else None,
        "neighbours": {},
        "evaluation": {},
    }


def total_steps(spec: RunSpec, dataset: Dataset) -> int:
    """Steps a run takes: every epoch's batches, capped by max_steps."""
    full = dataset.batches_per_epoch() * spec.data.epochs
    return min(spec.max_steps or full, full)


def check_vectors(path: Path | None, vocab_size: int, embed: int) -> None:
    """Before training, now that the vocabulary's size is known: room for the exported vectors
    (word2vec text: about 13 bytes a number at 6 significant digits, plus the word)."""
    if path is not None:
        check_writable(path, "--export-vectors", needed=vocab_size * (embed * 13 + 32))


def finish(result: dict, tokens: list[str], center: np.ndarray, export_vectors: Path | None) -> None:
    """Neighbours and word-pair scores of a finished run; the vectors, if asked for."""
    result["vocab_size"] = len(tokens)
    if result["status"] == "ok":
        known = set(tokens)
        result["neighbours"] = {w: neighbours(center, tokens, w, 3) for w in PROBE_WORDS if w in known}
        result["evaluation"] = evaluate(center, tokens)
    if export_vectors is not None:
        write_word2vec(export_vectors, tokens, center)


def train(spec: RunSpec, data_dir: str | None = None, download: bool = True,
          export_vectors: Path | None = None, progress: Progress | None = None) -> dict:
    """Train as `spec` says and return the result record (status ok / diverged)."""
    backend_cls = registry.load(spec.backend)
    clock = time.perf_counter
    t0 = clock()
    dataset = load_dataset(spec.data, data_dir, download)
    check_vectors(export_vectors, len(dataset.vocab), spec.data.embed)
    backend = backend_cls(spec, *initial_weights(spec.data.seed, len(dataset.vocab), spec.data.embed))
    timings: dict[str, Any] = {"load_seconds": clock() - t0, "data_seconds": 0.0, "prepare_seconds": 0.0,
                               "train_seconds": 0.0}
    load, machine_load = MachineLoad(), None
    limit = total_steps(spec, dataset)
    digest, timeline, epoch_losses, epoch_seconds = StreamHash(), Timeline(), [], []
    status, error = "ok", None
    stats: BatchStats | None = None  # what a step touches, measured on the first epoch's batches
    for epoch in range(spec.data.epochs):
        remaining = limit - len(timeline.losses)
        if remaining <= 0:
            break
        t = clock()
        batches = [b for _, b in zip(range(remaining), dataset.epoch(epoch))]
        for b in batches:
            digest.update(b)
        digest.wait()  # the hashing thread would otherwise share the cores with training
        stats = stats or measure(batches)
        timings["data_seconds"] += clock() - t
        t = clock()
        prepared = backend.prepare(batches)
        backend.sync()
        timings["prepare_seconds"] += clock() - t
        sizes = [b.center.size for b in batches]
        load.start()
        t = clock()
        losses = timeline.run_epoch(backend, prepared, sizes)
        epoch_seconds.append(clock() - t)
        machine_load = load.stop()
        bad = first_bad_step(losses)
        keep = losses.size if bad is None else bad + 1
        if bad is not None:
            status, error = "diverged", divergence(losses, bad, len(timeline.losses)) + f" (epoch {epoch + 1})"
        timeline.losses.extend(losses[:keep].tolist())
        timeline.sizes.extend(sizes[:keep])
        if bad is not None:
            break
        epoch_losses.append(float(np.average(losses, weights=sizes)))  # the recipe's example-weighted mean
        if progress:
            progress(len(timeline.losses), limit)
    timings["train_seconds"] = float(sum(epoch_seconds))
    timings["first_step_seconds"] = timeline.first_step_seconds
    timings["compile_seconds"] = backend.compile_seconds  # ahead of the clock, in prepare (part of prepare_seconds)
    timings["peak_memory_bytes"] = backend.peak_memory_bytes()
    timings["peak_rss_bytes"] = peak_rss_bytes()  # the worker process, beside the device peak above
    env: dict[str, Any] = {"backend": spec.backend, "versions": backend_cls.versions(),
                           "device_name": backend.device_name()}
    result = record(spec, status, error, env, digest.hexdigest(), timeline, epoch_losses, epoch_seconds, timings,
                    machine_load)
    if stats is not None:
        result["roofline"] = for_run(spec, len(dataset.vocab), stats, env["device_name"])
    finish(result, dataset.vocab.tokens, backend.embeddings()[0], export_vectors)
    return result
