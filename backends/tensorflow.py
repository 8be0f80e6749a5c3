"""TensorFlow 2: a tf.function step per batch; compiled, an XLA program per step on the CPU
and, on a GPU, a segment of steps as one XLA program looping on the device. Dense runs use the fused ResourceApplyAdam kernel; sparse runs
keep tf.gather's IndexedSlices gradients and apply lazy Adam row-wise with scatter ops (Keras 3's
Adam would densify its moments, so it is not used). TF32 is off: full float32 matmuls."""
from __future__ import annotations

import os
from typing import NamedTuple, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tensorflow[and-cuda] has no sm_90 kernels: on an H100 its non-XLA kernels are JIT-compiled from
# PTX at first start; a large cache keeps that to the first run (the default 1 GiB overflows).
os.environ.setdefault("CUDA_CACHE_MAXSIZE", str(4 << 30))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from backends.base import Backend  # noqa: E402
from common.batches import Batch  # noqa: E402
from common.lazy_adam import dense_shaped  # noqa: E402
from common.spec import RunSpec  # noqa: E402

Tensors = tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]
tf.config.experimental.enable_tensor_float_32_execution(False)


def skipgram_loss(center_w: tf.Variable, context_w: tf.Variable, center: tf.Tensor, cn: tf.Tensor,
                  mask: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
    v = tf.gather(center_w, center)                                   # (B, D)
    u = tf.gather(context_w, cn)                                      # (B, L, D)
    pred = tf.squeeze(tf.matmul(u, v[:, :, None]), axis=2)            # (B, L)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=pred)
    return tf.reduce_mean(tf.reduce_sum(bce * mask, axis=1) / tf.reduce_sum(mask, axis=1))


def present(indices: tf.Tensor, vocab: int) -> tf.Tensor:
    """(V,) bool: the rows the batch used (padding ids included, as the reference counts them)."""
    return tf.tensor_scatter_nd_update(tf.zeros([vocab], tf.bool), indices[:, None], tf.ones_like(indices, tf.bool))


def coalesce(grad: tf.IndexedSlices) -> tuple[tf.Tensor, tf.Tensor]:
    """Unique rows (tf.unique: a hash table, shapes that depend on the data) and their summed gradients."""
    rows, position = tf.unique(grad.indices)
    return rows, tf.math.unsorted_segment_sum(grad.values, position, tf.size(rows))


def unique_rows(grad: tf.IndexedSlices, vocab: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The batch's unique rows and their summed gradients in min(ids, V) slots, shapes XLA can
    compile (tf.unique's are data-dependent), found without a sort or a hash: the presence
    marker's running count is each used row's slot. Slots past the count hold a row the batch
    did not use (there is one: this form serves V > ids) and `valid` says which slots are real,
    so every index stays in range on every device. Returns (rows, summed, valid)."""
    used = present(grad.indices, vocab)
    count = tf.cumsum(tf.cast(used, tf.int32))
    size = tf.minimum(tf.size(grad.indices), vocab)
    spare = tf.argmin(tf.cast(used, tf.int32), output_type=tf.int32)  # some unused row
    slot = tf.where(used, count - 1, size)  # unused rows all land in one extra slot, cut off below
    rows = tf.tensor_scatter_nd_update(tf.fill([size + 1], spare), slot[:, None], tf.range(vocab))[:size]
    summed = tf.math.unsorted_segment_sum(grad.values, tf.gather(count - 1, grad.indices), size)
    return rows, summed, tf.range(size) < count[-1]


class Segments(NamedTuple):
    """A compiled run's prepared batches: (block, lo, hi) views of stacked (n, B, ...) device
    tensors, one block per run of equal batch shapes (an epoch's last batch is shorter). The
    worker slices it like a list; slicing touches no device memory."""

    views: tuple[tuple[Tensors, int, int], ...]

    @classmethod
    def stack(cls, batches: list[Tensors]) -> "Segments":
        groups: list[list[Tensors]] = []
        for batch in batches:
            if groups and groups[-1][0][1].shape == batch[1].shape:
                groups[-1].append(batch)
            else:
                groups.append([batch])
        return cls(tuple((tuple(tf.stack(arrays) for arrays in zip(*group)), 0, len(group)) for group in groups))

    def __len__(self) -> int:
        return sum(hi - lo for _, lo, hi in self.views)

    def __getitem__(self, key: int | slice) -> "Segments":
        start, stop, step = key.indices(len(self)) if isinstance(key, slice) else (key, key + 1, 1)
        if step != 1 or not 0 <= start < len(self) + (start == stop):
            raise IndexError(key)
        views, offset = [], 0
        for block, lo, hi in self.views:
            a, b = max(start - offset, 0) + lo, min(stop - offset, hi - lo) + lo
            if a < b:
                views.append((block, a, b))
            offset += hi - lo
        return Segments(tuple(views))

    def batches(self) -> list[Tensors]:
        """Each step's tensors (for the stage benchmarks and single-step calls)."""
        return [tuple(t[i] for t in block) for block, lo, hi in self.views for i in range(lo, hi)]


class TensorFlowBackend(Backend):
    name = "tensorflow"
    # Compiled runs on a GPU loop over a segment inside one XLA program (no launch per step). On
    # the CPU there is no launch to save and the loop measured slower than one XLA program per
    # step (2-core VM: 55-100k vs 110-135k examples/s, interleaved), so it stays per step there;
    # tests turn this on to check on the CPU the path GPUs take.
    DEVICE_LOOP_ON_CPU = False

    def __init__(self, spec: RunSpec, init_center: np.ndarray, init_context: np.ndarray) -> None:
        super().__init__(spec, init_center, init_context)
        self.device = "/CPU:0" if self.gpu_index is None else f"/GPU:{self.gpu_index}"
        # TF keeps int32 tensors of a GPU in host memory (its kernels' HostMemory rule): indices
        # go to the device as int64 so the epoch really is resident there.
        self.index_dtype = tf.int32 if self.gpu_index is None else tf.int64
        with tf.device(self.device):
            self.tables = [tf.Variable(init_center), tf.Variable(init_context)]
            self.slots = [(tf.Variable(tf.zeros_like(t)), tf.Variable(tf.zeros_like(t))) for t in self.tables]
            self.steps_done = tf.Variable(0, dtype=tf.int64)
        # ids a step per table (center, context) at the spec's batch shape, for the lazy step's layout
        self.ids_per_step = (spec.data.batch_size, spec.data.batch_size * spec.data.row_length)
        signature = [tf.TensorSpec([None], self.index_dtype), tf.TensorSpec([None, None], self.index_dtype),
                     tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.float32)]
        self.device_loop = spec.compile and (self.gpu_index is not None or self.DEVICE_LOOP_ON_CPU)
        self._step_fn = tf.function(self._train_step, input_signature=signature,
                                    jit_compile=(spec.compile and not self.device_loop) or None)
        # One XLA program per block shape; lo and hi are run-time scalars, so segments never recompile.
        blocks = [tf.TensorSpec([None, *s.shape], s.dtype) for s in signature]
        self._loop_fn = tf.function(self._train_loop, jit_compile=True,
                                    input_signature=[*blocks, tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)])
        self._grads_fn = tf.function(self._loss_and_grads, input_signature=signature)
        self._loss_fn = tf.function(lambda *batch: skipgram_loss(*self.tables, *batch), input_signature=signature)

    @classmethod
    def gpu_count(cls) -> int:
        return len(tf.config.list_physical_devices("GPU"))

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"tensorflow": tf.__version__, "numpy": np.__version__}

    def device_name(self) -> str:
        if self.device.startswith("/GPU"):
            details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
            return details.get("device_name", self.device)
        return "cpu"

    def peak_memory_bytes(self) -> int | None:
        if self.gpu_index is None:
            return None
        return int(tf.config.experimental.get_memory_info(f"GPU:{self.gpu_index}")["peak"])

    def prepare(self, batches: Sequence[Batch]) -> list[Tensors] | Segments:
        """The batches as device tensors; compiled runs get them stacked for the device loop."""
        with tf.device(self.device):
            tensors = [(tf.cast(b.center, self.index_dtype), tf.cast(b.context_negative, self.index_dtype),
                        tf.cast(b.mask, tf.float32), tf.cast(b.label, tf.float32)) for b in batches]
            return Segments.stack(tensors) if self.device_loop else tensors

    def _loss_and_grads(self, center, cn, mask, label):
        with tf.GradientTape() as tape:
            loss = skipgram_loss(*self.tables, center, cn, mask, label)
        return loss, tape.gradient(loss, self.tables)

    def _apply(self, table: tf.Variable, slots: tuple[tf.Variable, tf.Variable], grad: tf.IndexedSlices,
               t: tf.Tensor, ids: int) -> None:
        s = self.spec
        if s.optimizer == "sgd":
            table.scatter_sub(tf.IndexedSlices(s.lr * grad.values, grad.indices))
            return
        m, v = slots
        b1_t, b2_t = tf.pow(s.beta1, t), tf.pow(s.beta2, t)
        if not s.sparse:  # fused kernel, eps moved inside so the update is torch's m_hat / (sqrt(v_hat) + eps)
            tf.raw_ops.ResourceApplyAdam(var=table.handle, m=m.handle, v=v.handle, beta1_power=b1_t,
                                         beta2_power=b2_t, lr=s.lr, beta1=s.beta1, beta2=s.beta2,
                                         epsilon=s.eps * tf.sqrt(1.0 - b2_t), grad=tf.convert_to_tensor(grad))
            return
        step_size = s.lr * tf.sqrt(1.0 - b2_t) / (1.0 - b1_t)  # lazy Adam: the batch's rows only, global step t
        vocab = int(table.shape[0])
        if s.compile and dense_shaped(vocab, ids):  # unfused (plain tf.function), this form measured slower
            used = present(grad.indices, vocab)[:, None]
            g = tf.math.unsorted_segment_sum(grad.values, grad.indices, vocab)
            m_new = tf.where(used, s.beta1 * m + (1.0 - s.beta1) * g, m)
            v_new = tf.where(used, s.beta2 * v + (1.0 - s.beta2) * tf.square(g), v)
            m.assign(m_new), v.assign(v_new)
            table.assign(tf.where(used, table - step_size * m_new / (tf.sqrt(v_new) + s.eps), table))
            return
        # XLA needs fixed shapes (spare slots write back what was there); plain TF keeps tf.unique's hash
        rows, g, valid = unique_rows(grad, vocab) if s.compile else (*coalesce(grad), tf.constant(True))
        m_old, v_old = tf.gather(m, rows), tf.gather(v, rows)
        m_rows = tf.where(valid[..., None], s.beta1 * m_old + (1.0 - s.beta1) * g, m_old)
        v_rows = tf.where(valid[..., None], s.beta2 * v_old + (1.0 - s.beta2) * tf.square(g), v_old)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        update = tf.where(valid[..., None], step_size * m_rows / (tf.sqrt(v_rows) + s.eps), 0.0)
        table.scatter_sub(tf.IndexedSlices(update, rows))

    def _train_step(self, center, cn, mask, label):
        loss, grads = self._loss_and_grads(center, cn, mask, label)
        self.steps_done.assign_add(1)
        t = tf.cast(self.steps_done, tf.float32)
        for table, slots, grad, ids in zip(self.tables, self.slots, grads, self.ids_per_step):
            self._apply(table, slots, grad, t, ids)
        return loss

    def _train_loop(self, center, cn, mask, label, lo, hi):
        """Steps lo..hi-1 of a stacked block, as one XLA while loop; the block's losses come back
        (entries outside lo..hi are zero), so the host syncs once per segment."""
        losses = tf.zeros(tf.shape(center)[:1], tf.float32)
        for i in tf.range(lo, hi):
            loss = self._train_step(center[i], cn[i], mask[i], label[i])
            losses = tf.tensor_scatter_nd_update(losses, [[i]], [loss])
        return losses

    def train(self, prepared: list[Tensors] | Segments) -> np.ndarray:
        with tf.device(self.device):
            if isinstance(prepared, Segments):
                losses = [self._loop_fn(*block, tf.constant(lo), tf.constant(hi))[lo:hi]
                          for block, lo, hi in prepared.views]
                return tf.concat(losses, 0).numpy().astype(np.float64) if losses else np.zeros(0)
            losses = [self._step_fn(*batch) for batch in prepared]
        return tf.stack(losses).numpy().astype(np.float64) if losses else np.zeros(0)

    def step(self, prepared_batch: Tensors | Segments) -> None:
        self.train(prepared_batch if isinstance(prepared_batch, Segments) else [prepared_batch])

    def _one(self, prepared_batch: Tensors | Segments) -> Tensors:
        return prepared_batch.batches()[0] if isinstance(prepared_batch, Segments) else prepared_batch

    def forward(self, prepared_batch: Tensors | Segments) -> None:
        with tf.device(self.device):
            self._loss_fn(*self._one(prepared_batch)).numpy()

    def forward_backward(self, prepared_batch: Tensors | Segments) -> None:
        with tf.device(self.device):
            loss, grads = self._grads_fn(*self._one(prepared_batch))
            loss.numpy()
            for g in grads:
                g.values.numpy() if isinstance(g, tf.IndexedSlices) else g.numpy()

    def loss_and_grads(self, batch: Batch) -> tuple[float, np.ndarray, np.ndarray]:
        loss, grads = self._grads_fn(*self._one(self.prepare([batch])[0]))
        dense = [tf.convert_to_tensor(g).numpy().astype(np.float64) for g in grads]
        return float(loss), dense[0], dense[1]

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        return self.tables[0].numpy(), self.tables[1].numpy()
