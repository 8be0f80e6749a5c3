"""torch's data-parallel engine: DistributedDataParallel on gloo, joined through torchrun's env://,
and a comm hook that counts what DDP hands gloo while doing exactly what DDP would.

What DDP and gloo do with the two tables (torch 2.13: torch/nn/parallel/distributed.py, and
reducer.cpp / ProcessGroupGloo.cpp of pytorch/pytorch; bytes checked against loopback counters):

* dense: both (V, D) gradients are copied into one flat float32 bucket and ring-allreduced
  (gloo's allreduce: reduce-scatter then allgather, 2 (N - 1) / N x M a rank). DDP's first step
  always reduces every dense parameter in one bucket (find_unused_parameters=False); from the
  second it re-buckets by the caps (25 MiB, the first bucket 1 MiB by default), which would
  split PTB's two 2.7 MB tables. A cap that holds both (`bucket_cap_mb`) keeps one layout, one
  allreduce, every step.
* sparse: nn.Embedding(sparse=True) marks a parameter as giving sparse gradients (DDP finds them
  by module), and each gets a bucket of its own: the raw gradient (one row per lookup), which
  gloo coalesces, then allgathers 9 int64 of metadata per rank (sparse and dense sizes, nnz),
  allgathervs the int64 indices and the float32 values on a ring, and sums the N tensors, so
  every rank steps the same union of rows.
* DDP divides by the world size only when no comm hook is registered; the hook here divides as
  it does (dense: x 1/N, sparse: / N before the coalesce) and coalesces the sparse gradient
  itself (gloo's coalesce of a coalesced tensor is free), so the gradients are DDP's default's.

An empty sparse gradient would break gloo's allgatherv (pytorch#87497); it cannot happen here:
every rank's slice has examples, each example real contexts, and padding is dropped from the
sparse gradient (padding_idx), so nnz > 0 on every rank and table.
"""
# No `from __future__ import annotations`: DDP checks the hook's annotations as objects.
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from common.comm import Collective, gloo_sparse_allreduce, per_step, ring_allreduce
from common.sharding import World

MIB = 2 ** 20


class Bucket:
    """What one hook call handed gloo: its tables, dense or sparse, and its size (elements of the
    flat buffer, or rows of the coalesced gradient), and when its collective started and ended."""

    def __init__(self, tables: tuple[int, ...], sparse: bool, size: int) -> None:
        self.tables, self.sparse, self.size = tables, sparse, size
        self.start = time.perf_counter()
        self.end = self.start


class Counter:
    """DDP's comm hook: the default's division and allreduce, with each bucket recorded by step."""

    def __init__(self, parameters: Sequence[torch.Tensor], names: Sequence[str], world: int) -> None:
        self.index = {id(p): i for i, p in enumerate(parameters)}
        self.names, self.world = tuple(names), world
        self.widths = tuple(int(p.shape[1]) for p in parameters)
        self.steps: list[list[Bucket]] = []
        self._step: list[Bucket] = []

    def hook(self, _state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        tensor = bucket.buffer()
        tables = tuple(sorted(self.index[id(p)] for p in bucket.parameters()))
        if tensor.is_sparse:
            tensor = tensor.div_(self.world).coalesce()
            record = Bucket(tables, True, int(tensor._nnz()))
        else:
            tensor.mul_(1.0 / self.world)
            record = Bucket(tables, False, tensor.numel())
        self._step.append(record)
        if bucket.is_last():
            self.steps.append(sorted(self._step, key=lambda b: b.tables))
            self._step = []

        def done(future: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
            record.end = time.perf_counter()
            return future.value()[0]

        return dist.all_reduce(tensor, async_op=True).get_future().then(done)

    def seconds_per_step(self) -> float | None:
        """The mean span of a step's collectives, from the first bucket handed over to the last
        one reduced (DDP's own backward_comm_time, measured here for every step)."""
        spans = [max(b.end for b in s) - min(b.start for b in s) for s in self.steps if s]
        return float(np.mean(spans)) if spans else None

    def collectives(self, rank: int) -> list[dict]:
        """The steps' collectives as common.comm records, averaged (per_step). A collective call:
        each rank's sparse sizes are gathered once (the sizes gloo's metadata allgather shares in
        every step), as a ring allgatherv sends what the other ranks gave."""
        if not self.steps:
            return []
        sparse = torch.tensor([[b.size for b in s if b.sparse] for s in self.steps], dtype=torch.int64)
        gathered = [torch.empty_like(sparse) for _ in range(self.world)]
        dist.all_gather(gathered, sparse)
        sizes = torch.stack(gathered).numpy()  # (world, steps, sparse buckets)
        return per_step([self._step_collectives(step, sizes[:, i], rank) for i, step in enumerate(self.steps)])

    def _step_collectives(self, step: list[Bucket], sparse_sizes: np.ndarray, rank: int) -> list[Collective]:
        records: list[Collective] = []
        k = 0
        for b in step:
            name = " and ".join(self.names[t] for t in b.tables)
            if not b.sparse:
                records.append(ring_allreduce(f"{name} gradients", "float32", b.size, self.world))
                continue
            rows = [int(n) for n in sparse_sizes[:, k]]
            records += gloo_sparse_allreduce(name, rows, self.widths[b.tables[0]], rank)
            k += 1
        return records


def join(module: torch.nn.Module, names: Sequence[str]) -> tuple[DistributedDataParallel, Counter, World]:
    """Join the ranks torchrun started (env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) and wrap
    `module` (whose parameters are the tables, named `names`) in DDP with the counting hook."""
    dist.init_process_group("gloo")
    world = World(dist.get_rank(), dist.get_world_size())
    parameters = list(module.parameters())
    both = sum(p.numel() * p.element_size() for p in parameters)
    ddp = DistributedDataParallel(module, bucket_cap_mb=max(1, math.ceil(both / MIB)))
    counter = Counter(parameters, names, world.size)
    ddp.register_comm_hook(None, counter.hook)
    return ddp, counter, world
