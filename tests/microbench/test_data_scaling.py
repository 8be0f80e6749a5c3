"""Data-layer time and peak memory against corpus size, on generated Zipf corpora (no download).

Each point is a fresh `python -m bench data --summary --corpus FILE` process: cold (tokenise,
build the caches) and warm (caches on disk). Sizes stop at 10M tokens to keep
`tox -e microbench` short; PERFORMANCE.md has the 100M-token figures.
"""
from __future__ import annotations

import json

import pytest

from common.zipf import write_zipf_corpus
from tests.conftest import BACKEND, run_bench

pytestmark = pytest.mark.microbench
SIZES = [(1_000_000, 10_000), (3_000_000, 30_000), (10_000_000, 100_000)]


@pytest.mark.parametrize("phase", ["cold", "warm"])
@pytest.mark.parametrize("tokens, words", SIZES, ids=[f"{t // 1_000_000}M" for t, _ in SIZES])
def test_data_layer_against_corpus_size(benchmark, tmp_path_factory, tokens, words, phase):
    if BACKEND != "numpy":
        pytest.skip("the data layer is benchmarked once, in the numpy env")
    folder = tmp_path_factory.mktemp(f"zipf-{tokens}-{phase}")
    corpus = folder / "corpus.txt"
    write_zipf_corpus(corpus, tokens, words)
    env = {"SKIPGRAM_BENCH_CACHE": str(folder / "cache")}
    if phase == "warm":
        assert run_bench("data", "--summary", "--corpus", str(corpus), env=env).returncode == 0
    summaries = []

    def summary() -> None:
        result = run_bench("data", "--summary", "--corpus", str(corpus), env=env)
        assert result.returncode == 0, result.stderr
        summaries.append(json.loads(result.stdout))

    benchmark.group = "data scaling"
    benchmark.pedantic(summary, rounds=1 if phase == "cold" else 3, iterations=1)
    benchmark.extra_info.update(stage="scaling", phase=phase, tokens=tokens, examples=summaries[-1]["examples"],
                                peak_rss_mib=max(s["peak_rss_mib"] for s in summaries))
