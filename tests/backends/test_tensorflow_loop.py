"""TensorFlow's device loop (compiled runs on a GPU): a segment as one XLA while loop over
stacked batches. Checked here on the CPU, where it is switched on for the test: the same
program a GPU runs, against the per-step path."""
from __future__ import annotations

import numpy as np
import pytest

from common.batches import Batch
from common.spec import RunSpec
from tests.backends.conftest import BACKEND, weights

pytestmark = pytest.mark.skipif(BACKEND != "tensorflow", reason="tensorflow env only")


def shortened(batch: Batch, rows: int) -> Batch:
    """An epoch's last batch is shorter: the loop must handle a second block shape."""
    return Batch(*(a[:rows] for a in batch))


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_device_loop_matches_per_step_training(backend_cls, small_batches, monkeypatch, layout):
    batches, vocab = small_batches
    batches = batches[:5] + [shortened(batches[5], 17)]
    monkeypatch.setattr(backend_cls, "DEVICE_LOOP_ON_CPU", True)
    looped = backend_cls(RunSpec(backend=BACKEND, compile=True, layout=layout), *weights(vocab, 100))
    stepped = backend_cls(RunSpec(backend=BACKEND, layout=layout), *weights(vocab, 100))
    assert looped.device_loop and not stepped.device_loop
    prepared = looped.prepare(batches)
    # one block of 5 full batches, one of the short batch (packed: same slots, fewer centers)
    assert len(prepared.views) == 2
    # the worker's slicing: the first step alone, then segments that cross the block boundary
    losses = np.concatenate([looped.train(prepared[:1]), looped.train(prepared[1:4]), looped.train(prepared[4:])])
    expected = stepped.train(stepped.prepare(batches))
    assert losses.shape == (6,) and losses.dtype == np.float64
    np.testing.assert_allclose(losses, expected, rtol=0, atol=1e-6)
    # Weights: XLA and TF's kernels sum a row's gradient in different orders, and Adam divides each
    # entry by its own magnitude, so an entry that nearly cancels moves its weight by a relative
    # difference of the sum times lr (packed: one of 30,100 weights 1.6e-6 off), 600x below lr.
    for a, b in zip(looped.embeddings(), stepped.embeddings()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 if layout == "padded" else 1e-5)


def test_segments_slice_like_the_list_of_batches(backend_cls, small_batches, monkeypatch):
    batches, vocab = small_batches
    batches = batches[:4] + [shortened(batches[4], 9)]
    monkeypatch.setattr(backend_cls, "DEVICE_LOOP_ON_CPU", True)
    backend = backend_cls(RunSpec(backend=BACKEND, compile=True), *weights(vocab, 8))
    prepared = backend.prepare(batches)
    for key in (slice(None), slice(1, 3), slice(3, None), slice(4, 5), slice(2, 100), slice(5, None)):
        got = prepared[key].batches()
        want = batches[key]
        assert len(prepared[key]) == len(want) == len(got)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g[0].numpy(), w.center)
            np.testing.assert_array_equal(g[1].numpy(), w.context_negative)
    np.testing.assert_array_equal(prepared[2].batches()[0][0].numpy(), batches[2].center)
    with pytest.raises(IndexError):
        prepared[::2]


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_compiled_lazy_adam_matches_the_plain_step(backend_cls, ptb_batches, layout):
    """XLA's lazy step (fixed shapes: a presence marker, dense-shaped for the context table, rows
    slots for the center table) against plain TF's (tf.unique) on PTB batches, both forms in play."""
    batches, vocab = ptb_batches
    compiled, plain = (backend_cls(RunSpec(backend=BACKEND, sparse=True, compile=c, lr=0.01, layout=layout),
                                   *weights(vocab, 100)) for c in (True, False))
    losses = compiled.train(compiled.prepare(batches[:8]))
    np.testing.assert_allclose(losses, plain.train(plain.prepare(batches[:8])), rtol=0, atol=1e-6)
    for a, b in zip(compiled.embeddings(), plain.embeddings()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
