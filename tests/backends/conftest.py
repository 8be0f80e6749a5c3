"""Batches, weights and reference pairs for the contract tests."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from backends.base import Backend
from backends.reference import NumpyBackend
from common.batches import Batch, load_dataset
from common.init import initial_weights
from common.spec import DataSpec, RunSpec
from common.zipf import write_zipf_corpus
from tests.conftest import (
    BACKEND,  # noqa: F401 (re-exported for the test modules)
    file_spec,
)


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


def plain(spec: RunSpec) -> RunSpec:
    """The spec the float64 reference runs for `spec`: the same function, computed plainly (on
    the CPU, no compiled or graphed variant, the recipe's padded rows)."""
    return dataclasses.replace(spec, device="cpu", compile=False, graph=False, layout="padded")


def pair(backend_cls: type[Backend], spec: RunSpec, init) -> tuple[Backend, NumpyBackend]:
    """The backend under test and the float64 reference, from the same start."""
    return backend_cls(spec, *init), NumpyBackend(plain(spec), *init)


@pytest.fixture(scope="session")
def ptb_reference(ptb_batches):
    """The reference's losses and final embeddings over the PTB batches from `weights(vocab, 100)`,
    once a session for each plain spec: a compiled or graphed variant is checked against the very
    trajectory its plain twin is (200 float64 steps take seconds)."""
    batches, vocab = ptb_batches

    @functools.cache
    def trajectory(spec: RunSpec) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        reference = NumpyBackend(spec, *weights(vocab, 100))
        return reference.train(reference.prepare(batches)), reference.embeddings()

    return lambda spec: trajectory(plain(spec))
