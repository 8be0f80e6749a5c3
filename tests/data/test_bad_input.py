"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing half-written."""
from __future__ import annotations

import http.server
import io
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from common.cache import atomic_dir
from common.ptb import TRAIN_FILE
from tests.conftest import run_bench, write_text


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("flag, value, fragment", [
    ("--batch-size", "0", "batch size must be > 0"),
    ("--window", "0", "window must be from 1 to 127"),
    ("--noise", "-1", "noise must be >= 0"),
    ("--min-freq", "0", "min_freq must be >= 1"),
    # Past what holds them (common/spec.py): refused like the values above, never planned.
    ("--batch-size", "1" + "0" * 39, "a batch's slots (batch size x 2 window x (1 + noise)) must be < 2^31"),
    ("--noise", str(2 ** 31), "a batch's slots"),
    ("--window", "128", "window must be from 1 to 127"),
    ("--min-freq", str(2 ** 63), "min_freq must be >= 1 and < 2^63"),
    ("--embed", str(2 ** 31), "embedding size must be >= 1 and < 2^31"),
    ("--epochs", "9" * 40, "epochs must be >= 1 and < 2^31"),
    ("--sampling", "sometimes", "invalid choice"),
    ("--batch-size", "many", "invalid int value"),
])
def test_invalid_settings(flag, value, fragment, ptb_dir):
    assert_one_line_error(run_bench("data", "--summary", "--data-dir", str(ptb_dir), flag, value), fragment)


def test_named_folder_without_corpus_is_an_error_not_a_fallback(tmp_path, ptb_dir):
    result = run_bench("data", "--summary", "--data-dir", str(tmp_path))
    assert_one_line_error(result, "--data-dir", str(tmp_path), TRAIN_FILE)
    result = run_bench("data", "--summary", env={"PTB_DIR": str(tmp_path / "nope")})
    assert_one_line_error(result, "PTB_DIR", "nope")


def test_missing_everywhere_with_no_download(tmp_path):
    result = run_bench("data", "--summary", "--no-download",
                       env={"PTB_DIR": "", "SKIPGRAM_BENCH_CACHE": str(tmp_path)})
    assert_one_line_error(result, "PTB not found", "--data-dir", "PTB_DIR")


@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty"),
    (b"\x00\x01\x02binary\xff", "binary"),
    (b"aer banknote berlitz\n truncated", "corrupt or not PTB"),
])
def test_corrupt_train_file(tmp_path, content, fragment):
    (tmp_path / TRAIN_FILE).write_bytes(content)
    assert_one_line_error(run_bench("data", "--summary", "--data-dir", str(tmp_path)), fragment, TRAIN_FILE)


def test_checksum_mismatch_names_both_digests(tmp_path, ptb_dir):
    data = (ptb_dir / TRAIN_FILE).read_bytes()
    (tmp_path / TRAIN_FILE).write_bytes(data[:-1000])
    result = run_bench("data", "--summary", "--data-dir", str(tmp_path))
    assert_one_line_error(result, "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf", "sha256")


def test_bad_custom_corpus(tmp_path):
    assert_one_line_error(run_bench("data", "--summary", "--corpus", str(tmp_path / "no.txt")), "not found")
    path = write_text(tmp_path / "blank.txt", "\n \n\t\n")
    assert_one_line_error(run_bench("data", "--summary", "--corpus", str(path)), "no tokens")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ol\xe9\n".encode("latin-1"))
    assert_one_line_error(run_bench("data", "--summary", "--corpus", str(tmp_path / "latin1.txt")), "UTF-8")
    path = write_text(tmp_path / "tiny.txt", "a b c\n")
    assert_one_line_error(run_bench("data", "--summary", "--corpus", str(path)), "vocabulary is empty")


class _ZipServer:
    """Serves one payload on 127.0.0.1 (loopback only), as the d2l data hub would."""

    def __init__(self, payload: bytes) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/ptb.zip"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_download_into_cache_verified(tmp_path, ptb_dir):
    server = _ZipServer(_zip({f"ptb/{TRAIN_FILE}": (ptb_dir / TRAIN_FILE).read_bytes()}))
    try:
        env = {"PTB_DIR": "", "SKIPGRAM_BENCH_CACHE": str(tmp_path), "PTB_URL": server.url}
        result = run_bench("data", "--summary", env=env)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "ptb" / TRAIN_FILE).read_bytes() == (ptb_dir / TRAIN_FILE).read_bytes()
        server.close()
        assert run_bench("data", "--summary", "--no-download", env=env).returncode == 0  # now cached
    finally:
        server.close()


def test_bad_download_leaves_nothing_behind(tmp_path):
    for payload, fragment in [(b"not a zip", "not a zip"), (_zip({f"ptb/{TRAIN_FILE}": b"wrong"}), "corrupt")]:
        server = _ZipServer(payload)
        try:
            env = {"PTB_DIR": "", "SKIPGRAM_BENCH_CACHE": str(tmp_path), "PTB_URL": server.url}
            assert_one_line_error(run_bench("data", "--summary", env=env), fragment)
        finally:
            server.close()
        assert list(tmp_path.iterdir()) == []


def test_unreachable_download_says_how_to_fix(tmp_path):
    env = {"PTB_DIR": "", "SKIPGRAM_BENCH_CACHE": str(tmp_path), "PTB_URL": "http://127.0.0.1:9/ptb.zip"}
    assert_one_line_error(run_bench("data", "--summary", env=env), "could not download", "PTB_DIR")


def test_interrupted_atomic_dir_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "half").write_text("x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_dump_failure_leaves_no_file(tmp_path):
    out = tmp_path / "x.npz"
    result = run_bench("data", "--dump", str(out), "--data-dir", str(tmp_path))
    assert result.returncode != 0 and not out.exists() and not list(Path(tmp_path).glob(".tmp-*"))


def _nul_late(tmp_path):
    path = tmp_path / "late-nul.txt"
    path.write_bytes(b"a b c\n" * 20_000 + b"d\0e\n")  # the NUL is past the first 64 KiB
    return path


def _loop(tmp_path):
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    return tmp_path / "loop-a"


@pytest.mark.parametrize("make, fragment", [
    (_nul_late, "is binary, not text (a NUL byte at offset 120,001)"),
    (_loop, "symbolic link loop"),
    (lambda tmp_path: Path("/dev/zero"), "is not a plain file"),
    (lambda tmp_path: tmp_path, "is a folder"),
])
@pytest.mark.parametrize("command", [("data", "--summary"), ("suite", "--dry-run", "--backends", "torch")])
def test_a_corpus_path_that_is_no_text_file_is_one_line(tmp_path, make, fragment, command):
    """Each kind of path that is not a text file: one line naming it, no traceback, in every command."""
    result = run_bench(*command, "--corpus", str(make(tmp_path)), timeout=60)
    assert result.returncode == 2
    assert_one_line_error(result, fragment)


@pytest.mark.parametrize("value, fragment", [
    ("9" * 5000, "holds a number no setting can take"),      # past Python's own 4300-digit limit
    ("9" * 100, "beyond any setting's range"),                 # parsed, but no setting is that large
    ("-" + "9" * 60, "beyond any setting's range"),
    ("[" * 100_000 + "]" * 100_000, "nests tables or lists more than"),  # the parser's recursion
    ("[" * 20 + "1" + "]" * 20, "nests tables or lists more than"),
    ("{a = " * 50 + "1" + "}" * 50, "nests tables or lists more than"),
])
def test_a_suite_file_too_deep_or_with_huge_integers_is_one_line(tmp_path, value, fragment):
    suite = write_text(tmp_path / "s.toml", f'[[runs]]\nbackend = "torch"\nseed = {value}\n')
    result = run_bench("suite", "--dry-run", "--suite", str(suite), timeout=60)
    assert result.returncode == 2
    assert_one_line_error(result, f"suite file {suite}", fragment)


def test_a_huge_suite_file_is_refused_unread(tmp_path):
    suite = tmp_path / "s.toml"
    with open(suite, "wb") as f:
        f.write(b'[[runs]]\nbackend = "torch"\n')
        f.truncate(2 << 20)  # NULs: sparse, never parsed
    assert_one_line_error(run_bench("suite", "--dry-run", "--suite", str(suite), timeout=60),
                          f"suite file {suite} is over 1024 KiB")


def test_a_seed_just_below_2_63_is_a_setting(tmp_path):
    suite = write_text(tmp_path / "s.toml", f'[[runs]]\nbackend = "torch"\nseed = {2 ** 63 - 1}\n')
    result = run_bench("suite", "--dry-run", "--suite", str(suite), timeout=60)
    assert result.returncode == 0, result.stderr


def _float_settings() -> list[str]:
    from dataclasses import fields

    from common.spec import DataSpec, RunSpec

    return sorted(f.name for cls in (RunSpec, DataSpec) for f in fields(cls) if f.type in ("float", float))


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("name", _float_settings())
def test_every_float_setting_refuses_infinity_and_nan(name, value):
    """The class, not only --lr: no rate, threshold or eps is infinite or NaN in a spec."""
    from common.errors import BenchError
    from common.spec import DataSpec, RunSpec

    with pytest.raises(BenchError):
        if name in DataSpec.__dataclass_fields__:
            DataSpec(**{name: float(value)})
        else:
            RunSpec(backend="numpy", **{name: float(value)})


@pytest.mark.parametrize("args, fragment", [
    (["--max-steps", "2000000000"], "is over 1,000,000,000: years of training"),
    (["--max-steps", "100000", "--epochs", "1"], "beyond the about"),
    (["--max-steps", "5", "--epochs", "1"], None),
])
def test_absurd_max_steps_are_warned_in_one_line(ptb_dir, args, fragment):
    result = run_bench("suite", "--dry-run", "--backends", "torch", "--devices", "cpu", "--no-baselines",
                       "--data-dir", str(ptb_dir), *args, timeout=120)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: max_steps")]
    assert (len(warnings) == 1 and fragment in warnings[0]) if fragment else warnings == [], result.stderr
