"""The GPUs of this machine, as nvidia-smi names them: the harness never imports a framework."""
from __future__ import annotations

import subprocess


def gpu_names() -> list[str]:
    """GPUs named by nvidia-smi; none when it is missing or fails."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split(":", 1)[1].split("(")[0].strip() for line in out.stdout.splitlines() if line.startswith("GPU")]
