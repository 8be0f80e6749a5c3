"""Input a careless or hostile user gives (round 5): text that would act on the terminal or the
page, numbers past what anything can hold, and paths whose first message misled."""
from __future__ import annotations

import pytest

from tests.conftest import run_bench, write_text
from tests.data.test_bad_input import assert_one_line_error

# ESC (a colour), an OSC window title, and the right-to-left override that reorders a line.
HOSTILE = "\x1b[31mred", "\x1b]0;owned\x07", "evil\u202etxt.exe"
RAW = ("\x1b", "\x07", "\u202e")


def test_neighbours_writes_a_vectors_files_words_escaped(tmp_path):
    words = ["chip", *HOSTILE]
    vectors = write_text(tmp_path / "v.txt", f"{len(words)} 2\n" + "".join(
        f"{w} 1.0 {i / 10}\n" for i, w in enumerate(words)))
    done = run_bench("neighbours", "--vectors", str(vectors), "--word", "chip", "-k", "3")
    assert done.returncode == 0, done.stderr
    assert not any(c in done.stdout for c in RAW), repr(done.stdout)
    assert "\\x1b[31mred" in done.stdout and "\\x1b]0;owned\\x07" in done.stdout and "evil\\u202etxt.exe" in done.stdout
    assert len(done.stdout.splitlines()) == 3


def test_no_raw_control_character_reaches_a_page():
    from bench.reporting.pages import environment, plot_text

    page = environment().from_string("<p>{{ word }}</p><p>{{ near }}</p>").render(
        word=HOSTILE[0], near=list(HOSTILE))
    assert not any(c in page for c in RAW) and "\\x1b]0;owned\\x07" in page and "\\u202e" in page
    assert not any(c in plot_text(w) for w in HOSTILE for c in RAW)
    assert plot_text("two\nlines") == "two\nlines"  # a label's own line break stays one


def test_a_kernel_pseudo_file_as_corpus_is_named_for_what_it_is():
    assert_one_line_error(run_bench("data", "--summary", "--corpus", "/proc/self/status"),
                          "/status is not a regular file", "kernel pseudo-file")  # /proc/PID/: resolved


def test_an_empty_corpus_is_still_called_empty(tmp_path):
    assert_one_line_error(run_bench("data", "--summary", "--corpus", str(write_text(tmp_path / "e.txt", ""))),
                          "is empty")


@pytest.mark.parametrize("seed", ["-1", "1.5", "x"])
def test_a_bad_zipf_seed_has_its_own_message(seed):
    assert_one_line_error(run_bench("data", "--summary", "--corpus", f"zipf:1M:1k:{seed}"),
                          "SEED must be a whole number from 0 to 2^63 - 1", f"got '{seed}'")


def test_a_dangling_link_as_out_is_named_a_dangling_link(tmp_path):
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "gone" / "target")
    plan = write_text(tmp_path / "plan.toml", "[[runs]]\nbackend = 'numpy'\nmax_steps = 2\n")
    done = run_bench("suite", "--suite", str(plan), "--out", str(out), "--corpus", "zipf:200k:2k")
    assert_one_line_error(done, f"{out} is a dangling symbolic link (to {tmp_path / 'gone' / 'target'}")
    assert out.is_symlink() and not (tmp_path / "gone").exists()  # nothing made behind it


def test_a_40_digit_batch_size_in_a_suite_file_is_refused_not_planned(tmp_path):
    plan = write_text(tmp_path / "plan.toml", f"[[runs]]\nbackend = 'numpy'\nbatch_size = {10 ** 39}\n")
    done = run_bench("suite", "--suite", str(plan), "--out", str(tmp_path / "out"), "--dry-run",
                     "--corpus", "zipf:200k:2k")
    assert_one_line_error(done, "must be < 2^31")
    assert "GiB" not in done.stderr and "GiB" not in done.stdout and not (tmp_path / "out").exists()
