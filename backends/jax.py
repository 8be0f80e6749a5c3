"""JAX: one jit-compiled program per segment. `prepare` stacks the epoch's batches on the device;
`train` runs a segment's steps as one `lax.scan` (one dispatch, one sync), with the parameter
and optimiser buffers donated so XLA updates them in place. Dense runs use optax's Adam (torch's
form, checked in tests/backends/test_jax.py); sparse runs differentiate with respect to the
gathered rows and apply lazy Adam to the unique rows only, with fixed shapes (`jnp.unique` with
`size=`), so each batch shape compiles once."""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from backends.base import Backend
from common.batches import Batch
from common.spec import RunSpec

Params = tuple[jax.Array, jax.Array]  # (center table, context table)
Arrays = tuple[jax.Array, jax.Array, jax.Array, jax.Array]  # center, context_negative, mask, label
HIGHEST = jax.lax.Precision.HIGHEST  # full float32 dots on every device (GPUs would default to TF32)


def rows_loss(v: jax.Array, u: jax.Array, mask: jax.Array, label: jax.Array) -> jax.Array:
    """The canonical loss from the gathered rows: v (B, D) centers, u (B, L, D) contexts and noise."""
    pred = jnp.einsum("bld,bd->bl", u, v, precision=HIGHEST)
    mask, label = mask.astype(pred.dtype), label.astype(pred.dtype)  # uint8 on the device, cast here (fused)
    bce = jnp.maximum(pred, 0) - pred * label + jnp.log1p(jnp.exp(-jnp.abs(pred)))
    return jnp.mean(jnp.sum(bce * mask, axis=1) / jnp.sum(mask, axis=1))


def table_loss(params: Params, batch: Arrays) -> jax.Array:
    center, cn, mask, label = batch
    return rows_loss(params[0][center], params[1][cn], mask, label)


def coalesce(indices: jax.Array, row_grads: jax.Array, vocab: int) -> tuple[jax.Array, jax.Array]:
    """Unique rows (padded with `vocab`, out of range) and their summed gradients, fixed shapes."""
    flat = indices.reshape(-1)
    rows, inverse = jnp.unique(flat, size=flat.size, fill_value=vocab, return_inverse=True)
    return rows, jax.ops.segment_sum(row_grads.reshape(flat.size, -1), inverse.reshape(-1), num_segments=flat.size)


class LazyAdamState(NamedTuple):
    step: jax.Array
    m: Params
    v: Params


class JaxBackend(Backend):
    name = "jax"

    def __init__(self, spec: RunSpec, init_center: np.ndarray, init_context: np.ndarray) -> None:
        super().__init__(spec, init_center, init_context)
        index = self.gpu_index
        self.device = jax.devices("cpu")[0] if index is None else jax.devices("gpu")[index]
        self.params: Params = tuple(jax.device_put(t, self.device) for t in (init_center, init_context))
        self.vocab = init_center.shape[0]
        if spec.sparse:
            def zeros() -> Params:  # distinct buffers: each is donated
                return tuple(jnp.zeros_like(t) for t in self.params)  # type: ignore[return-value]
            self.state: Any = jax.device_put(LazyAdamState(jnp.zeros((), jnp.int32), zeros(), zeros()), self.device)
            update: Callable = self._lazy_update
        else:
            self.tx = (optax.sgd(spec.lr) if spec.optimizer == "sgd"
                       else optax.adam(spec.lr, b1=spec.beta1, b2=spec.beta2, eps=spec.eps))
            self.state = jax.device_put(self.tx.init(self.params), self.device)
            update = self._dense_update
        self._run = jax.jit(partial(self._scan, update), donate_argnums=(0, 1))
        self._loss = jax.jit(table_loss)
        self._grads = jax.jit(self._sparse_grads if spec.sparse else jax.value_and_grad(table_loss))

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

    # --- the step, traced once per batch shape and segment length
    def _dense_update(self, params: Params, state: Any, batch: Arrays) -> tuple[Params, Any, jax.Array]:
        loss, grads = jax.value_and_grad(table_loss)(params, batch)
        updates, state = self.tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    def _sparse_grads(self, params: Params, batch: Arrays) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Loss and gradients with respect to the gathered rows (B, D) and (B, L, D), not the tables."""
        center, cn, mask, label = batch
        return jax.value_and_grad(rows_loss, argnums=(0, 1))(params[0][center], params[1][cn], mask, label)

    def _lazy_update(self, params: Params, state: LazyAdamState, batch: Arrays) -> tuple[Params, Any, jax.Array]:
        """torch's SparseAdam: moments and weights of the batch's unique rows only, global step t."""
        s = self.spec
        loss, row_grads = self._sparse_grads(params, batch)
        step = state.step + 1
        t = step.astype(jnp.float32)
        step_size = s.lr * jnp.sqrt(1.0 - s.beta2 ** t) / (1.0 - s.beta1 ** t)
        new_params, new_m, new_v = [], [], []
        for table, m, v, indices, grads in zip(params, state.m, state.v, batch[:2], row_grads):
            rows, g = coalesce(indices, grads, self.vocab)
            if s.optimizer == "sgd":
                new_params.append(table.at[rows].add(-s.lr * g, mode="drop"))
                new_m.append(m), new_v.append(v)
                continue
            m_rows = s.beta1 * m.at[rows].get(mode="fill", fill_value=0) + (1.0 - s.beta1) * g
            v_rows = s.beta2 * v.at[rows].get(mode="fill", fill_value=0) + (1.0 - s.beta2) * g * g
            new_m.append(m.at[rows].set(m_rows, mode="drop"))
            new_v.append(v.at[rows].set(v_rows, mode="drop"))
            new_params.append(table.at[rows].add(-step_size * m_rows / (jnp.sqrt(v_rows) + s.eps), mode="drop"))
        return tuple(new_params), LazyAdamState(step, tuple(new_m), tuple(new_v)), loss

    @staticmethod
    def _scan(update: Callable, params: Params, state: Any, batches: Arrays) -> tuple[Params, Any, jax.Array]:
        def body(carry, batch):
            params, state, loss = update(*carry, batch)
            return (params, state), loss

        (params, state), losses = jax.lax.scan(body, (params, state), batches)
        return params, state, losses

    # --- the Backend interface
    def prepare(self, batches: Sequence[Batch]) -> Stacked:
        """The epoch on the device, batches stacked in runs of one shape (the last batch is shorter)."""
        blocks, start = [], 0
        for end in range(1, len(batches) + 1):
            if end == len(batches) or batches[end].center.shape != batches[start].center.shape:
                group = batches[start:end]
                blocks.append(tuple(jax.device_put(np.stack([getattr(b, f) for b in group]), self.device)
                                    for f in ("center", "context_negative", "mask", "label")))
                start = end
        return Stacked(blocks)

    def sync(self) -> None:
        jax.block_until_ready((self.params, self.state))

    def train(self, prepared: Stacked) -> np.ndarray:
        losses = []
        for block in prepared.blocks:
            self.params, self.state, block_losses = self._run(self.params, self.state, block)
            losses.append(block_losses)
        return np.concatenate([np.asarray(x, dtype=np.float64) for x in losses]) if losses else np.zeros(0)

    def step(self, prepared_batch: Stacked) -> None:
        self.train(prepared_batch)

    def forward(self, prepared_batch: Stacked) -> None:
        self._loss(self.params, prepared_batch.first()).block_until_ready()

    def forward_backward(self, prepared_batch: Stacked) -> None:
        jax.block_until_ready(self._grads(self.params, prepared_batch.first()))

    def loss_and_grads(self, batch: Batch) -> tuple[float, np.ndarray, np.ndarray]:
        arrays = self.prepare([batch]).first()
        loss, grads = self._grads(self.params, arrays)
        if self.spec.sparse:  # densify through the same deduplication the lazy update uses
            grads = tuple(jnp.zeros_like(table).at[rows].add(g, mode="drop")
                          for table, (rows, g) in zip(self.params, (coalesce(i, g, self.vocab)
                                                                    for i, g in zip(arrays[:2], grads))))
        return float(loss), *(np.asarray(g, dtype=np.float64) for g in grads)  # type: ignore[return-value]

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.params[0]), np.array(self.params[1])  # copies: the buffers are donated next step


class Stacked:
    """A run of prepared batches: blocks of (n, B, ...) device arrays. Slicing (the worker's
    segments, the micro-benchmarks' single batches) slices the blocks on the device."""

    def __init__(self, blocks: list[Arrays]) -> None:
        self.blocks = blocks
        self.lengths = [int(b[0].shape[0]) for b in blocks]

    def __len__(self) -> int:
        return sum(self.lengths)

    def __getitem__(self, key: int | slice) -> Stacked:
        start, stop, stride = (key, key + 1, 1) if isinstance(key, int) else key.indices(len(self))
        if isinstance(key, int) and not 0 <= key < len(self):
            raise IndexError(key)
        if stride != 1:
            raise ValueError("prepared batches slice with step 1 only")
        blocks, offset = [], 0
        for block, n in zip(self.blocks, self.lengths):
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            if lo < hi:
                blocks.append(block if (lo, hi) == (0, n) else tuple(a[lo:hi] for a in block))
            offset += n
        return Stacked(blocks)

    def first(self) -> Arrays:
        """The first batch alone, unstacked."""
        return tuple(a[0] for a in self.blocks[0])  # type: ignore[return-value]
