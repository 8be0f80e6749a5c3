"""The full recipe (5 epochs, the book's settings) on torch: embeddings as good as the recipe's own.

Measured on this project's 2-core machine (see README): the book's own PyTorch code (d2l
1.0.3, lr 0.002, its own sampling) gives WordSim-353 Spearman 0.272, SimLex-999 0.118;
this suite's torch backend gives 0.276 / 0.094 at seed 0 (0.23-0.28 over seeds 0-2: with
217 in-vocabulary pairs the standard error of Spearman's rho is about 0.06). The issue's
0.30 bar assumed the recipe reaches 0.32, which it does not here; 0.25 asserts "no worse
than the recipe, within one seed's spread" on a fixed seed, so the test is deterministic.
"""
from __future__ import annotations

import pytest

from bench.running import worker
from common.evaluate import eval_data_dir
from common.spec import RunSpec
from tests.conftest import BACKEND


@pytest.mark.skipif(BACKEND != "torch", reason="the quality bar is checked on torch (the recipe's framework)")
def test_full_recipe_reaches_the_recipes_quality(ptb_dir):
    if eval_data_dir() is None:
        pytest.fail("word-pair files not found: the torch env installs gensim (extra 'eval')")
    result = worker.train(RunSpec(backend="torch"), data_dir=str(ptb_dir), download=False)
    assert result["status"] == "ok" and result["steps"] == 5 * 671
    assert 0.33 < result["final_loss"] < 0.40  # the book prints 0.410 as a mean over all 5 epochs
    assert result["evaluation"]["wordsim353"]["spearman"] >= 0.25
    assert result["evaluation"]["wordsim353"]["pairs"] >= 200
    chip = [word for word, _ in result["neighbours"]["chip"]]
    assert {"intel", "microprocessor", "computer", "semiconductor", "chips"} & set(chip), chip
