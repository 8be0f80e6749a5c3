"""The result record and the suite record (suite.json), declared once: every field a command,
executor or page reads, with the type the suite writes it in.

Readers validate a whole file against these types (msgspec, strict: no bool for a number, no
string for a rate) before any page, `compare`, `history` or `--resume` looks at it, so that their
code can trust what it reads. Every field added after the first results were stored is optional
with a default, and a field the suite no longer writes is still declared: a results folder written
by an older commit loads as it did. Unknown fields are kept, not refused (a newer suite's extra
field is someone else's to read): to add one, declare it here as an
optional field with a default.
"""
from __future__ import annotations

import json
from typing import Annotated, Any

import msgspec

from common.spec import RunSpec

SCHEMA = 1  # the result record's version, written into every result

# How a run ended. ok, noisy: trained and measured (noisy: --require-quiet found the machine busy);
# diverged: trained until its loss blew up; skipped: planned, never started (the machine cannot
# serve it); failed, timed_out: no result of its own (the error says why).
STATUSES = ("ok", "noisy", "diverged", "skipped", "failed", "timed_out")  # what the suite writes
MEASURED = ("ok", "noisy")  # finished runs whose rates and losses the pages show
CONCLUDED = ("ok", "diverged", "noisy", "skipped")  # a result of the spec (or why none can be had): kept on resume
RETRYABLE = ("failed", "timed_out")  # kept too, unless --retry-failed
SKIPPED = "skipped"
NEEDS_ERROR = ("noisy", "diverged", "skipped", "failed", "timed_out")  # a record that must say why
TRAINED = ("ok", "noisy", "diverged")  # a record of training: it has its losses

_MAX_FLOAT = 1.7976931348623157e308
Rate = Annotated[float, msgspec.Meta(gt=0, le=_MAX_FLOAT)]  # examples/s: positive and finite
Seconds = Annotated[float, msgspec.Meta(ge=0, le=_MAX_FLOAT)]
Finite = Annotated[float, msgspec.Meta(ge=-_MAX_FLOAT, le=_MAX_FLOAT)]  # NaN fails both bounds
Count = Annotated[int, msgspec.Meta(ge=0, le=2 ** 63 - 1)]
# No run the suite can train has more words: an embedding table of 2^40 rows is petabytes.
VocabSize = Annotated[int, msgspec.Meta(ge=1, le=2 ** 40)]
Scalar = str | int | float | bool | None  # shown as text


class Quality(msgspec.Struct):
    """One word-pair benchmark's score (NaN where no question could be asked)."""

    spearman: float | None = None
    accuracy: float | None = None
    pairs: Count | None = None
    questions: Count | None = None
    total: Count | None = None


class Evaluation(msgspec.Struct):
    wordsim353: Quality | None = None
    simlex999: Quality | None = None
    analogy: Quality | None = None
    skipped: str | None = None  # why none was scored (the word-pair files were not found)


class Timings(msgspec.Struct):
    load_seconds: Seconds | None = None
    data_seconds: Seconds | None = None
    prepare_seconds: Seconds | None = None
    train_seconds: Seconds | None = None
    first_step_seconds: Seconds | None = None
    compile_seconds: Seconds | None = None
    peak_memory_bytes: Count | None = None
    peak_rss_bytes: Count | None = None


class MachineLoad(msgspec.Struct):
    other_cpu_fraction: Finite | None = None
    loadavg_before: Finite | None = None
    loadavg_after: Finite | None = None
    other_cpu_seconds: Finite | None = None
    own_cpu_seconds: Finite | None = None
    steal_fraction: Finite | None = None
    wall_seconds: Seconds | None = None
    cores: Count | None = None


class Env(msgspec.Struct):
    """Where a run was measured (common.machine.machine_info and the backend's own)."""

    device_name: Scalar = None
    hostname: Scalar = None
    cpu: Scalar = None
    cpu_count: Scalar = None
    python: Scalar = None
    platform: Scalar = None
    code: Scalar = None
    device: Scalar = None
    backend: Scalar = None
    versions: dict[str, Scalar] | None = None
    threads_env: dict[str, Scalar] | None = None


Positive = Annotated[int, msgspec.Meta(ge=1, le=2 ** 63 - 1)]


class MachineProbe(msgspec.Struct):
    """A machine probe (common/probe.py): bandwidth at each working-set size and the peak FLOP
    rate, or why there is none (`error`). Every run's bound is read from it, so a crafted one is
    refused here like any other stored field: sizes and rates positive numbers, one bandwidth a
    size, sizes increasing."""

    schema: int | None = None
    method: str | None = None
    threads: Count | None = None
    sizes: list[Positive] = []
    bandwidth: list[Rate] = []
    kernels: dict[str, list[dict[str, Finite]]] | None = None
    peak_flops: Rate | None = None
    peak_flops_spread: dict[str, Finite] | None = None
    seconds: Seconds | None = None
    caches: dict[str, Count] | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.error is not None:
            return
        if not self.sizes or self.peak_flops is None:
            raise ValueError("a probe without an error must have its sizes, bandwidth and peak_flops")
        if len(self.bandwidth) != len(self.sizes):
            raise ValueError(f"a probe has one bandwidth a size, and this one has {len(self.bandwidth)} for "
                             f"{len(self.sizes)} sizes")
        if any(a >= b for a, b in zip(self.sizes, self.sizes[1:])):
            raise ValueError("a probe's sizes increase, and these do not")


class Roofline(msgspec.Struct):
    """A run's bound from the machine (common/roofline.py): the cost model's bytes and FLOPs a step,
    the probe's bandwidth at its working set and peak FLOP rate, and the examples/s they allow
    (null figures, with `unavailable` saying why, where the machine could not be probed)."""

    bytes_per_step: Rate | None = None
    flops_per_step: Rate | None = None
    bandwidth_bytes_per_s: Rate | None = None
    peak_flops_per_s: Rate | None = None
    bound_examples_per_s: Rate | None = None
    working_set_bytes: Rate | None = None
    bound_by: str | None = None
    update: str | None = None
    layout: str | None = None
    stats: dict[str, Finite] | None = None  # examples, row_length, slots, center_rows, context_rows, batches
    probe: MachineProbe | None = None  # the machine probe it was read against
    unavailable: str | None = None


class Collective(msgspec.Struct):
    """One collective of a data-parallel step as one rank took part in it (common.comm.Collective),
    averaged over the steps counted (common.comm.per_step)."""

    name: str
    kind: str   # common.comm.KINDS
    dtype: str  # common.comm.ITEM_BYTES
    elements: Annotated[float, msgspec.Meta(ge=0, le=_MAX_FLOAT)]
    bytes_sent: Annotated[float, msgspec.Meta(ge=0, le=_MAX_FLOAT)]


class Communication(msgspec.Struct):
    """What a data-parallel run's ranks communicated a step, and how the run was placed
    (bench/running/data_parallel.py): threads per rank, the cores the run was given, and whether
    it had more ranks than cores (oversubscribed: its times measure contention, not the engine)."""

    engine: str
    threads_per_rank: Annotated[int, msgspec.Meta(ge=1, le=2 ** 31)]
    cores: Annotated[int, msgspec.Meta(ge=1, le=2 ** 31)]
    oversubscribed: bool
    ranks: list[list[Collective]]  # by rank: its collectives, in the order of a step
    bytes_per_step: Annotated[float, msgspec.Meta(ge=0, le=_MAX_FLOAT)]  # mean over ranks of their bytes sent
    # by rank: the mean seconds a step spent in its collectives (the backend's communication_seconds);
    # None where its backend has no timer. Over the step time (train_seconds / steps): the comm share.
    seconds_per_step: list[Seconds | None] = []
    # slice size (examples, as text: a JSON key) -> the mean rows such a slice names, as
    # common.comm.SliceRows' four fields: what the modelled curves against N are drawn from
    slice_profile: dict[str, Annotated[list[Annotated[float, msgspec.Meta(ge=0, le=_MAX_FLOAT)]],
                                       msgspec.Meta(min_length=4, max_length=4)]] = {}

    def __post_init__(self) -> None:
        if not self.ranks:
            raise ValueError("a data-parallel run's communication must list its ranks")


class Result(msgspec.Struct):
    """One run's result file (runs/NAME.json): what the worker, the harness or an executor wrote."""

    status: str  # one of STATUSES; any other is shown as a run that did not finish, never counted
    spec: dict[str, Any]  # checked field by field by RunSpec where it is used (an invalid one is a corrupt row)
    schema: int | None = None
    error: str | None = None
    traceback: str | None = None
    note: str | None = None
    kind: str | None = None
    env: Env | None = None
    data_hash: str | None = None
    steps: Count | None = None
    examples: Count | None = None
    # Per step; a diverged run's last one is the loss that blew up (NaN or inf). Absent from records of
    # runs that never trained (UNSET: a trained run without them is refused, see __post_init__).
    losses: list[float] | msgspec.UnsetType = msgspec.UNSET
    epoch_losses: list[float] = []
    epoch_seconds: list[Seconds] = []
    final_loss: float | None = None
    timings: Timings | msgspec.UnsetType = msgspec.UNSET  # absent, or an object: never null
    machine_load: MachineLoad | None = None
    roofline: Roofline | None = None
    examples_per_sec: Rate | None = None
    segment_rates: list[Rate] = []
    rate_median: Rate | None = None
    rate_iqr: tuple[Rate, Rate] | None = None
    wall_seconds: Seconds | None = None
    vocab_size: VocabSize | None = None
    neighbours: dict[str, list[tuple[str, float]]] = {}
    evaluation: Evaluation | None = None
    executor: str | None = None
    host: str | None = None
    worker: str | None = None
    communication: Communication | None = None  # data-parallel runs (workers > 1) only

    def __post_init__(self) -> None:
        if self.status in NEEDS_ERROR and not self.error:
            raise ValueError(f"a {self.status} run must say why (error), and this one does not")
        if self.status in TRAINED and self.losses is msgspec.UNSET:
            article = "an" if self.status == "ok" else "a"
            raise ValueError(f"{article} {self.status} run must record its losses, and this one does not")


class PlanEntry(msgspec.Struct):
    """A planned run. Its name, spec and key are checked by PlannedRun.from_dict where a plan is
    run (`--resume`); a page only pairs results with it, so they are loosely typed here."""

    name: Scalar = None
    key: Scalar = None
    env: Scalar = None
    spec: Any = None
    skip: Scalar = None


class Machine(Env):
    gpus: list[Scalar] = []
    probe: MachineProbe | None = None  # the suite's machine probe, handed to every run


class Meta(msgspec.Struct):
    """suite.json: when, which commit and code, which machine, what command, what was planned."""

    created: Scalar = None
    commit: Scalar = None
    code: Scalar = None
    argv: list[Scalar] = []
    machine: Machine | None = None
    plan: list[PlanEntry] | None = None
    warning: Scalar = None


class Stats(msgspec.Struct):
    median: Annotated[float, msgspec.Meta(gt=0, le=_MAX_FLOAT)]


class BenchInfo(msgspec.Struct):
    """What the suite's micro-benchmarks (tests/microbench) record beside their timings."""

    stage: str | None = None
    backend: str | None = None
    variant: str | None = None
    vocab: VocabSize | None = None
    tokens: Count | None = None
    phase: str | None = None
    peak_rss_mib: Rate | None = None
    examples: Count | None = None

    def __post_init__(self) -> None:
        if self.stage == "scaling" and None in (self.tokens, self.phase, self.peak_rss_mib):
            raise ValueError("a scaling benchmark must record tokens, phase and peak_rss_mib")
        if (self.vocab is not None or (self.stage and self.backend)) and None in (self.backend, self.variant):
            raise ValueError("a step benchmark must record its backend and variant")


class Benchmark(msgspec.Struct):
    name: str
    stats: Stats
    group: str | None = None
    extra_info: BenchInfo = msgspec.field(default_factory=BenchInfo)


class MicrobenchFile(msgspec.Struct):
    """One env's pytest-benchmark JSON file (microbench/ENV.json)."""

    benchmarks: list[Benchmark]


def failed_result(spec: RunSpec, error: str, trace: str | None = None, status: str = "failed") -> dict:
    """The record of a run that produced none of its own (crashed, killed, skipped, cancelled)."""
    return {"schema": SCHEMA, "status": status, "error": error, "traceback": trace,
            "spec": spec.to_dict(), "losses": [], "epoch_losses": [], "epoch_seconds": []}


def settings_key(spec: dict, *ignore: str) -> str:
    """A spec as a comparable string without the `ignore`d fields (data fields as "data.NAME"):
    runs with equal keys differ only in those fields (a run's settings identity, for pairing)."""
    data_ignored = {name.removeprefix("data.") for name in ignore if name.startswith("data.")}
    kept = {k: v for k, v in spec.items() if k not in ignore}
    kept["data"] = {k: v for k, v in (spec.get("data") or {}).items() if k not in data_ignored}
    return json.dumps(kept, sort_keys=True)


def measured(results: list[dict], runner: str | None = "backend") -> list[dict]:
    """The finished runs with rates and losses to show (of `runner`, or of every runner with None)."""
    return [r for r in results if r["status"] in MEASURED and (runner is None or r["spec"]["runner"] == runner)]
