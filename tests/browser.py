"""Open a generated page in headless Chromium, as a reader would: it must render, without console errors.
Skips where Chromium is not installed (CI installs Debian's)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def assert_renders(page: Path, tmp_path: Path, height: int = 3000) -> Path:
    """Screenshot `page`; assert Chromium exits 0, draws something, and logs no console error."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (CI installs Debian's chromium)")
    shot = tmp_path / f"{page.stem}.png"
    run = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                          f"--screenshot={shot}", f"--window-size=1200,{height}", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 20_000
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    return shot
