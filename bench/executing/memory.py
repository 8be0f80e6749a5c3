"""A run's memory, estimated before it starts, against what this machine has; and the kernel's word
when its OOM killer ended one anyway.

The estimate (README "Memory") is a sum of what a run holds at its peak, in bytes, for V words,
E dimensions, batch size B, row length L, S steps per epoch (max_steps caps it) and float32 tables:

    tables      2 V E 4                  center and context embeddings
    optimiser   adam: 2 x tables         m and v (lazy Adam keeps them whole too); sgd: none
    gradients   dense: 2 x tables        a full-size gradient per table and the update's temporaries
                sparse: 2 B (1+L) E 4    the rows one step touches, gradient and update
    batches     S B (8 + 18 L)           the epoch's batches as numpy (4 + 6L a row) and, converted
                                         by the backend, as int32/float32 tensors (4 + 12L)
    draw        kept x 24                the epoch's subsampled tokens: positions, shuffle keys, order
    row cache   S B (5 + 4 L)            pages of the memory-mapped row table the epoch reads
    working     m 2 B L E 4              one step's working memory: the B x L gathered rows and their
                                         gradients, times the framework's measured multiple m
                                         (WORKING_MULTIPLE; torch dense 3.9: autograd keeps several)
    evaluation  5 V E 4                  at the end, with all the above still held: the center table
                                         copied out, then as float64 and normalised (common/evaluate);
                                         it also covers the start's peak, one table's float64 draws
                                         (3 V E 8) before any optimiser state exists
    runtime     RUNTIME_BYTES            interpreter, framework and allocator pools, measured

A plan marks a run whose estimate exceeds the memory available to it (MemAvailable, or where it is
lower, the cgroup's limit less its usage plus the page cache it holds, which the kernel reclaims
before it kills anyone: MemAvailable's rule, applied to the cgroup) as skipped, with both figures,
so the suite never starts a run the OOM killer would end halfway through the others.
"""
from __future__ import annotations

import math
import signal
import sys
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench.executing.suite import PlannedRun
from common import corpora
from common.errors import BenchError
from common.spec import DataSpec, RunSpec

# The peak RSS of a 20-step PTB run of each backend (tables, optimiser and data under 60 MB there),
# measured with /usr/bin/time on the 2-core VM at 4dc4ae5 (numpy 213, torch 519, mxnet 279,
# tensorflow 738, jax 534, fused 321 MiB), rounded up to the next 100 MiB: what each process holds
# besides the terms above. A runner not measured (gensim) is given the largest. (It counts PTB's
# own tables and batches twice, so it errs high: at batch 1024 the estimate is 1.2-2x the peak.)
RUNTIME_BYTES = {"numpy": 300 << 20, "torch": 600 << 20, "mxnet": 300 << 20, "tensorflow": 800 << 20,
                 "jax": 600 << 20, "fused": 400 << 20}
# One step's working memory in units of its gathered rows and their gradients (2 B L E 4 bytes:
# autograd's saved activations, the framework's temporaries), per backend and sparse or not.
# Measured (README "Memory"): peak RSS (the result's timings.peak_rss_bytes) of 20-step PTB runs
# at batch sizes 1024, 4096, 16384 dense and 1024, 16384 sparse, each in its own env on the 2-core
# VM (`python -m bench train --backend B [--sparse] --max-steps 20 --batch-size N`, from 675fcd7):
# the slope of the peak in batch size between 1024 and 16384, less the slope of the terms above
# that already grow with it, in those units, rounded up to 0.1. A negative one (the backend holds
# less than those terms count: fused streams its batches) is 0, never planned lower.
WORKING_MULTIPLE = {("numpy", False): 2.7, ("numpy", True): 1.7, ("torch", False): 3.9, ("torch", True): 1.8,
                    ("mxnet", False): 1.0, ("mxnet", True): 0.0, ("tensorflow", False): 0.9,
                    ("tensorflow", True): 0.0, ("jax", False): 0.8, ("jax", True): 0.0,
                    ("fused", False): 0.0, ("fused", True): 0.0}
_FLOAT = 4


class Facts(NamedTuple):
    """What the estimate needs from a corpus at one min_freq and subsample threshold."""

    vocab: int      # V, <unk> included
    kept: float     # tokens left after subsampling (the epoch's examples), expected


def estimate(spec: RunSpec, facts: Facts) -> dict[str, int]:
    """Bytes per term of the module docstring's formula, and their `total`."""
    d = spec.data
    table = 2 * facts.vocab * d.embed * _FLOAT
    steps = max(1, math.ceil(facts.kept / d.batch_size))
    steps = min(steps, spec.max_steps) if spec.max_steps else steps
    rows = steps * d.batch_size
    terms = {
        "tables": table,
        "optimiser": 2 * table if spec.optimizer == "adam" else 0,
        "gradients": 2 * d.batch_size * (1 + d.row_length) * d.embed * _FLOAT if spec.sparse else 2 * table,
        "batches": rows * (8 + 18 * d.row_length),
        "draw": int(facts.kept * 24),
        "row cache": rows * (5 + 4 * d.row_length),
        "working": int(WORKING_MULTIPLE.get((spec.backend, spec.sparse), max(WORKING_MULTIPLE.values()))
                       * 2 * d.batch_size * d.row_length * d.embed * _FLOAT),
        "evaluation": 5 * facts.vocab * d.embed * _FLOAT,
        "runtime": RUNTIME_BYTES.get(spec.backend if spec.runner != "gensim" else spec.runner,
                                     max(RUNTIME_BYTES.values())),
    }
    return {**terms, "total": sum(terms.values())}


def kept_tokens(counts: np.ndarray, threshold: float) -> float:
    """Expected tokens surviving the recipe's subsampling, for in-vocabulary counts (no <unk>):
    a word of count c is kept with probability min(1, sqrt(threshold * total / c))."""
    c = counts[counts > 0].astype(np.float64)
    return float(np.minimum(c, np.sqrt(threshold * c.sum() * c)).sum())


def zipf_kept_tokens(zipf: corpora.Zipf, min_freq: int, threshold: float) -> float:
    """kept_tokens of a generated corpus's expected counts of at least `min_freq` (a prefix of
    its ranks: counts fall with rank), a block at a time: two passes, one block's memory."""
    prefix = min(zipf.words, int(zipf.tokens / corpora.harmonic(zipf.words) / min_freq))
    total = math.fsum(float(c.sum()) for c in zipf.expected_counts(prefix))
    return math.fsum(float(np.minimum(c, np.sqrt(threshold * total * c)).sum()) for c in zipf.expected_counts(prefix))


def corpus_facts(data: DataSpec, data_dir: str | None, download: bool) -> Facts:
    """V and the expected epoch for a data spec: counted from the tokenised corpus (PTB, a file),
    or, for a generated corpus not made yet, from the generator's expected counts (planning
    a 100M-token corpus must not first take minutes generating it). A corpus that leaves no
    word at this min_freq is an error now, before anything is made. A harness without the memory
    to count a file corpus says so in one line."""
    try:
        return _facts(data.corpus, data.corpus_path, data.min_freq, data.subsample, data_dir, download)
    except MemoryError:
        raise BenchError(f"the harness ran out of memory planning corpus "
                         f"{corpora.describe(data.corpus, data.corpus_path)} (its tokens are counted before any "
                         f"run starts): give the harness more memory, or plan a smaller corpus") from None


@lru_cache(maxsize=64)  # only these fields matter: a sweep over seeds or batch sizes counts once
def _facts(corpus: str, corpus_path: str | None, min_freq: int, subsample: float, data_dir: str | None,
           download: bool) -> Facts:
    from common.corpus import build_vocab

    if corpus.startswith("zipf:"):
        zipf = corpora.parse_zipf(corpus)
        vocab, _ = corpora.expected_vocab(zipf, min_freq)
        facts = Facts(round(vocab), zipf_kept_tokens(zipf, min_freq, subsample))
    else:
        words, _ = build_vocab(corpora.load(corpus, corpus_path, data_dir, download), min_freq)
        facts = Facts(len(words), kept_tokens(words.counts[1:], subsample))
    if facts.vocab < 2:
        raise BenchError(f"corpus {corpus} leaves no word at min_freq {min_freq} (only <unk>), so it yields "
                         f"no training example: lower min_freq or use a larger corpus")
    return facts


def for_memory(plan: list[PlannedRun], data_dir: str | None, download: bool = True,
               memory: tuple[int, int] | None = None) -> list[PlannedRun]:
    """The plan with each run that cannot fit this machine's memory marked skipped (estimate and
    machine's figures in the reason); runs already skipped keep their reason."""
    memory = machine_memory() if memory is None else memory
    if memory is None and any(not run.skip for run in plan):  # not Linux: say so rather than plan blind
        print(f"warning: this machine's memory cannot be read ({MEMINFO}): no run is checked against it",
              file=sys.stderr)
    return [run if run.skip else replace(run, skip=fit_reason(run.spec, corpus_facts(run.spec.data, data_dir, download),
                                                              memory)) for run in plan]


# --- what the machine has ---------------------------------------------------------------------

MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")  # where cgroup file systems are mounted
PROC_CGROUP = Path("/proc/self/cgroup")  # which cgroup this process is in
# Each version's files: (its folder under CGROUP, limit, usage, events with the kill counter).
_V2 = ("", "memory.max", "memory.current", "memory.events")
_V1 = ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "memory.oom_control")
# memory.stat's page cache the usage counts and reclaim can take back (file pages, inactive and
# active, as MemAvailable counts them): v2's own, v1's `total_` ones (the subtree, as its usage is).
STAT_FILE = "memory.stat"
_RECLAIMABLE = {_V2: ("inactive_file", "active_file"), _V1: ("total_inactive_file", "total_active_file")}


def _meminfo() -> dict[str, int]:
    try:
        lines = MEMINFO.read_text().splitlines()
    except OSError:
        return {}
    return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines if line.split()[1:2] != []}


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _reclaimable(folder: Path, version: tuple[str, str, str, str]) -> int:
    """Bytes of page cache `folder`'s usage includes that the kernel reclaims before an OOM kill
    (0 where memory.stat cannot be read: the usage is then taken as it is, erring low)."""
    try:
        lines = (folder / STAT_FILE).read_text().splitlines()
    except OSError:
        return 0
    values = dict(line.split(" ", 1) for line in lines if " " in line)
    return sum(int(values[name]) for name in _RECLAIMABLE[version] if values.get(name, "").strip().isdigit())


def own_cgroups() -> list[tuple[Path, tuple[str, str, str, str]]]:
    """This process's memory cgroup folders, its own first, then each ancestor up to the root
    (a limit set on any of them binds it: a Slurm job's, `systemd-run -p MemoryMax=`'s), with
    the version's file names. From /proc/self/cgroup: v2's `0::PATH`, v1's `N:...memory...:PATH`;
    where that cannot be read, the mount's root alone (as inside a container's namespace)."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        lines = []
    found = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        version = _V1 if "memory" in controllers.split(",") else _V2 if hierarchy == "0" and not controllers else None
        if version is not None:
            found.append((version, path))
    found.sort(key=lambda item: item[0] is _V2)  # v1's memory controller first where both are named
    if not found:
        found = [(_V2, "/"), (_V1, "/")]
    folders = []
    for version, path in found:
        base = CGROUP / version[0] if version[0] else CGROUP
        own = base / path.lstrip("/")
        for folder in (own, *own.parents):
            if folder == base or base in folder.parents:
                folders.append((folder, version))
    return folders


def machine_memory() -> tuple[int, int] | None:
    """(available, total) bytes for a new process here: the kernel's MemAvailable and MemTotal,
    lowered to the tightest memory limit of this process's own cgroup or any ancestor (v2
    memory.max, v1 memory.limit_in_bytes) and that cgroup's headroom (the limit less its usage,
    plus the reclaimable page cache that usage counts, at most the limit); None where /proc/meminfo
    cannot be read (not Linux), in which case nothing is skipped. On a Dask node it is the
    node's worker process that asks, so its own cgroup is the one read."""
    info = _meminfo()
    if "MemAvailable" not in info:
        return None
    available, total = info["MemAvailable"], info["MemTotal"]
    for folder, version in own_cgroups():
        limit, usage = _read_int(folder / version[1]), _read_int(folder / version[2])
        if limit is not None and limit < total:
            total = limit
        if limit is not None and limit < info["MemTotal"]:
            available = min(available, limit - max(0, (usage or 0) - _reclaimable(folder, version)))
    return max(available, 0), total


def fit_reason(spec: RunSpec, facts: Facts, memory: tuple[int, int] | None) -> str | None:
    """Why `spec` cannot fit this machine's memory, with the estimate and the machine's figures; None if it fits."""
    if memory is None:
        return None
    terms = estimate(spec, facts)
    if terms["total"] <= memory[0]:
        return None
    big = ", ".join(f"{name} {gib(b)}" for name, b in sorted(terms.items(), key=lambda t: -t[1])[1:4])
    return (f"needs about {gib(terms['total'])} of memory (V {facts.vocab:,}: {big}); this machine has "
            f"{gib(memory[0])} available of {gib(memory[1])}")


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GiB"


# --- the OOM killer's evidence ----------------------------------------------------------------

def oom_kills() -> int | None:
    """How many processes the OOM killer has ended in this process's own memory cgroup (v2
    memory.events or v1 memory.oom_control `oom_kill`, counting its whole subtree, so a worker
    it starts is counted whichever ancestor's limit was hit); None where no counter can be read."""
    for folder, (_, _, _, events) in own_cgroups():
        try:
            for line in (folder / events).read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "oom_kill" and value.strip().isdigit():
                    return int(value)
        except OSError:
            continue
    return None


def out_of_memory(returncode: int | None, kills_before: int | None, kills_after: int | None) -> str | None:
    """The error of a worker the OOM killer ended: SIGKILL, and the cgroup's oom_kill counter rose
    while it ran (the kernel's own evidence); None for any other exit."""
    if returncode != -signal.SIGKILL or kills_before is None or kills_after is None or kills_after <= kills_before:
        return None
    return (f"out of memory: the kernel's OOM killer ended the worker (SIGKILL; the memory cgroup's oom_kill "
            f"count went from {kills_before} to {kills_after}); the plan's estimate was too low for this run")
