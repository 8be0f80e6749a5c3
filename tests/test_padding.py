"""The report's answer to "what does padding cost?": pairs by everything but the layout."""
from __future__ import annotations

import pytest

from bench.reporting.padding import padding_cost
from common.spec import RunSpec


def result(rate: float, losses: list[float], **settings) -> dict:
    return {"status": "ok", "spec": RunSpec(**settings).to_dict(), "rate_median": rate, "losses": losses}


def test_each_packed_run_is_read_against_its_padded_twin_only():
    results = [result(50_000, [0.69, 0.60], backend="torch"),
               result(90_000, [0.69, 0.6000001], backend="torch", layout="packed"),
               result(40_000, [0.69, 0.61], backend="torch", sparse=True),  # no packed twin: no row
               result(30_000, [0.69, 0.58], backend="mxnet"),
               result(29_000, [0.69, 0.58], backend="mxnet", layout="packed"),
               result(70_000, [0.69, 0.5], backend="torch", layout="packed", lr=0.01)]  # other settings
    rows = padding_cost(results)
    assert [r["run"] for r in rows] == ["torch dense cpu", "mxnet dense cpu"]  # largest gain first
    torch, mxnet = rows
    assert torch["ratio"] == pytest.approx(1.8) and torch["verdict"] == "faster"
    assert torch["gap"] == pytest.approx(1e-7) and torch["steps"] == 2
    assert mxnet["verdict"] == "about as fast"


def test_unfinished_runs_are_not_answers():
    failed = {**result(90_000, [0.6], backend="torch", layout="packed"), "status": "failed"}
    assert padding_cost([result(50_000, [0.6], backend="torch"), failed]) == []
