"""MXNet-only checks the shared contract does not make: the packed loss's two forms (the C++
operator, which the contract tests run, and the composition of MXNet's operators that stands in
where the operator cannot be built or on cuda) both match the reference, and a missing or
broken compiler falls back to the composition with a warning instead of failing the run."""
from __future__ import annotations

import numpy as np
import pytest

from common.spec import RunSpec
from tests.backends.conftest import BACKEND, pair, weights

pytestmark = pytest.mark.skipif(BACKEND != "mxnet", reason="mxnet env only")


@pytest.mark.parametrize("form", ["op", "ops"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_both_packed_forms_match_reference(backend_cls, small_batches, monkeypatch, form, sparse):
    from backends import mxnet_ops

    monkeypatch.setenv("MXNET_PACKED_LOSS", form)
    batches, vocab = small_batches
    spec = RunSpec(backend=BACKEND, sparse=sparse, layout="packed")
    backend, reference = pair(backend_cls, spec, weights(vocab, 100, scale=30.0))
    expect_op = form == "op" and mxnet_ops.find_compiler() is not None
    assert (backend.net.fused_op == mxnet_ops.OP_NAME) == expect_op
    for batch in batches:
        loss, g_center, g_context = backend.loss_and_grads(batch)
        ref_loss, ref_center, ref_context = reference.loss_and_grads(batch)
        assert abs(loss - ref_loss) / ref_loss <= 1e-5
        for got, ref in ((g_center, ref_center), (g_context, ref_context)):
            assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-5


def test_no_compiler_falls_back_with_a_warning(monkeypatch):
    from backends import mxnet_ops

    monkeypatch.setattr(mxnet_ops, "LOADED", {})
    monkeypatch.setattr(mxnet_ops, "find_compiler", lambda: None)
    with pytest.warns(UserWarning, match="no C.. compiler"):
        assert mxnet_ops.packed_loss_op() is None


def test_a_broken_compiler_falls_back_with_a_warning(monkeypatch, tmp_path):
    from backends import mxnet_ops

    monkeypatch.setattr(mxnet_ops, "LOADED", {})
    monkeypatch.setenv("SKIPGRAM_BENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "true")  # answers every call, builds nothing
    with pytest.warns(UserWarning, match="could not be built or loaded"):
        assert mxnet_ops.packed_loss_op() is None
    assert not any(tmp_path.iterdir())  # no half-built library left in the cache
