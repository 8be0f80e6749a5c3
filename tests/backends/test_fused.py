"""The fused kernel's own promise beyond the contract: its results do not depend on the thread
count. Each gradient row is summed in batch order by the one thread that owns it, whatever the
count, so 1 and N threads must agree to the last bit (not within a tolerance)."""
from __future__ import annotations

import numpy as np
import pytest

from common.spec import RunSpec
from tests.backends.conftest import BACKEND, weights

pytestmark = pytest.mark.skipif(BACKEND != "fused", reason="fused env only")


@pytest.fixture
def thread_counts():
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    if most < 2:
        pytest.skip("numba sees one core: set NUMBA_NUM_THREADS=2 or more to compare thread counts")
    yield 1, most
    numba.set_num_threads(most)


@pytest.mark.parametrize("sparse, optimizer", [(False, "adam"), (True, "adam"), (False, "sgd")],
                         ids=["dense-adam", "lazy-adam", "sgd"])
def test_bit_identical_across_thread_counts(backend_cls, ptb_batches, small_batches, thread_counts, sparse,
                                            optimizer):
    import numba

    for batches, vocab in (small_batches, (ptb_batches[0][:40], ptb_batches[1])):
        runs = []
        for threads in thread_counts:
            numba.set_num_threads(threads)
            backend = backend_cls(RunSpec(backend=BACKEND, sparse=sparse, optimizer=optimizer,
                                          lr=0.01 if optimizer == "adam" else 10.0), *weights(vocab, 100))
            runs.append((backend.train(backend.prepare(batches)), *backend.embeddings()))
        for one, many in zip(*runs):
            assert np.array_equal(one, many)
