"""TensorFlow 2: tf.function steps (optionally XLA). Dense runs use the fused ResourceApplyAdam
kernel; sparse runs keep tf.gather's IndexedSlices gradients and apply lazy Adam row-wise
with scatter ops (Keras 3's Adam would densify its moments, so it is not used)."""
from __future__ import annotations

import os
from typing import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from backends.base import Backend  # noqa: E402
from common.batches import Batch  # noqa: E402
from common.spec import RunSpec  # noqa: E402

Tensors = tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]


def skipgram_loss(center_w: tf.Variable, context_w: tf.Variable, center: tf.Tensor, cn: tf.Tensor,
                  mask: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
    v = tf.gather(center_w, center)                                   # (B, D)
    u = tf.gather(context_w, cn)                                      # (B, L, D)
    pred = tf.squeeze(tf.matmul(u, v[:, :, None]), axis=2)            # (B, L)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=pred)
    return tf.reduce_mean(tf.reduce_sum(bce * mask, axis=1) / tf.reduce_sum(mask, axis=1))


def coalesce(grad: tf.IndexedSlices) -> tuple[tf.Tensor, tf.Tensor]:
    """Unique rows and their summed gradient rows."""
    rows, position = tf.unique(grad.indices)
    return rows, tf.math.unsorted_segment_sum(grad.values, position, tf.size(rows))


class TensorFlowBackend(Backend):
    name = "tensorflow"

    def __init__(self, spec: RunSpec, init_center: np.ndarray, init_context: np.ndarray) -> None:
        super().__init__(spec, init_center, init_context)
        self.device = "/CPU:0" if self.gpu_index is None else f"/GPU:{self.gpu_index}"
        with tf.device(self.device):
            self.tables = [tf.Variable(init_center), tf.Variable(init_context)]
            self.slots = [(tf.Variable(tf.zeros_like(t)), tf.Variable(tf.zeros_like(t))) for t in self.tables]
            self.steps_done = tf.Variable(0, dtype=tf.int64)
        signature = [tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, None], tf.int32),
                     tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.float32)]
        self._step_fn = tf.function(self._train_step, input_signature=signature, jit_compile=spec.compile or None)
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

    def prepare(self, batches: Sequence[Batch]) -> list[Tensors]:
        with tf.device(self.device):
            return [(tf.identity(b.center), tf.identity(b.context_negative), tf.cast(b.mask, tf.float32),
                     tf.cast(b.label, tf.float32)) for b in batches]

    def _loss_and_grads(self, center, cn, mask, label):
        with tf.GradientTape() as tape:
            loss = skipgram_loss(*self.tables, center, cn, mask, label)
        return loss, tape.gradient(loss, self.tables)

    def _apply(self, table: tf.Variable, slots: tuple[tf.Variable, tf.Variable], grad: tf.IndexedSlices,
               t: tf.Tensor) -> None:
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
        rows, g = coalesce(grad)  # lazy Adam: only the rows the batch used, global step t
        m_rows = s.beta1 * tf.gather(m, rows) + (1.0 - s.beta1) * g
        v_rows = s.beta2 * tf.gather(v, rows) + (1.0 - s.beta2) * tf.square(g)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        step_size = s.lr * tf.sqrt(1.0 - b2_t) / (1.0 - b1_t)
        table.scatter_sub(tf.IndexedSlices(step_size * m_rows / (tf.sqrt(v_rows) + s.eps), rows))

    def _train_step(self, center, cn, mask, label):
        loss, grads = self._loss_and_grads(center, cn, mask, label)
        self.steps_done.assign_add(1)
        t = tf.cast(self.steps_done, tf.float32)
        for table, slots, grad in zip(self.tables, self.slots, grads):
            self._apply(table, slots, grad, t)
        return loss

    def train(self, prepared: list[Tensors]) -> np.ndarray:
        with tf.device(self.device):
            losses = [self._step_fn(*batch) for batch in prepared]
        return tf.stack(losses).numpy().astype(np.float64) if losses else np.zeros(0)

    def forward(self, prepared_batch: Tensors) -> None:
        with tf.device(self.device):
            self._loss_fn(*prepared_batch).numpy()

    def forward_backward(self, prepared_batch: Tensors) -> None:
        with tf.device(self.device):
            loss, grads = self._grads_fn(*prepared_batch)
            loss.numpy()
            for g in grads:
                g.values.numpy() if isinstance(g, tf.IndexedSlices) else g.numpy()

    def loss_and_grads(self, batch: Batch) -> tuple[float, np.ndarray, np.ndarray]:
        loss, grads = self._grads_fn(*self.prepare([batch])[0])
        dense = [tf.convert_to_tensor(g).numpy().astype(np.float64) for g in grads]
        return float(loss), dense[0], dense[1]

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        return self.tables[0].numpy(), self.tables[1].numpy()
