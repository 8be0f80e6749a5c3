"""JAX: compiled scans over an epoch that lives on the device.

`prepare` stacks the epoch's batches into (n, B, ...) device arrays; `train` runs a segment as
`lax.scan`s over them (dispatched asynchronously, one sync at the end) with the parameter and
optimiser buffers donated, so XLA updates them in place. Dense runs use optax's Adam (torch's
form: tests/backends/test_jax.py checks it); sparse runs differentiate with respect to the
gathered rows and apply lazy Adam to the batch's unique rows only, found without a sort (a
presence marker over the vocabulary; fixed shapes, so each batch shape compiles once). The step functions are
module-level and keyed by hashable `Settings`, so backends with equal settings share compiled programs.

Two layouts, each a pytree the step reads its loss and gathers from: `PaddedArrays` (the
recipe's (B, L) rows, one batched dot a batch) and `PackedArrays` (common/packing.py's real
slots, flat: each slot's center gathered by `example`, one multiply-sum a slot, the weighted
BCE summed). Flat rather than bucketed by context count: XLA has no batched dot that gains from
buckets (its batched dot is one small matvec per example, PERFORMANCE.md), and the packed
length is one per epoch, so the shapes stay static and each epoch compiles once.

Data-parallel (spec.workers > 1, docs/data-parallel.md): each rank is one process with one CPU
device, joined by `jax.distributed` with gloo's CPU collectives; the scan runs under `shard_map`
over a mesh of the N processes, parameters replicated, each rank's block sharded by a leading
rank axis. Dense gradients are averaged by `lax.pmean` (gloo's ring allreduce). There is no
sparse collective: the lazy step coalesces its slice's rows to a fixed K (`coalesce`'s marker,
no sort), all-gathers the (ids, rows) buffers (gloo's ring allgather) and steps the union,
duplicates across ranks summed, so every rank updates the same rows. K (static) is the most
distinct rows any rank's slice of the epoch names in a table (counted on the arrays the step
dedups, agreed across ranks before the clock), rounded up by `common.packing.rounded`: the cap
sets the bytes, and no slice can exceed it. Slices the ranks hold at different lengths (an
epoch's last batch) are padded to the longest, so every rank runs one program.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from backends.base import Backend
from backends.registry import refusal
from common.batches import Batch
from common.comm import Collective, per_step, ring_allgather, ring_allreduce
from common.errors import BenchError
from common.lazy_adam import dense_shaped
from common.packing import pack, packed_length, rounded
from common.sharding import THREADS_VARIABLE, World
from common.spec import RunSpec

COORDINATOR_VARIABLE = "SKIPGRAM_COORDINATOR"  # 127.0.0.1:PORT, rank 0's coordination service (the launcher's)
# XLA's CPU client sizes its intra-op (Eigen) pool from PJRT_NPROC, read once when the client
# starts (the first device query), so it is set at import: the launcher's threads a rank.
if THREADS_VARIABLE in os.environ:
    os.environ.setdefault("PJRT_NPROC", os.environ[THREADS_VARIABLE])
RANKS = "ranks"  # the mesh axis of the data-parallel ranks
TABLES = ("center", "context")

Params = tuple[jax.Array, jax.Array]  # (center table, context table)
CHUNK = 32  # steps per compiled scan (see JaxBackend.train)
HIGHEST = jax.lax.Precision.HIGHEST  # full float32 dots on every device (GPUs would default to TF32)


class Settings(NamedTuple):
    """What the compiled step depends on besides shapes (a static, hashable jit argument)."""
    sparse: bool
    optimizer: str
    lr: float
    beta1: float
    beta2: float
    eps: float
    vocab: int
    world: int = 1                  # data-parallel ranks: > 1 puts the step's collectives in
    caps: tuple[int, int] = (0, 0)  # K of each table's gathered rows (sparse, world > 1)


class LazyAdamState(NamedTuple):
    step: jax.Array
    m: Params
    v: Params


def rows_loss(v: jax.Array, u: jax.Array, mask: jax.Array, label: jax.Array) -> jax.Array:
    """The canonical loss from the gathered rows: v (B, D) centers, u (B, L, D) contexts and noise."""
    pred = jnp.einsum("bld,bd->bl", u, v, precision=HIGHEST)
    mask, label = mask.astype(pred.dtype), label.astype(pred.dtype)  # uint8 on the device, cast here (fused)
    bce = jnp.maximum(pred, 0) - pred * label + jnp.log1p(jnp.exp(-jnp.abs(pred)))
    # max(.., 1): a data-parallel rank's padding rows (mask 0) add 0 (a real row has 1 + K slots or more)
    return jnp.mean(jnp.sum(bce * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1))


def packed_rows_loss(v: jax.Array, u: jax.Array, example: jax.Array, label: jax.Array,
                     weight: jax.Array) -> jax.Array:
    """The same loss from the packed layout: v (B, D) centers, u (N, D) each slot's context or
    noise row. Each slot dots with its example's center (gathered by `example`, sorted), and the
    weighted sum is the masked mean over the row, then the mean over the batch (common/packing.py)."""
    pred = jnp.sum(v.at[example].get(mode="promise_in_bounds", indices_are_sorted=True) * u, axis=1)
    bce = jnp.maximum(pred, 0) - pred * label + jnp.log1p(jnp.exp(-jnp.abs(pred)))
    return jnp.sum(bce * weight)


class PaddedArrays(NamedTuple):
    """A padded batch on the device (mask and label uint8, cast in the step), or a stack of them."""
    center: jax.Array
    context: jax.Array  # context_negative, (B, L)
    mask: jax.Array
    label: jax.Array

    def rows(self, params: Params) -> tuple[jax.Array, jax.Array]:
        return params[0][self.center], params[1][self.context]

    def loss(self, v: jax.Array, u: jax.Array) -> jax.Array:
        return rows_loss(v, u, self.mask, self.label)

    def table_grads(self, params: Params) -> tuple[jax.Array, Params]:
        """Autodiff through the gathers: XLA scatters the rows' gradients into each table."""
        return jax.value_and_grad(table_loss)(params, self)


class PackedArrays(NamedTuple):
    """A packed batch on the device (common/packing.py), or a stack of them. Padding slots carry
    id V, out of range, so every scatter of their gradient drops them (`mode="drop"`, the lazy
    step's and `table_grads`'s) rather than adding zeros to row 0. Their rows are gathered
    clipped (row V-1, times weight 0: their gradients are exactly zero), not as zeros
    (`mode="fill"`): fill adds a select that XLA materialises, an (N, D) pass a step
    (PERFORMANCE.md, "JAX, round two")."""
    center: jax.Array
    context: jax.Array  # ids, (N,): V on padding slots
    example: jax.Array
    label: jax.Array
    weight: jax.Array

    def rows(self, params: Params) -> tuple[jax.Array, jax.Array]:
        return params[0][self.center], params[1].at[self.context].get(mode="clip")

    def loss(self, v: jax.Array, u: jax.Array) -> jax.Array:
        return packed_rows_loss(v, u, self.example, self.label, self.weight)

    def table_grads(self, params: Params) -> tuple[jax.Array, Params]:
        """The rows' gradients scattered into each table by hand: autodiff of the clipped gather
        would add the padding slots' zeros to row V-1; here the scatter drops them."""
        loss, (g_center, g_context) = row_grads(params, self)
        return loss, (jnp.zeros_like(params[0]).at[self.center].add(g_center),
                      jnp.zeros_like(params[1]).at[self.context].add(g_context, mode="drop"))


Arrays = PaddedArrays | PackedArrays


def table_loss(params: Params, batch: Arrays) -> jax.Array:
    return batch.loss(*batch.rows(params))


def row_grads(params: Params, batch: Arrays) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Loss and gradients with respect to the gathered rows ((B, D) and (B, L, D) or (N, D)), not the tables."""
    return jax.value_and_grad(batch.loss, argnums=(0, 1))(*batch.rows(params))


def present(indices: jax.Array, vocab: int) -> jax.Array:
    """(V,) bool: the rows the batch used, as the reference's np.unique counts them (a scatter
    over the vocabulary, no sort): padded rows' padding id 0 included, packed padding's V dropped
    (row 0 never occurs in a real slot: its state stays zero in either layout, common/packing.py)."""
    return jnp.zeros(vocab, jnp.bool_).at[indices.reshape(-1)].set(True)


def coalesce(indices: jax.Array, grads: jax.Array, vocab: int, size: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Unique rows, ascending and padded with `vocab` (out of range), and their summed gradients,
    fixed shapes: `size` rows, by default min(indices, vocab) (6,719 rather than 30,720 for PTB's
    context table), which no batch can exceed (rows past `size` would be dropped).

    What `jnp.unique(size=, return_inverse=True)` returns, without its stable sort (4 ms a step at
    PTB's shapes): the presence marker's running count is each used row's slot; each slot gets
    its row by a scatter, each index its slot by a gather. The barriers keep XLA from fusing the
    backward pass into the scatter (it then recomputed it per scattered element: 16 ms for the
    coalescing instead of 5, PERFORMANCE.md)."""
    flat = indices.reshape(-1)
    size = min(flat.size, vocab) if size is None else size
    marker = present(flat, vocab)
    slot = jnp.cumsum(marker, dtype=jnp.int32) - 1
    rows = jnp.full(size, vocab, jnp.int32).at[jnp.where(marker, slot, size)].set(
        jnp.arange(vocab, dtype=jnp.int32), mode="drop")
    segment = slot.at[flat].get(mode="fill", fill_value=size)  # ids >= vocab (packed padding): dropped
    summed = jax.ops.segment_sum(jax.lax.optimization_barrier(grads).reshape(flat.size, -1), segment,
                                 num_segments=size)
    return rows, jax.lax.optimization_barrier(summed)


class Sharded(NamedTuple):
    """A data-parallel rank's block: its slices as one process lays them out (padded to the
    ranks' longest slice), each step's gradient factor and the factor that makes the loss over
    the padded rows the slice's own mean; every array with a leading rank axis (a global array)."""
    arrays: Arrays
    factor: jax.Array  # (n,): the loss factor (common.sharding.Shard.scale), x padded rows / rows (padded layout)
    unpad: jax.Array   # (n,): padded rows / rows (padded layout: the mean runs over the padding rows too), else 1


Block = Arrays | Sharded


def batch_at(block: Block, i: jax.Array | int) -> Block:
    """Batch i of a stacked block (a dynamic index: one program serves every i)."""
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), block)


def steps_in(block: Block) -> int:
    return int(block.factor.shape[1] if isinstance(block, Sharded) else block.center.shape[0])


class Tally:
    """The collectives a traced step hands gloo, read off the arrays themselves (shape, dtype):
    what `communication` counts a step. Filled while the step traces, kept with its program."""

    def __init__(self) -> None:
        self.step: list[Collective] = []

    def begin(self) -> None:
        self.step = []  # a body traced twice counts once

    def psum(self, name: str, x: jax.Array, world: int) -> None:
        self.step.append(ring_allreduce(name, str(x.dtype), int(x.size), world))

    def all_gather(self, name: str, x: jax.Array, world: int) -> None:
        self.step.append(ring_allgather(name, str(x.dtype), [int(x.size)] * world, jax.process_index()))


TALLY = Tally()


def averaged(c: Settings, grads: Params, factor: jax.Array) -> Params:
    """Each table's gradient averaged over the ranks (psum / N: one gloo ring allreduce each),
    each rank's scaled by its slice's factor first."""
    TALLY.begin()
    out = []
    for table, g in zip(TABLES, grads):
        g = g * factor
        TALLY.psum(f"{table} gradient", g, c.world)
        out.append(jax.lax.pmean(g, RANKS))
    return tuple(out)  # type: ignore[return-value]


def gathered(c: Settings, table: str, cap: int, indices: jax.Array, g_rows: jax.Array,
             factor: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Every rank's distinct rows of a table (`cap` of them, padded with id V) and their summed
    gradients, all-gathered: (N cap,) ids and (N cap, D) rows, a row named by several ranks
    once per rank (the lazy step sums them). Gradients are divided by N here: the ranks' mean."""
    rows, g = coalesce(indices, g_rows, c.vocab, cap)
    g = g * (factor / c.world)
    TALLY.all_gather(f"{table} ids", rows, c.world)
    TALLY.all_gather(f"{table} gradient rows", g, c.world)
    return jax.lax.all_gather(rows, RANKS, tiled=True), jax.lax.all_gather(g, RANKS, tiled=True)


def dense_optimizer(c: Settings) -> optax.GradientTransformation:
    return optax.sgd(c.lr) if c.optimizer == "sgd" else optax.adam(c.lr, b1=c.beta1, b2=c.beta2, eps=c.eps)


def init_state(c: Settings, params: Params) -> Any:
    if not c.sparse:
        return dense_optimizer(c).init(params)
    zeros = [tuple(jnp.zeros_like(t) for t in params) for _ in range(2)]  # distinct buffers: each is donated
    return LazyAdamState(jnp.zeros((), jnp.int32), *zeros)


def dense_update(c: Settings, params: Params, state: Any, batch: Arrays,
                 factor: jax.Array | None = None) -> tuple[Params, Any, jax.Array]:
    """One dense step; with `factor` (a data-parallel rank) on the ranks' averaged gradients."""
    loss, grads = batch.table_grads(params)
    if factor is not None:
        grads = averaged(c, grads, factor)
    updates, state = dense_optimizer(c).update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss


Table3 = tuple[jax.Array, jax.Array, jax.Array]  # a table, its first and second moments


def masked_step(c: Settings, step_size: jax.Array, table: jax.Array, m: jax.Array, v: jax.Array,
                indices: jax.Array, g_rows: jax.Array) -> Table3:
    """Lazy Adam dense-shaped: the summed gradient scattered into a (V, D) buffer, the update
    computed for every row and kept where the batch used the row (elsewhere table, m and v
    stay what they were, bit for bit): one fused pass, no row gathers or scatters."""
    flat = indices.reshape(-1)
    used = present(flat, c.vocab)[:, None]
    g = jnp.zeros_like(table).at[flat].add(g_rows.reshape(flat.size, -1))
    if c.optimizer == "sgd":
        return jnp.where(used, table - c.lr * g, table), m, v
    m = jnp.where(used, c.beta1 * m + (1.0 - c.beta1) * g, m)
    v = jnp.where(used, c.beta2 * v + (1.0 - c.beta2) * g * g, v)
    return jnp.where(used, table - step_size * m / (jnp.sqrt(v) + c.eps), table), m, v


def rows_step(c: Settings, step_size: jax.Array, table: jax.Array, m: jax.Array, v: jax.Array,
              indices: jax.Array, g_rows: jax.Array) -> Table3:
    """Lazy Adam on the gathered unique rows, scattered back (padding slots dropped)."""
    rows, g = coalesce(indices, g_rows, c.vocab)
    if c.optimizer == "sgd":
        return table.at[rows].add(-c.lr * g, mode="drop"), m, v
    m_rows = c.beta1 * m.at[rows].get(mode="fill", fill_value=0) + (1.0 - c.beta1) * g
    v_rows = c.beta2 * v.at[rows].get(mode="fill", fill_value=0) + (1.0 - c.beta2) * g * g
    return (table.at[rows].add(-step_size * m_rows / (jnp.sqrt(v_rows) + c.eps), mode="drop"),
            m.at[rows].set(m_rows, mode="drop"), v.at[rows].set(v_rows, mode="drop"))


def lazy_update(c: Settings, params: Params, state: LazyAdamState, batch: Arrays,
                factor: jax.Array | None = None) -> tuple[Params, Any, jax.Array]:
    """torch's SparseAdam (or row-wise SGD): moments and weights of the batch's unique rows only, global step t.
    With `factor` (a data-parallel rank): of the union of every rank's rows, gathered."""
    loss, grads = row_grads(params, batch)
    pairs = list(zip((batch.center, batch.context), grads))
    if factor is not None:
        TALLY.begin()
        pairs = [gathered(c, table, cap, indices, g, factor)
                 for table, cap, (indices, g) in zip(TABLES, c.caps, pairs)]
    step = state.step + 1
    t = step.astype(jnp.float32)
    step_size = c.lr * jnp.sqrt(1.0 - c.beta2 ** t) / (1.0 - c.beta1 ** t)
    tables, ms, vs = zip(*[(masked_step if dense_shaped(c.vocab, indices.size) else rows_step)(
        c, step_size, table, m, v, indices, g)
        for table, m, v, (indices, g) in zip(params, state.m, state.v, pairs)])
    return tuple(tables), LazyAdamState(step, tuple(ms), tuple(vs)), loss  # type: ignore[arg-type]


def scan_steps(c: Settings, params: Params, state: Any, block: Block, start: jax.Array,
               length: int) -> tuple[Params, Any, jax.Array]:
    """`length` steps on batches start, start+1, ... of a stacked block (read in place, no slice copies)."""
    update = lazy_update if c.sparse else dense_update

    def body(carry, i):
        batch = batch_at(block, i)
        if isinstance(batch, Sharded):
            params, state, loss = update(c, *carry, batch.arrays, batch.factor)
            return (params, state), loss * batch.unpad
        params, state, loss = update(c, *carry, batch)
        return (params, state), loss

    (params, state), losses = jax.lax.scan(body, (params, state), start + jnp.arange(length, dtype=jnp.int32))
    return params, state, losses


@jax.jit
def loss_at(params: Params, block: Arrays, i: jax.Array) -> jax.Array:
    return table_loss(params, batch_at(block, i))


@jax.jit
def dense_grads_at(params: Params, block: Arrays, i: jax.Array) -> tuple[jax.Array, Params]:
    return batch_at(block, i).table_grads(params)


@jax.jit
def row_grads_at(params: Params, block: Arrays, i: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return row_grads(params, batch_at(block, i))


@jax.jit
def densified_row_grads_at(params: Params, block: Arrays, i: jax.Array) -> tuple[jax.Array, Params]:
    """Row gradients made dense through the same deduplication the lazy update uses (for the tests)."""
    batch = batch_at(block, i)
    loss, grads = row_grads(params, batch)
    dense = []
    for table, indices, g_rows in zip(params, (batch.center, batch.context), grads):
        rows, g = coalesce(indices, g_rows, table.shape[0])
        dense.append(jnp.zeros_like(table).at[rows].add(g, mode="drop"))
    return loss, tuple(dense)  # type: ignore[return-value]


def sharded_scan(c: Settings, mesh: Mesh, length: int) -> Any:
    """`scan_steps` on every rank at once: parameters and optimiser state replicated, each rank's
    block its own (the leading rank axis), its losses its slice's."""
    def run(params: Params, state: Any, block: Sharded, start: jax.Array) -> tuple[Params, Any, jax.Array]:
        params, state, losses = scan_steps(c, params, state, jax.tree.map(lambda a: a[0], block), start, length)
        return params, state, losses[None]

    # check_vma off: pmean's and the lazy step's results are the same on every rank, which the
    # all-gathered union is too, though shard_map cannot infer it of an all_gather.
    return jax.jit(jax.shard_map(run, mesh=mesh, in_specs=(P(), P(), P(RANKS), P()),
                                 out_specs=(P(), P(), P(RANKS)), check_vma=False), donate_argnums=(0, 1))


def join(spec: RunSpec) -> World:
    """This process among the ranks (`jax.distributed`, gloo's CPU collectives), before anything
    starts a JAX client; one process of one rank for a one-process run."""
    if spec.workers == 1 or refusal(spec) is not None:  # a refused spec is Backend's one line
        return World(0, 1)
    address = os.environ.get(COORDINATOR_VARIABLE)
    if not address:
        raise BenchError(f"a {spec.workers}-worker jax run needs {COORDINATOR_VARIABLE} (the launcher sets it): "
                         f"start it with python -m bench train --workers {spec.workers}")
    launched = World.from_env()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=address, num_processes=launched.size,
                               process_id=launched.rank, local_device_ids=[0])
    return World(jax.process_index(), jax.process_count())


def agreed(values: Sequence[int]) -> np.ndarray:
    """Each value's maximum over the ranks (one small all-gather, before the clock)."""
    return np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int64))).reshape(-1, len(values)).max(0)


def distinct(ids: np.ndarray, vocab: int) -> int:
    """Rows a step's coalescing finds: distinct ids in range (packed padding's V is dropped)."""
    return int(np.unique(ids[ids < vocab]).size)


_scan = jax.jit(scan_steps, static_argnums=(0, 5), donate_argnums=(1, 2))
_PROGRAMS: dict[tuple, Any] = {}  # compiled scans by settings, device, shapes and length
_TALLIES: dict[tuple, list[Collective]] = {}  # a data-parallel program's collectives a step


class JaxBackend(Backend):
    name = "jax"

    def __init__(self, spec: RunSpec, init_center: np.ndarray, init_context: np.ndarray) -> None:
        world = join(spec)  # first: capabilities() below starts the JAX client
        super().__init__(spec, init_center, init_context)
        self.world = world
        index = self.gpu_index
        self.device = jax.local_devices(backend="cpu")[0] if index is None else jax.devices("gpu")[index]
        self.settings = Settings(spec.sparse, spec.optimizer, spec.lr, spec.beta1, spec.beta2, spec.eps,
                                 init_center.shape[0], world.size)
        self.params: Params = tuple(jax.device_put(t, self.device) for t in (init_center, init_context))
        self.state = jax.device_put(init_state(self.settings, self.params), self.device)
        self.steps: list[list[Collective]] = []  # each trained step's collectives (data-parallel)
        if world.size > 1:  # one CPU device a process, in rank order: parameters and state replicated
            self.mesh = Mesh(np.array(jax.devices()), (RANKS,))
            replicated = NamedSharding(self.mesh, P())
            self.params, self.state = jax.tree.map(
                lambda a: jax.make_array_from_process_local_data(replicated, np.asarray(a)), (self.params, self.state))

    @classmethod
    def gpu_count(cls) -> int:
        try:
            return len(jax.devices("gpu"))
        except RuntimeError:  # no GPU platform in this jaxlib
            return 0

    @classmethod
    def versions(cls) -> dict[str, str]:
        import jaxlib

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "optax": optax.__version__,
                "numpy": np.__version__}

    def device_name(self) -> str:
        return "cpu" if self.device.platform == "cpu" else self.device.device_kind

    def peak_memory_bytes(self) -> int | None:
        """XLA's allocator peak on a GPU; the CPU client keeps no such statistics (None)."""
        if self.device.platform == "cpu":
            return None
        stats = self.device.memory_stats() or {}
        return int(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else None

    def _key(self, block: Block, length: int) -> tuple:
        return (self.settings, self.device, jax.tree.structure(block),
                tuple((a.shape, a.dtype) for a in jax.tree.leaves(block)), length)

    def _program(self, block: Block, length: int) -> Any:
        """The scan of `length` steps for this block shape, compiled ahead (not run) the first time."""
        key = self._key(block, length)
        if key not in _PROGRAMS:
            if isinstance(block, Sharded):
                scan = sharded_scan(self.settings, self.mesh, length)
                _PROGRAMS[key] = scan.lower(self.params, self.state, block, np.int32(0)).compile()
                _TALLIES[key] = TALLY.step
            else:
                _PROGRAMS[key] = _scan.lower(self.settings, self.params, self.state, block, np.int32(0),
                                             length).compile()
        return _PROGRAMS[key]

    def _laid(self, batches: Sequence[Batch], length: int) -> list[tuple[np.ndarray, ...]]:
        """Each batch's arrays as the step reads them, in its Arrays' field order: padded as given;
        packed by `common.packing.pack` at `length` slots, padding slots given id V (every scatter
        drops them: PackedArrays)."""
        if self.spec.layout != "packed":
            return [tuple(b) for b in batches]
        out = []
        for b in (pack(b, length) for b in batches):
            ids = np.where(np.arange(b.ids.size) < b.slots, b.ids, np.int32(self.settings.vocab))
            out.append((b.center, ids, b.example, b.label, b.weight))
        return out

    def prepare(self, batches: Sequence[Batch], scales: Sequence[float] | None = None) -> Stacked:
        """The epoch on the device, batches stacked in runs of one shape (the last batch is shorter);
        packed, re-laid first by `common.packing.pack` (one slot count for the epoch). On a
        data-parallel rank, its slices with their loss factors `scales` (`_prepare_rank`)."""
        if self.world.size > 1:
            return self._prepare_rank(batches, scales or [1.0] * len(batches))
        kind = PackedArrays if self.spec.layout == "packed" else PaddedArrays
        laid = self._laid(batches, packed_length(batches))
        blocks = [kind(*(jax.device_put(np.stack(f), self.device) for f in zip(*run))) for run in runs(laid)]
        return Stacked([(block, 0, steps_in(block)) for block in blocks], blocks)

    def _prepare_rank(self, batches: Sequence[Batch], scales: Sequence[float]) -> Stacked:
        """A rank's slices laid out as in one process, at the ranks' common shapes (agreed before
        the clock): the epoch's longest packed length, each batch's longest slice (shorter ones
        padded with rows of id 0 and, padded layout, mask 0, whose loss and gradients are 0), and
        for the sparse step each table's K (module docstring). Each step's gradient is scaled by
        its slice's loss factor, the padded layout's by padded rows / rows too (its loss is the
        mean over the padded rows)."""
        packed, vocab = self.spec.layout == "packed", self.settings.vocab
        rows = [b.center.size for b in batches]
        facts = agreed([packed_length(batches) if packed else 0, *rows])
        longest = [int(n) for n in facts[1:]]
        row_fields = 1 if packed else 4  # the arrays with a row per example (packed: center; padded: all)
        laid = [tuple(np.pad(a, [(0, n - a.shape[0])] + [(0, 0)] * (a.ndim - 1)) if f < row_fields else a
                      for f, a in enumerate(arrays))
                for arrays, n in zip(self._laid(batches, int(facts[0])), longest)]
        unpad = np.ones(len(batches)) if packed else np.array(longest) / np.array(rows)
        factor = (np.asarray(scales) * unpad).astype(np.float32)
        if self.spec.sparse:
            most = agreed([max(distinct(a[f], vocab) for a in laid) for f in range(2)])  # centers, context ids
            self.settings = self.settings._replace(caps=tuple(min(rounded(int(m)), vocab) for m in most))
        kind = PackedArrays if packed else PaddedArrays
        sharding = NamedSharding(self.mesh, P(RANKS))

        def spread(a: np.ndarray) -> jax.Array:  # this rank's part of a global array with a leading rank axis
            return jax.make_array_from_process_local_data(sharding, a[None])

        blocks, start = [], 0
        for run in runs(laid):
            end = start + len(run)
            blocks.append(Sharded(kind(*(spread(np.stack(f)) for f in zip(*run))), spread(factor[start:end]),
                                  spread(unpad[start:end].astype(np.float32))))
            start = end
        return Stacked([(block, 0, steps_in(block)) for block in blocks], blocks)

    def sync(self) -> None:
        jax.block_until_ready((self.params, self.state))

    def train(self, prepared: Stacked) -> np.ndarray:
        """Each view's steps as scans of CHUNK steps, then single steps. The programs every block of
        the epoch needs (two per batch shape) are compiled on the first call, so compilation stays
        in the worker's timed-apart first step whatever lengths the caller's segments have (one
        scan per segment compiled each new segment length, and the short last batch, inside the
        timed segments). Dispatch is asynchronous: one sync, when the losses are read."""
        for block in prepared.epoch:
            for length in (1, CHUNK) if steps_in(block) >= CHUNK else (1,):
                self._program(block, length)
        losses = []
        for block, lo, hi in prepared.views:
            chunked = hi - (hi - lo) % CHUNK
            for start, length in [(s, CHUNK) for s in range(lo, chunked, CHUNK)] + [(s, 1) for s in range(chunked, hi)]:
                self.params, self.state, step_losses = self._program(block, length)(
                    self.params, self.state, block, np.int32(start))
                if isinstance(block, Sharded):  # this rank's row of the (N, length) losses
                    step_losses = step_losses.addressable_data(0)[0]
                    self.steps.extend([_TALLIES[self._key(block, length)]] * length)
                losses.append(step_losses)
        return np.concatenate([np.asarray(x, dtype=np.float64) for x in losses]) if losses else np.zeros(0)

    def step(self, prepared_batch: Stacked) -> None:
        self.train(prepared_batch)

    def forward(self, prepared_batch: Stacked) -> None:
        loss_at(self.params, *prepared_batch.first()).block_until_ready()

    def forward_backward(self, prepared_batch: Stacked) -> None:
        grads_at = row_grads_at if self.spec.sparse else dense_grads_at
        jax.block_until_ready(grads_at(self.params, *prepared_batch.first()))

    def loss_and_grads(self, batch: Batch) -> tuple[float, np.ndarray, np.ndarray]:
        grads_at = densified_row_grads_at if self.spec.sparse else dense_grads_at
        loss, grads = grads_at(self.params, *self.prepare([batch]).first())
        return float(loss), *(np.asarray(g, dtype=np.float64) for g in grads)  # type: ignore[return-value]

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies (the buffers are donated next step); a rank's own replica of each table."""
        return tuple(np.array(t.addressable_data(0)) for t in self.params)  # type: ignore[return-value]

    def communication_seconds(self, repeats: int = 20) -> float | None:
        """The seconds a step spends in its collectives, timed apart from it (inside a compiled scan
        nothing can be timed around one): the last step's collectives (Tally: kind, dtype, size)
        on zeros, `repeats` times after a barrier, the mean. A collective itself: every rank calls
        it at the same point (the rank runner, after `communication`); None where no step communicated."""
        if not self.steps:
            return None
        step = self.steps[-1]

        def run(*xs: jax.Array) -> list[jax.Array]:
            return [jax.lax.psum(x, RANKS) if c.kind == "allreduce" else jax.lax.all_gather(x, RANKS, tiled=True)
                    for x, c in zip(xs, step)]

        spread = NamedSharding(self.mesh, P(RANKS))
        xs = [jax.make_array_from_process_local_data(spread, np.zeros((1, int(c.elements)), c.dtype)) for c in step]
        probe = jax.jit(jax.shard_map(run, mesh=self.mesh, in_specs=P(RANKS), out_specs=P(RANKS), check_vma=False))
        jax.block_until_ready(probe(*xs))  # compiled, and the ranks' connections warm
        multihost_utils.sync_global_devices("communication_seconds")
        start = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(probe(*xs))
        return (time.perf_counter() - start) / repeats

    def communication(self) -> list[dict]:
        """The collectives each trained step handed gloo (counted off the traced arrays: Tally),
        averaged over the steps (K, and so the sparse bytes, may change by epoch)."""
        return per_step(self.steps)


def runs(laid: list[tuple[np.ndarray, ...]]) -> list[list[tuple[np.ndarray, ...]]]:
    """Consecutive batches of one shape (by their centers: only an epoch's last batch is shorter)."""
    out, start = [], 0
    for end in range(1, len(laid) + 1):
        if end == len(laid) or laid[end][0].shape != laid[start][0].shape:
            out.append(laid[start:end])
            start = end
    return out


class Stacked:
    """Prepared batches: views (block, lo, hi) of stacked (n, B, ...) device arrays, one block per
    batch shape, and every block of the epoch they came from. Slicing (the worker's segments, the
    micro-benchmarks' single batches) makes new views without touching the device."""

    def __init__(self, views: list[tuple[Arrays, int, int]], epoch: list[Arrays]) -> None:
        self.views, self.epoch = views, epoch

    def __len__(self) -> int:
        return sum(hi - lo for _, lo, hi in self.views)

    def __getitem__(self, key: int | slice) -> Stacked:
        if isinstance(key, int):
            if not 0 <= key < len(self):
                raise IndexError(key)
            key = slice(key, key + 1)
        start, stop, stride = key.indices(len(self))
        if stride != 1:
            raise ValueError("prepared batches slice with step 1 only")
        views, offset = [], 0
        for block, lo, hi in self.views:
            a, b = max(lo, lo + start - offset), min(hi, lo + stop - offset)
            if a < b:
                views.append((block, a, b))
            offset += hi - lo
        return Stacked(views, self.epoch)

    def first(self) -> tuple[Arrays, int]:
        """The block holding the first batch, and its index there."""
        block, lo, _ = self.views[0]
        return block, lo
