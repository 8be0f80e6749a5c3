"""The fused kernel's own promise beyond the contract: its results do not depend on the thread
count. Each gradient row is summed in batch order by the one thread that owns it, whatever the
count, so 1 and N threads must agree to the last bit (not within a tolerance), on either layout;
and its exp, a polynomial that vectorises, is within its stated error of the exact one."""
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


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("sparse, optimizer", [(False, "adam"), (True, "adam"), (False, "sgd")],
                         ids=["dense-adam", "lazy-adam", "sgd"])
def test_bit_identical_across_thread_counts(backend_cls, ptb_batches, small_batches, thread_counts, sparse,
                                            optimizer, layout):
    import numba

    for batches, vocab in (small_batches, (ptb_batches[0][:40], ptb_batches[1])):
        runs = []
        for threads in thread_counts:
            numba.set_num_threads(threads)
            backend = backend_cls(RunSpec(backend=BACKEND, sparse=sparse, optimizer=optimizer, layout=layout,
                                          lr=0.01 if optimizer == "adam" else 10.0), *weights(vocab, 100))
            runs.append((backend.train(backend.prepare(batches)), *backend.embeddings()))
        for one, many in zip(*runs):
            assert np.array_equal(one, many)


def test_exp_within_its_stated_error():
    """`_exp_neg` against float64 exp on every float32 from 0 to 87 a step of 2^-12 apart (all
    the range reduction's branches, 356k points) and on a spread of large arguments: relative
    error <= 1.2e-7 (7.9e-8 measured; numpy's own float32 exp is 1.9e-7 off), and exp(-87) for
    anything beyond 87."""
    from numba import njit

    from backends.fused import _exp_neg

    @njit
    def exp_neg(a):
        out = np.empty_like(a)
        for i in range(a.size):
            out[i] = _exp_neg(a[i])
        return out

    a = np.arange(0, 87 * 4096, dtype=np.float32) / np.float32(4096)
    a = np.concatenate([a, np.float32(1e-9) * np.arange(1000, dtype=np.float32)])
    exact = np.exp(-a.astype(np.float64))
    assert np.max(np.abs(exp_neg(a) - exact) / exact) <= 1.2e-7
    beyond = np.array([87.0, 87.5, 100.0, 1e4, 3e38], np.float32)
    assert np.all(exp_neg(beyond) == exp_neg(np.array([87.0], np.float32))[0])
    assert abs(exp_neg(np.array([87.0], np.float32))[0] / np.exp(-87.0) - 1) <= 1.2e-7
