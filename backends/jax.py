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
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from backends.base import Backend
from common.batches import Batch
from common.lazy_adam import dense_shaped
from common.packing import pack_epoch
from common.spec import RunSpec

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


class LazyAdamState(NamedTuple):
    step: jax.Array
    m: Params
    v: Params


def rows_loss(v: jax.Array, u: jax.Array, mask: jax.Array, label: jax.Array) -> jax.Array:
    """The canonical loss from the gathered rows: v (B, D) centers, u (B, L, D) contexts and noise."""
    pred = jnp.einsum("bld,bd->bl", u, v, precision=HIGHEST)
    mask, label = mask.astype(pred.dtype), label.astype(pred.dtype)  # uint8 on the device, cast here (fused)
    bce = jnp.maximum(pred, 0) - pred * label + jnp.log1p(jnp.exp(-jnp.abs(pred)))
    return jnp.mean(jnp.sum(bce * mask, axis=1) / jnp.sum(mask, axis=1))


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


def coalesce(indices: jax.Array, grads: jax.Array, vocab: int) -> tuple[jax.Array, jax.Array]:
    """Unique rows, ascending and padded with `vocab` (out of range), and their summed gradients,
    fixed shapes: min(indices, vocab) rows (6,719 rather than 30,720 for PTB's context table).

    What `jnp.unique(size=, return_inverse=True)` returns, without its stable sort (4 ms a step at
    PTB's shapes): the presence marker's running count is each used row's slot; each slot gets
    its row by a scatter, each index its slot by a gather. The barriers keep XLA from fusing the
    backward pass into the scatter (it then recomputed it per scattered element: 16 ms for the
    coalescing instead of 5, PERFORMANCE.md)."""
    flat = indices.reshape(-1)
    size = min(flat.size, vocab)
    marker = present(flat, vocab)
    slot = jnp.cumsum(marker, dtype=jnp.int32) - 1
    rows = jnp.full(size, vocab, jnp.int32).at[jnp.where(marker, slot, size)].set(
        jnp.arange(vocab, dtype=jnp.int32), mode="drop")
    segment = slot.at[flat].get(mode="fill", fill_value=size)  # ids >= vocab (packed padding): dropped
    summed = jax.ops.segment_sum(jax.lax.optimization_barrier(grads).reshape(flat.size, -1), segment,
                                 num_segments=size)
    return rows, jax.lax.optimization_barrier(summed)


def batch_at(block: Arrays, i: jax.Array | int) -> Arrays:
    """Batch i of a stacked block (a dynamic index: one program serves every i)."""
    return type(block)(*(jax.lax.dynamic_index_in_dim(a, i, keepdims=False) for a in block))


def dense_optimizer(c: Settings) -> optax.GradientTransformation:
    return optax.sgd(c.lr) if c.optimizer == "sgd" else optax.adam(c.lr, b1=c.beta1, b2=c.beta2, eps=c.eps)


def init_state(c: Settings, params: Params) -> Any:
    if not c.sparse:
        return dense_optimizer(c).init(params)
    zeros = [tuple(jnp.zeros_like(t) for t in params) for _ in range(2)]  # distinct buffers: each is donated
    return LazyAdamState(jnp.zeros((), jnp.int32), *zeros)


def dense_update(c: Settings, params: Params, state: Any, batch: Arrays) -> tuple[Params, Any, jax.Array]:
    loss, grads = batch.table_grads(params)
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


def lazy_update(c: Settings, params: Params, state: LazyAdamState, batch: Arrays) -> tuple[Params, Any, jax.Array]:
    """torch's SparseAdam (or row-wise SGD): moments and weights of the batch's unique rows only, global step t."""
    loss, grads = row_grads(params, batch)
    step = state.step + 1
    t = step.astype(jnp.float32)
    step_size = c.lr * jnp.sqrt(1.0 - c.beta2 ** t) / (1.0 - c.beta1 ** t)
    tables, ms, vs = zip(*[(masked_step if dense_shaped(c.vocab, indices.size) else rows_step)(
        c, step_size, table, m, v, indices, g)
        for table, m, v, indices, g in zip(params, state.m, state.v, (batch.center, batch.context), grads)])
    return tuple(tables), LazyAdamState(step, tuple(ms), tuple(vs)), loss  # type: ignore[arg-type]


def scan_steps(c: Settings, params: Params, state: Any, block: Arrays, start: jax.Array,
               length: int) -> tuple[Params, Any, jax.Array]:
    """`length` steps on batches start, start+1, ... of a stacked block (read in place, no slice copies)."""
    update = lazy_update if c.sparse else dense_update

    def body(carry, i):
        params, state, loss = update(c, *carry, batch_at(block, i))
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


_scan = jax.jit(scan_steps, static_argnums=(0, 5), donate_argnums=(1, 2))
_PROGRAMS: dict[tuple, Any] = {}  # compiled scans by settings, device, shapes and length


class JaxBackend(Backend):
    name = "jax"

    def __init__(self, spec: RunSpec, init_center: np.ndarray, init_context: np.ndarray) -> None:
        super().__init__(spec, init_center, init_context)
        index = self.gpu_index
        self.device = jax.devices("cpu")[0] if index is None else jax.devices("gpu")[index]
        self.settings = Settings(spec.sparse, spec.optimizer, spec.lr, spec.beta1, spec.beta2, spec.eps,
                                 init_center.shape[0])
        self.params: Params = tuple(jax.device_put(t, self.device) for t in (init_center, init_context))
        self.state = jax.device_put(init_state(self.settings, self.params), self.device)

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

    def _program(self, block: Arrays, length: int) -> Any:
        """The scan of `length` steps for this block shape, compiled ahead (not run) the first time."""
        key = (self.settings, self.device, type(block), tuple((a.shape, a.dtype) for a in block), length)
        if key not in _PROGRAMS:
            _PROGRAMS[key] = _scan.lower(self.settings, self.params, self.state, block, np.int32(0), length).compile()
        return _PROGRAMS[key]

    def prepare(self, batches: Sequence[Batch]) -> Stacked:
        """The epoch on the device, batches stacked in runs of one shape (the last batch is shorter);
        packed, re-laid first by `common.packing.pack_epoch` (one slot count for the epoch)."""
        if self.spec.layout == "packed":
            laid: Sequence[Any] = pack_epoch(batches)
            kind, fields = PackedArrays, ("center", "ids", "example", "label", "weight")
        else:
            laid, kind, fields = batches, PaddedArrays, ("center", "context_negative", "mask", "label")
        blocks, start = [], 0
        for end in range(1, len(laid) + 1):
            if end == len(laid) or laid[end].center.shape != laid[start].center.shape:
                arrays = {f: np.stack([getattr(b, f) for b in laid[start:end]]) for f in fields}
                if kind is PackedArrays:  # padding slots get id V: every scatter drops them (PackedArrays)
                    slots = np.array([b.slots for b in laid[start:end]])[:, None]
                    arrays["ids"] = np.where(np.arange(arrays["ids"].shape[1]) < slots, arrays["ids"],
                                             np.int32(self.settings.vocab))
                blocks.append(kind(*(jax.device_put(a, self.device) for a in arrays.values())))
                start = end
        return Stacked([(block, 0, int(block.center.shape[0])) for block in blocks], blocks)

    def sync(self) -> None:
        jax.block_until_ready((self.params, self.state))

    def train(self, prepared: Stacked) -> np.ndarray:
        """Each view's steps as scans of CHUNK steps, then single steps. The programs every block of
        the epoch needs (two per batch shape) are compiled on the first call, so compilation stays
        in the worker's timed-apart first step whatever lengths the caller's segments have (one
        scan per segment compiled each new segment length, and the short last batch, inside the
        timed segments). Dispatch is asynchronous: one sync, when the losses are read."""
        for block in prepared.epoch:
            for length in (1, CHUNK) if block.center.shape[0] >= CHUNK else (1,):
                self._program(block, length)
        losses = []
        for block, lo, hi in prepared.views:
            chunked = hi - (hi - lo) % CHUNK
            for start, length in [(s, CHUNK) for s in range(lo, chunked, CHUNK)] + [(s, 1) for s in range(chunked, hi)]:
                self.params, self.state, step_losses = self._program(block, length)(
                    self.params, self.state, block, np.int32(start))
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
        return np.array(self.params[0]), np.array(self.params[1])  # copies: the buffers are donated next step


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
