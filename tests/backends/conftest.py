"""Batches, weights and reference pairs for the contract tests."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from backends.base import Backend
from backends.reference import NumpyBackend
from common.batches import Batch, load_dataset
from common.init import initial_weights
from common.spec import DataSpec, RunSpec
from common.zipf import write_zipf_corpus
from tests.conftest import file_spec
from tests.conftest import BACKEND  # noqa: F401 (re-exported for the test modules)

@pytest.fixture(scope="session")
def small_batches(tmp_path_factory) -> tuple[list[Batch], int]:
    """Real-layout batches from a generated corpus with a small vocabulary (fast, many collisions)."""
    path = tmp_path_factory.mktemp("zipf") / "z.txt"
    write_zipf_corpus(path, tokens=20_000, vocab=300, seed=5)
    dataset = load_dataset(file_spec(path, batch_size=48, min_freq=2))
    return list(dataset.epoch(0))[:6], len(dataset.vocab)


@pytest.fixture(scope="session")
def ptb_batches(ptb_dir) -> tuple[list[Batch], int]:
    dataset = load_dataset(DataSpec(), data_dir=str(ptb_dir), download=False)
    batches = [b for _, b in zip(range(200), dataset.epoch(0))]
    return batches, len(dataset.vocab)


def weights(vocab: int, embed: int, scale: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    v, u = initial_weights(seed, vocab, embed)
    return v * np.float32(scale), u * np.float32(scale)


def pair(backend_cls: type[Backend], spec: RunSpec, init) -> tuple[Backend, NumpyBackend]:
    """The backend under test and the float64 reference, from the same start (the reference
    computes the same function plainly: on the CPU, no compiled or graphed variant)."""
    plain = dataclasses.replace(spec, device="cpu", compile=False, graph=False)
    return backend_cls(spec, *init), NumpyBackend(plain, *init)
