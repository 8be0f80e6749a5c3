"""torch --compile: every batch shape (the epoch's short last batch too) is compiled in
`prepare`, before the clock, without moving the weights; training then compiles nothing."""
from __future__ import annotations

import numpy as np
import pytest

from common.batches import Batch
from common.spec import RunSpec
from tests.backends.conftest import BACKEND, weights

pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="torch env only")


def test_prepare_compiles_every_shape_and_training_compiles_nothing(backend_cls, small_batches):
    from torch._dynamo.utils import counters

    batches, vocab = small_batches
    batches = batches[:3] + [Batch(*(a[:17] for a in batches[3]))]
    init = weights(vocab, 100)
    backend = backend_cls(RunSpec(backend=BACKEND, compile=True), *init)
    prepared = backend.prepare(batches)
    assert backend.compile_seconds > 0
    np.testing.assert_array_equal(backend.embeddings()[0], init[0])  # the warm-up trained nothing
    frames = counters["stats"]["unique_graphs"]
    backend.train(prepared)
    assert counters["stats"]["unique_graphs"] == frames
