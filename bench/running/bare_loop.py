"""The loop a user would write around a backend, with none of the worker's bookkeeping: no
stream hash, no 100-step segments, no per-step loss checks, no neighbours or word-pair scores.

It exists to measure what the worker adds (`suites/overhead.toml`): the same spec run both
ways, alternated, compared in the report. Timing matches the worker's definition so the two
rates mean the same thing: batches built and prepared before the clock starts, the first step
(compilation, allocator warm-up) left out, one device sync per epoch.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from backends import registry
from bench.running.worker import Progress, Timeline, check_vectors, outcome, record, total_steps
from common.batches import load_dataset
from common.evaluate import write_word2vec
from common.init import initial_weights
from common.machine import MachineLoad
from common.spec import RunSpec


def train(spec: RunSpec, data_dir: str | None = None, download: bool = True,
          export_vectors: Path | None = None, progress: Progress | None = None) -> dict:
    backend_cls = registry.load(spec.backend)
    dataset = load_dataset(spec.data, data_dir, download)
    check_vectors(export_vectors, len(dataset.vocab), spec.data.embed)
    backend = backend_cls(spec, *initial_weights(spec.data.seed, len(dataset.vocab), spec.data.embed))
    limit = total_steps(spec, dataset)
    timeline, epoch_losses, epoch_seconds = Timeline(), [], []
    load, machine_load = MachineLoad(), None
    first_step = None
    for epoch in range(spec.data.epochs):
        batches = [b for _, b in zip(range(limit - len(timeline.losses)), dataset.epoch(epoch))]
        if not batches:
            break
        prepared = backend.prepare(batches)
        backend.sync()  # transfers finished before the clock, as in the worker
        sizes = [b.center.size for b in batches]
        if epoch == 0:  # warm-up step, timed apart, as the worker leaves its first step out of the rate
            t = time.perf_counter()
            losses = [backend.train(prepared[:1])]
            first_step = time.perf_counter() - t
            prepared, timed_sizes = prepared[1:], sizes[1:]
        else:
            losses, timed_sizes = [], sizes
        load.start()
        t = time.perf_counter()
        losses.append(backend.train(prepared))
        seconds = time.perf_counter() - t
        machine_load = load.stop()
        epoch_loss = np.concatenate(losses)
        timeline.losses.extend(epoch_loss.tolist())
        timeline.sizes.extend(sizes)
        timeline.segments.append((sum(timed_sizes), seconds))
        epoch_seconds.append(seconds)
        epoch_losses.append(float(np.average(epoch_loss, weights=sizes)))
        if progress:
            progress(len(timeline.losses), limit)
    status, error = outcome(timeline.losses)
    env = {"backend": spec.backend, "versions": backend_cls.versions(), "device_name": backend.device_name()}
    timings = {"train_seconds": float(sum(epoch_seconds)), "first_step_seconds": first_step,
               "compile_seconds": backend.compile_seconds}
    if export_vectors is not None:
        write_word2vec(export_vectors, dataset.vocab.tokens, backend.embeddings()[0])
    return record(spec, status, error, env, None, timeline, epoch_losses, epoch_seconds, timings, machine_load)
