"""The limit row: the whole skip-gram step as three fused numba passes over the batch.

Not a framework but a yardstick: the same function as every backend (gather, dot, masked BCE,
backward, scatter, dense Adam / lazy Adam / SGD), written the way a person tuning for this one
model would, so each framework's rate can be read as a share of what the machine can do.

A batch is read in either layout as each row's slot range over flat arrays (`Rows`): the recipe's
padded rows (60 slots, masked ones skipped) or packed rows (common/packing.py: real slots only).
A step is three parallel passes (`@njit(parallel=True)`, `prange`), one launch each:
1. per example: the row's logits, then in one loop with no call (so it vectorises: exp is a
   polynomial, the log1p terms one log of their product) its loss and the gradient of each
   logit, then the center row's gradient (each example owns its outputs: no races);
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
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from backends.base import Backend
from common.batches import Batch
from common.errors import BenchError
from common.packing import PackedBatch, pack, pack_epoch, packed_length
from common.spec import RunSpec

try:
    import numba
    from llvmlite import ir as llvm_ir
    from numba import njit, prange
    from numba.core import types
    from numba.extending import intrinsic
except ImportError as exc:  # the registry turns this into "run it in its own env: tox -e fused"
    raise ImportError(f"numba is not installed ({exc})") from None


class Rows(NamedTuple):
    """One batch as the kernels read it, in either layout: row b's slots are
    ids[bounds[b]:bounds[b + 1]]. Padded rows are the recipe's L slots each, `mask` marking the
    real ones; packed rows list real slots only (common/packing.py) and have no mask."""
    center: np.ndarray       # (B,) int32
    ids: np.ndarray          # (S,) int32: each slot's context or noise word
    label: np.ndarray        # (S,) uint8: 1 on contexts
    bounds: np.ndarray       # (B + 1,) int32
    mask: np.ndarray | None  # (S,) uint8 on padded rows, None on packed ones


def padded_rows(batch: Batch) -> Rows:
    """The recipe's rows, flattened (views where the arrays are already int32 / uint8)."""
    rows, length = batch.context_negative.shape
    def flat(a: np.ndarray, dtype: type) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=dtype).reshape(-1)
    return Rows(flat(batch.center, np.int32), flat(batch.context_negative, np.int32), flat(batch.label, np.uint8),
                np.arange(0, (rows + 1) * length, length, dtype=np.int32), flat(batch.mask, np.uint8))


def packed_rows(batch: PackedBatch) -> Rows:
    """The packed batch's real slots; each row's range from `example` (rows are listed in order)."""
    n = batch.slots
    counts = np.bincount(batch.example[:n], minlength=batch.center.size)
    bounds = np.zeros(batch.center.size + 1, np.int32)
    np.cumsum(counts, out=bounds[1:])
    return Rows(batch.center, batch.ids[:n], batch.label[:n].astype(np.uint8), bounds, None)

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


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bits are the low 32 of the integer `bits`: a register move, so
    loops calling it still vectorise (numba has no scalar bit cast of its own)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = context.cast(builder, args[0], signature.args[0], types.int32)
        return builder.bitcast(low, llvm_ir.FloatType())
    return types.float32(bits), codegen


@njit(inline="always", fastmath={"contract"})
def _exp_neg(a):
    """exp(-a) for float32 a >= 0, without a call, so the loop over a row's slots vectorises
    (numba's vectorised exp needs SVML, which this llvmlite is not built for: PERFORMANCE.md).
    Cephes' expf: a = n ln 2 - z, |z| <= ln 2 / 2 (ln 2 in two parts, so z is exact), e^-z by its
    degree-7 polynomial, 2^-n put into the exponent bits. Relative error at most 7.9e-8 (under one
    float32 ulp; numpy's float32 exp: 1.9e-7) against float64 exp on every 2^-12 from 0 to 87
    (tested); a > 87 gives exp(-87) = 1.6e-38 instead of a smaller number (at most 1.6e-38 off,
    far below any loss or sigmoid it feeds)."""
    y = -min(a, np.float32(87.0))
    n = np.floor(y * np.float32(1.4426950408889634) + np.float32(0.5))  # in [-126, 0]
    z = y - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * z + np.float32(1.3981999507e-3)
    p = p * z + np.float32(8.3334519073e-3)
    p = p * z + np.float32(4.1665795894e-2)
    p = p * z + np.float32(1.6666665459e-1)
    p = p * z + np.float32(5.0000001201e-1)
    p = p * z * z + z + np.float32(1.0)
    return p * _float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


# Slots whose 1 + e^-|x| one float64 product gathers before its log: each factor is in (1, 2], so
# 512 of them stay below 2^512, far from float64's 1.8e308.
PRODUCT_SLOTS = 512


@njit(**KERNEL)
def _forward(center_w, context_w, center, ids, label, bounds, mask, grad_pred, grad_v, losses, owned, owned_count,
             backward):
    """Pass 1: per example b (its slots ids[bounds[b]:bounds[b + 1]], `mask` skipping padded
    rows' padding; None on packed rows, whose listed slots are all real): the logits v_b . u_s,
    the masked-mean BCE, d loss / d logit and the center row's gradient sum_s g_s u_s (when
    `backward`). The logits are stored first (in grad_pred), so the loop of exp, loss and
    sigmoid has no gather and vectorises; one exp per logit serves both the loss,
    max(x, 0) - xy + log(1 + e^-|x|), and the sigmoid, and a row's log(1 + e) terms are one log
    of their float64 product (exact to float64 rounding: no log1p per slot). With `backward`,
    it also sorts each row's positions by the thread that owns their word
    (owned[t, b, :owned_count[t, b]], offsets from bounds[b], in order): pass 2's work lists."""
    batch = center.size
    dim = center_w.shape[1]
    threads = owned.shape[0]
    one, zero = np.float32(1.0), np.float32(0.0)
    for b in prange(batch):
        lo, hi = bounds[b], bounds[b + 1]
        if backward:
            owned_count[:, b] = 0
            for j in range(hi - lo):
                t = _owner(ids[lo + j], threads)
                owned[t, b, owned_count[t, b]] = j
                owned_count[t, b] += 1
        v = center_w[center[b]]
        count, end = hi - lo, hi
        if mask is not None:  # padded: the loops below stop after the last real slot
            count, end = 0, lo
            for s in range(lo, hi):
                count += mask[s]
                if mask[s] != 0:
                    end = s + 1
            grad_pred[end:hi] = 0.0  # the padding pass 2 walks (it marks, adds nothing)
        weight = np.float32(1.0 / (count * batch))
        for s in range(lo, end):
            x = zero
            if mask is None or mask[s] != 0:
                u = context_w[ids[s]]
                for d in range(dim):
                    x += v[d] * u[d]
            grad_pred[s] = x
        total = 0.0
        for chunk in range(lo, end, PRODUCT_SLOTS):
            product = 1.0
            for s in range(chunk, min(chunk + PRODUCT_SLOTS, end)):
                x = grad_pred[s]
                y = np.float32(label[s])
                real = one if mask is None else np.float32(mask[s])
                e = _exp_neg(abs(x)) * real
                total += real * (max(x, zero) - x * y)
                product *= 1.0 + np.float64(e)
                sigmoid = (one if x >= zero else e) / (one + e)
                grad_pred[s] = (sigmoid - y) * weight * real
            total += math.log(product)
        losses[b] = total / count
        if backward:
            grad_v[b, :] = 0.0
            for s in range(lo, end):
                if mask is None or mask[s] != 0:
                    g = grad_pred[s]
                    u = context_w[ids[s]]
                    for d in range(dim):
                        grad_v[b, d] += g * u[d]


@njit(**KERNEL)
def _scatter(center, ids, bounds, center_w, grad_pred, grad_v, center_grad, context_grad, center_marker,
             context_marker, owned, owned_count):
    """Pass 2: context_grad[ids_s] += g_s v_b and center_grad[center_b] += grad_v_b, each thread
    on the rows it owns, in batch order; every row the batch lists is marked (a padded row's
    masked padding too, as in the reference), by its owner."""
    batch = center.size
    dim = center_w.shape[1]
    threads = owned.shape[0]
    for t in prange(threads):
        for b in range(batch):
            c = center[b]
            if _owner(c, threads) == t:
                center_marker[c] = 1
                for d in range(dim):
                    center_grad[c, d] += grad_v[b, d]
            lo = bounds[b]
            for k in range(owned_count[t, b]):
                s = lo + owned[t, b, k]
                r = ids[s]
                if context_marker[r] == 0:  # written once a step: the marker's lines stay shared
                    context_marker[r] = 1
                g = grad_pred[s]
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
        self._grad_pred = np.zeros(batch * length, np.float32)  # per slot: the logit, then its gradient
        self._grad_v = np.zeros((batch, spec.data.embed), np.float32)
        self._losses = np.zeros(batch, np.float64)
        self._work: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _work_lists(self) -> tuple[np.ndarray, np.ndarray]:
        """Pass 2's per-thread position lists, for the thread count numba uses now."""
        threads = numba.get_num_threads()
        if threads not in self._work:
            batch, length = self.spec.data.batch_size, self.spec.data.row_length
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

    def prepare(self, batches: Sequence[Batch], scales: Sequence[float] | None = None) -> list[Rows]:
        """Flat contiguous int32 / uint8 arrays, as the kernels read them: the recipe's rows, or
        the epoch packed by the shared `pack_epoch` (every backend gets the same packed arrays).
        One process only (no engine, registry.refusal): a slice's loss factor is not in its kernel."""
        if scales is not None and any(s != 1.0 for s in scales):
            raise BenchError("the fused kernel trains in one process: it takes no data-parallel loss factors")
        if self.spec.layout == "packed":
            return [packed_rows(b) for b in pack_epoch(batches)]
        return [padded_rows(b) for b in batches]

    def _loss(self, rows: Rows, backward: bool) -> float:
        """Pass 1; the batch's loss (and, with `backward`, the logits' and center rows' gradients)."""
        n = rows.center.size
        owned, owned_count = self._work_lists()
        _forward(self.center.w, self.context.w, rows.center, rows.ids, rows.label, rows.bounds, rows.mask,
                 self._grad_pred, self._grad_v[:n], self._losses[:n], owned, owned_count, backward)
        return float(self._losses[:n].sum() / n)

    def _backward(self, rows: Rows) -> None:
        """Pass 2: both tables' gradients and row markers."""
        n = rows.center.size
        owned, owned_count = self._work_lists()
        _scatter(rows.center, rows.ids, rows.bounds, self.center.w, self._grad_pred, self._grad_v[:n],
                 self.center.grad, self.context.grad, self.center.marker, self.context.marker, owned, owned_count)

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

    def step(self, prepared_batch: Rows) -> float:
        loss = self._loss(prepared_batch, backward=True)
        self._backward(prepared_batch)
        self.step_count += 1
        self._update()
        return loss

    def train(self, prepared: list[Rows]) -> np.ndarray:
        return np.array([self.step(batch) for batch in prepared], dtype=np.float64)

    def forward(self, prepared_batch: Rows) -> None:
        self._loss(prepared_batch, backward=False)

    def forward_backward(self, prepared_batch: Rows) -> None:
        self._loss(prepared_batch, backward=True)
        self._backward(prepared_batch)
        self.center.clear()
        self.context.clear()

    def loss_and_grads(self, batch: Batch) -> tuple[float, np.ndarray, np.ndarray]:
        if self.spec.layout == "packed":
            prepared = packed_rows(pack(batch, packed_length([batch])))
        else:
            prepared = padded_rows(batch)
        loss = self._loss(prepared, backward=True)
        self._backward(prepared)
        grads = self.center.grad.astype(np.float64), self.context.grad.astype(np.float64)
        self.center.clear()
        self.context.clear()
        return loss, *grads

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        return self.center.w.copy(), self.context.w.copy()
