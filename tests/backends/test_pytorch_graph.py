"""torch's CUDA-graph variant: the captured step must train exactly as the eager one does.

Capture runs warm-up steps first (the PyTorch docs' recipe), which move the weights and Adam's
state; the backend undoes them in place. That undo is checked on the CPU; graphed against
eager training needs a GPU."""
from __future__ import annotations

import numpy as np
import pytest

from common.batches import Batch
from common.errors import BenchError
from common.spec import RunSpec
from tests.backends.conftest import BACKEND, weights

pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="torch env only")


def test_warmup_is_undone_in_place(backend_cls, small_batches):
    """snapshot / restore: after eager steps, the weights and fresh Adam state are back, in the same storage."""
    batches, vocab = small_batches
    init = weights(vocab, 100)
    backend = backend_cls(RunSpec(backend=BACKEND), *init)
    fresh = backend_cls(RunSpec(backend=BACKEND), *init)
    prepared = backend.prepare(batches)
    saved = backend.snapshot()
    storage = backend.center_w.data_ptr()
    for batch in prepared[:3]:
        backend.eager_step(batch)
    assert not np.allclose(backend.embeddings()[0], init[0])
    backend.restore(saved)
    assert backend.center_w.data_ptr() == storage
    np.testing.assert_array_equal(backend.embeddings()[0], init[0])
    np.testing.assert_array_equal(backend.embeddings()[1], init[1])
    np.testing.assert_array_equal(backend.train(prepared), fresh.train(fresh.prepare(batches)))


def test_graph_needs_cuda():
    with pytest.raises(BenchError, match="CUDA graphs need a cuda device"):
        RunSpec(backend=BACKEND, graph=True)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_graphed_and_eager_give_the_same_losses(backend_cls, ptb_batches, optimizer):
    if backend_cls.gpu_count() == 0:
        pytest.skip("no CUDA device visible to torch in this env: CUDA graphs need one")
    batches, vocab = ptb_batches
    batches = batches[:120] + [Batch(*(a[:100] for a in batches[120]))] + batches[121:]  # two shapes, two graphs
    lr = 0.01 if optimizer == "adam" else 100.0
    runs = {}
    for graph in (False, True):
        backend = backend_cls(RunSpec(backend=BACKEND, device="cuda", optimizer=optimizer, lr=lr, graph=graph),
                              *weights(vocab, 100))
        prepared = backend.prepare(batches)
        runs[graph] = (np.concatenate([backend.train(prepared[:1]), backend.train(prepared[1:])]),
                       backend.embeddings())
    # the same kernels in the same order: equal up to atomics' summation order, if any
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=0, atol=1e-6)
    for a, b in zip(runs[True][1], runs[False][1]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
