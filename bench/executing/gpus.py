"""The GPUs of this machine, as nvidia-smi names them: the harness never imports a framework.

Planning needs each GPU's compute capability (a framework's wheel carries kernels for a range
of them: MXNet 1.9.1's newest GPU build stops at 8.6), so nvidia-smi is asked for name and
compute capability together. Frameworks number only the GPUs CUDA_VISIBLE_DEVICES leaves
them, so the list is narrowed the same way: cuda:N here is the framework's cuda:N.
"""
from __future__ import annotations

import os
import subprocess
from typing import NamedTuple

QUERY = ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"]


class Gpu(NamedTuple):
    name: str
    compute_capability: tuple[int, int] | None  # (9, 0) for an H100; None when nvidia-smi cannot say

    @property
    def capability_text(self) -> str:
        if self.compute_capability is None:
            return "unknown"
        major, minor = self.compute_capability
        return f"{major}.{minor}"


def parse(output: str) -> list[Gpu]:
    """nvidia-smi's CSV lines, e.g. "NVIDIA H100 80GB HBM3, 9.0", as Gpus."""
    found = []
    for line in output.splitlines():
        if not line.strip():
            continue
        name, _, capability = line.rpartition(",")
        major, _, minor = capability.strip().partition(".")
        known = major.isdigit() and minor.isdigit()
        found.append(Gpu((name or capability).strip(), (int(major), int(minor)) if known else None))
    return found


def visible(found: list[Gpu], setting: str | None) -> list[Gpu]:
    """The GPUs CUDA_VISIBLE_DEVICES leaves to a framework, in its order (integer indices; any
    other form, such as UUIDs, is left to the framework and the list is kept whole)."""
    if setting is None:
        return found
    items = [item.strip() for item in setting.split(",") if item.strip()]
    if not all(item.lstrip("-").isdigit() for item in items):
        return found
    chosen = []
    for item in items:  # CUDA stops at the first invalid index
        if not 0 <= int(item) < len(found):
            break
        chosen.append(found[int(item)])
    return chosen


def gpus() -> list[Gpu]:
    """The GPUs a framework would see here; none when nvidia-smi is missing or fails."""
    try:
        out = subprocess.run(QUERY, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return visible(parse(out.stdout), os.environ.get("CUDA_VISIBLE_DEVICES"))


def gpu_names() -> list[str]:
    """GPU names with compute capability, for suite.json's machine record."""
    return [f"{g.name} (compute capability {g.capability_text})" for g in gpus()]
