"""MXNet-only checks the shared contract does not make: the packed loss's two forms (the C++
operator, which the contract tests run, and the composition of MXNet's operators that stands in
where the operator cannot be built or on cuda) both match the reference, and a missing or
broken compiler falls back to the composition with a warning instead of failing the run."""
from __future__ import annotations

import numpy as np
import pytest

from common.spec import RunSpec
from tests.backends.conftest import BACKEND, pair, weights

pytestmark = pytest.mark.skipif(BACKEND != "mxnet", reason="mxnet env only")


@pytest.mark.parametrize("form", ["op", "ops"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_both_packed_forms_match_reference(backend_cls, small_batches, monkeypatch, form, sparse):
    from backends import mxnet_ops

    monkeypatch.setenv("MXNET_PACKED_LOSS", form)
    batches, vocab = small_batches
    spec = RunSpec(backend=BACKEND, sparse=sparse, layout="packed")
    backend, reference = pair(backend_cls, spec, weights(vocab, 100, scale=30.0))
    expect_op = form == "op" and mxnet_ops.find_compiler() is not None
    assert (backend.net.fused_op == mxnet_ops.OP_NAME) == expect_op
    for batch in batches:
        loss, g_center, g_context = backend.loss_and_grads(batch)
        ref_loss, ref_center, ref_context = reference.loss_and_grads(batch)
        assert abs(loss - ref_loss) / ref_loss <= 1e-5
        for got, ref in ((g_center, ref_center), (g_context, ref_context)):
            assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-5


def test_no_compiler_falls_back_with_a_warning(monkeypatch):
    from backends import mxnet_ops

    monkeypatch.setattr(mxnet_ops, "LOADED", {})
    monkeypatch.setattr(mxnet_ops, "find_compiler", lambda: None)
    with pytest.warns(UserWarning, match="no C.. compiler"):
        assert mxnet_ops.packed_loss_op() is None


def test_a_broken_compiler_falls_back_with_a_warning(monkeypatch, tmp_path):
    from backends import mxnet_ops

    monkeypatch.setattr(mxnet_ops, "LOADED", {})
    monkeypatch.setenv("SKIPGRAM_BENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "true")  # answers every call, builds nothing
    with pytest.warns(UserWarning, match="could not be built or loaded"):
        assert mxnet_ops.packed_loss_op() is None
    assert not any(tmp_path.iterdir())  # no half-built library left in the cache


# --- the library in the cache: built by whom, verified, and the compiler's processes -------------

# A stand-in for g++ (run through `sh`, as $CXX may name a command with arguments, `ccache g++`):
# it answers --version, and for a build writes the -o file and counts its builds; with $FAKE_HANG
# set, it starts a child that outlives it, as g++ starts cc1plus, and waits.
FAKE_CXX = """#!/bin/sh
case "$1" in --version) echo "fake-c++ 1.0"; exit 0;; -march=native) exit 0;; esac
while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done
echo build >> "$FAKE_LOG"
if [ -n "$FAKE_HANG" ]; then sleep 300 >/dev/null & echo $! > "$FAKE_HANG"; wait; fi
printf 'a library, as built' > "$out"
"""


@pytest.fixture
def fake_cxx(monkeypatch, tmp_path):
    """$CXX set to `sh FAKE` (two words), the cache in tmp_path/cache; the build log's path."""
    script = tmp_path / "fake c++"  # a space in the name too: split as a shell would, not at every blank
    script.write_text(FAKE_CXX)
    log = tmp_path / "builds.log"
    monkeypatch.setenv("CXX", f"sh '{script}'")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("SKIPGRAM_BENCH_CACHE", str(tmp_path / "cache"))
    return log


def _builds(log) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _build():
    from backends import mxnet_ops

    compiler = mxnet_ops.find_compiler()
    return mxnet_ops.build_library(compiler, mxnet_ops._describe(compiler))


def test_cxx_is_split_like_a_shell_word_list(fake_cxx):
    from backends import mxnet_ops

    assert mxnet_ops.find_compiler()[0] == "sh" and len(mxnet_ops.find_compiler()) == 2
    assert _build().read_bytes() == b"a library, as built" and _builds(fake_cxx) == 1


def test_a_truncated_or_planted_library_is_built_again(fake_cxx):
    library = _build()
    assert _build() == library and _builds(fake_cxx) == 1  # verified: loaded as it is
    library.write_bytes(b"a lib")  # truncated: once a SIGBUS in every packed run
    assert _build().read_bytes() == b"a library, as built" and _builds(fake_cxx) == 2
    library.write_bytes(b"a library, planted")  # someone else's code at the keyed path
    assert _build().read_bytes() == b"a library, as built" and _builds(fake_cxx) == 3


def test_the_library_folder_is_private_whatever_the_umask(fake_cxx):
    import os
    import stat

    old = os.umask(0)
    try:
        library = _build()
    finally:
        os.umask(old)
    assert stat.S_IMODE(library.parent.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in library.parent.iterdir())


def test_a_library_folder_others_can_write_is_refused(fake_cxx):
    from common.errors import BenchError

    library = _build()
    library.parent.chmod(0o777)
    with pytest.raises(BenchError, match="can be written by others"):
        _build()
    assert _builds(fake_cxx) == 1  # nothing built or loaded there


def test_the_compiler_and_its_children_end_with_a_killed_run(fake_cxx, tmp_path):
    """g++ and its cc1plus once outlived a SIGKILLed harness by seconds."""
    from tests.test_cache_trust import outlives_its_killed_parent

    hang = tmp_path / "child.pid"
    assert not outlives_its_killed_parent("from tests.backends.test_mxnet import _build; _build()", hang,
                                          {"FAKE_HANG": str(hang)})
