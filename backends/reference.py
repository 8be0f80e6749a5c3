"""The float64 numpy reference: forward, loss, gradients, dense Adam, lazy Adam and SGD.

The oracle of the contract tests, written for clarity, not speed: every framework's loss,
gradients and trajectory are checked against this file.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backends.base import Backend
from common.batches import Batch
from common.packing import PackedBatch
from common.spec import RunSpec


def bce_with_logits(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Stable -[y log s(x) + (1 - y) log(1 - s(x))]."""
    return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


def loss_and_grads(center_w: np.ndarray, context_w: np.ndarray, batch: Batch) -> tuple[float, np.ndarray, np.ndarray]:
    """The canonical loss and its dense gradients with respect to both tables.

    pred[b,j] = v[center_b] . u[cn_bj]; loss_b = sum_j mask*bce / sum_j mask; loss = mean_b.
    """
    center, cn = batch.center, batch.context_negative
    mask, label = batch.mask.astype(np.float64), batch.label.astype(np.float64)
    v, u = center_w[center], context_w[cn]
    pred = np.einsum("bd,bld->bl", v, u)
    weight = mask / mask.sum(axis=1, keepdims=True) / center.size
    loss = float((bce_with_logits(pred, label) * weight).sum())
    grad_pred = (1.0 / (1.0 + np.exp(-pred)) - label) * weight
    grad_center = scatter_add_rows(center, np.einsum("bl,bld->bd", grad_pred, u), center_w.shape)
    grad_context = scatter_add_rows(cn.ravel(), (grad_pred[:, :, None] * v[:, None, :]).reshape(-1, v.shape[1]),
                                    context_w.shape)
    return loss, grad_center, grad_context


def scaled_loss_and_grads(center_w: np.ndarray, context_w: np.ndarray, batch: Batch,
                          scale: float) -> tuple[float, np.ndarray, np.ndarray]:
    """The slice's unscaled mean loss (what a rank records) and the gradients of `scale` x that loss
    (what a rank hands its engine to average): common/sharding.py's factor N x rows / B."""
    loss, grad_center, grad_context = loss_and_grads(center_w, context_w, batch)
    if scale != 1.0:
        grad_center, grad_context = grad_center * scale, grad_context * scale
    return loss, grad_center, grad_context


def loss_and_grads_packed(center_w: np.ndarray, context_w: np.ndarray,
                          batch: PackedBatch) -> tuple[float, np.ndarray, np.ndarray]:
    """The same loss and gradients from the packed layout (common/packing.py): one dot per real
    slot, weighted by 1 / (count_b * B); padding slots weigh 0. The oracle of the packing itself."""
    weight = batch.weight.astype(np.float64)
    v, u = center_w[batch.center][batch.example], context_w[batch.ids]
    pred = np.einsum("sd,sd->s", v, u)
    loss = float((bce_with_logits(pred, batch.label) * weight).sum())
    grad_pred = (1.0 / (1.0 + np.exp(-pred)) - batch.label) * weight
    grad_center = scatter_add_rows(batch.center[batch.example], grad_pred[:, None] * u, center_w.shape)
    grad_context = scatter_add_rows(batch.ids, grad_pred[:, None] * v, context_w.shape)
    return loss, grad_center, grad_context


def scatter_add_rows(rows: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """out[rows[i]] += values[i], as np.add.at does, but 5x faster under numpy 1.23 (bincount)."""
    flat = (rows.astype(np.int64)[:, None] * shape[1] + np.arange(shape[1])).ravel()
    return np.bincount(flat, weights=values.ravel(), minlength=shape[0] * shape[1]).reshape(shape)


class Optimizer:
    """Adam (torch's dense form, or lazy row-wise as SparseAdam / lazy_update) or SGD, in float64."""

    def __init__(self, spec: RunSpec, shape: tuple[int, int]) -> None:
        self.spec, self.step = spec, 0
        self.m, self.v = np.zeros(shape), np.zeros(shape)

    def update(self, weights: np.ndarray, grad: np.ndarray, rows: np.ndarray | None) -> None:
        """One step; `rows` (the indices the batch used) makes it lazy: other rows keep state."""
        s = self.spec
        self.step += 1
        if s.optimizer == "sgd":
            weights -= s.lr * grad
            return
        if rows is None:
            self.m = s.beta1 * self.m + (1 - s.beta1) * grad
            self.v = s.beta2 * self.v + (1 - s.beta2) * grad ** 2
            m_hat = self.m / (1 - s.beta1 ** self.step)
            v_hat = self.v / (1 - s.beta2 ** self.step)
            weights -= s.lr * m_hat / (np.sqrt(v_hat) + s.eps)
            return
        g = grad[rows]
        self.m[rows] = s.beta1 * self.m[rows] + (1 - s.beta1) * g
        self.v[rows] = s.beta2 * self.v[rows] + (1 - s.beta2) * g ** 2
        step_size = s.lr * np.sqrt(1 - s.beta2 ** self.step) / (1 - s.beta1 ** self.step)
        weights[rows] -= step_size * self.m[rows] / (np.sqrt(self.v[rows]) + s.eps)


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self, spec: RunSpec, init_center: np.ndarray, init_context: np.ndarray) -> None:
        super().__init__(spec, init_center, init_context)
        self.center_w = init_center.astype(np.float64)
        self.context_w = init_context.astype(np.float64)
        self.opt_center = Optimizer(spec, self.center_w.shape)
        self.opt_context = Optimizer(spec, self.context_w.shape)

    @classmethod
    def gpu_count(cls) -> int:
        return 0

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"numpy": np.__version__}

    def device_name(self) -> str:
        return "cpu (numpy float64)"

    def prepare(self, batches: Sequence[Batch], scales: Sequence[float] | None = None) -> list[tuple[Batch, float]]:
        """Each batch with its loss factor: a rank's gradient is its slice's mean loss times it."""
        return list(zip(batches, scales if scales is not None else [1.0] * len(batches), strict=True))

    def train(self, prepared: Sequence[tuple[Batch, float]]) -> np.ndarray:
        losses = []
        for batch, scale in prepared:
            loss, g_center, g_context = scaled_loss_and_grads(self.center_w, self.context_w, batch, scale)
            sparse = self.spec.sparse
            self.opt_center.update(self.center_w, g_center, np.unique(batch.center) if sparse else None)
            self.opt_context.update(self.context_w, g_context,
                                    np.unique(batch.context_negative) if sparse else None)
            losses.append(loss)
        return np.array(losses, dtype=np.float64)

    def forward(self, prepared_batch: tuple[Batch, float]) -> None:
        scaled_loss_and_grads(self.center_w, self.context_w, *prepared_batch)

    def forward_backward(self, prepared_batch: tuple[Batch, float]) -> None:
        scaled_loss_and_grads(self.center_w, self.context_w, *prepared_batch)

    def loss_and_grads(self, batch: Batch) -> tuple[float, np.ndarray, np.ndarray]:
        return loss_and_grads(self.center_w, self.context_w, batch)

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        return self.center_w, self.context_w
