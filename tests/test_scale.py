"""The report's Scale section: points by vocabulary size, and the crossover named in words."""
from __future__ import annotations

import pytest

from bench.reporting.pages import render
from bench.reporting.scale import crossover, points, ratios, section
from common.spec import DataSpec, RunSpec


def result(backend: str, sparse: bool, vocab: int, rate: float, corpus: str = "ptb", repeat: int = 0) -> dict:
    spec = RunSpec(backend=backend, sparse=sparse, repeat=repeat, data=DataSpec(corpus=corpus, min_freq=1))
    return {"status": "ok", "spec": spec.to_dict(), "vocab_size": vocab, "rate_median": rate,
            "timings": {"peak_rss_bytes": vocab * 4000, "peak_memory_bytes": None}}


def test_points_take_the_median_over_repeats_and_the_largest_peak():
    found = points([result("torch", False, 10_000, r, "zipf:1M:10k", i) for i, r in enumerate((1.0, 3.0, 2.0))])
    (point,) = found[("torch", "cpu", "dense")]
    assert (point.vocab, point.rate, point.rates, point.corpus) == (10_000, 2.0, [1.0, 3.0, 2.0], "zipf:1M:10k")


@pytest.mark.parametrize("pairs, words", [
    ([(10_000, 0.5), (100_000, 2.0)], "sparse pays from V of about 32,000"),  # log-midway: sqrt(10k * 100k)
    ([(10_000, 1.5), (100_000, 2.0)], "sparse pays at every size measured (V 10,000 to 100,000)"),
    ([(10_000, 0.5), (100_000, 0.9)], "sparse does not pay at any size measured"),
    ([(10_000, 0.5), (100_000, 1.2), (1_000_000, 0.8)], "sparse pays at V 100,000 only"),
    ([(10_000, 1.03), (20_000, 0.98), (100_000, 3.0)], "sparse is about as fast up to V 20,000 (0.98x) and pays"),
])
def test_crossover_in_words(pairs, words):
    assert words in crossover(pairs)


def test_section_names_the_crossover_per_backend_and_needs_two_sizes():
    runs = [result("torch", s, v, r) for s, v, r in
            ((False, 6_719, 100.0), (True, 6_719, 50.0), (False, 1_000_000, 10.0), (True, 1_000_000, 40.0))]
    assert ratios(points(runs))[("torch", "cpu")] == [(6_719, 0.5), (1_000_000, 4.0)]
    html = render("scale.html", scale=section(runs))
    assert "torch on cpu: sparse pays from V of about" in html and "<svg" in html and "1,000,000" in html
    assert section(runs[:2]) is None  # one size: nothing to scale


def test_section_shows_its_strings_as_text():
    """Specs are validated before they get here; the template escapes anyway (a page never trusts a folder)."""
    runs = [result("torch", s, v, r) for s, v, r in
            ((False, 6_719, 100.0), (True, 6_719, 50.0), (False, 1_000_000, 10.0), (True, 1_000_000, 40.0))]
    scale = section(runs)
    scale["sentences"] = ["<i>torch</i> on cpu: x"]
    scale["rows"] = [("", ["<i>torch</i>", *row[1:]]) for _, row in scale["rows"]]
    html = render("scale.html", scale=scale)
    assert "<i>" not in html and html.count("&lt;i&gt;torch&lt;/i&gt;") == 3  # the sentence and two rows
