"""pytest-benchmark micro-benchmarks (`tox -e microbench`, never part of the normal test run).

One training step per backend and variant (dense, sparse, each compiled too where the backend
has a compiler) on a real PTB batch, staged as TorchBench does:
forward (loss, no gradients), forward+backward, and the whole step with the optimiser; the
backward and optimiser stages are the differences. Every timed call ends in a device sync.
The data pipeline is benchmarked in the numpy env. Cost against vocabulary size (dense vs
sparse) uses random Zipf batches over a growing vocabulary.
"""
from __future__ import annotations

import numpy as np
import pytest

from common.batches import Batch, load_dataset
from common.init import initial_weights
from common.spec import DataSpec, RunSpec
from tests.conftest import BACKEND

pytestmark = pytest.mark.microbench
STAGES = ("forward", "forward_backward", "step")
VARIANTS = pytest.mark.parametrize("sparse, compiled", [(False, False), (True, False), (False, True), (True, True)],
                                   ids=["dense", "sparse", "dense-compiled", "sparse-compiled"])


def spec_for(backend_cls, sparse: bool, compiled: bool) -> RunSpec:
    """The variant's spec, or a skip where the backend does not declare it."""
    caps = backend_cls.capabilities()
    if BACKEND == "numpy" or (sparse and not caps.sparse) or (compiled and not caps.compile):
        pytest.skip("framework backends only, in the variants they declare (the numpy reference is an oracle)")
    return RunSpec(backend=BACKEND, sparse=sparse, compile=compiled)


def variant(spec: RunSpec) -> str:
    return ("sparse" if spec.sparse else "dense") + (" compiled" if spec.compile else "")


@pytest.fixture(scope="module")
def ptb(ptb_dir):
    return load_dataset(DataSpec(), data_dir=str(ptb_dir), download=False)


@pytest.fixture(scope="module")
def batches(ptb) -> list[Batch]:
    return [b for _, b in zip(range(8), ptb.epoch(0))]


@pytest.mark.parametrize("stage", STAGES)
@VARIANTS
def test_step(benchmark, backend_cls, ptb, batches, sparse, compiled, stage):
    spec = spec_for(backend_cls, sparse, compiled)
    backend = backend_cls(spec, *initial_weights(0, len(ptb.vocab), 100))
    prepared = backend.prepare(batches)
    run = getattr(backend, stage)
    cycle = iter(range(10**9))
    benchmark.group = f"{BACKEND} {variant(spec)}"
    benchmark.extra_info.update(backend=BACKEND, variant=variant(spec), stage=stage,
                                examples=batches[0].center.size)
    benchmark.pedantic(lambda: run(prepared[next(cycle) % len(prepared)]), rounds=30, warmup_rounds=5)


def zipf_batch(vocab: int, rows: int = 512, width: int = 60, seed: int = 0) -> Batch:
    """A batch shaped like the recipe's, its ids drawn from Zipf(1) over `vocab` words."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, vocab))
    ids = 1 + np.searchsorted(cdf, rng.random((rows, width + 1)) * cdf[-1]).astype(np.int32)
    contexts = rng.integers(1, 11, rows)
    cols = np.arange(width)
    return Batch(ids[:, 0].copy(), ids[:, 1:].copy(), (cols < contexts[:, None] * 6).astype(np.uint8),
                 (cols < contexts[:, None]).astype(np.uint8))


@pytest.mark.parametrize("vocab", [10_000, 100_000, 1_000_000])
@VARIANTS
def test_step_cost_against_vocabulary(benchmark, backend_cls, sparse, compiled, vocab):
    """Dense Adam touches all 2 x V x D weights every step; lazy Adam only the batch's rows."""
    spec = spec_for(backend_cls, sparse, compiled)
    init = initial_weights(0, vocab, 100)
    backend = backend_cls(spec, *init)
    prepared = backend.prepare([zipf_batch(vocab, seed=s) for s in range(4)])
    cycle = iter(range(10**9))
    benchmark.group = f"{BACKEND} step vs vocabulary"
    benchmark.extra_info.update(backend=BACKEND, variant=variant(spec), vocab=vocab)
    benchmark.pedantic(lambda: backend.step(prepared[next(cycle) % len(prepared)]), rounds=8, warmup_rounds=2)


def test_data_epoch(benchmark, ptb):
    """One epoch of batches (343k examples) from the memory-mapped row cache, hashed as the worker does."""
    if BACKEND != "numpy":
        pytest.skip("the data layer is benchmarked once, in the numpy env")
    from common.batches import StreamHash

    def epoch() -> str:
        digest = StreamHash()
        for batch in ptb.epoch(1):
            digest.update(batch)
        return digest.hexdigest()

    benchmark.group = "data"
    benchmark.extra_info.update(stage="epoch", examples=ptb.sampler(0).draw.centers.size)
    benchmark.pedantic(epoch, rounds=5, warmup_rounds=1)


def test_data_rows_sampled(benchmark, ptb):
    """Building 32k rows from scratch (subsampled draw, windows, rejection-sampled noise)."""
    if BACKEND != "numpy":
        pytest.skip("the data layer is benchmarked once, in the numpy env")
    sampler = ptb.sampler(0)
    examples = np.arange(1 << 15)
    benchmark.group = "data"
    benchmark.extra_info.update(stage="rows", examples=examples.size)
    benchmark.pedantic(lambda: sampler.rows(examples), rounds=10, warmup_rounds=1)
