"""MXNet 1.9.1 (legacy nd/Gluon API): a hybridized block; dense Adam, or sparse_grad=True with
row_sparse gradients and lazy Adam. The updates call MXNet's fused kernels (adam_update,
sgd_update) directly, so eps can be placed as the canonical form requires (see adam_scalars).

Two layouts (common/packing.py): the recipe's padded rows, whose per-example dots are one
`batch_dot`, and the packed slots, which need no batched dot at all (PackedSkipGram).
Needs numpy 1.23: it lives in its own env."""
from __future__ import annotations

import os
from collections.abc import Sequence

# Two engine threads on the CPU, as MXNet already uses on a GPU (MXNET_GPU_WORKER_NTHREADS=2):
# the two tables are independent, so their Adam updates and embedding gradients run side by
# side instead of one operator at a time. Step 11.4 -> 10.2 ms dense, 9.5 -> 8.9 ms sparse.
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "2")
# Full float32 on Ampere GPUs (MXNet 1.9 has no TF32 switch of its own; cuBLAS and cuDNN obey this).
os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402

from backends.base import Backend, adam_scalars  # noqa: E402
from backends.mxnet_ops import loaded_ops, packed_loss_op  # noqa: E402
from common.batches import Batch  # noqa: E402
from common.packing import PackedBatch, pack, pack_epoch, packed_length  # noqa: E402
from common.spec import RunSpec  # noqa: E402

Arrays = tuple[mx.nd.NDArray, ...]


class SkipGram(gluon.HybridBlock):
    """Both tables and the masked BCE loss in one graph."""

    def __init__(self, vocab: int, embed: int, sparse: bool) -> None:
        super().__init__()
        self.center = gluon.nn.Embedding(vocab, embed, sparse_grad=sparse)
        self.context = gluon.nn.Embedding(vocab, embed, sparse_grad=sparse)

    def hybrid_forward(self, F, center, cn, mask, label):  # noqa: N803 (MXNet's signature)
        v = self.center(center).expand_dims(axis=2)          # (B, D, 1)
        u = self.context(cn)                                 # (B, L, D)
        pred = F.batch_dot(u, v).reshape((0, -1))            # (B, L)
        bce = F.relu(pred) - pred * label + F.log1p(F.exp(-F.abs(pred)))
        return F.mean(F.sum(bce * mask, axis=1) / F.sum(mask, axis=1))


class PackedSkipGram(gluon.HybridBlock):
    """The same loss on the packed layout: one dot per real slot, no batch_dot.

    `batch_dot` without MKL is one OpenBLAS GEMM per example (two thirds of the padded step,
    PERFORMANCE.md); flat slots need none. MXNet keeps the gathers (`Embedding`), so their
    backward, the scatter into each table's gradient, stays MXNet's own, dense or row_sparse
    for lazy Adam. On the CPU the dots and the weighted BCE are one C++ operator loaded at run
    time (mxnet_ops): one pass over the slots forward and one backward, where the same loss
    composed from MXNet's operators runs eight operators over (N, D) arrays and takes 2.3x as
    long. Elsewhere, or without a compiler, that composition: centers spread to their slots
    with `take` (its backward sums each example's slots into B rows before the table's
    scatter), the per-slot dot as the element-wise product's row sums by one GEMV with a ones
    vector (MXNet's `sum` over an axis takes 2.2x as long on these arrays), the weighted BCE
    summed: padding slots weigh 0.
    """

    def __init__(self, vocab: int, embed: int, sparse: bool, fused_op: str | None) -> None:
        super().__init__()
        self.fused_op = fused_op
        self.center = gluon.nn.Embedding(vocab, embed, sparse_grad=sparse)
        self.context = gluon.nn.Embedding(vocab, embed, sparse_grad=sparse)
        if fused_op is None:
            self.ones = self.params.get_constant("ones", mx.nd.ones((embed, 1)))

    def hybrid_forward(self, F, center, ids, example, label, weight, ones=None):  # noqa: N803
        u = self.context(ids)                                         # (N, D)
        if self.fused_op is not None:
            return getattr(F, self.fused_op)(self.center(center), u, example, label, weight)
        v = F.take(self.center(center), example, axis=0)              # (N, D): each slot's center row
        pred = F.dot(u * v, ones).reshape((-1,))                      # (N,)
        bce = F.relu(pred) - pred * label + F.log1p(F.exp(-F.abs(pred)))
        return F.sum(bce * weight)


class MXNetBackend(Backend):
    name = "mxnet"

    def __init__(self, spec: RunSpec, init_center: np.ndarray, init_context: np.ndarray) -> None:
        super().__init__(spec, init_center, init_context)
        self.ctx = mx.cpu() if self.gpu_index is None else mx.gpu(self.gpu_index)
        self.packed = spec.layout == "packed"
        if self.packed:
            # The fused operator has a CPU kernel only; MXNET_PACKED_LOSS=ops picks the composition.
            fused = self.gpu_index is None and os.environ.get("MXNET_PACKED_LOSS", "op") == "op"
            self.net = PackedSkipGram(*init_center.shape, sparse=spec.sparse,
                                      fused_op=packed_loss_op() if fused else None)
        else:
            self.net = SkipGram(*init_center.shape, sparse=spec.sparse)
        self.net.initialize(ctx=self.ctx)
        self.params = [self.net.center.weight, self.net.context.weight]
        for param, init in zip(self.params, (init_center, init_context)):
            param.set_data(mx.nd.array(init, ctx=self.ctx))
        self.net.hybridize(static_alloc=True, static_shape=True)
        self.states = [(mx.nd.zeros(init_center.shape, ctx=self.ctx), mx.nd.zeros(init_center.shape, ctx=self.ctx))
                       for _ in self.params]
        self.steps_done = 0

    @classmethod
    def gpu_count(cls) -> int:
        return mx.context.num_gpus()

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"mxnet": mx.__version__, "numpy": np.__version__, **loaded_ops()}

    def device_name(self) -> str:
        return str(self.ctx)

    def sync(self) -> None:
        mx.nd.waitall()

    def _move(self, a: np.ndarray, dtype: str) -> mx.nd.NDArray:
        return mx.nd.array(a, ctx=self.ctx, dtype=dtype)

    def _move_packed(self, b: PackedBatch) -> Arrays:
        return (self._move(b.center, "int32"), self._move(b.ids, "int32"), self._move(b.example, "int32"),
                self._move(b.label, "float32"), self._move(b.weight, "float32"))

    def prepare(self, batches: Sequence[Batch]) -> list[Arrays]:
        if self.packed:
            return [self._move_packed(b) for b in pack_epoch(batches)]
        return [(self._move(b.center, "int32"), self._move(b.context_negative, "int32"),
                 self._move(b.mask, "float32"), self._move(b.label, "float32")) for b in batches]

    def _update(self) -> None:
        self.steps_done += 1
        s, lazy = self.spec, self.spec.sparse
        for param, (mean, var) in zip(self.params, self.states):
            weight, grad = param.data(self.ctx), param.grad(self.ctx)
            if s.optimizer == "sgd":
                mx.nd.sgd_update(weight, grad, lr=s.lr, wd=0.0, lazy_update=lazy, out=weight)
                continue
            lr_t, eps_t = adam_scalars(s, self.steps_done, lazy)
            mx.nd.adam_update(weight, grad, mean, var, lr=lr_t, beta1=s.beta1, beta2=s.beta2, epsilon=eps_t,
                              wd=0.0, lazy_update=lazy, out=weight)

    def _forward_backward(self, batch: Arrays) -> mx.nd.NDArray:
        with autograd.record():
            loss = self.net(*batch)
        loss.backward()
        return loss

    def train(self, prepared: list[Arrays]) -> np.ndarray:
        losses = []
        for batch in prepared:
            losses.append(self._forward_backward(batch))
            self._update()
        return mx.nd.concat(*losses, dim=0).asnumpy().astype(np.float64) if losses else np.zeros(0)

    def forward(self, prepared_batch: Arrays) -> None:
        self.net(*prepared_batch).wait_to_read()

    def forward_backward(self, prepared_batch: Arrays) -> None:
        self._forward_backward(prepared_batch)
        mx.nd.waitall()

    def loss_and_grads(self, batch: Batch) -> tuple[float, np.ndarray, np.ndarray]:
        prepared = (self._move_packed(pack(batch, packed_length([batch]))) if self.packed
                    else self.prepare([batch])[0])
        loss = self._forward_backward(prepared)
        grads = [p.grad(self.ctx).tostype("default").asnumpy().astype(np.float64) for p in self.params]
        return float(loss.asscalar()), grads[0], grads[1]

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        return self.params[0].data(self.ctx).asnumpy(), self.params[1].data(self.ctx).asnumpy()
