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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

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
from common.sharding import World, shard
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

    def run_epoch(self, backend: Backend, prepared: list[Any], sizes: list[int],
                  stop_diverged: bool = True) -> np.ndarray:
        """The epoch's losses, stopping after the first segment with a diverged step (a blown-up
        run must not train on for the rest of its epoch), unless `stop_diverged` is off."""
        clock = time.perf_counter
        start, losses = 0, []
        if self.first_step_seconds is None:
            t = clock()
            losses.append(backend.train(prepared[:1]))
            self.first_step_seconds, start = clock() - t, 1
        for s in range(start, len(prepared), SEGMENT):
            if stop_diverged and losses and first_bad_step(losses[-1]) is not None:
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


class Started(NamedTuple):
    backend_cls: type[Backend]
    backend: Backend
    dataset: Dataset
    load_seconds: float


def start(spec: RunSpec, data_dir: str | None, download: bool, export_vectors: Path | None) -> Started:
    """The dataset and the backend at the shared initial weights (a rank's backend joins its engine here)."""
    backend_cls = registry.load(spec.backend)
    t0 = time.perf_counter()
    dataset = load_dataset(spec.data, data_dir, download)
    check_vectors(export_vectors, len(dataset.vocab), spec.data.embed)
    backend = backend_cls(spec, *initial_weights(spec.data.seed, len(dataset.vocab), spec.data.embed))
    return Started(backend_cls, backend, dataset, time.perf_counter() - t0)


@dataclass
class Training:
    """What the training loop produced: one process's run, or one rank's share of a data-parallel one."""

    timeline: Timeline = field(default_factory=Timeline)  # a rank's losses are its slice's; sizes the batch's
    epoch_losses: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    epoch_steps: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # examples this process trained on a step (a rank: its slice)
    timings: dict[str, Any] = field(default_factory=lambda: {"data_seconds": 0.0, "prepare_seconds": 0.0})
    status: str = "ok"
    error: str | None = None
    data_hash: str | None = None
    stats: BatchStats | None = None  # what a step touches, measured on the first epoch's batches
    machine_load: dict | None = None


def run_loop(spec: RunSpec, backend: Backend, dataset: Dataset, progress: Progress | None,
             world: World | None = None) -> Training:
    """Every epoch's batches built, hashed, prepared and trained. With `world` (a data-parallel rank),
    each global batch is sharded (common/sharding.py) and handed over with its slice's loss factor;
    divergence is then left to the launcher, which judges the combined losses: a rank that stopped
    alone would leave the others waiting in a collective."""
    clock = time.perf_counter
    run, load, digest = Training(), MachineLoad(), StreamHash()
    limit = total_steps(spec, dataset)
    timeline = run.timeline
    for epoch in range(spec.data.epochs):
        remaining = limit - len(timeline.losses)
        if remaining <= 0:
            break
        t = clock()
        batches = [b for _, b in zip(range(remaining), dataset.epoch(epoch))]
        for b in batches:
            digest.update(b)
        digest.wait()  # the hashing thread would otherwise share the cores with training
        run.stats = run.stats or measure(batches)
        shards = [shard(b, world) for b in batches] if world is not None else None
        run.timings["data_seconds"] += clock() - t
        t = clock()
        if shards is None:
            prepared = backend.prepare(batches)
        else:
            prepared = backend.prepare([s.batch for s in shards], [s.scale for s in shards])
        backend.sync()
        run.timings["prepare_seconds"] += clock() - t
        sizes = [b.center.size for b in batches]
        load.start()
        t = clock()
        losses = timeline.run_epoch(backend, prepared, sizes, stop_diverged=world is None)
        run.epoch_seconds.append(clock() - t)
        run.machine_load = load.stop()
        bad = first_bad_step(losses) if world is None else None
        keep = losses.size if bad is None else bad + 1
        if bad is not None:
            run.status, run.error = "diverged", divergence(losses, bad, len(timeline.losses)) + f" (epoch {epoch + 1})"
        timeline.losses.extend(losses[:keep].tolist())
        timeline.sizes.extend(sizes[:keep])
        run.rows.extend([s.batch.center.size for s in shards] if shards is not None else sizes[:keep])
        run.epoch_steps.append(int(keep))
        if bad is not None:
            break
        run.epoch_losses.append(float(np.average(losses, weights=run.rows[-len(losses):])))  # the recipe's weighting
        if progress:
            progress(len(timeline.losses), limit)
    run.timings["train_seconds"] = float(sum(run.epoch_seconds))
    run.timings["first_step_seconds"] = timeline.first_step_seconds
    run.timings["compile_seconds"] = backend.compile_seconds  # ahead of the clock, in prepare (part of prepare_seconds)
    run.timings["peak_memory_bytes"] = backend.peak_memory_bytes()
    run.timings["peak_rss_bytes"] = peak_rss_bytes()  # this process, beside the device peak above
    run.data_hash = digest.hexdigest()
    return run


def train(spec: RunSpec, data_dir: str | None = None, download: bool = True,
          export_vectors: Path | None = None, progress: Progress | None = None) -> dict:
    """Train as `spec` says, in this process, and return the result record (status ok / diverged)."""
    started = start(spec, data_dir, download, export_vectors)
    backend = started.backend
    run = run_loop(spec, backend, started.dataset, progress)
    timings = {"load_seconds": started.load_seconds, **run.timings}
    env: dict[str, Any] = {"backend": spec.backend, "versions": started.backend_cls.versions(),
                           "device_name": backend.device_name()}
    result = record(spec, run.status, run.error, env, run.data_hash, run.timeline, run.epoch_losses,
                    run.epoch_seconds, timings, run.machine_load)
    vocab = len(started.dataset.vocab)
    if run.stats is not None:
        result["roofline"] = for_run(spec, vocab, run.stats, env["device_name"])
    finish(result, started.dataset.vocab.tokens, backend.embeddings()[0], export_vectors)
    return result
