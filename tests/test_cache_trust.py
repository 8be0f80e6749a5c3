"""What the cache holds is trusted by later processes (corpora, row tables, MXNet's operator
library, which runs inside training): its folders are private whatever the umask, a folder that
someone else could have written is refused in one line, a file to be executed is checked against
the digest recorded when it was made, and a compiler's processes end with the run that started them."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.cache import cache_folder, check_private, record_digest, verified_file
from common.errors import BenchError
from tests.conftest import ROOT, run_bench, write_text
from tests.data.test_bad_input import assert_one_line_error

CORPUS = "zipf:200k:2k"  # generated into the cache, tokenised, its rows cached: each kind of entry


def _summary(cache: Path, umask: int | None = None) -> subprocess.CompletedProcess:
    """`data --summary` on CORPUS with a cache and umask of its own."""
    return subprocess.run([sys.executable, "-m", "bench", "data", "--summary", "--corpus", CORPUS,
                           "--min-freq", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "SKIPGRAM_BENCH_CACHE": str(cache)},
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in (folder, *folder.rglob("*"))}


def test_cache_folders_are_private_whatever_the_umask(tmp_path):
    cache = tmp_path / "cache"
    done = _summary(cache, umask=0)
    assert done.returncode == 0, done.stderr
    modes = _modes(cache)
    folders = [name for name in modes if (cache / name).is_dir()]
    assert any(n.startswith("corpus-") for n in folders) and any(n.startswith("rows-") for n in folders)
    assert all(modes[name] == 0o700 for name in folders), modes
    assert all(mode & 0o077 == 0 for name, mode in modes.items() if name.count("/") == 1), modes  # their files


@pytest.mark.parametrize("which", ["root", "corpus folder"])
def test_a_cache_folder_others_can_write_is_refused_in_one_line(tmp_path, which):
    cache = tmp_path / "cache"
    assert _summary(cache).returncode == 0
    (folder,) = [cache] if which == "root" else list(cache.glob("corpus-*"))
    folder.chmod(0o777)
    assert_one_line_error(_summary(cache), f"cache folder {folder} can be written by others",
                          "SKIPGRAM_BENCH_CACHE")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_cache_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPGRAM_BENCH_CACHE", str(tmp_path / "cache"))
    planted = tmp_path / "cache" / "mxnet-ops-0123456789abcdef"
    planted.mkdir(parents=True, mode=0o700)
    os.chown(planted, 65534, 65534)
    with pytest.raises(BenchError, match=r"belongs to another user \(uid 65534\)"):
        cache_folder(planted.name)
    check_private(tmp_path / "cache" / "missing")  # a folder not made yet is made private when made


def test_a_file_is_verified_against_the_digest_recorded_when_it_was_made(tmp_path):
    library = tmp_path / "lib.so"
    library.write_bytes(b"\x7fELF" + bytes(range(256)) * 64)
    assert not verified_file(library)  # no digest recorded: never trusted
    record_digest(library)
    assert verified_file(library)
    whole = library.read_bytes()
    library.write_bytes(whole[:100])  # truncated (a killed copy, a full disk)
    assert not verified_file(library)
    library.write_bytes(whole[:-1] + b"\0")  # same size, other bytes (a planted file)
    assert not verified_file(library)
    library.unlink()
    library.symlink_to(tmp_path / "lib.so.sha256")
    assert not verified_file(library)


def _gone(pid: int, within: float) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
                return True  # ended, not yet reaped by init
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    return False


def outlives_its_killed_parent(code: str, pid_file: Path, env: dict | None = None) -> bool:
    """Run python `code` in a process of its own until it has written a grandchild's pid to
    `pid_file`, SIGKILL that process, and say whether the grandchild is still there 2 s later."""
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (pid_file.exists() and pid_file.read_text().strip()):
            time.sleep(0.05)
        grandchild = int(pid_file.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        return not _gone(grandchild, within=2)
    finally:
        parent.kill()


def test_a_commands_grandchildren_end_with_a_killed_parent(tmp_path):
    """As cc1plus under g++: the command's own child holds on when the process that ran the
    command is SIGKILLed; run_own_group's leader hears of it and ends the group."""
    pid_file = tmp_path / "grandchild.pid"
    code = (f"from common.processes import run_own_group\n"
            f"run_own_group(['sh', '-c', 'sleep 300 >/dev/null & echo $! > {pid_file}; wait'])\n")
    assert not outlives_its_killed_parent(code, pid_file)


def test_a_commands_group_is_ended_when_it_returns(tmp_path):
    from common.processes import run_own_group

    done = run_own_group(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"])
    assert done.returncode == 0 and _gone(int(done.stdout), within=2)
    with pytest.raises(subprocess.TimeoutExpired):
        run_own_group(["sleep", "300"], timeout=0.5)
    missing = run_own_group([str(tmp_path / "no-such-compiler"), "--version"])
    assert missing.returncode == 127 and "cannot run" in missing.stderr and "Traceback" not in missing.stderr


def test_named_interpreter_that_is_not_python_is_named_before_any_run(monkeypatch):
    from bench.executing import envs

    monkeypatch.setenv("SKIPGRAM_PYTHON_TESTS", "/bin/false")
    with pytest.raises(BenchError, match=r"SKIPGRAM_PYTHON_TESTS=/bin/false \(/bin/false\) is not a python 3 "
                                         r"interpreter: .* exited with status 1"):
        envs.python_for("tests")
    monkeypatch.setenv("SKIPGRAM_PYTHON_TESTS", sys.executable)
    assert envs.python_for("tests") == Path(sys.executable)


def test_a_named_interpreter_that_is_not_python_fails_its_runs_saying_so(tmp_path, ptb_dir):
    plan = write_text(tmp_path / "plan.toml", "[[runs]]\nbackend = 'numpy'\nmax_steps = 2\n")
    done = run_bench("suite", "--suite", str(plan), "--out", str(tmp_path / "out"), "--data-dir", str(ptb_dir),
                     env={"SKIPGRAM_PYTHON_TESTS": "false"})
    assert done.returncode == 0, done.stderr
    (result,) = [p.read_text() for p in (tmp_path / "out" / "runs").glob("*.json")]
    assert "is not a python 3 interpreter" in result and "SKIPGRAM_PYTHON_TESTS=false" in result


def test_a_command_that_leaves_a_child_holding_its_output_is_not_waited_for():
    """A wrapper named by SKIPGRAM_PYTHON_* may start `sleep 300 &` beside python: asking it
    whether it is a python must end when it answers, not when its child does."""
    from common.processes import run_own_group

    started = time.monotonic()
    done = run_own_group(["sh", "-c", "sleep 300 & echo 3"], timeout=60)
    assert done.stdout.strip() == "3" and time.monotonic() - started < 30
