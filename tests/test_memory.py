"""A run's memory: the plan's estimate, the machine's memory, runs that cannot fit planned as skipped,
the OOM killer's evidence read as `out of memory`, and the worker's peak RSS in every result."""
from __future__ import annotations

import json
import signal

import pytest

from bench.executing import memory
from bench.executing.memory import Facts, corpus_facts, estimate, fit_reason, for_memory, out_of_memory
from bench.executing.suite import planned
from common import corpora
from common.corpus import build_vocab, load_corpus
from common.errors import BenchError
from common.spec import DataSpec, RunSpec
from tests.conftest import run_bench
from tests.data.test_bad_input import assert_one_line_error

GIB = 2 ** 30


def test_estimate_counts_tables_optimiser_and_gradients_by_variant():
    facts = Facts(vocab=1_000_000, kept=1e6)
    dense, sparse = (estimate(RunSpec(backend="torch", sparse=s, max_steps=100), facts) for s in (False, True))
    table = 2 * 1_000_000 * 100 * 4
    assert dense["tables"] == sparse["tables"] == table
    assert dense["optimiser"] == sparse["optimiser"] == 2 * table  # lazy Adam keeps m and v whole too
    assert dense["gradients"] == 2 * table and sparse["gradients"] < table / 10
    assert dense["total"] == sum(v for k, v in dense.items() if k != "total")
    assert dense["evaluation"] == 5 * 1_000_000 * 100 * 4  # the center table copied, then twice as float64
    assert estimate(RunSpec(backend="torch", optimizer="sgd"), facts)["optimiser"] == 0
    capped = estimate(RunSpec(backend="torch", max_steps=10), facts)["batches"]
    assert capped * 10 < estimate(RunSpec(backend="torch"), facts)["batches"]  # max_steps bounds the buffers


def test_a_run_that_cannot_fit_is_planned_skipped_with_both_figures():
    plan = [planned(RunSpec(backend="torch", data=DataSpec(corpus=c, min_freq=1), max_steps=5))
            for c in ("zipf:2k:1k", "zipf:20M:1M")]
    marked = for_memory(plan, None, memory=(2 * GIB, 4 * GIB))
    assert marked[0].skip is None
    assert "needs about" in marked[1].skip and "2.0 GiB available of 4.0 GiB" in marked[1].skip
    assert "V 91" in marked[1].skip  # the expected vocabulary, about 915k
    gpu_skip = planned(RunSpec(backend="torch", data=DataSpec(corpus="zipf:20M:1M", min_freq=1)))
    gpu_skip = gpu_skip.__class__(gpu_skip.name, gpu_skip.spec, "no GPU build")
    assert for_memory([gpu_skip], None, memory=(GIB, GIB))[0].skip == "no GPU build"
    assert fit_reason(plan[1].spec, Facts(10, 10), None) is None  # unknown memory skips nothing


def test_the_expected_vocabulary_of_a_generated_corpus_matches_the_real_one():
    zipf = corpora.parse_zipf("zipf:200k:5k")
    for min_freq in (1, 10):
        real = len(build_vocab(load_corpus(corpora.generated(zipf)), min_freq)[0])
        expected = corpus_facts(DataSpec(corpus=zipf.name, min_freq=min_freq), None, False).vocab
        assert abs(expected - real) <= 0.02 * real, (min_freq, expected, real)


def test_a_corpus_leaving_no_word_is_one_line_before_anything_starts(tmp_path):
    with pytest.raises(BenchError, match="no training example"):
        corpus_facts(DataSpec(corpus="zipf:100:10", min_freq=1000), None, False)
    out = tmp_path / "suite"
    result = run_bench("suite", "--suite", str(_suite(tmp_path, 'corpus = "zipf:100:10"\nmin_freq = 1000')),
                       "--out", str(out))
    assert_one_line_error(result, "no training example")
    assert result.returncode == 2 and not out.exists()


def _suite(tmp_path, settings: str):
    path = tmp_path / "s.toml"
    path.write_text(f'[[runs]]\nbackend = "numpy"\n{settings}\n', encoding="utf-8")
    return path


def test_machine_memory_is_the_lower_of_meminfo_and_the_cgroup_limit(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)
    monkeypatch.setattr(memory, "CGROUP", tmp_path / "cgroup")
    assert memory.machine_memory() == (8_000_000 * 1024, 16_000_000 * 1024)
    (tmp_path / "cgroup").mkdir()
    (tmp_path / "cgroup" / "memory.max").write_text(f"{4 * GIB}\n")
    (tmp_path / "cgroup" / "memory.current").write_text(f"{GIB}\n")
    assert memory.machine_memory() == (3 * GIB, 4 * GIB)
    (tmp_path / "cgroup" / "memory.max").write_text("max\n")  # no limit
    assert memory.machine_memory() == (8_000_000 * 1024, 16_000_000 * 1024)


def test_the_oom_killers_evidence_makes_a_run_out_of_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "CGROUP", tmp_path)
    assert memory.oom_kills() is None
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert memory.oom_kills() == 1
    assert "out of memory" in out_of_memory(-signal.SIGKILL, 1, 2)
    assert out_of_memory(-signal.SIGKILL, 1, 1) is None  # killed, but not by the OOM killer
    assert out_of_memory(-signal.SIGKILL, None, None) is None  # no counter: no claim
    assert out_of_memory(1, 1, 2) is None


def test_every_result_records_the_workers_peak_rss(tmp_path):
    out = tmp_path / "r.json"
    result = run_bench("train", "--backend", "numpy", "--corpus", "zipf:200k:5k", "--min-freq", "1",
                       "--max-steps", "3", "--epochs", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    peak = json.loads(out.read_text())["timings"]["peak_rss_bytes"]
    assert 50 * 2 ** 20 < peak < 4 * GIB  # an interpreter with numpy, and a small table
