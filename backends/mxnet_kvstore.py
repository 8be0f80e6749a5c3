"""MXNet's data-parallel engine: the `dist_sync` kvstore (ps-lite's parameter server), and what
each step hands it, counted as common.comm records.

The scheduler and the server are processes of their own that import mxnet with
DMLC_ROLE=scheduler|server (docs/data-parallel.md); a worker joins here, and the scheduler
numbers it (`kv.rank`). The optimizer runs on the server (update_on_kvstore, the only mode a
dist kvstore allows with row_sparse gradients): once all N workers have pushed a table's
gradient the server sums the pushes (row_sparse: the union of their rows) and steps on the sum
x 1/N (rescale_grad), so it updates the average, and lazily exactly the global batch's rows.

    dense   push each table's gradient (V x D); pull the table back (V x D)
    sparse  row_sparse_pull the rows this step's slice reads, of row_sparse weights (MXNet's
            recipe for sparse embeddings); push the row_sparse gradient of those rows

How ps-lite carries an array (src/kvstore/kvstore_dist.h, ps-lite include/ps/kv_app.h): a
message holds keys (uint64), values and lens (int32, one per key). A dense array is one key
(below MXNET_KVSTORE_BIGARRAY_BOUND elements, else one part per server). A row_sparse one is a
master key per server plus one key per row, which encodes the row id (no index array is sent),
and a len per key. A pull request sends only the keys; the reply echoes them with the values and
the lens. The records count those three parts from the arrays this worker pushes and pulls.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import mxnet as mx
import numpy as np

from common.comm import ITEM_BYTES, Collective, per_step
from common.sharding import World
from common.spec import RunSpec

TABLES = ("center", "context")
BIGARRAY_BOUND = int(os.environ.get("MXNET_KVSTORE_BIGARRAY_BOUND", 1000 * 1000))  # kvstore_dist.h's default


def ps_keys(shape: tuple[int, int], rows: int | None, servers: int) -> int:
    """Keys ps-lite sends for one table: dense (rows None) one per part, row_sparse a master key per
    part and one per row; a table of BIGARRAY_BOUND elements or more has a part on every server."""
    parts = servers if shape[0] * shape[1] >= BIGARRAY_BOUND else 1
    return parts + (rows or 0)


def transfer(table: str, kind: str, shape: tuple[int, int], rows: int | None, servers: int) -> list[Collective]:
    """One push (a gradient) or pull (the weights) of a table: values, keys, lens."""
    values = shape[0] * shape[1] if rows is None else rows * shape[1]
    keys = ps_keys(shape, rows, servers)
    what = "gradient" if kind == "push" else "weight"
    trips = 2 if kind == "pull" else 1  # a pull's keys go in its request and come back in the reply
    return [Collective(f"{table} {what} values", kind, "float32", values, values * ITEM_BYTES["float32"]),
            Collective(f"{table} {what} keys", kind, "int64", keys, trips * keys * ITEM_BYTES["int64"]),
            Collective(f"{table} {what} lens", kind, "int32", keys, keys * ITEM_BYTES["int32"])]


class KVStoreSync:
    """A worker of the dist_sync kvstore holding the two tables under keys 0 and 1."""

    def __init__(self, spec: RunSpec, weights: Sequence[mx.nd.NDArray],
                 optimizer: type[mx.optimizer.Optimizer]) -> None:
        self.kv = mx.kv.create("dist_sync")
        self.world = World(self.kv.rank, self.kv.num_workers)
        self.sparse = spec.sparse
        self.servers = int(os.environ.get("DMLC_NUM_SERVER", "1"))
        self.shapes = [tuple(w.shape) for w in weights]
        self.keys = list(range(len(weights)))
        # Rank 0's values initialise the server (every rank starts from the same shared weights).
        # Row_sparse weights name every row explicitly: tostype would drop rows that are all zero.
        self.kv.init(self.keys, [self._all_rows(w) if self.sparse else w for w in weights])
        # Every worker sends the optimizer before its first push, as MXNet's Module does: the
        # server steps a key only once all N have pushed, so no push meets a half-set server.
        self.kv.set_optimizer(optimizer(spec, self.world.size))
        self.pulled = [mx.nd.sparse.zeros("row_sparse", s, ctx=w.context) for s, w in zip(self.shapes, weights)]
        self.counted: list[list[Collective]] = []

    @staticmethod
    def _all_rows(weight: mx.nd.NDArray) -> mx.nd.NDArray:
        rows = mx.nd.arange(weight.shape[0], dtype="int64", ctx=weight.context)
        return mx.nd.sparse.row_sparse_array((weight, rows), shape=weight.shape, ctx=weight.context)

    def pull_rows(self, weights: Sequence[mx.nd.NDArray], rows: Sequence[mx.nd.NDArray]) -> None:
        """The current values of `rows` (sorted int64 ids) of each table, into the local dense copies."""
        for key, weight, ids, buffer in zip(self.keys, weights, rows, self.pulled):
            self.kv.row_sparse_pull(key, out=buffer, row_ids=ids)
            weight[ids] = buffer.data

    def step(self, weights: Sequence[mx.nd.NDArray], grads: Sequence[mx.nd.NDArray],
             rows: Sequence[int] | None) -> None:
        """Push this step's gradients; dense: pull the updated tables back (sparse pulls next step's
        rows before it). `rows`: each table's rows in this step (those pulled and pushed), or None."""
        self.kv.push(self.keys, list(grads))
        if not self.sparse:
            self.kv.pull(self.keys, out=list(weights))
        self.counted.append(self.records(rows))

    def records(self, rows: Sequence[int] | None) -> list[Collective]:
        """What the step moved: sparse pulls then pushes `rows` rows of each table, dense pushes then
        pulls whole tables (model_mxnet in common/comm.py says the same from the data)."""
        kinds = ("pull", "push") if self.sparse else ("push", "pull")
        counts = rows if rows is not None else [None] * len(self.shapes)
        return [c for kind in kinds for table, shape, r in zip(TABLES, self.shapes, counts)
                for c in transfer(table, kind, shape, r, self.servers)]

    def communication(self) -> list[dict]:
        return per_step(self.counted)

    def pull_all(self, weights: Sequence[mx.nd.NDArray]) -> None:
        """Every row's current value (the end of a sparse run: each worker holds only the rows it read)."""
        if self.sparse:
            self.pull_rows(weights, [mx.nd.array(np.arange(s[0]), dtype="int64") for s in self.shapes])
