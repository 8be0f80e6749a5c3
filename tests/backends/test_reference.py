"""The oracle itself, checked independently: finite differences and hand-computed optimiser steps."""
from __future__ import annotations

import numpy as np
import pytest

from backends.reference import NumpyBackend, Optimizer, loss_and_grads, scatter_add_rows
from common.batches import Batch
from common.spec import RunSpec


def tiny_batch(rng: np.random.Generator, vocab: int = 7, rows: int = 3, width: int = 6) -> Batch:
    n_ctx = rng.integers(1, 3, rows)
    cols = np.arange(width)
    return Batch(center=rng.integers(1, vocab, rows).astype(np.int32),
                 context_negative=rng.integers(0, vocab, (rows, width)).astype(np.int32),
                 mask=(cols < 3 * n_ctx[:, None]).astype(np.uint8),
                 label=(cols < n_ctx[:, None]).astype(np.uint8))


def test_gradients_match_central_differences():
    rng = np.random.default_rng(0)
    batch = tiny_batch(rng)
    v, u = rng.normal(0, 1.5, (7, 4)), rng.normal(0, 1.5, (7, 4))
    _, g_v, g_u = loss_and_grads(v, u, batch)
    h = 1e-6
    for table, grad in ((v, g_v), (u, g_u)):
        numeric = np.zeros_like(table)
        for i in np.ndindex(table.shape):
            old = table[i]
            table[i] = old + h
            plus = loss_and_grads(v, u, batch)[0]
            table[i] = old - h
            minus = loss_and_grads(v, u, batch)[0]
            table[i] = old
            numeric[i] = (plus - minus) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_loss_is_masked_mean_of_bce_then_mean_over_rows():
    batch = Batch(center=np.array([1], np.int32), context_negative=np.array([[2, 3, 0]], np.int32),
                  mask=np.array([[1, 1, 0]], np.uint8), label=np.array([[1, 0, 0]], np.uint8))
    v = np.zeros((4, 2))
    v[1] = [1.0, 0.0]
    u = np.zeros((4, 2))
    u[2] = [2.0, 0.0]
    u[3] = [-1.0, 0.0]
    u[0] = [50.0, 0.0]  # padding ignored
    loss, _, _ = loss_and_grads(v, u, batch)
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 2
    assert loss == pytest.approx(expected, rel=1e-12)


def test_scatter_add_rows_equals_add_at():
    rng = np.random.default_rng(1)
    rows, values = rng.integers(0, 9, 200), rng.normal(size=(200, 5))
    expected = np.zeros((9, 5))
    np.add.at(expected, rows, values)
    np.testing.assert_allclose(scatter_add_rows(rows, values, (9, 5)), expected, rtol=1e-12, atol=1e-12)


def test_dense_adam_is_torch_form_and_lazy_adam_is_sparse_adam_form():
    spec = RunSpec(backend="numpy", lr=0.1, eps=1e-3)
    grads = [np.array([[0.5], [0.0]]), np.array([[-0.2], [0.0]])]
    dense, lazy = Optimizer(spec, (2, 1)), Optimizer(spec, (2, 1))
    w_dense, w_lazy = np.ones((2, 1)), np.ones((2, 1))
    m = v = 0.0
    expected_dense = expected_lazy = 1.0
    for t, g in enumerate(grads, start=1):
        dense.update(w_dense, g, None)
        lazy.update(w_lazy, g, np.array([0]))
        m = 0.9 * m + 0.1 * g[0, 0]
        v = 0.999 * v + 0.001 * g[0, 0] ** 2
        expected_dense -= 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-3)
        expected_lazy -= 0.1 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-3)
    assert w_dense[0, 0] == pytest.approx(expected_dense, rel=1e-12)
    assert w_lazy[0, 0] == pytest.approx(expected_lazy, rel=1e-12)
    assert expected_dense != pytest.approx(expected_lazy, rel=1e-6)  # the two forms really differ
    assert w_lazy[1, 0] == 1.0 and lazy.m[1, 0] == 0.0


def test_sgd_step():
    spec = RunSpec(backend="numpy", optimizer="sgd", lr=0.5)
    w = np.ones((2, 2))
    Optimizer(spec, w.shape).update(w, np.full((2, 2), 0.2), None)
    np.testing.assert_array_equal(w, np.full((2, 2), 0.9))


def test_reference_backend_keeps_float64_copies():
    init = np.ones((3, 2), np.float32), np.ones((3, 2), np.float32)
    backend = NumpyBackend(RunSpec(backend="numpy"), *init)
    assert backend.embeddings()[0].dtype == np.float64
    backend.center_w[0, 0] = 5
    assert init[0][0, 0] == 1
