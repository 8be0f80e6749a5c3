"""A results folder from someone else is data, not code: `--resume` on a folder whose suite.json
or results were edited runs nothing the registry does not name and writes nothing outside the
folder. Each edit is refused before any run with one line naming the file (exit 2).

The folders are planned in-process (write_meta, as the suite does) and resumed as a user would:
`python -m bench suite --resume DIR` in a fresh process.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.executing.folder import write_meta
from bench.executing.suite import load_suite_file
from bench.results.schema import failed_result
from bench.results.store import MAX_DEPTH, MAX_FILE_BYTES, write_result
from common.spec import spec_key
from tests.conftest import run_bench, write_text
from tests.data.test_bad_input import assert_one_line_error

pytestmark = pytest.mark.ptb
PLAN = "[base]\nepochs = 1\nmax_steps = 3\n[[runs]]\nbackend = 'numpy'\nseed = [1, 2]\n"
PRECIOUS = '{"mine": "not the suite\'s"}\n'


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A planned, not yet started results folder, beside a file of the user's it must not touch."""
    out = tmp_path / "out"
    plan = load_suite_file(write_text(tmp_path / "s.toml", PLAN), {})
    write_meta(out, ["python", "-m", "bench", "suite", "(test)"], [run.to_dict() for run in plan])
    write_text(tmp_path / "victim.json", PRECIOUS)
    return out


def edit_first_entry(out: Path, **changes: object) -> None:
    """Change the plan's first entry as an editor would; a changed spec gets its matching key."""
    meta = json.loads((out / "suite.json").read_text())
    entry = meta["plan"][0]
    entry.update(changes)
    entry["key"] = spec_key(entry["spec"])
    write_text(out / "suite.json", json.dumps(meta))


def resume(out: Path, ptb_dir: Path):
    return run_bench("suite", "--resume", str(out), "--data-dir", str(ptb_dir), "--executor", "local", timeout=60)


def assert_untouched(out: Path) -> None:
    """Nothing ran (no runs/, no logs/) and the user's file beside the folder is as it was."""
    assert not (out / "runs").exists() and not (out / "logs").exists()
    assert (out.parent / "victim.json").read_text() == PRECIOUS


@pytest.mark.parametrize("name", ["../victim", "VICTIM", ".hidden", "sub/run", "a\0b", "x" * 200, 42, ""])
def test_a_run_name_that_is_not_a_plain_file_name_is_refused(folder, ptb_dir, name):
    name = str(folder.parent / "victim") if name == "VICTIM" else name  # an absolute path
    edit_first_entry(folder, name=name)
    result = resume(folder, ptb_dir)
    assert result.returncode == 2
    assert_one_line_error(result, str(folder / "suite.json"), "is not a plain file name")
    assert_untouched(folder)


@pytest.mark.parametrize("change, fragment", [
    ({"backend": "../../../bin/sh"}, "unknown backend '../../../bin/sh'"),
    ({"lr": -1.0}, "learning rate must be > 0"),
    ({"device": "cpu; rm -rf ~"}, "device must be cpu, cuda or cuda:N"),
    ({"data": [1, 2]}, "is corrupt"),
])
def test_a_spec_the_planner_would_refuse_is_refused(folder, ptb_dir, change, fragment):
    spec = json.loads((folder / "suite.json").read_text())["plan"][0]["spec"]
    edit_first_entry(folder, spec={**spec, **change})
    result = resume(folder, ptb_dir)
    assert result.returncode == 2
    assert_one_line_error(result, str(folder / "suite.json"), fragment)
    assert_untouched(folder)


def test_two_runs_of_one_name_are_refused(folder, ptb_dir):
    meta = json.loads((folder / "suite.json").read_text())
    edit_first_entry(folder, name=meta["plan"][1]["name"])  # both would write one result file
    assert_one_line_error(resume(folder, ptb_dir), str(folder / "suite.json"), "two planned runs share the name")
    assert_untouched(folder)


@pytest.mark.parametrize("text, fragment", [
    ("[1, 2]", "the file is a list, expected `object`"),
    ('{"plan": "runs"}', "plan is a string, expected `array | null`"),
    ('{"created": "x"}', "no list of planned runs"),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"nested more than {MAX_DEPTH} levels deep"),
    ("[" * 100_000 + "]" * 100_000, f"nested more than {MAX_DEPTH} levels deep"),  # past the parser's recursion
])
def test_a_suite_json_that_is_no_plan_is_refused(folder, ptb_dir, text, fragment):
    write_text(folder / "suite.json", text)
    assert_one_line_error(resume(folder, ptb_dir), str(folder / "suite.json"), fragment)
    assert_untouched(folder)


def test_a_symlinked_lock_is_refused_and_its_target_kept(folder, ptb_dir):
    (folder / ".lock").symlink_to(folder.parent / "victim.json")
    result = resume(folder, ptb_dir)
    assert result.returncode == 2
    assert_one_line_error(result, str(folder / ".lock"), "is a symbolic link")
    assert_untouched(folder)


def test_a_symlinked_runs_folder_is_refused(folder, ptb_dir):
    elsewhere = folder.parent / "elsewhere"
    elsewhere.mkdir()
    (folder / "runs").symlink_to(elsewhere)
    assert_one_line_error(resume(folder, ptb_dir), str(folder / "runs"), "is not a plain folder")
    assert list(elsewhere.iterdir()) == []


def _symlink(path: Path) -> None:
    path.symlink_to(path.parent.parent.parent / "victim.json")


def _big(path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk written


@pytest.mark.parametrize("plant, fragment", [
    (_symlink, "is a symbolic link"),
    (os.mkfifo, "is not a plain file"),  # opened blocking, it would wait for a writer forever
    (_big, f"is over {MAX_FILE_BYTES >> 20} MiB"),
    (lambda p: write_text(p, "[" * 100_000 + "]" * 100_000), f"nested more than {MAX_DEPTH} levels deep"),
])
def test_a_result_the_suite_never_writes_is_refused_before_any_run(folder, ptb_dir, plant, fragment):
    (folder / "runs").mkdir()
    name = json.loads((folder / "suite.json").read_text())["plan"][1]["name"]
    plant(folder / "runs" / f"{name}.json")
    result = resume(folder, ptb_dir)
    assert result.returncode == 2
    assert_one_line_error(result, str(folder / "runs" / f"{name}.json"), fragment)
    assert [p.name for p in (folder / "runs").iterdir()] == [f"{name}.json"]  # the other run never started
    assert (folder.parent / "victim.json").read_text() == PRECIOUS


def test_report_writes_its_page_into_the_folder_not_through_a_symlink(folder):
    """`report` on a folder from someone else writes index.html there: a planted symlink is
    replaced, never written through."""
    (folder / "runs").mkdir()
    for run in load_suite_file(folder.parent / "s.toml", {}):
        write_result(folder / "runs" / f"{run.name}.json", failed_result(run.spec, "planted"))
    (folder / "index.html").symlink_to(folder.parent / "victim.json")
    page = run_bench("report", str(folder), timeout=120)
    assert page.returncode == 0, page.stderr
    assert not (folder / "index.html").is_symlink() and "planted" in (folder / "index.html").read_text()
    assert (folder.parent / "victim.json").read_text() == PRECIOUS


# --- a folder that is not ours is never written to

def _suite_into(out: Path, tmp_path: Path, *extra: str):
    suite = write_text(tmp_path / "s.toml", PLAN)
    return run_bench("suite", "--suite", str(suite), "--out", str(out), "--executor", "local", *extra, timeout=120)


@pytest.mark.parametrize("theirs", ["index.html", "notes.md", "sub/"])
@pytest.mark.parametrize("dry", [False, True])
def test_out_onto_a_folder_of_someone_elses_is_refused_and_untouched(tmp_path, ptb_dir, theirs, dry):
    out = tmp_path / "docs"
    (out / "sub").mkdir(parents=True) if theirs == "sub/" else write_text(out.mkdir() or out / theirs, PRECIOUS)
    before = sorted((p.relative_to(out), p.is_dir() or p.read_text()) for p in out.rglob("*"))
    result = _suite_into(out, tmp_path, "--data-dir", str(ptb_dir), *(["--dry-run"] if dry else []))
    assert result.returncode == 2
    assert_one_line_error(result, f"--out {out} is not a results folder", repr(theirs.rstrip("/")), "new or empty")
    assert sorted((p.relative_to(out), p.is_dir() or p.read_text()) for p in out.rglob("*")) == before


def test_report_refuses_a_folder_that_is_no_results_folder(tmp_path):
    write_text(tmp_path / "index.html", PRECIOUS)
    result = run_bench("report", str(tmp_path), timeout=60)
    assert_one_line_error(result, str(tmp_path), "is not a results folder")
    assert (tmp_path / "index.html").read_text() == PRECIOUS


def test_out_into_an_empty_folder_or_a_start_cut_short_is_taken(tmp_path, ptb_dir):
    for out, leftovers in ((tmp_path / "empty", ()), (tmp_path / "cut", (".lock", "runs", "logs"))):
        out.mkdir()
        for name in leftovers:
            (out / name).mkdir() if name != ".lock" else write_text(out / name, "")
        result = _suite_into(out, tmp_path, "--data-dir", str(ptb_dir))
        assert result.returncode == 0, result.stderr
        assert (out / "suite.json").exists() and (out / "index.html").exists()


def test_a_hard_linked_lock_is_refused_and_its_target_kept(folder, ptb_dir):
    os.link(folder.parent / "victim.json", folder / ".lock")
    result = resume(folder, ptb_dir)
    assert result.returncode == 2
    assert_one_line_error(result, str(folder / ".lock"), "is a hard link", "remove it")
    assert_untouched(folder)


@pytest.mark.parametrize("link", [os.link, lambda target, path: os.symlink(target, path)])
def test_files_written_in_place_are_never_written_through_a_link(tmp_path, link):
    """The class, not only the lock: open_in_place (the lock, each run's log) refuses both kinds of link."""
    from common.cache import open_in_place
    from common.errors import BenchError

    victim = write_text(tmp_path / "victim.json", PRECIOUS)
    link(victim, tmp_path / "planted")
    with pytest.raises(BenchError, match="link"):
        open_in_place(tmp_path / "planted", "a lock")
    assert victim.read_text() == PRECIOUS
    os.close(open_in_place(tmp_path / "own", "a lock"))  # a new plain file is fine
