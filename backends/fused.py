"""The limit row: the whole skip-gram step as three fused numba passes over the batch.

Not a framework but a yardstick: the same function as every backend (gather, dot, masked BCE,
backward, scatter, dense Adam / lazy Adam / SGD), written the way a person tuning for this one
model would, so each framework's rate can be read as a share of what the machine can do.

A step is three parallel passes (`@njit(parallel=True)`, `prange`), one launch each:
1. per example: the row's logits, its loss, the gradient of each logit, and the center row's
   gradient (each example owns its outputs: no races);
2. the scatter into the (V, D) gradient tables, split by rows: a hash assigns each group of
   16 rows to a thread, pass 1 lists each example's positions by owner, and each thread walks the batch in
   order adding into its own rows only. Every row is summed in batch order whatever the thread
   count, so results are bit-identical on 1 or 2 threads (tested). The owner also marks each
   row the batch names (a marker array of size V, no sort): the rows lazy Adam and SGD update;
3. the optimiser, over rows: dense Adam on every row (a row the batch did not touch has a zero
   gradient, which is not read: bit-identical to reading it), lazy Adam or SGD on the marked
   rows only. It zeroes the gradient rows it consumed, so the tables are zero for the next step.
float32 throughout, as the frameworks; each example's loss is summed in float64.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from backends.base import Backend
from common.batches import Batch
from common.spec import RunSpec

try:
    import numba
    from numba import njit, prange
except ImportError as exc:  # the registry turns this into "run it in its own env: tox -e fused"
    raise ImportError(f"numba is not installed ({exc})") from None

Prepared = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # center, context_negative, mask, label
# No Python-style zero-division checks (every example has a context); reductions may be
# reassociated (vectorised dots): the same code runs on every thread count, so results do not move.
KERNEL = {"parallel": True, "cache": True, "error_model": "numpy", "fastmath": {"reassoc", "contract"}}
ADAM, LAZY_ADAM, SGD = 0, 1, 2


@njit(inline="always")
def _owner(row: int, threads: int) -> int:
    """The thread that adds into `row`: rows go in groups of 16 (16 rows of D float32s are 64 D
    bytes, whole cache lines, so two threads never write one line of a 64-byte aligned table),
    each group to a thread by the high bits of Knuth's multiplicative hash, which spreads the
    Zipf-frequent ids (the low ones) over the threads. Measured: scatter 0.35 -> 0.24 ms a step
    against one row per hash (PERFORMANCE.md)."""
    return (((row >> 4) * 2654435761) & 0xFFFFFFFF) * threads >> 32


@njit(**KERNEL)
def _forward(center_w, context_w, center, cn, mask, label, grad_pred, grad_v, losses, owned, owned_count,
             backward):
    """Pass 1: per example b, logits v_b . u_bj, the masked-mean BCE, d loss / d logit and the
    center row's gradient sum_j g_bj u_bj (when `backward`). One exp per logit serves both the
    loss, log(1 + e^-|x|), and the sigmoid. With `backward`, it also sorts each row's positions
    j by the thread that owns cn_bj (owned[t, b, :owned_count[t, b]], in order): pass 2's work lists."""
    batch, length = cn.shape
    dim = center_w.shape[1]
    threads = owned.shape[0]
    one = np.float32(1.0)
    for b in prange(batch):
        if backward:
            owned_count[:, b] = 0
            for j in range(length):
                t = _owner(cn[b, j], threads)
                owned[t, b, owned_count[t, b]] = j
                owned_count[t, b] += 1
        v = center_w[center[b]]
        count = 0
        for j in range(length):
            count += mask[b, j]
        weight = np.float32(1.0 / (count * batch))
        total = 0.0
        grad_v[b, :] = 0.0
        for j in range(length):
            if mask[b, j] == 0:
                grad_pred[b, j] = 0.0
                continue
            u = context_w[cn[b, j]]
            x = np.float32(0.0)
            for d in range(dim):
                x += v[d] * u[d]
            y = np.float32(label[b, j])
            e = np.exp(-np.abs(x))
            total += max(x, np.float32(0.0)) - x * y + np.log1p(e)
            if backward:
                sigmoid = one / (one + e) if x >= 0 else e / (one + e)
                g = (sigmoid - y) * weight
                grad_pred[b, j] = g
                for d in range(dim):
                    grad_v[b, d] += g * u[d]
        losses[b] = total / count


@njit(**KERNEL)
def _scatter(center, cn, center_w, grad_pred, grad_v, center_grad, context_grad, center_marker,
             context_marker, owned, owned_count):
    """Pass 2: context_grad[cn_bj] += g_bj v_b and center_grad[center_b] += grad_v_b, each thread
    on the rows it owns, in batch order; every row the batch names is marked (masked padding
    too, as in the reference), by its owner."""
    batch, length = cn.shape
    dim = center_w.shape[1]
    threads = owned.shape[0]
    for t in prange(threads):
        for b in range(batch):
            c = center[b]
            if _owner(c, threads) == t:
                center_marker[c] = 1
                for d in range(dim):
                    center_grad[c, d] += grad_v[b, d]
            for k in range(owned_count[t, b]):
                j = owned[t, b, k]
                r = cn[b, j]
                if context_marker[r] == 0:  # written once a step: the marker's lines stay shared
                    context_marker[r] = 1
                g = grad_pred[b, j]
                if g != 0.0:
                    for d in range(dim):
                        context_grad[r, d] += g * center_w[c, d]


@njit(inline="always")
def _update_row(w, m, v, g, row, touched, rule, beta1, beta2, step_size, sqrt_scale, eps):
    """One row of one table: Adam `w -= step_size * m / (sqrt_scale * sqrt(v) + eps)`, or SGD
    `w -= step_size * g`; lazy Adam and SGD skip untouched rows. Zeroes the gradient row read."""
    if not touched:
        if rule != ADAM:
            return
        for d in range(w.shape[1]):
            m[row, d] = beta1 * m[row, d]
            v[row, d] = beta2 * v[row, d]
            w[row, d] -= step_size * m[row, d] / (sqrt_scale * np.sqrt(v[row, d]) + eps)
        return
    if rule == SGD:
        for d in range(w.shape[1]):
            w[row, d] -= step_size * g[row, d]
            g[row, d] = 0.0
        return
    for d in range(w.shape[1]):
        gd = g[row, d]
        m[row, d] = beta1 * m[row, d] + (np.float32(1.0) - beta1) * gd
        v[row, d] = beta2 * v[row, d] + (np.float32(1.0) - beta2) * gd * gd
        w[row, d] -= step_size * m[row, d] / (sqrt_scale * np.sqrt(v[row, d]) + eps)
        g[row, d] = 0.0


@njit(**KERNEL)
def _update(center_w, center_m, center_v, center_grad, center_marker, context_w, context_m, context_v,
            context_grad, context_marker, rule, beta1, beta2, step_size, sqrt_scale, eps):
    """Pass 3: both tables, row by row (rows are independent), markers cleared for the next step."""
    for row in prange(center_w.shape[0]):
        _update_row(center_w, center_m, center_v, center_grad, row, center_marker[row] != 0, rule, beta1,
                    beta2, step_size, sqrt_scale, eps)
        _update_row(context_w, context_m, context_v, context_grad, row, context_marker[row] != 0, rule, beta1,
                    beta2, step_size, sqrt_scale, eps)
        center_marker[row] = 0
        context_marker[row] = 0


def aligned_zeros(shape: tuple[int, int]) -> np.ndarray:
    """A float32 array whose data starts on a 64-byte cache line (malloc gives 16), so a group of
    16 rows is whole lines (`_owner`)."""
    count = shape[0] * shape[1]
    raw = np.zeros(count + 16, np.float32)
    start = (-raw.ctypes.data % 64) // 4
    return raw[start:start + count].reshape(shape)


class Table:
    """One (V, D) table with its gradient (zero between steps), Adam moments and row markers."""

    def __init__(self, init: np.ndarray) -> None:
        self.w, self.grad, self.m, self.v = (aligned_zeros(init.shape) for _ in range(4))
        self.w[:] = init
        self.marker = np.zeros(self.w.shape[0], np.uint8)

    def state(self) -> tuple[np.ndarray, ...]:
        return self.w, self.m, self.v, self.grad, self.marker

    def clear(self) -> None:
        """Forget a gradient no step consumed (loss_and_grads, forward_backward)."""
        self.grad[self.marker != 0] = 0.0
        self.marker[:] = 0


class FusedBackend(Backend):
    name = "fused"

    def __init__(self, spec: RunSpec, init_center: np.ndarray, init_context: np.ndarray) -> None:
        super().__init__(spec, init_center, init_context)
        self.center, self.context = Table(init_center), Table(init_context)
        self.step_count = 0
        batch, length = spec.data.batch_size, spec.data.row_length
        self._grad_pred = np.zeros((batch, length), np.float32)
        self._grad_v = np.zeros((batch, spec.data.embed), np.float32)
        self._losses = np.zeros(batch, np.float64)
        self._work: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _work_lists(self) -> tuple[np.ndarray, np.ndarray]:
        """Pass 2's per-thread position lists, for the thread count numba uses now."""
        threads = numba.get_num_threads()
        if threads not in self._work:
            batch, length = self._grad_pred.shape
            self._work[threads] = (np.zeros((threads, batch, length), np.uint16),
                                   np.zeros((threads, batch), np.int32))
        return self._work[threads]

    @classmethod
    def gpu_count(cls) -> int:
        return 0  # a CUDA kernel of this step is still to be written (no GPU lent so far)

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"numba": numba.__version__, "numpy": np.__version__, "numba_threads": str(numba.get_num_threads()),
                "numba_threading_layer": numba.config.THREADING_LAYER}

    def device_name(self) -> str:
        return f"cpu (numba, {numba.get_num_threads()} threads)"

    def prepare(self, batches: Sequence[Batch]) -> list[Prepared]:
        """Contiguous int32 / uint8 arrays, as the kernels read them (mask and label stay bytes)."""
        def tight(a: np.ndarray, dtype: type) -> np.ndarray:
            return np.ascontiguousarray(a, dtype=dtype)
        return [(tight(b.center, np.int32), tight(b.context_negative, np.int32), tight(b.mask, np.uint8),
                 tight(b.label, np.uint8)) for b in batches]

    def _loss(self, batch: Prepared, backward: bool) -> float:
        """Pass 1; the batch's loss (and, with `backward`, the logits' and center rows' gradients)."""
        center, cn, mask, label = batch
        n = center.size
        owned, owned_count = self._work_lists()
        _forward(self.center.w, self.context.w, center, cn, mask, label, self._grad_pred[:n], self._grad_v[:n],
                 self._losses[:n], owned, owned_count, backward)
        return float(self._losses[:n].sum() / n)

    def _backward(self, batch: Prepared) -> None:
        """Pass 2: both tables' gradients and row markers."""
        center, cn, _, _ = batch
        n = center.size
        owned, owned_count = self._work_lists()
        _scatter(center, cn, self.center.w, self._grad_pred[:n], self._grad_v[:n], self.center.grad,
                 self.context.grad, self.center.marker, self.context.marker, owned, owned_count)

    def _update(self) -> None:
        """Pass 3, with the step's scalars: torch Adam's bias corrections folded into step_size and
        sqrt_scale (lr / c1 * m / (sqrt(v / c2) + eps)), SparseAdam's (lr sqrt(c2) / c1 * m /
        (sqrt(v) + eps)), or SGD's lr."""
        s, t = self.spec, self.step_count
        c1, c2 = 1.0 - s.beta1 ** t, 1.0 - s.beta2 ** t
        if s.optimizer == "sgd":
            rule, step_size, sqrt_scale = SGD, s.lr, 1.0
        elif s.sparse:
            rule, step_size, sqrt_scale = LAZY_ADAM, s.lr * math.sqrt(c2) / c1, 1.0
        else:
            rule, step_size, sqrt_scale = ADAM, s.lr / c1, 1.0 / math.sqrt(c2)
        scalars = (np.float32(x) for x in (s.beta1, s.beta2, step_size, sqrt_scale, s.eps))
        _update(*self.center.state(), *self.context.state(), rule, *scalars)

    def step(self, prepared_batch: Prepared) -> float:
        loss = self._loss(prepared_batch, backward=True)
        self._backward(prepared_batch)
        self.step_count += 1
        self._update()
        return loss

    def train(self, prepared: list[Prepared]) -> np.ndarray:
        return np.array([self.step(batch) for batch in prepared], dtype=np.float64)

    def forward(self, prepared_batch: Prepared) -> None:
        self._loss(prepared_batch, backward=False)

    def forward_backward(self, prepared_batch: Prepared) -> None:
        self._loss(prepared_batch, backward=True)
        self._backward(prepared_batch)
        self.center.clear()
        self.context.clear()

    def loss_and_grads(self, batch: Batch) -> tuple[float, np.ndarray, np.ndarray]:
        prepared = self.prepare([batch])[0]
        loss = self._loss(prepared, backward=True)
        self._backward(prepared)
        grads = self.center.grad.astype(np.float64), self.context.grad.astype(np.float64)
        self.center.clear()
        self.context.clear()
        return loss, *grads

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        return self.center.w.copy(), self.context.w.copy()
