"""Fail before the work, never after it: unwritable outputs are refused before data is built,
a full disk is one line naming the path and the space (never SIGBUS, never a traceback), and
no temporary file outlives its writer."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.cache import atomic_dir, atomic_file, atomic_write_bytes, check_writable, remove_stale_temps
from common.errors import BenchError
from tests.conftest import ROOT, run_bench
from tests.data.test_bad_input import assert_one_line_error

# Python start-up, imports and argument parsing take well under a second; loading PTB and
# building its batches takes several, and training far longer. A check that comes first
# finishes inside this.
BEFORE_WORK_SECONDS = 5.0


@pytest.fixture
def tmpfs(tmp_path):
    """mount_tmpfs(size, readonly=False) -> a fresh tmpfs folder, unmounted after the test, private
    to its owner (a tmpfs is 1777 by default, which a cache folder may not be). Skips where
    mounting is not permitted (not root, or a container without CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount_tmpfs(size: str, readonly: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        options = f"size={size},mode=0700" + (",ro" if readonly else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield mount_tmpfs
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def unwritable(tmpfs, tmp_path) -> Path:
    """An empty folder nobody may write to: a read-only tmpfs as root (root ignores modes),
    a folder of mode 0555 otherwise."""
    if os.geteuid() == 0:
        return tmpfs("1m", readonly=True)
    folder = tmp_path / "readonly"
    folder.mkdir(mode=0o555)
    return folder


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".tmp-*")]


def _fill(folder: Path, leave: int = 0) -> None:
    """Fill the file system of `folder` up to `leave` free bytes."""
    import shutil

    free = shutil.disk_usage(folder).free - leave
    with open(folder / "filler", "wb") as f, contextlib.suppress(OSError):
        f.write(b"\0" * max(free, 0))


def _timed(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    t = time.perf_counter()
    result = run_bench(*args, env=env)
    return result, time.perf_counter() - t


@pytest.mark.parametrize("flag", ["--out", "--export-vectors"])
def test_train_refuses_unwritable_output_before_training(flag, unwritable, ptb_dir):
    target = unwritable / "sub" / "result.json"
    result, seconds = _timed("train", "--backend", "numpy", "--max-steps", "5", "--data-dir", str(ptb_dir),
                             flag, str(target))
    assert_one_line_error(result, flag, str(unwritable))
    assert result.returncode == 2 and seconds < BEFORE_WORK_SECONDS
    assert list(unwritable.iterdir()) == []


def test_dump_refuses_unwritable_output_before_reading_data(unwritable, ptb_dir):
    result, seconds = _timed("data", "--dump", str(unwritable / "x.npz"), "--data-dir", str(ptb_dir))
    assert_one_line_error(result, "--dump", str(unwritable / "x.npz"))
    assert result.returncode == 2 and seconds < BEFORE_WORK_SECONDS
    assert list(unwritable.iterdir()) == []


def test_output_under_a_file_is_refused(tmp_path, ptb_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result, seconds = _timed("train", "--backend", "numpy", "--max-steps", "5", "--data-dir", str(ptb_dir),
                             "--out", str(blocker / "result.json"))
    assert_one_line_error(result, "--out", str(blocker), "is a file")
    assert result.returncode == 2 and seconds < BEFORE_WORK_SECONDS


def test_full_disk_at_out_is_refused_before_training(tmpfs, ptb_dir):
    disk = tmpfs("1m")
    _fill(disk, leave=8 << 10)
    result, seconds = _timed("train", "--backend", "numpy", "--max-steps", "5", "--data-dir", str(ptb_dir),
                             "--out", str(disk / "result.json"))
    assert_one_line_error(result, "--out", str(disk / "result.json"), "free")
    assert result.returncode == 2 and seconds < BEFORE_WORK_SECONDS
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_dump_too_large_for_the_disk_is_refused_before_building(tmpfs, ptb_dir):
    disk = tmpfs("16m")  # PTB's corpus cache goes elsewhere; its first epoch needs ~125 MiB
    result = run_bench("data", "--dump", str(disk / "x.npz"), "--data-dir", str(ptb_dir))
    assert_one_line_error(result, "--dump", str(disk / "x.npz"), "needs about", "MiB free")
    assert result.returncode == 2 and list(disk.iterdir()) == []


def test_full_cache_disk_is_one_line_and_leaves_no_temporary(tmpfs, ptb_dir):
    cache = tmpfs("2m")  # smaller than PTB's tokenised corpus (3.4 MiB of word ids)
    result = run_bench("data", "--summary", "--data-dir", str(ptb_dir), env={"SKIPGRAM_BENCH_CACHE": str(cache)})
    assert_one_line_error(result, str(cache / "corpus-"), "SKIPGRAM_BENCH_CACHE")
    assert result.returncode == 2 and _temps(cache) == []


def test_row_cache_checks_space_before_mapping(tmpfs, ptb_dir):
    cache = tmpfs("12m")  # room for the corpus, not for PTB's 80 MiB of rows
    result = run_bench("train", "--backend", "numpy", "--max-steps", "5", "--data-dir", str(ptb_dir),
                       env={"SKIPGRAM_BENCH_CACHE": str(cache)})
    assert_one_line_error(result, "no space for the row cache", str(cache / "rows-"), "MiB free")
    assert result.returncode == 2 and _temps(cache) == []


def test_row_cache_allocates_its_maps_so_a_full_disk_is_no_sigbus(tmpfs, ptb_dir):
    """With the free-space check defeated (as when another process fills the disk after it),
    writing the memory map must still end in the one-line error, not SIGBUS (exit 135)."""
    cache = tmpfs("12m")
    code = ("import sys, common.rowcache as r; r.check_space = lambda *a: None; from bench.cli import main; "
            f"sys.exit(main(['data', '--summary', '--data-dir', {str(ptb_dir)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "SKIPGRAM_BENCH_CACHE": str(cache)})
    assert_one_line_error(result, "cannot write", str(cache / "rows-"), "no space left on device", "needed 80")
    assert result.returncode == 2 and _temps(cache) == []


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_removed_and_live_ones_kept(tmpfs, ptb_dir):
    """A killed builder's `.tmp-rows-*` held the disk full for every later run; now the next run
    removes it (its pid is dead) and succeeds, while a live writer's temporary stays."""
    cache = tmpfs("100m")
    stale = cache / f".tmp-rows-0123456789abcdef01234567-p{_dead_pid()}-abc123"
    stale.mkdir()
    _fill(stale, leave=20 << 20)  # too little left for PTB's 80 MiB of rows
    live = cache / f".tmp-rows-0123456789abcdef01234567-p{os.getpid()}-def456"
    live.mkdir()
    result = run_bench("data", "--summary", "--data-dir", str(ptb_dir), env={"SKIPGRAM_BENCH_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and live.exists()
    assert [p.name for p in cache.iterdir() if p.name.startswith("rows-")]


def test_old_temporaries_without_a_pid_are_removed(tmp_path):
    old, new = tmp_path / ".tmp-corpus-abc-xyz", tmp_path / ".tmp-corpus-abc-uvw"
    old.mkdir()
    new.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert remove_stale_temps(tmp_path) == [old]
    assert new.exists()


def test_atomic_file_on_a_full_disk_leaves_nothing(tmpfs):
    disk = tmpfs("1m")
    with pytest.raises(BenchError) as caught, atomic_file(disk / "big.bin") as f:
        for _ in range(30):
            f.write(b"x" * 100_000)
    message = str(caught.value)
    assert str(disk / "big.bin") in message and "no space left on device" in message and "needed at least" in message
    assert list(disk.iterdir()) == []
    with pytest.raises(BenchError, match=r"needed 2\.9 MiB"):
        atomic_write_bytes(disk / "sub" / "big.bin", b"x" * 3_000_000)
    assert _temps(disk) == [] and list((disk / "sub").iterdir()) == []


def test_atomic_dir_on_a_full_disk_leaves_nothing(tmpfs):
    disk = tmpfs("1m")
    with pytest.raises(BenchError, match="no space left on device"), \
            atomic_dir(disk / "folder", needed=2_000_000) as tmp:
        (tmp / "a").write_bytes(b"x" * 2_000_000)
    assert list(disk.iterdir()) == []


def test_check_writable_accepts_a_folder_and_creates_it(tmp_path):
    check_writable(tmp_path / "new" / "deeper", "--out", folder=True)
    assert (tmp_path / "new" / "deeper").is_dir() and list((tmp_path / "new" / "deeper").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(BenchError, match="--out .* is not a folder"):
        check_writable(tmp_path / "file", "--out", folder=True)
    with pytest.raises(BenchError, match="is a folder; name a file"):
        check_writable(tmp_path / "new", "--out")


def test_written_files_have_ordinary_permissions(tmp_path):
    atomic_write_bytes(tmp_path / "r.json", b"{}")
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_suite_refused_on_a_full_disk_leaves_no_folder(tmpfs, tmp_path, ptb_dir):
    disk = tmpfs("1m")
    _fill(disk, leave=4 << 10)
    plan = tmp_path / "s.toml"
    plan.write_text("[[runs]]\nbackend = 'numpy'\nmax_steps = 3\n")
    result = run_bench("suite", "--suite", str(plan), "--out", str(disk / "new" / "out"), "--data-dir", str(ptb_dir))
    assert_one_line_error(result, "--out", str(disk / "new" / "out"), "free")
    assert result.returncode == 2 and sorted(p.name for p in disk.iterdir()) == ["filler"]
