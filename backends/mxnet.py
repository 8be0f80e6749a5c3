"""MXNet 1.9.1 (legacy nd/Gluon API): a hybridized block; dense Adam, or sparse_grad=True with
row_sparse gradients and lazy Adam. The updates call MXNet's fused kernels (adam_update,
sgd_update) directly, so eps can be placed as the canonical form requires (see adam_scalars).
On N > 1 workers the same update runs on the dist_sync kvstore's server (mxnet_kvstore).

Two layouts (common/packing.py): the recipe's padded rows, whose per-example dots are one
`batch_dot`, and the packed slots, which need no batched dot at all (PackedSkipGram).
Needs numpy 1.23: it lives in its own env."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

# Two engine threads on the CPU, as MXNet already uses on a GPU (MXNET_GPU_WORKER_NTHREADS=2):
# the two tables are independent, so their Adam updates and embedding gradients run side by
# side instead of one operator at a time. Step 11.4 -> 10.2 ms dense, 9.5 -> 8.9 ms sparse.
# A data-parallel rank gets SKIPGRAM_THREADS cores: OpenMP's threads and at most two engine
# threads within them. Both are read when libmxnet loads, so they are set before the import.
from common.sharding import THREADS_VARIABLE, World  # noqa: E402 (no framework: imported before mxnet)

_threads = os.environ.get(THREADS_VARIABLE)
if _threads:
    os.environ["OMP_NUM_THREADS"] = _threads
    os.environ["MXNET_CPU_WORKER_NTHREADS"] = str(min(2, int(_threads)))
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "2")
# Full float32 on Ampere GPUs (MXNet 1.9 has no TF32 switch of its own; cuBLAS and cuDNN obey this).
os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402

from backends.base import Backend, adam_scalars  # noqa: E402
from backends.mxnet_kvstore import KVStoreSync  # noqa: E402
from backends.mxnet_ops import loaded_ops, packed_loss_op  # noqa: E402
from common.batches import Batch  # noqa: E402
from common.packing import PackedBatch, pack, pack_epoch, packed_length  # noqa: E402
from common.spec import RunSpec  # noqa: E402

Arrays = tuple[mx.nd.NDArray, ...]


class RankStep(NamedTuple):
    """A data-parallel rank's step: its slice's arrays, the slice's loss factor (the backward's
    head gradient), and, sparse, each table's sorted rows its lookups read (pulled before the
    step; the row_sparse gradient it pushes names the same rows) with their counts."""

    arrays: Arrays
    head: mx.nd.NDArray
    rows: tuple[mx.nd.NDArray, ...] | None
    counts: tuple[int, ...] | None


def update_table(spec: RunSpec, step: int, weight: mx.nd.NDArray, grad: mx.nd.NDArray,
                 state: tuple[mx.nd.NDArray, mx.nd.NDArray] | None, rescale: float = 1.0) -> None:
    """One table's optimiser step `step` (from 1), in place: in one process, and on the kvstore's
    server for N workers (ServerOptimizer), where `rescale` = 1 / N turns the sum into the mean."""
    lazy = spec.sparse
    if spec.optimizer == "sgd":
        mx.nd.sgd_update(weight, grad, lr=spec.lr, wd=0.0, rescale_grad=rescale, lazy_update=lazy, out=weight)
        return
    assert state is not None
    mean, var = state
    lr_t, eps_t = adam_scalars(spec, step, lazy)
    mx.nd.adam_update(weight, grad, mean, var, lr=lr_t, beta1=spec.beta1, beta2=spec.beta2, epsilon=eps_t,
                      wd=0.0, rescale_grad=rescale, lazy_update=lazy, out=weight)


class ServerOptimizer(mx.optimizer.Optimizer):
    """`update_table` as the dist_sync server runs it (update_on_kvstore) on the summed gradients.

    MXNet's own Adam is the same kernel with lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t) but eps
    beside the uncorrected sqrt(v): the lazy form here, not the dense canonical one (adam_scalars).
    The server unpickles this class by its module path: it must have this repository on its path.
    The state follows the stored weight's storage (row_sparse in a sparse run), as MXNet's Adam.
    """

    def __init__(self, spec: RunSpec, workers: int) -> None:
        super().__init__(rescale_grad=1.0 / workers, learning_rate=spec.lr)
        self.spec = spec

    def create_state(self, index, weight):  # noqa: ANN001, ANN201 (MXNet's signature)
        if self.spec.optimizer == "sgd":
            return None
        return tuple(mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype, stype=weight.stype)
                     for _ in range(2))

    def update(self, index, weight, grad, state):  # noqa: ANN001, ANN201
        self._update_count(index)
        update_table(self.spec, self._index_update_count[index], weight, grad, state, self.rescale_grad)


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
        self.kvstore: KVStoreSync | None = None
        self.world = World(0, 1)
        if spec.workers > 1:  # the scheduler numbers the ranks: the shards follow its rank
            self.kvstore = KVStoreSync(spec, [p.data(self.ctx) for p in self.params], ServerOptimizer)
            self.world = self.kvstore.world

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

    def _move_padded(self, b: Batch) -> Arrays:
        return (self._move(b.center, "int32"), self._move(b.context_negative, "int32"),
                self._move(b.mask, "float32"), self._move(b.label, "float32"))

    def prepare(self, batches: Sequence[Batch], scales: Sequence[float] | None = None) -> list[Arrays] | list[RankStep]:
        laid_out: Sequence[Batch | PackedBatch] = pack_epoch(batches) if self.packed else batches
        moved = [self._move_packed(b) if isinstance(b, PackedBatch) else self._move_padded(b) for b in laid_out]
        if self.kvstore is None:
            return moved
        return [self._rank_step(b, arrays, scale)
                for b, arrays, scale in zip(laid_out, moved, scales or [1.0] * len(moved))]

    def _rank_step(self, b: Batch | PackedBatch, arrays: Arrays, scale: float) -> RankStep:
        head = mx.nd.full((1,), scale, ctx=self.ctx, dtype="float32")
        if not self.spec.sparse:
            return RankStep(arrays, head, None, None)
        lookups = (b.center, b.ids if isinstance(b, PackedBatch) else b.context_negative)
        rows = [np.unique(ids).astype(np.int64) for ids in lookups]  # padding's row 0 included: it is read
        return RankStep(arrays, head, tuple(self._move(r, "int64") for r in rows), tuple(r.size for r in rows))

    def _update(self) -> None:
        self.steps_done += 1
        for param, state in zip(self.params, self.states):
            update_table(self.spec, self.steps_done, param.data(self.ctx), param.grad(self.ctx), state)

    def _forward_backward(self, batch: Arrays) -> mx.nd.NDArray:
        with autograd.record():
            loss = self.net(*batch)
        loss.backward()
        return loss

    def train(self, prepared: list[Arrays] | list[RankStep]) -> np.ndarray:
        if self.kvstore is not None:
            return self._train_rank(prepared)  # type: ignore[arg-type]
        losses = []
        for batch in prepared:
            losses.append(self._forward_backward(batch))  # type: ignore[arg-type]
            self._update()
        return self._fetch(losses)

    @staticmethod
    def _fetch(losses: list[mx.nd.NDArray]) -> np.ndarray:
        return mx.nd.concat(*losses, dim=0).asnumpy().astype(np.float64) if losses else np.zeros(0)

    def _train_rank(self, prepared: list[RankStep]) -> np.ndarray:
        """One process's loop with the kvstore in the step: the server runs the update."""
        assert self.kvstore is not None
        weights = [p.data(self.ctx) for p in self.params]
        grads = [p.grad(self.ctx) for p in self.params]
        losses = []
        for step in prepared:
            if step.rows is not None:
                self.kvstore.pull_rows(weights, step.rows)
            with autograd.record():
                loss = self.net(*step.arrays)
            loss.backward(out_grad=step.head)
            self.kvstore.step(weights, grads, step.counts)
            losses.append(loss)
        fetched = self._fetch(losses)
        if prepared and prepared[-1].counts is not None:  # synced now: the arrays pushed are the rows counted
            pushed = tuple(int(g.indices.shape[0]) for g in grads)
            if pushed != prepared[-1].counts:
                raise RuntimeError(f"row_sparse gradients pushed {pushed} rows, counted {prepared[-1].counts}")
        return fetched

    def communication(self) -> list[dict]:
        """The step's pushes and pulls (mxnet_kvstore), averaged over the steps; none in one process."""
        return self.kvstore.communication() if self.kvstore is not None else []

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
        if self.kvstore is not None:
            self.kvstore.pull_all([p.data(self.ctx) for p in self.params])
        return self.params[0].data(self.ctx).asnumpy(), self.params[1].data(self.ctx).asnumpy()
