"""The packed layout: exactly the recipe's loss and gradients, one static length per epoch.

Tolerance: the packed and padded float64 references sum the same terms in another order, and
the packed weights 1 / (count_b * B) are stored in float32 (as every framework receives them),
each within float32's unit roundoff of 6e-8 of the exact value; so the two agree to 1.2e-7
relative (two roundoffs), 80x below what the contract tests allow a backend (1e-5)."""
from __future__ import annotations

import numpy as np
import pytest

from backends.reference import loss_and_grads, loss_and_grads_packed
from bench.executing.suite import check_backend, make_spec
from common.batches import load_dataset
from common.errors import BenchError
from common.init import initial_weights
from common.packing import pack, pack_epoch, packed_length, real_slots, touched_rows
from common.spec import DataSpec, RunSpec
from common.zipf import write_zipf_corpus
from tests.conftest import file_spec


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    path = tmp_path_factory.mktemp("zipf") / "z.txt"
    write_zipf_corpus(path, tokens=20_000, vocab=300, seed=3)
    dataset = load_dataset(file_spec(path, batch_size=40, min_freq=2))
    return list(dataset.epoch(0)), len(dataset.vocab)


def test_packed_loss_and_gradients_are_the_recipes(batches):
    epoch, vocab = batches
    for scale in (1.0, 30.0):  # 30x Xavier: large logits, both branches of the stable BCE
        v, u = (w.astype(np.float64) * scale for w in initial_weights(0, vocab, 16))
        for padded, packed in zip(epoch[:5], pack_epoch(epoch[:5])):
            loss, g_center, g_context = loss_and_grads(v, u, padded)
            p_loss, p_center, p_context = loss_and_grads_packed(v, u, packed)
            assert abs(p_loss - loss) <= 1.2e-7 * loss
            assert np.linalg.norm(p_center - g_center) <= 1.2e-7 * np.linalg.norm(g_center)
            assert np.linalg.norm(p_context - g_context) <= 1.2e-7 * np.linalg.norm(g_context)


def test_one_length_per_epoch_holds_every_batch_and_drops_only_padding(batches):
    epoch, _ = batches
    length = packed_length(epoch)
    most = max(real_slots(b) for b in epoch)
    assert most <= length < most + max(64, most // 8)  # rounded up by at most one quantum
    for padded, packed in zip(epoch, pack_epoch(epoch)):
        n = real_slots(padded)
        assert packed.slots == n and all(a.shape == (length,) for a in packed[1:5])
        mask = padded.mask.astype(bool)
        np.testing.assert_array_equal(packed.ids[:n], padded.context_negative[mask])
        np.testing.assert_array_equal(packed.label[:n], padded.label[mask])
        np.testing.assert_array_equal(packed.center[packed.example[:n]], np.repeat(padded.center, mask.sum(1)))
        assert not packed.ids[n:].any() and not packed.weight[n:].any() and not packed.label[n:].any()
        assert abs(packed.weight.sum(dtype=np.float64) - 1.0) < 1e-5  # a mean of means: weights sum to 1
        assert touched_rows(packed) == touched_rows(padded)


def test_a_batch_longer_than_the_length_is_refused(batches):
    epoch, _ = batches
    with pytest.raises(ValueError, match="does not fit"):
        pack(epoch[0], real_slots(epoch[0]) - 1)


def test_ptb_packs_to_less_than_half_the_padded_slots(ptb_dir):
    spec = DataSpec()
    epoch = [b for _, b in zip(range(300), load_dataset(spec, str(ptb_dir), download=False).epoch(0))]
    length = packed_length(epoch)
    assert length % 64 == 0 and length < 0.5 * spec.batch_size * spec.row_length


def test_layout_is_a_run_setting_keyed_only_when_packed():
    padded, packed = RunSpec(backend="torch"), RunSpec(backend="torch", layout="packed")
    assert "layout" not in padded.to_dict()  # results stored before layouts keep their keys
    assert packed.key != padded.key and packed.label == "torch dense packed cpu"
    assert RunSpec.from_dict(packed.to_dict()) == packed
    with pytest.raises(BenchError, match="layout must be one of padded, packed, got 'flat'"):
        RunSpec(backend="torch", layout="flat")
    with pytest.raises(BenchError, match="suite file s.toml: invalid setting: layout must be a string, got 1"):
        make_spec({"backend": "torch", "layout": 1}, "suite file s.toml")
    with pytest.raises(BenchError, match="recipe-loop baseline has its own layout"):
        RunSpec(backend="torch", runner="recipe-loop", layout="packed")


def test_a_layout_the_registry_does_not_declare_is_refused_when_planned():
    with pytest.raises(BenchError, match=r"suite file s.toml: numpy has no packed layout \(it trains on: padded\)"):
        check_backend(make_spec({"backend": "numpy", "layout": "packed"}, "suite file s.toml"), "suite file s.toml")
