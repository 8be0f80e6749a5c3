"""What a suite runs: the default plan (every backend x dense/sparse x device, plus the two
baselines), `--quick`, or a TOML file of sweeps over any setting (the book's exercises 3, 4)."""
from __future__ import annotations

import itertools
import os
import tomllib
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path

from backends.registry import BACKENDS, info, refusal, tox_env
from bench.executing.gpus import Gpu
from bench.reporting.limit import LIMIT_BACKEND
from common.corpora import spec_fields
from common.errors import BenchError
from common.spec import BASELINES, DataSpec, RunSpec

# The default suite's backends: the four frameworks and the fused limit row they are read against.
FRAMEWORKS = ("torch", "mxnet", "tensorflow", "jax", "fused")
QUICK = {"epochs": 1, "max_steps": 150}
MAX_READABLE = 120  # a run name's readable part: with the key and a log's suffixes, well under 255 bytes
MAX_NAME_BYTES = MAX_READABLE + 9  # the readable part, "_" and 8 digits of the key
# What a suite file may be: far above any real one (the shipped ones are under 2 KiB, nested 4
# deep: file, [[runs]], a table, a list of values), far below what a parser's recursion survives.
SUITE_FILE_BYTES = 1 << 20
SUITE_DEPTH = 8
# Integers this large are refused as such (below it each setting's own check names its range).
SUITE_INTEGER_BOUND = 10 ** 40
_RUN_FIELDS = {f.name for f in fields(RunSpec)} - {"data"}
_DATA_FIELDS = {f.name for f in fields(DataSpec)} - {"corpus_path"}  # a file's path comes with its `corpus`


@dataclass(frozen=True)
class PlannedRun:
    name: str
    spec: RunSpec
    skip: str | None = None  # why this machine cannot run it (set at planning): recorded, never started

    @property
    def key(self) -> str:
        """The run's identity (the digest of its whole spec): results are matched by it."""
        return self.spec.key

    @property
    def env(self) -> str | None:
        """The tox env whose interpreter runs it; None: the harness's own (gensim lives there)."""
        if self.spec.runner == "gensim":
            return None
        return tox_env(self.spec.backend, self.spec.device)

    def to_dict(self) -> dict:
        return {"name": self.name, "key": self.key, "env": self.env, "spec": self.spec.to_dict(),
                **({"skip": self.skip} if self.skip else {})}

    @classmethod
    def from_dict(cls, entry: object) -> PlannedRun:
        """A stored plan entry, checked as data from someone else: its name a plain file name, its
        spec one the planner would make, its key that spec's digest (an edited or corrupt plan)."""
        if not isinstance(entry, dict) or not isinstance(entry.get("spec"), dict):
            raise BenchError("a plan entry is not an object with a spec")
        name = check_run_name(entry.get("name"))
        skip = entry.get("skip")
        if skip is not None and not isinstance(skip, str):
            raise BenchError(f"plan entry {name!r}: skip must be a string")
        run = cls(name, check_backend(RunSpec.from_dict(entry["spec"]), f"plan entry {name!r}"), skip)
        if run.key != entry.get("key"):
            raise BenchError(f"plan entry {name!r} does not match its key")
        return run


def check_run_name(name: object) -> str:
    """A run's name is its result's file name in runs/ (and its logs'): a plain name of this
    folder, never a path out of it, a hidden file or one the file system cannot hold."""
    plain = isinstance(name, str) and name and not name.startswith(".") and "/" not in name and \
        ".." not in name and name.isprintable() and len(name.encode()) <= MAX_NAME_BYTES
    if not (isinstance(name, str) and plain):
        raise BenchError(f"run name {name!r} is not a plain file name (no '/', no '..', no leading dot, "
                         f"printable, at most {MAX_NAME_BYTES} bytes)")
    return name


def check_backend(spec: RunSpec, where: str) -> RunSpec:
    """A backend run names a backend of the registry (a baseline's backend is only a label) and
    asks only for variants and layouts the registry declares it has: one line before anything runs."""
    if spec.runner in BASELINES:
        return spec
    if spec.backend not in BACKENDS:
        raise BenchError(f"{where}: unknown backend {spec.backend!r}; available: {', '.join(BACKENDS)}")
    reason = refusal(spec)
    if reason is not None:
        raise BenchError(f"{where}: {reason}")
    return spec


def planned(spec: RunSpec) -> PlannedRun:
    return PlannedRun(run_name(spec), spec)


def parse_names(value: str, allowed: tuple[str, ...], what: str, prefixes: tuple[str, ...] = ()) -> list[str]:
    """A comma-separated option (--backends, --devices): each name allowed, or starting with one of `prefixes`."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    wrong = [n for n in names if n not in allowed and not n.startswith(prefixes)]
    if wrong or not names:
        raise BenchError(f"unknown {what} {', '.join(wrong) or repr(value)}; available: {', '.join(allowed)}")
    return names


def new_results_dir(prefix: str = "") -> Path:
    """reports/<prefix><UTC time>: one folder per suite or micro-benchmark run."""
    return Path("reports") / f"{prefix}{datetime.now(UTC):%Y%m%d-%H%M%S}"


def make_spec(settings: dict, where: str) -> RunSpec:
    """A RunSpec from flat settings (run and data fields mixed), with errors naming `where`."""
    unknown = set(settings) - _RUN_FIELDS - _DATA_FIELDS
    if unknown:
        raise BenchError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(_RUN_FIELDS | _DATA_FIELDS))}")
    try:
        if isinstance(settings.get("corpus"), str):  # a path is digested here, once per sweep value
            settings = {**settings, **spec_fields(settings["corpus"])}
        data = DataSpec(**{k: v for k, v in settings.items() if k in _DATA_FIELDS | {"corpus_path"}})
        return RunSpec(data=data, **{k: v for k, v in settings.items() if k in _RUN_FIELDS})
    except BenchError as exc:
        raise BenchError(f"{where}: {exc}") from None


def run_name(spec: RunSpec) -> str:
    """A readable, file-safe, unique name: the label, every setting that differs from the
    recipe's, then the first 8 digits of the key (names of two different specs never collide)."""
    default_run, default_data = RunSpec(backend=spec.backend), DataSpec()
    extras = [f"{k}-{getattr(spec, k)}" for k in sorted(_RUN_FIELDS - {"backend", "device", "sparse", "runner",
                                                                     "compile", "graph", "layout", "workers"})
              if getattr(spec, k) != getattr(default_run, k)]
    extras += [f"{k}-{_short(getattr(spec.data, k))}" for k in sorted(_DATA_FIELDS)
               if getattr(spec.data, k) != getattr(default_data, k)]
    label = spec.label.replace(" ", "-").replace(":", "")
    readable = "_".join([label] + extras)
    if len(readable) > MAX_READABLE:  # file names stop at 255 bytes; the key alone keeps it unique
        readable = label
    return f"{readable}_{spec.key[:8]}"


def _short(value: object) -> object:
    """A setting as a run name spells it: file-safe, a file corpus by the start of its digest."""
    if isinstance(value, str):
        return value.replace("sha256:", "file-")[:13].replace(":", "-") if value.startswith("sha256:") \
            else value.replace(":", "-")
    return value


DATA_PARALLEL_BACKEND = "torch"  # the default suite's data-parallel pair: the cheapest engine to start


def default_plan(backends: list[str], devices: list[str], base: dict, baselines: bool = True) -> list[PlannedRun]:
    """Every backend x {dense, sparse} x device, each also compiled where the backend has a
    compiler (torch.compile, XLA: a framework's best mode may be its compiled sparse step), dense
    graphed on cuda where it can capture CUDA graphs, plus the recipe loop and gensim. A backend
    that trains packed runs these on the packed layout, and its dense step on the recipe's padded
    rows too (what padding costs); the limit row runs packed only (it never computes padding)."""
    variants = [{"sparse": False}, {"sparse": True}, {"sparse": False, "compile": True},
                {"sparse": True, "compile": True}, {"sparse": False, "graph": True}]

    def layouts(backend: str, variant: dict) -> list[str]:
        if "packed" not in info(backend).layouts:
            return ["padded"]
        padded_too = backend != LIMIT_BACKEND and variant == {"sparse": False}
        return ["padded", "packed"] if padded_too else ["packed"]

    specs = [make_spec({**base, "backend": b, "device": d, **v, "layout": layout}, "default suite")
             for d in devices for b in backends for v in variants
             if (info(b).sparse or not v["sparse"]) and (info(b).compile or not v.get("compile"))
             and (not v.get("graph") or (info(b).graph and d.startswith("cuda")))
             for layout in layouts(b, v)]
    # What sparse gradients save across workers, answered by the default suite too: torch's dense and
    # sparse packed steps on DDP over 2 ranks, beside their one-process twins above (CPU: its engine's).
    specs += [make_spec({**base, "backend": DATA_PARALLEL_BACKEND, "sparse": sparse, "layout": "packed",
                         "workers": 2}, "default suite")
              for sparse in (False, True) if DATA_PARALLEL_BACKEND in backends and "cpu" in devices]
    if baselines:
        specs.append(make_spec({**base, "backend": "torch", "runner": "recipe-loop"}, "default suite"))
        specs.append(make_spec({**base, "backend": "torch", "runner": "gensim",
                                "max_steps": None}, "default suite"))
    return [planned(s) for s in specs]


def read_suite_toml(path: Path) -> dict:
    """A suite file's TOML, read as input from anyone: at most SUITE_FILE_BYTES, nested at most
    SUITE_DEPTH deep, its integers under 40 digits (no setting comes near: a 5000-digit one is a
    typo or an attack, not a sweep; smaller ones meet each setting's own range check). Each
    refusal is one line naming the file and the fix."""
    try:
        with open(path, "rb") as f:
            data = f.read(SUITE_FILE_BYTES + 1)
    except FileNotFoundError:
        raise BenchError(f"suite file {path} not found") from None
    except OSError as exc:
        raise BenchError(f"suite file {path} cannot be read ({os.strerror(exc.errno or 0).lower()})") from None
    if len(data) > SUITE_FILE_BYTES:
        raise BenchError(f"suite file {path} is over {SUITE_FILE_BYTES >> 10} KiB; a suite is a few settings and "
                         f"sweeps: name the right file")
    too_deep = BenchError(f"suite file {path} nests tables or lists more than {SUITE_DEPTH} deep; a suite is "
                          f"[base] and [[runs]] tables of settings and lists of values: flatten it")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except RecursionError:
        raise too_deep from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BenchError(f"suite file {path} is not valid TOML ({exc})") from None
    except ValueError as exc:  # an integer past Python's 4300-digit limit
        raise BenchError(f"suite file {path} holds a number no setting can take ({str(exc).split(';')[0]}): "
                         f"use values below 2^63") from None
    todo: list[tuple[object, int]] = [(doc, 1)]
    while todo:
        value, depth = todo.pop()
        if depth > SUITE_DEPTH:
            raise too_deep
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= SUITE_INTEGER_BOUND:
            raise BenchError(f"suite file {path} holds the integer {str(value)[:20]}... ({len(str(abs(value)))} "
                             f"digits), beyond any setting's range: use values below 2^63")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        todo.extend((child, depth + 1) for child in children)
    return doc


def load_suite_file(path: Path, overrides: dict) -> list[PlannedRun]:
    """[base] holds settings for every run; each [[runs]] table is a sweep whose lists are crossed.
    `overrides` (the command line's --quick, --epochs, --max-steps) win over the file: a user who
    types `--epochs 1` means every run, not only those the file leaves unset."""
    doc = read_suite_toml(path)
    unknown = set(doc) - {"base", "runs"}
    if unknown or not isinstance(doc.get("runs"), list) or not doc["runs"] or not isinstance(doc.get("base", {}), dict):
        raise BenchError(f"suite file {path}: expected an optional [base] table and one or more [[runs]] tables"
                         + (f", found {', '.join(sorted(unknown))}" if unknown else ""))
    common = doc.get("base", {})
    unknown = set(common) - _RUN_FIELDS - _DATA_FIELDS
    if unknown:  # named here, not as the first [[runs]] table's
        raise BenchError(f"suite file {path}, [base]: unknown setting(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(_RUN_FIELDS | _DATA_FIELDS))}")
    plan: dict[str, PlannedRun] = {}
    for i, sweep in enumerate(doc["runs"], start=1):
        where = f"suite file {path}, [[runs]] #{i}"
        axes = {k: v if isinstance(v, list) else [v] for k, v in sweep.items()}
        if "backend" not in axes:
            raise BenchError(f"{where} names no backend")
        empty = [k for k, v in axes.items() if not v]
        if empty:
            raise BenchError(f"{where}: {', '.join(empty)} is an empty list, which would plan no run; "
                             f"give it at least one value")
        for values in itertools.product(*axes.values()):
            spec = check_backend(make_spec({**common, **dict(zip(axes, values)), **overrides}, where), where)
            plan.setdefault(spec.key, planned(spec))  # the same spec twice is one run
    return list(plan.values())



def gpu_of(device: str, found: list[Gpu]) -> Gpu:
    """The GPU a cuda device names, or an error before anything is made: a suite that asks for a
    GPU this machine lacks would otherwise run nothing but failures."""
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if not found:
        raise BenchError(f"device {device} asked for, but nvidia-smi sees no GPU on this machine; "
                         f"run on cpu (--devices cpu), or on a machine with an NVIDIA GPU and its driver")
    if index >= len(found):
        raise BenchError(f"device {device} asked for, but this machine has {len(found)} GPU(s): cuda:0 to "
                         f"cuda:{len(found) - 1}")
    return found[index]


def skip_reason(spec: RunSpec, found: list[Gpu]) -> str | None:
    """Why `spec` cannot run on the GPU it names here (registry facts, not backend names), if so."""
    if not spec.device.startswith("cuda") or spec.runner in BASELINES:
        return None
    gpu, entry = gpu_of(spec.device, found), info(spec.backend)
    if entry.cuda_env is None:
        return f"{spec.backend} has no GPU build"
    newest, have = entry.max_compute_capability, gpu.compute_capability
    if newest is not None and have is not None and have > newest:
        return (f"{spec.backend}'s GPU build has kernels up to compute capability {newest[0]}.{newest[1]} and no PTX; "
                f"{gpu.name} ({spec.device}) is {gpu.capability_text}")
    return None


def for_machine(plan: list[PlannedRun], found: list[Gpu]) -> list[PlannedRun]:
    """The plan with each run this machine's GPUs cannot serve marked skipped, saying why; an
    error if a run names a GPU the machine does not have."""
    return [replace(run, skip=skip_reason(run.spec, found)) for run in plan]
