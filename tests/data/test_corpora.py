"""Corpora in the spec: identity (keys), bad input (one line, exit 2, nothing made), a file
changed between plan and run, a node that has a file corpus only by its digest."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.executing.suite import load_suite_file
from common import corpora
from common.errors import BenchError
from common.spec import DataSpec, RunSpec
from common.zipf import write_zipf_corpus
from tests.conftest import file_spec, run_bench, write_text
from tests.data.test_bad_input import assert_one_line_error


def test_ptb_specs_keep_their_keys_and_zipf_spellings_are_one_key():
    assert "corpus" not in DataSpec().to_dict() and "corpus" not in RunSpec("torch").to_dict()["data"]
    assert RunSpec("torch").key == RunSpec("torch", DataSpec(corpus="ptb")).key
    same = [RunSpec("torch", DataSpec(corpus=c)) for c in ("zipf:10M:10k", "zipf:10000000:10000:0", "zipf:10m:10K")]
    assert {s.key for s in same} == {same[0].key} and same[0].data.corpus == "zipf:10M:10k"
    assert same[0].key != RunSpec("torch").key
    assert RunSpec("torch", DataSpec(corpus="zipf:10M:10k:1")).key != same[0].key


def test_a_file_is_its_digest_not_its_path(tmp_path):
    a = write_text(tmp_path / "a.txt", "the cat sat\n")
    b = write_text(tmp_path / "b.txt", "the cat sat\n")
    c = write_text(tmp_path / "c.txt", "the dog sat\n")
    key = lambda p: RunSpec("torch", file_spec(p)).key  # noqa: E731
    assert key(a) == key(b) != key(c)
    spec = RunSpec("torch", file_spec(a))
    assert spec.to_dict()["data"]["corpus_path"] == str(a) and RunSpec.from_dict(spec.to_dict()) == spec


def test_a_file_changed_after_planning_is_caught(tmp_path):
    path = write_text(tmp_path / "mine.txt", "a b c a b c\n" * 50)
    spec = file_spec(path, min_freq=1)
    path.write_text("a b c a b d\n" * 50, encoding="utf-8")
    with pytest.raises(BenchError, match="changed since the run was planned"):
        corpora.load(spec.corpus, spec.corpus_path)


def test_a_node_without_the_file_uses_its_digest_or_names_the_file(tmp_path):
    path = write_text(tmp_path / "mine.txt", "a b c a b c\n" * 50)
    spec = file_spec(path)
    missing = str(tmp_path / "elsewhere" / "mine.txt")
    with pytest.raises(BenchError, match=f"corpus file {missing} is not on this machine"):
        corpora.load(spec.corpus, missing)
    tokenised = corpora.load(spec.corpus, spec.corpus_path)  # tokenised here once: now cached by digest
    assert corpora.load(spec.corpus, missing).words == tokenised.words


def test_generated_corpus_is_the_generator_output(tmp_path):
    expected = tmp_path / "z.txt"
    write_zipf_corpus(expected, 3000, 50, seed=2)
    assert corpora.corpus_file("zipf:3k:50:2", None).read_bytes() == expected.read_bytes()


@pytest.mark.parametrize("corpus, fragment", [
    ("zipf:0:10", "TOKENS must be between 1"),
    ("zipf:-5:10", "TOKENS must be a whole number"),
    ("zipf:10k:-1", "WORDS must be a whole number"),
    ("zipf:5000G:10", "TOKENS must be between 1 and 2G"),
    ("zipf:10M:1G", "WORDS must be between 2 and 100M"),
    ("zipf:100:1k", "WORDS cannot exceed TOKENS"),
    ("zipf:10M", "write zipf:TOKENS:WORDS[:SEED]"),
])
def test_bad_zipf_sizes(corpus, fragment):
    assert_one_line_error(run_bench("data", "--summary", "--corpus", corpus), fragment)


def test_binary_file_directory_and_no_example(tmp_path):
    (tmp_path / "bin.dat").write_bytes(b"\x7fELF\x00\x01\x02" * 100)
    assert_one_line_error(run_bench("data", "--summary", "--corpus", str(tmp_path / "bin.dat")), "binary")
    assert_one_line_error(run_bench("data", "--summary", "--corpus", str(tmp_path)), "is a folder")
    lonely = write_text(tmp_path / "lonely.txt", "a\n" * 200)  # a word, never a context
    assert_one_line_error(run_bench("data", "--summary", "--corpus", str(lonely), "--min-freq", "1"),
                          "yields no training example", "lower --min-freq")
    assert_one_line_error(run_bench("data", "--summary", "--corpus", "zipf:20k:1k", "--min-freq", "100000"),
                          "lower --min-freq")


def test_suite_refuses_a_bad_corpus_before_making_anything(tmp_path):
    suite = write_text(tmp_path / "s.toml", f'[[runs]]\nbackend = "numpy"\ncorpus = ["ptb", "{tmp_path}"]\n')
    out = tmp_path / "out"
    assert_one_line_error(run_bench("suite", "--suite", str(suite), "--out", str(out)), "s.toml", "is a folder")
    strict = write_text(tmp_path / "t.toml", '[base]\nmin_freq = 100000\n[[runs]]\nbackend = "numpy"\n')
    assert_one_line_error(run_bench("suite", "--suite", str(strict), "--corpus", "zipf:20k:1k", "--out", str(out)),
                          "zipf:20k:1k", "yields no training example")
    assert not out.exists()


def test_suite_files_sweep_corpora(tmp_path):
    text = write_text(tmp_path / "mine.txt", "a b c\n" * 30)
    suite = write_text(tmp_path / "s.toml", f'[[runs]]\nbackend = "numpy"\ncorpus = ["ptb", "zipf:1M:10k", '
                                            f'"{os.path.relpath(text)}"]\n')
    plan = load_suite_file(suite, {})
    assert [r.spec.data.corpus for r in plan][:2] == ["ptb", "zipf:1M:10k"]
    assert plan[2].spec.data.corpus_path == str(Path(text).absolute()) and "corpus-file-" in plan[2].name
    assert "corpus-zipf-1M-10k" in plan[1].name and ":" not in "".join(r.name for r in plan)


def test_report_names_runs_by_corpus():
    from bench.reporting.report import _name_by_settings

    results = [{"spec": RunSpec("torch", DataSpec(corpus=c)).to_dict()} for c in ("ptb", "zipf:1M:10k")]
    _name_by_settings(results)
    assert [r["_name"] for r in results] == ["torch dense cpu", "torch dense cpu corpus zipf:1M:10k"]


def test_a_stored_result_of_a_file_corpus_matches_its_key(tmp_path):
    from bench.results.schema import failed_result
    from bench.results.store import read_result, write_result

    spec = RunSpec("torch", file_spec(write_text(tmp_path / "a.txt", "the cat sat\n")))
    write_result(tmp_path / "r.json", failed_result(spec, "x"))
    assert read_result(tmp_path / "r.json", spec.key) is not None
