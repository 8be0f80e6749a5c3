"""What a data-parallel step communicates: one record per collective, and the algorithms' byte counts.

A backend counts the tensors it hands its engine (a comm hook's bucket, the IndexedSlices a
strategy reduces, the buffer under `all_gather`, the arrays pushed to and pulled from a
kvstore) as Collectives; the model here says what the engine's algorithm sends for them, per
rank, so a counted step and a modelled one are the same record and can be compared exactly.

The algorithms (gloo, TF's collective ops, ps-lite), for N ranks and a payload of M bytes a rank:

    ring allreduce     reduce-scatter then allgather of N chunks: each rank sends 2 (N - 1) / N x M
    ring allgather(v)  N - 1 steps, each forwarding one rank's chunk to the next rank: a rank sends
                       every chunk but its successor's (r + 1 mod N), sizes as each rank gave them
    push / pull        a worker sends its payload to the servers / the servers send it back

Bytes are payload bytes: the headers of TCP, gloo's preambles and ps-lite's message metadata
are not in them (a loopback counter sees them: `loopback` in a result).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from common.batches import Batch
from common.errors import BenchError
from common.packing import rounded
from common.spec import RunSpec

KINDS = ("allreduce", "allgather", "push", "pull")
ITEM_BYTES = {"float32": 4, "float64": 8, "int32": 4, "int64": 8}


class Collective(NamedTuple):
    """One collective of a step, as this rank takes part in it."""

    name: str           # what it carries, e.g. "context gradient values"
    kind: str           # KINDS
    dtype: str          # ITEM_BYTES
    elements: int       # elements this rank hands the engine
    bytes_sent: float   # payload bytes this rank sends for it, by the engine's algorithm

    def to_dict(self) -> dict:
        return self._asdict()


def ring_allreduce(name: str, dtype: str, elements: int, world: int) -> Collective:
    """A dense allreduce of `elements` on a ring of `world` ranks."""
    return Collective(name, "allreduce", dtype, elements, 2 * (world - 1) / world * elements * ITEM_BYTES[dtype])


def ring_allgather(name: str, dtype: str, elements: Sequence[float], rank: int) -> Collective:
    """An allgather(v) on a ring, each rank r giving `elements[r]`: what rank `rank` hands and sends."""
    world = len(elements)
    sent = sum(elements) - (elements[(rank + 1) % world] if world > 1 else elements[0])
    return Collective(name, "allgather", dtype, int(elements[rank]), float(sent * ITEM_BYTES[dtype]))


def per_step(steps: Sequence[Sequence[Collective]]) -> list[dict]:
    """Each collective's mean over the steps counted (sparse payloads vary a step), in the order of the
    first step: the record a result keeps. Steps must name the same collectives in the same order."""
    if not steps:
        return []
    names = [(c.name, c.kind, c.dtype) for c in steps[0]]
    for s in steps:
        if [(c.name, c.kind, c.dtype) for c in s] != names:
            raise ValueError("steps name different collectives: count them per kind, not per step")
    return [{"name": n, "kind": k, "dtype": d,
             "elements": float(np.mean([s[i].elements for s in steps])),
             "bytes_sent": float(np.mean([s[i].bytes_sent for s in steps]))}
            for i, (n, k, d) in enumerate(names)]


class SliceRows(NamedTuple):
    """What one rank's slice of one step names: the lookups and distinct rows of each table, which
    set a sparse gradient's size (real slots only: padding names row 0, which no real slot does)."""

    centers: float         # center lookups: the slice's examples (a profile's means are fractional)
    contexts: float        # context and noise lookups: its real slots
    unique_centers: float
    unique_contexts: float


def slice_rows(batch: Batch) -> SliceRows:
    real = batch.context_negative[batch.mask.astype(bool)]
    return SliceRows(int(batch.center.size), int(real.size), int(np.unique(batch.center).size),
                     int(np.unique(real).size))


# torch (backends/torch_ddp.py): DistributedDataParallel on gloo. gloo's sparse allreduce shares
# each rank's sizes first: an allgather of SparseTensorMetadata, 4 sparse dims, 4 dense dims, nnz.
GLOO_SPARSE_METADATA = 9  # int64 elements a rank


def gloo_sparse_allreduce(name: str, rows: Sequence[float], width: int, rank: int) -> list[Collective]:
    """gloo's allreduce of one coalesced sparse gradient of `rows[r]` rows of `width` on each rank r:
    the metadata allgather, then allgathervs of the int64 indices and of the float32 values."""
    world = len(rows)
    return [ring_allgather(f"{name} gradient metadata", "int64", [GLOO_SPARSE_METADATA] * world, rank),
            ring_allgather(f"{name} gradient indices", "int64", rows, rank),
            ring_allgather(f"{name} gradient values", "float32", [r * width for r in rows], rank)]


def model_torch(spec: RunSpec, vocab: int, rows: Sequence[SliceRows], rank: int) -> list[Collective]:
    """What DDP hands gloo in one step. Dense: one bucket holding both (V, D) tables (the backend's
    cap keeps them together), ring-allreduced. Sparse: each table its own bucket, coalesced, so a
    rank gives one row per distinct row its slice names (padding dropped): center, then context."""
    world, width = len(rows), spec.data.embed
    if not spec.sparse:
        return [ring_allreduce("center and context gradients", "float32", 2 * vocab * width, world)]
    return (gloo_sparse_allreduce("center", [r.unique_centers for r in rows], width, rank)
            + gloo_sparse_allreduce("context", [r.unique_contexts for r in rows], width, rank))


def model_tensorflow(spec: RunSpec, vocab: int, rows: Sequence[SliceRows], rank: int) -> list[Collective]:
    """MultiWorkerMirroredStrategy's MEAN all-reduce with ring collectives (TF 2.21's
    cross_device_ops.CollectiveAllReduce, cross_device_utils). Dense: both (V, D) gradients in one
    pack (bytes_per_pack 0: one concat), one RingReducer all-reduce. Sparse: per table
    (center, context) an all-gather of each rank's IndexedSlices length (int32), then of its
    values and its int32 indices, each rank's padded to the longest (`all_reduce_indexed_slices`),
    on RingGatherer's ring; one row per lookup, duplicates kept. A context lookup is every slot of
    the padded layout's (B, L) rows, the real slots of the packed one."""
    world, width = len(rows), spec.data.embed
    if not spec.sparse:
        return [ring_allreduce("gradients of both tables (one pack)", "float32", 2 * vocab * width, world)]
    contexts = [r.centers * spec.data.row_length if spec.layout == "padded" else r.contexts for r in rows]
    out = []
    for name, lengths in (("center", [r.centers for r in rows]), ("context", contexts)):
        longest = round(max(lengths))  # a profile's mean slice is fractional; a step's rows are not
        out += [ring_allgather(f"{name} gradient lengths", "int32", [1] * world, rank),
                ring_allgather(f"{name} gradient values", "float32", [longest * width] * world, rank),
                ring_allgather(f"{name} gradient indices", "int32", [longest] * world, rank)]
    return out


def model_jax(spec: RunSpec, vocab: int, rows: Sequence[SliceRows], rank: int,
              run: Sequence[Sequence[SliceRows]] | None = None) -> list[Collective]:
    """JAX on gloo (backends/jax.py): dense, `lax.pmean` of each table's (V, D) float32 gradient, a
    ring allreduce; sparse, per table (centers, then contexts) the `all_gather` of the slice's K
    coalesced ids (int32) and then of their K summed gradient rows (float32, K x D), each a ring
    allgather of equal chunks: (N - 1) K (4 + 4 D) bytes a table, whatever the slice touched. K is
    the cap, chosen the backend's way from `run` (every step's rows of the epoch; `rows` alone where it
    is not given, as for extrapolating): the most distinct rows a slice names, the padded layout's
    padding id 0 counted, rounded up by common.packing.rounded, at most V."""
    world, dim = len(rows), spec.data.embed
    if not spec.sparse:
        return [ring_allreduce(f"{table} gradient", "float32", vocab * dim, world) for table in ("center", "context")]
    padding = int(spec.layout == "padded")  # a padded slice's padding slots name row 0
    sized = [r for step in (run or [rows]) for r in step]  # the backend sizes K once an epoch
    caps = (min(rounded(int(max(r.unique_centers for r in sized))), vocab),
            min(rounded(int(max(r.unique_contexts for r in sized)) + padding), vocab))
    out = []
    for table, cap in zip(("center", "context"), caps):
        out += [ring_allgather(f"{table} ids", "int32", [cap] * world, rank),
                ring_allgather(f"{table} gradient rows", "float32", [cap * dim] * world, rank)]
    return out


def model_mxnet(spec: RunSpec, vocab: int, rows: Sequence[SliceRows], rank: int) -> list[Collective]:
    """MXNet's dist_sync kvstore on one ps-lite server (the launcher starts one), for worker `rank`.

    Dense: push each table's gradient, then pull the table (V x D float32 each way). Sparse: pull
    (row_sparse_pull) the r rows the slice reads, then push their row_sparse gradient: r x D values.
    ps-lite adds keys (uint64: one per dense table, or a master key and one key per row, which
    carries the row id in place of an index array) and lens (int32, one per key); a pull's keys
    travel in its request and again in its reply. r is the slice's distinct rows and row 0, which
    padding reads: a padded slice with an empty slot; a packed slice's tail, past its real slots,
    which almost always has one (none only where the slice fills its epoch's packed length).
    The same records as backends/mxnet_kvstore.py counts, in its order.
    """
    mine, embed = rows[rank], spec.data.embed
    if spec.sparse:
        padding = spec.layout == "packed" or mine.contexts < mine.centers * spec.data.row_length
        counts: list[float | None] = [mine.unique_centers, mine.unique_contexts + int(padding)]
    else:
        counts = [None, None]
    records = []
    for kind in ("pull", "push") if spec.sparse else ("push", "pull"):
        what, trips = ("gradient", 1) if kind == "push" else ("weight", 2)
        for table, r in zip(("center", "context"), counts):
            values, keys = (vocab * embed, 1) if r is None else (r * embed, r + 1)
            records += [Collective(f"{table} {what} values", kind, "float32", round(values), 4.0 * values),
                        Collective(f"{table} {what} keys", kind, "int64", round(keys), 8.0 * keys * trips),
                        Collective(f"{table} {what} lens", kind, "int32", round(keys), 4.0 * keys)]
    return records


# backend -> its engine's model; RUN_SIZED: engines whose buffers are sized once an epoch from all of
# its steps (JAX's all-gather cap K), so a step's bytes depend on the run's rows, not only the step's.
MODELS = {"torch": model_torch, "tensorflow": model_tensorflow, "jax": model_jax, "mxnet": model_mxnet}
RUN_SIZED = {"jax"}


def model(spec: RunSpec, vocab: int, rows: Sequence[SliceRows], rank: int,
          run: Sequence[Sequence[SliceRows]] | None = None) -> list[Collective]:
    """What rank `rank` hands and sends in one step of `spec` by its engine's model (rows: one
    SliceRows per rank for that step; run: every step's, for RUN_SIZED engines, else that step alone
    sizes them); a BenchError for a backend without one."""
    function = MODELS.get(spec.backend)
    if function is None:
        raise BenchError(f"{spec.backend} has no communication model in common/comm.py")
    if spec.backend in RUN_SIZED:
        return model_jax(spec, vocab, rows, rank, run)
    return function(spec, vocab, rows, rank)
