"""Every backend against the float64 numpy reference: loss, gradients and whole trajectories.

Tolerances, and why:
- loss and gradients on one batch: relative error <= 1e-5 (gradients: in the Frobenius norm,
  since single entries can be ~0). float32 has a unit roundoff of 6e-8; a row's loss and a
  table row's gradient sum at most B*L = 30k terms, so accumulated error stays near 1e-6.
- trajectories (200 PTB steps): every step's loss within 1e-4 of the reference. float32
  rounding of the weights compounds through Adam's normalised steps; 1e-4 is 25x below the
  3e-3 gap that putting eps on the wrong side of sqrt(v) opens (docs/design.md).
The same tolerances hold on cuda (TF32 is off in every backend), and for every variant and
layout a backend declares (compiled, CUDA-graphed, packed): each is the same function, launched
or laid out differently, checked against the one padded float64 reference.
"""
from __future__ import annotations

import numpy as np
import pytest

from backends.base import Backend
from backends.reference import NumpyBackend
from common.errors import BenchError
from common.spec import LAYOUTS, RunSpec
from tests.backends.conftest import BACKEND, pair, weights


def variants(backend_cls: type[Backend]) -> list[bool]:
    return [False, True] if backend_cls.capabilities().sparse else [False]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(params=["cpu", "cuda"])
def device(request, backend_cls) -> str:
    """Each contract test on the CPU, and on cuda where this env's framework sees a GPU."""
    if request.param == "cuda" and backend_cls.gpu_count() == 0:
        pytest.skip(f"no CUDA device visible to {BACKEND} in this env (a GPU machine and its GPU env run these)")
    return request.param


@pytest.fixture(params=LAYOUTS)
def layout(request, backend_cls) -> str:
    """Each training test on the recipe's padded rows, and packed where the backend declares it."""
    if request.param not in backend_cls.capabilities().layouts:
        pytest.skip(f"{BACKEND} declares no {request.param} layout")
    return request.param


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_loss_and_gradients_match_reference(backend_cls, small_batches, sparse, device, layout):
    if sparse and not backend_cls.capabilities().sparse:
        pytest.skip(f"{BACKEND} declares no sparse variant")
    batches, vocab = small_batches
    spec = RunSpec(backend=BACKEND, sparse=sparse, device=device, layout=layout)
    for scale in (1.0, 30.0):  # 30x Xavier: logits of several units, both BCE branches exercised
        backend, reference = pair(backend_cls, spec, weights(vocab, 100, scale))
        for batch in batches:
            loss, g_center, g_context = backend.loss_and_grads(batch)
            ref_loss, ref_center, ref_context = reference.loss_and_grads(batch)
            assert abs(loss - ref_loss) / ref_loss <= 1e-5
            assert rel_err(g_center, ref_center) <= 1e-5
            assert rel_err(g_context, ref_context) <= 1e-5


@pytest.mark.parametrize("sparse, optimizer, variant", [
    (False, "adam", None), (True, "adam", None), (False, "sgd", None), (False, "adam", "compile"),
    (True, "adam", "compile"), (False, "adam", "graph"), (False, "sgd", "graph")],
    ids=["dense-adam", "sparse-lazy-adam", "dense-sgd", "dense-adam-compiled", "sparse-lazy-adam-compiled",
         "dense-adam-graphed", "dense-sgd-graphed"])
def test_trajectory_on_ptb_matches_reference(backend_cls, ptb_batches, ptb_reference, sparse, optimizer, variant,
                                             device, layout):
    caps = backend_cls.capabilities()
    if backend_cls is NumpyBackend:
        pytest.skip("the reference against itself is the same code; each backend env checks it learns")
    if sparse and not caps.sparse:
        pytest.skip(f"{BACKEND} declares no sparse variant")
    if variant and not getattr(caps, variant):
        pytest.skip(f"{BACKEND} declares no {variant} variant")
    if variant == "graph" and device == "cpu":
        pytest.skip("CUDA graphs need a cuda device")
    batches, vocab = ptb_batches
    spec = RunSpec(backend=BACKEND, sparse=sparse, optimizer=optimizer, lr=0.01 if optimizer == "adam" else 100.0,
                   device=device, layout=layout, **({variant: True} if variant else {}))
    backend = backend_cls(spec, *weights(vocab, 100))
    losses = np.concatenate([backend.train(backend.prepare(batches[:1])), backend.train(backend.prepare(batches[1:]))])
    expected, (ref_center, ref_context) = ptb_reference(spec)
    assert losses.shape == (200,) and losses.dtype == np.float64
    assert np.max(np.abs(losses - expected)) <= 1e-4
    assert expected[-10:].mean() < expected[0] - 0.02, "the reference itself must learn"
    center, context = backend.embeddings()
    assert rel_err(center, ref_center) <= 1e-3 and rel_err(context, ref_context) <= 1e-3


def test_lazy_adam_touches_only_the_batch_rows(backend_cls, small_batches, device, layout):
    if not backend_cls.capabilities().sparse:
        pytest.skip(f"{BACKEND} declares no sparse variant")
    batches, vocab = small_batches
    init = weights(vocab, 100)
    backend = backend_cls(RunSpec(backend=BACKEND, sparse=True, device=device, layout=layout), *init)
    backend.train(backend.prepare(batches[:1]))
    center, context = backend.embeddings()
    used_center = np.zeros(vocab, bool)
    used_center[batches[0].center] = True
    used_context = np.zeros(vocab, bool)
    used_context[batches[0].context_negative] = True
    assert np.array_equal(center[~used_center], init[0][~used_center])
    assert np.array_equal(context[~used_context], init[1][~used_context])
    assert not np.allclose(center[used_center], init[0][used_center])


def test_capabilities_and_devices(backend_cls, small_batches):
    caps = backend_cls.capabilities()
    assert caps.devices[0] == "cpu" and len(caps.devices) == 1 + backend_cls.gpu_count()
    _, vocab = small_batches
    init = weights(vocab, 8)
    with pytest.raises(BenchError, match="device must be cpu, cuda or cuda:N"):
        RunSpec(backend=BACKEND, device="tpu:3")  # refused before any backend is built
    with pytest.raises(BenchError, match="available: cpu"):
        backend_cls(RunSpec(backend=BACKEND, device="cuda:99"), *init)
    for layout in set(LAYOUTS) - set(caps.layouts):  # refused by name before a step is taken
        with pytest.raises(BenchError, match=f"no {layout} layout"):
            backend_cls(RunSpec(backend=BACKEND, layout=layout), *init)
    if not any(d.startswith("cuda") for d in caps.devices):
        with pytest.raises(BenchError, match="'cuda' is not available"):
            backend_cls(RunSpec(backend=BACKEND, device="cuda"), *init)
    assert all(isinstance(v, str) for v in backend_cls.versions().values())


def test_embeddings_are_numpy(backend_cls, small_batches):
    _, vocab = small_batches
    init = weights(vocab, 8)
    center, context = backend_cls(RunSpec(backend=BACKEND), *init).embeddings()
    assert isinstance(center, np.ndarray) and center.shape == (vocab, 8)
    np.testing.assert_array_equal(center, init[0])
    np.testing.assert_array_equal(context, init[1])
