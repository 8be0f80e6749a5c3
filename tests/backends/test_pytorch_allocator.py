"""torch's CPU allocator setting (backends/pytorch.py keep_freed_memory): applied where glibc is."""
from __future__ import annotations

import platform

import pytest

from tests.conftest import BACKEND


def test_glibc_keeps_freed_memory():
    if BACKEND != "torch":
        pytest.skip("torch env only")
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    from backends.pytorch import keep_freed_memory

    assert keep_freed_memory()  # both mallopt calls accepted
