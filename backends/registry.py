"""Backend names -> implementations, imported only when asked for (each lives in its own env).

What the harness must know before it can import a framework (which env, whether a sparse
or compiled variant exists) is declared here, once: `Backend.capabilities()` reads it, adding
the devices the framework sees.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, NamedTuple

from common.errors import BenchError
from common.spec import RunSpec

if TYPE_CHECKING:  # base.py reads the registry's declarations: a runtime import would be a cycle
    from backends.base import Backend


class BackendInfo(NamedTuple):
    module: str
    cls: str
    env: str        # the tox env that can import it
    sparse: bool    # has a sparse-gradient variant
    compile: bool   # has a compiled variant
    cuda_env: str | None = None  # the tox env of its GPU build; None: it has none
    # Newest GPU its GPU build has kernels for (no PTX to JIT beyond it); None: no known limit.
    max_compute_capability: tuple[int, int] | None = None
    graph: bool = False  # has a variant that replays each step as one captured CUDA graph
    layouts: tuple[str, ...] = ("padded",)  # the batch layouts it trains on (common/packing.py)
    # Its data-parallel engine (docs/data-parallel.md), in words; None: it trains in one process only.
    engine: str | None = None
    # What that engine cannot run, each with why: a feature of the spec (FEATURES) or several
    # joined by "+" (all present), e.g. ("compile+sparse", "inductor refuses sparse embeddings").
    parallel_refusals: tuple[tuple[str, str], ...] = ()
    # How its engine's processes are started (bench/running/data_parallel.py, LAUNCHERS): torchrun,
    # tf_config (one process per TF_CONFIG task), jax (a coordinator address), dmlc (scheduler, server,
    # workers); None: no launch recipe.
    launcher: str | None = None


BACKENDS = {
    "numpy": BackendInfo("backends.reference", "NumpyBackend", "tests", sparse=True, compile=False),
    # The index's torch wheel on Linux is a CUDA build: one env serves both devices.
    "torch": BackendInfo("backends.pytorch", "TorchBackend", "torch", sparse=True, compile=True,
                         cuda_env="torch", graph=True, layouts=("padded", "packed"), launcher="torchrun",
                         engine="DistributedDataParallel on gloo (torchrun)",
                         parallel_refusals=(("cuda", "GPU data-parallel is not built here: NCCL has no sparse "
                                                     "allreduce, CUDA graphs would have to capture DDP's allreduce, "
                                                     "and no GPU run of it is measured (run the ranks on the CPU)"),)),
    # mxnet-cu117 1.9.1 ships sm_50-86 kernels and no PTX: no H100 / H200.
    "mxnet": BackendInfo("backends.mxnet", "MXNetBackend", "mxnet", sparse=True, compile=False,
                         cuda_env="mxnet-cuda", max_compute_capability=(8, 6), layouts=("padded", "packed"),
                         launcher="dmlc", engine="dist_sync kvstore (ps-lite parameter server)",
                         parallel_refusals=(("cuda", "its ranks' kvstore is wired for CPU arrays only (the GPU "
                                             "wheel's dist_device_sync path is untried: mxnet-cu117 has no kernels "
                                             "past sm_86)"),)),
    "tensorflow": BackendInfo("backends.tensorflow", "TensorFlowBackend", "tensorflow", sparse=True, compile=True,
                              cuda_env="tensorflow-cuda", layouts=("padded", "packed"), launcher="tf_config",
                              engine="MultiWorkerMirroredStrategy (ring collectives over gRPC)",
                              parallel_refusals=(
                                  ("compile", "XLA cannot compile the strategy's ring collectives (TF 2.21: "
                                              "CollectiveGatherV2 has no XLA_CPU_JIT kernel, CollectiveReduceV2 "
                                              "compiles only with the NCCL hint)"),
                                  ("cuda", "its workers are built for CPU replicas and ring collectives; "
                                           "GPU workers (NCCL) are not built"))),
    # JAX is always compiled (jit), so it has no separate compiled variant.
    # Data-parallel: one process and one CPU device a rank, gloo's ring allreduce and allgather.
    "jax": BackendInfo("backends.jax", "JaxBackend", "jax", sparse=True, compile=False, cuda_env="jax-cuda",
                       layouts=("padded", "packed"), engine="jax.distributed, gloo CPU collectives",
                       parallel_refusals=(("cuda", "its ranks run on one CPU device each with gloo's CPU "
                                                   "collectives; GPU ranks (NCCL) are not built"),),
                       launcher="jax"),
    # The limit row (one fused numba kernel of the step); no CUDA kernel yet, so cuda runs plan as skipped.
    "fused": BackendInfo("backends.fused", "FusedBackend", "fused", sparse=True, compile=False,
                         layouts=("padded", "packed")),
}


def info(name: str) -> BackendInfo:
    if name not in BACKENDS:
        raise BenchError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def features(spec: RunSpec) -> set[str]:
    """The names a refusal can be declared against: the variant, the layout, the optimiser, the device kind."""
    names = {spec.layout, spec.optimizer, "cuda" if spec.device.startswith("cuda") else "cpu"}
    names |= {name for name, on in (("sparse", spec.sparse), ("dense", not spec.sparse), ("compile", spec.compile),
                                    ("graph", spec.graph)) if on}
    return names


def refusal(spec: RunSpec) -> str | None:
    """The one-line reason `spec.backend` cannot run `spec` as declared here (variant, layout,
    data-parallel engine), or None: planning and the backend itself ask this one function."""
    entry = info(spec.backend)
    lacking = [(spec.sparse and not entry.sparse, "no sparse-gradient variant (drop sparse)"),
               (spec.compile and not entry.compile, "no compiled variant (drop compile)"),
               (spec.graph and not entry.graph, "no CUDA-graph variant (drop graph)"),
               (spec.layout not in entry.layouts,
                f"no {spec.layout} layout (it trains on: {', '.join(entry.layouts)})"),
               (spec.workers > 1 and (entry.engine is None or entry.launcher is None),
                "no data-parallel engine (drop workers)")]
    for missing, what in lacking:
        if missing:
            return f"{spec.backend} has {what}"
    if spec.workers > 1:
        have = features(spec)
        for feature, why in entry.parallel_refusals:
            if set(feature.split("+")) <= have:
                return f"{spec.backend} cannot run {feature.replace('+', ' + ')} on {spec.workers} workers: {why}"
    return None


def tox_env(name: str, device: str = "cpu") -> str:
    """The tox env whose interpreter can run backend `name` on `device`: its GPU env for cuda
    (its CPU env where it has no GPU build: the run then fails saying the device is missing)."""
    entry = info(name)
    return (entry.cuda_env or entry.env) if device.startswith("cuda") else entry.env


def load(name: str) -> type[Backend]:
    """The backend class, or a BenchError saying why its framework cannot be imported here."""
    entry = info(name)
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        raise BenchError(f"backend {name!r} cannot be imported in this env ({exc}); "
                         f"run it in its own env: tox -e {entry.env}, "
                         f"or .tox/{entry.env}/bin/python -m bench") from None
    return getattr(module, entry.cls)
