"""The external reference: gensim's Word2Vec (C, Hogwild SGD) on the same corpus and settings.

gensim builds its own vocabulary, subsampling and noise table from the raw PTB lines
(min_count 10, sample 1e-4, window 5, negative 5, skip-gram, 100 dimensions, 5 epochs) and
trains with linearly decaying SGD on every core. Its rate counts the center words it
trained on after subsampling ("effective words"), the closest match to our examples.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from bench.running.worker import Progress, Timeline, check_vectors, finish, record
from common.corpora import corpus_file
from common.corpus import UNK
from common.machine import MachineLoad
from common.spec import RunSpec


def train(spec: RunSpec, data_dir: str | None = None, download: bool = True,
          export_vectors: Path | None = None, progress: Progress | None = None) -> dict:
    import gensim
    from gensim.models import Word2Vec

    t0 = time.perf_counter()
    path = corpus_file(spec.data.corpus, spec.data.corpus_path, data_dir, download)
    sentences = [line.split() for line in path.read_text(encoding="utf-8").split("\n")]
    d = spec.data
    workers = os.cpu_count() or 1
    model = Word2Vec(vector_size=d.embed, window=d.window, min_count=d.min_freq, sg=1, negative=d.noise,
                     sample=d.subsample, workers=workers, seed=d.seed + 1)
    model.build_vocab(sentences)
    check_vectors(export_vectors, len(model.wv.index_to_key) + 1, d.embed)
    # No first step: each call trains a whole epoch in C threads (vocabulary and tables are load_seconds).
    timings = {"load_seconds": time.perf_counter() - t0, "first_step_seconds": None}
    epoch_losses: list[float] = []
    epoch_seconds: list[float] = []
    timeline = Timeline()
    load, machine_load = MachineLoad(), None
    decay = (model.alpha - model.min_alpha) / d.epochs
    for e in range(d.epochs):  # one call per epoch, so each epoch is a timed segment; alpha decays as in one call
        load.start()
        t = time.perf_counter()
        effective, _raw = model.train(sentences, total_examples=len(sentences), epochs=1,
                                      start_alpha=model.alpha - e * decay, end_alpha=model.alpha - (e + 1) * decay)
        epoch_seconds.append(time.perf_counter() - t)
        machine_load = load.stop()
        timeline.segments.append((effective, epoch_seconds[-1]))
        timeline.sizes.append(effective)
        if progress:
            progress(e + 1, d.epochs)
    timings["train_seconds"] = float(sum(epoch_seconds))
    env = {"backend": "gensim", "versions": {"gensim": gensim.__version__}, "device_name": f"cpu ({workers} workers)"}
    result = record(spec, "ok", None, env, None, timeline, epoch_losses, epoch_seconds, timings, machine_load)
    result["kind"] = "gensim"
    tokens = [w for w in model.wv.index_to_key if w != UNK]  # PTB's literal <unk> is a word to gensim
    finish(result, [UNK] + tokens, np.vstack([np.zeros((1, d.embed), np.float32), model.wv[tokens]]),
           export_vectors)
    return result
