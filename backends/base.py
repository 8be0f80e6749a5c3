"""The one interface every backend implements, and the math they all share.

A backend is built from a RunSpec and the shared initial weights. The worker hands it each
epoch's batches twice: `prepare` (convert, move to the device: timed as data transfer) and
`train` (one optimiser step per batch, losses kept on the device and fetched once at the
end, so there is no sync per step). Capabilities are declared, not inferred from names.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np

from backends.registry import info, refusal
from common.batches import Batch
from common.errors import BenchError
from common.sharding import World
from common.spec import RunSpec


class Capabilities(NamedTuple):
    sparse: bool               # row-sparse gradients with lazy Adam
    compile: bool              # an optional graph compiler (torch.compile, XLA)
    graph: bool                # each dense step replayed as one captured CUDA graph
    devices: tuple[str, ...]   # devices usable now, e.g. ("cpu", "cuda:0")
    layouts: tuple[str, ...]   # batch layouts it trains on: padded (the recipe's), packed


class Backend(ABC):
    """Skip-gram with negative sampling: two (V, D) tables, masked sigmoid BCE, Adam or SGD."""

    name: ClassVar[str]
    # Seconds `prepare` spent compiling or capturing graphs ahead of the clock (torch's compiled
    # and graphed variants); compilers that compile in the first step show it there instead.
    compile_seconds: float = 0.0

    def __init__(self, spec: RunSpec, init_center: np.ndarray, init_context: np.ndarray) -> None:
        caps = self.capabilities()
        if spec.device not in caps.devices and not (spec.device == "cuda" and "cuda:0" in caps.devices):
            raise BenchError(f"device {spec.device!r} is not available to {self.name}; "
                             f"available: {', '.join(caps.devices)}")
        reason = refusal(spec)
        if reason is not None:
            raise BenchError(reason)
        self.spec = spec
        # This process's place among the data-parallel ranks: a backend that joins its engine
        # (spec.workers > 1) sets the engine's own rank here; shards follow it (docs/data-parallel.md).
        self.world = World(0, 1)

    @classmethod
    def capabilities(cls) -> Capabilities:
        """The registry's declared variants, and the devices this env can use now."""
        declared = info(cls.name)
        gpus = tuple(f"cuda:{i}" for i in range(cls.gpu_count()))
        return Capabilities(sparse=declared.sparse, compile=declared.compile, graph=declared.graph,
                            devices=("cpu",) + gpus, layouts=declared.layouts)

    @classmethod
    @abstractmethod
    def gpu_count(cls) -> int:
        """CUDA devices the framework sees in this env."""

    @property
    def gpu_index(self) -> int | None:
        """N for cuda:N (0 for plain cuda), None on the CPU."""
        if not self.spec.device.startswith("cuda"):
            return None
        return int(self.spec.device.split(":")[1]) if ":" in self.spec.device else 0

    @classmethod
    @abstractmethod
    def versions(cls) -> dict[str, str]:
        """Framework name -> version, for the result's environment record."""

    @abstractmethod
    def device_name(self) -> str: ...

    @abstractmethod
    def prepare(self, batches: Sequence[Batch], scales: Sequence[float] | None = None) -> Any:
        """Convert (and move) batches into what `train` consumes. `scales`: each batch's loss factor
        on a data-parallel rank (common.sharding.Shard.scale: N x rows / B, so averaging the ranks'
        gradients gives the global batch's); None in one process, where every factor is 1."""

    def communication(self) -> list[dict]:
        """The step's collectives as common.comm records, averaged over the steps trained (per_step);
        a backend on one process hands its engine nothing, so it has none."""
        return []

    def communication_seconds(self) -> float | None:
        """The mean seconds a step spent in its collectives, by the engine's own timers or a clock
        around the collective; None where the backend has no such timer (or no engine)."""
        return None

    def sync(self) -> None:
        """Wait for queued device work (a no-op where work is synchronous)."""
        return None

    def peak_memory_bytes(self) -> int | None:
        """The most device memory the framework's allocator held so far in this process; None on
        the CPU or where the framework does not say (the batch curve's memory column)."""
        return None

    @abstractmethod
    def train(self, prepared: Any) -> np.ndarray:
        """One step per batch; returns the per-step losses (float64) after one final sync."""

    # Stages, for the micro-benchmarks (TorchBench's split): each takes one prepared batch and
    # returns only after the device has finished, so a clock around it measures that work.
    @abstractmethod
    def forward(self, prepared_batch: Any) -> None:
        """The loss alone, no gradients kept."""

    @abstractmethod
    def forward_backward(self, prepared_batch: Any) -> None:
        """Loss and gradients, no update."""

    def step(self, prepared_batch: Any) -> None:
        """Loss, gradients and the optimiser update: one training step."""
        self.train([prepared_batch])

    @abstractmethod
    def loss_and_grads(self, batch: Batch) -> tuple[float, np.ndarray, np.ndarray]:
        """Loss and dense gradients of both tables at the current weights, without a step."""

    @abstractmethod
    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(center, context) tables as numpy arrays."""


def adam_scalars(spec: RunSpec, step: int, lazy: bool) -> tuple[float, float]:
    """(lr_t, eps_t) so that the fused update `w -= lr_t * m / (sqrt(v) + eps_t)` is the canonical one.

    Fused kernels (MXNet's adam_update, TF's ApplyAdam) put eps beside the uncorrected sqrt(v).
    Dense runs want torch's form, lr * m_hat / (sqrt(v_hat) + eps), which is the same update
    with eps_t = eps * sqrt(1 - beta2^t). Lazy (sparse) runs keep eps as torch's SparseAdam does.
    """
    correction2 = math.sqrt(1.0 - spec.beta2 ** step)
    lr_t = spec.lr * correction2 / (1.0 - spec.beta1 ** step)
    return lr_t, (spec.eps if lazy else spec.eps * correction2)
