"""TensorFlow 2: a tf.function step per batch; compiled, an XLA program per step on the CPU
and, on a GPU, a segment of steps as one XLA program looping on the device. Dense runs use the fused
ResourceApplyAdam kernel; sparse runs keep the gathers' row gradients and apply lazy Adam row-wise with
scatter ops (Keras 3's Adam would densify its moments, so it is not used). TF32 is off: full float32 matmuls.

Two layouts (common/packing.py): the recipe's padded (B, L) rows, one batched matmul a batch;
or packed, flat: one dot per real slot (a multiply and a row sum), its gradients written out so
that padding slots go to segment -1, which `unsorted_segment_sum` drops. Packed plain runs cut
each batch to its real slots; packed compiled runs on the CPU compile only the update with XLA.

On N workers (docs/data-parallel.md): MultiWorkerMirroredStrategy from the launcher's TF_CONFIG,
ring collectives over gRPC. Tables and slots are mirrored variables (strategy.scope); each step is
one `strategy.run` inside a tf.function, as in TF's multi-worker custom-training-loop tutorial: the
local gradients go to the strategy's MEAN all-reduce (dense: both tables in one pack, a ring
all-reduce; sparse: each table's IndexedSlices, which TF all-gathers, padded to the longest
rank's, duplicates kept), and the update runs in `extended.update` on the local replica, the same
on every rank: lazy Adam coalesces the gathered rows (tf.unique + unsorted_segment_sum), so every
rank steps the same union of rows."""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tensorflow[and-cuda] has no sm_90 kernels: on an H100 its non-XLA kernels are JIT-compiled from
# PTX at first start; a large cache keeps that to the first run (the default 1 GiB overflows).
os.environ.setdefault("CUDA_CACHE_MAXSIZE", str(4 << 30))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from backends.base import Backend  # noqa: E402
from common.batches import Batch  # noqa: E402
from common.comm import Collective, per_step, ring_allgather, ring_allreduce  # noqa: E402
from common.errors import BenchError  # noqa: E402
from common.lazy_adam import dense_shaped  # noqa: E402
from common.packing import PackedBatch, pack, pack_epoch, packed_length  # noqa: E402
from common.sharding import THREADS_VARIABLE, World  # noqa: E402
from common.spec import RunSpec  # noqa: E402

Tensors = tuple[tf.Tensor, ...]  # one batch: (center, cn, mask, label) padded, PackedTensors' fields packed
tf.config.experimental.enable_tensor_float_32_execution(False)
RING = tf.distribute.experimental.CommunicationOptions(
    implementation=tf.distribute.experimental.CommunicationImplementation.RING)
TABLES = ("center", "context")


def skipgram_loss(center_w: tf.Variable, context_w: tf.Variable, center: tf.Tensor, cn: tf.Tensor,
                  mask: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
    v = tf.gather(center_w, center)                                   # (B, D)
    u = tf.gather(context_w, cn)                                      # (B, L, D)
    pred = tf.squeeze(tf.matmul(u, v[:, :, None]), axis=2)            # (B, L)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=pred)
    return tf.reduce_mean(tf.reduce_sum(bce * mask, axis=1) / tf.reduce_sum(mask, axis=1))


class Rows(NamedTuple):
    """A table's gradient as rows: values[i] belongs to row indices[i]. `summed` is the same
    indices with the packed layout's padding slots at -1, so the sums that densify or coalesce
    the rows (`unsorted_segment_sum`) drop them; presence and scatters use `indices`, where
    padding names row 0 as the padded layout's does (common/packing.py: it never changes)."""

    values: tf.Tensor
    indices: tf.Tensor
    summed: tf.Tensor

    def dense(self, vocab: int) -> tf.Tensor:
        return tf.math.unsorted_segment_sum(self.values, self.summed, vocab)


def padded_rows(grad: tf.IndexedSlices) -> Rows:
    return Rows(grad.values, grad.indices, grad.indices)


class PackedTensors(NamedTuple):
    """A packed batch on the device, with the padding-dropping index variants derived from it."""

    center: tf.Tensor        # (B,)
    ids: tf.Tensor           # (N,) words, padding 0
    example: tf.Tensor       # (N,) each slot's row in the batch, padding 0
    label: tf.Tensor         # (N,)
    weight: tf.Tensor        # (N,) 1 / (count_b * B), padding 0
    summed_ids: tf.Tensor    # ids with padding at -1
    summed_example: tf.Tensor  # example with padding at -1


def packed_loss_and_rows(center_w: tf.Variable, context_w: tf.Variable, batch: PackedTensors,
                         grads: bool = True) -> tuple[tf.Tensor, Rows | None, Rows | None]:
    """The packed loss, sum_s weight_s * bce(v[center[example_s]] . u[ids_s], label_s), and each
    table's gradient rows, written out (d loss / d pred = (sigmoid(pred) - label) * weight):
    autodiff's gather gradients would sum the padding slots' zero rows into row 0 and example 0,
    which these sums drop (padding at -1)."""
    v = tf.gather(center_w, batch.center)                              # (B, D)
    vs = tf.gather(v, batch.example)                                   # (N, D)
    u = tf.gather(context_w, batch.ids)                                # (N, D)
    pred = tf.reduce_sum(vs * u, axis=1)                               # (N,)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=batch.label, logits=pred)
    loss = tf.reduce_sum(batch.weight * bce)
    if not grads:
        return loss, None, None
    d_pred = ((tf.sigmoid(pred) - batch.label) * batch.weight)[:, None]
    g_center = tf.math.unsorted_segment_sum(d_pred * u, batch.summed_example, tf.shape(batch.center)[0])
    return (loss, Rows(g_center, batch.center, batch.center),
            Rows(d_pred * vs, batch.ids, batch.summed_ids))


def present(indices: tf.Tensor, vocab: int) -> tf.Tensor:
    """(V,) bool: the rows the batch used (padding ids included, as the reference counts them)."""
    return tf.tensor_scatter_nd_update(tf.zeros([vocab], tf.bool), indices[:, None], tf.ones_like(indices, tf.bool))


def coalesce(grad: Rows) -> tuple[tf.Tensor, tf.Tensor]:
    """Unique rows (tf.unique: a hash table, shapes that depend on the data) and their summed gradients."""
    rows, position = tf.unique(grad.indices)
    return rows, tf.math.unsorted_segment_sum(grad.values, position, tf.size(rows))


def unique_rows(grad: Rows, vocab: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
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


def set_threads() -> None:
    """Intra- and inter-op pools of SKIPGRAM_THREADS threads each, where the launcher set it (before
    TF starts its runtime: a later change raises, so it is made only when it changes something)."""
    threads = os.environ.get(THREADS_VARIABLE)
    if not threads:
        return
    n = int(threads)
    try:
        if tf.config.threading.get_intra_op_parallelism_threads() != n:
            tf.config.threading.set_intra_op_parallelism_threads(n)
        if tf.config.threading.get_inter_op_parallelism_threads() != n:
            tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError as exc:
        raise BenchError(f"tensorflow cannot take {THREADS_VARIABLE}={n} threads: "
                         f"its runtime already started ({exc})") from None


def join(workers: int) -> tuple[tf.distribute.MultiWorkerMirroredStrategy, World]:
    """The launcher's TF_CONFIG cluster as one MultiWorkerMirroredStrategy with ring collectives,
    and this process's place in it (its task index). It must be made before TF runs any op."""
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=RING)
    if strategy.num_replicas_in_sync != workers:
        raise BenchError(f"TF_CONFIG holds {strategy.num_replicas_in_sync} replicas, "
                         f"the run asks for {workers} workers")
    return strategy, World(int(strategy.cluster_resolver.task_id), workers)


class ReplicaBatch(NamedTuple):
    """One step's slice on one of N ranks: its tensors, its loss factor (common/sharding.py), and the
    rows of the IndexedSlices every rank hands the strategy for each table, (N, tables): what sets
    TF's padding to the longest rank's, learnt by one all-reduce in `prepare`, before the clock."""

    tensors: Tensors
    scale: tf.Tensor
    lengths: np.ndarray


class Segments(NamedTuple):
    """A compiled run's prepared batches: (block, lo, hi) views of stacked (n, B, ...) device
    tensors, one block per run of equal batch shapes (an epoch's last batch is shorter). The
    worker slices it like a list; slicing touches no device memory."""

    views: tuple[tuple[Tensors, int, int], ...]

    @classmethod
    def stack(cls, batches: list[Tensors]) -> Segments:
        groups: list[list[Tensors]] = []
        for batch in batches:
            if groups and [t.shape for t in groups[-1][0]] == [t.shape for t in batch]:
                groups[-1].append(batch)
            else:
                groups.append([batch])
        return cls(tuple((tuple(tf.stack(arrays) for arrays in zip(*group)), 0, len(group)) for group in groups))

    def __len__(self) -> int:
        return sum(hi - lo for _, lo, hi in self.views)

    def __getitem__(self, key: int | slice) -> Segments:
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
        self.packed = spec.layout == "packed"
        set_threads()
        self.strategy: tf.distribute.MultiWorkerMirroredStrategy | None = None
        self.world = World(0, 1)
        if spec.workers > 1:
            self.strategy, self.world = join(spec.workers)
        # mirrored on N workers: rank 0's initial values are broadcast as they are made
        with self.strategy.scope() if self.strategy is not None else tf.device(self.device):
            self.tables = [tf.Variable(init_center), tf.Variable(init_context)]
            self.slots = [(tf.Variable(tf.zeros_like(t)), tf.Variable(tf.zeros_like(t))) for t in self.tables]
            self.steps_done = tf.Variable(0, dtype=tf.int64)
        self._counted: list[list[Collective]] = []  # each step's collectives, as handed the strategy
        self._collective_seconds: list[tf.Tensor] = []  # each step's time in them
        # ids a step per table (center, context) at the spec's batch shape, for the lazy step's
        # layout where the traced shape does not say (the padded signature's None dimensions)
        self.ids_per_step = (spec.data.batch_size, spec.data.batch_size * spec.data.row_length)
        self.device_loop = spec.compile and (self.gpu_index is not None or self.DEVICE_LOOP_ON_CPU)
        # Packed and compiled on the CPU, only the update is XLA's (densify, then Adam or SGD: one
        # program a table); gathers, dots and their gradients stay TF's own kernels, which ran
        # them faster than XLA's (PERFORMANCE.md, "TensorFlow round two: packed layout").
        self.xla_update_only = spec.compile and self.packed and not self.device_loop
        jit = (spec.compile and not self.device_loop and not self.xla_update_only) or None
        self._update_fns = [tf.function(functools.partial(self._apply_table, i), jit_compile=True) for i in range(2)]
        if self.packed and not spec.compile:
            # Plain TF's kernels take any length: each batch is cut to its real slots (no padding
            # at all), under one signature, so nothing retraces.
            index, real = tf.TensorSpec([None], self.index_dtype), tf.TensorSpec([None], tf.float32)
            signature = [index, index, index, real, real, index, index]
            self._step_fn = tf.function(self._train_step, input_signature=signature)
        elif self.packed:
            # No signature: each packed length (one an epoch, common/packing.py) is its own trace
            # and XLA program, so the ids a step are a static shape; `prepare` traces before the clock.
            signature = None
            self._step_fn = tf.function(self._train_step, jit_compile=jit)
            self._loop_fn = tf.function(self._train_loop, jit_compile=True)
        else:
            signature = [tf.TensorSpec([None], self.index_dtype), tf.TensorSpec([None, None], self.index_dtype),
                         tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.float32)]
            self._step_fn = tf.function(self._train_step, input_signature=signature, jit_compile=jit)
            # One XLA program per block shape; lo and hi are run-time scalars, so segments never recompile.
            blocks = [tf.TensorSpec([None, *s.shape], s.dtype) for s in signature]
            self._loop_fn = tf.function(self._train_loop, jit_compile=True, input_signature=[
                tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32), *blocks])
        self._grads_fn = tf.function(self._loss_and_rows, input_signature=signature)
        if self.strategy is not None:  # compiled runs are refused there (backends/registry.py), so signature is set
            assert signature is not None
            self._replicated_fn = tf.function(self._replicated_step,
                                              input_signature=[tf.TensorSpec([], tf.float32), *signature])
            self._sum_fn = tf.function(self._all_sum)
        self._loss_fn = tf.function(self._loss, input_signature=signature)

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

    def _packed_tensors(self, batch: PackedBatch) -> PackedTensors:
        """One packed batch on the device, and its index variants with padding at -1; cut to
        its real slots where no compiler needs the epoch's one length."""
        if not self.spec.compile:
            cut = ("ids", "example", "label", "weight")
            batch = batch._replace(**{f: getattr(batch, f)[:batch.slots] for f in cut})
        real = np.arange(batch.ids.size) < batch.slots
        index = lambda a: tf.constant(a, self.index_dtype)  # noqa: E731
        return PackedTensors(center=index(batch.center), ids=index(batch.ids), example=index(batch.example),
                             label=tf.constant(batch.label), weight=tf.constant(batch.weight),
                             summed_ids=index(np.where(real, batch.ids, -1)),
                             summed_example=index(np.where(real, batch.example, -1)))

    def prepare(self, batches: Sequence[Batch],
                scales: Sequence[float] | None = None) -> list[Tensors] | Segments | list[ReplicaBatch]:
        """The batches as device tensors (packed: re-laid by common/packing.py); compiled runs on
        a GPU get them stacked for the device loop; on N workers, this rank's slices with their
        loss factors (`scales`, None in one process)."""
        with tf.device(self.device):
            if self.packed:
                tensors: list[Tensors] = [self._packed_tensors(p) for p in pack_epoch(batches)]
                if tensors and not self.device_loop and self.strategy is None:
                    self._step_fn.get_concrete_function(*tensors[0])  # trace this length now
            else:
                tensors = [(tf.cast(b.center, self.index_dtype), tf.cast(b.context_negative, self.index_dtype),
                            tf.cast(b.mask, tf.float32), tf.cast(b.label, tf.float32)) for b in batches]
            if self.strategy is None:
                return Segments.stack(tensors) if self.device_loop else tensors
        return self._replica_batches(tensors, [1.0] * len(tensors) if scales is None else scales)

    def _replica_batches(self, tensors: list[Tensors], scales: Sequence[float]) -> list[ReplicaBatch]:
        """Each slice with its loss factor and every rank's IndexedSlices rows a table (the sparse
        variant's padding; one all-reduce of the epoch's lengths, each rank's in its row, before the clock)."""
        # rows of each table's gradient: one per lookup (padded: every slot of the (B, L) rows)
        mine = np.array([[int(t[0].shape[0]), int(np.prod(t[1].shape))] for t in tensors], np.int32).reshape(-1, 2)
        world = self.world.size
        every = np.zeros((world, *mine.shape), np.int32)
        every[self.world.rank] = mine
        every = self._sum_fn(tf.constant(every)).numpy() if self.spec.sparse else np.repeat(mine[None], world, axis=0)
        return [ReplicaBatch(t, tf.constant(scale, tf.float32), every[:, i, :])
                for i, (t, scale) in enumerate(zip(tensors, scales))]

    def _all_sum(self, value: tf.Tensor) -> tf.Tensor:
        # a function's input straight into the all-reduce has no device to reduce on (TF 2.21:
        # "destinations can not be empty"); a copy made in the replica has
        return self.strategy.run(lambda v: tf.distribute.get_replica_context().all_reduce("sum", tf.identity(v)),
                                 args=(value,))

    def _replicated_step(self, scale: tf.Tensor, *batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return self.strategy.run(self._replica_step, args=(scale, *batch))

    def _replica_step(self, scale: tf.Tensor, *batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One rank's step: its slice's gradients (times its loss factor) to the strategy's MEAN
        all-reduce, timed around it in the graph, then the update on this replica. Returns the
        slice's unscaled loss and the seconds in the collective."""
        loss, grads = self._loss_and_rows(*batch)
        handed = ([tf.IndexedSlices(g.values * scale, g.indices) for g in grads] if self.spec.sparse
                  else [g.dense(int(t.shape[0])) * scale for g, t in zip(grads, self.tables)])
        with tf.control_dependencies(tf.nest.flatten(handed, expand_composites=True)):
            start = tf.timestamp()
        context = tf.distribute.get_replica_context()
        with tf.control_dependencies([start]):
            reduced = context.all_reduce(tf.distribute.ReduceOp.MEAN, handed, options=RING)
        with tf.control_dependencies(tf.nest.flatten(reduced, expand_composites=True)):
            seconds = tf.timestamp() - start
        context.merge_call(lambda strategy, r: strategy.extended.update(self.steps_done, self._apply_reduced,
                                                                        args=(r,)), args=(reduced,))
        return loss, seconds

    def _apply_reduced(self, steps: tf.Variable, reduced: list) -> None:
        """The update with the ranks' mean gradients, inside `extended.update` (this replica's
        variables): dense ones as rows 0..V-1, gathered IndexedSlices as they came (duplicates
        included: the lazy step and SGD's scatter sum them)."""
        steps.assign_add(1)
        t = tf.cast(steps, tf.float32)
        for i, g in enumerate(reduced):
            if isinstance(g, tf.IndexedSlices):
                rows = Rows(g.values, g.indices, g.indices)
            else:
                every = tf.range(tf.shape(g)[0], dtype=self.index_dtype)
                rows = Rows(g, every, every)
            self._apply_table(i, rows, t)

    def _count(self, lengths: np.ndarray) -> list[Collective]:
        """The step's collectives from what this rank hands the strategy: dense, both (V, D) tables
        in one pack (bytes_per_pack 0), one ring all-reduce; sparse, per table TF's all-gathers of
        the lengths, then the values and indices, each rank's padded to the longest (`lengths`)."""
        world, rank = self.world.size, self.world.rank
        if not self.spec.sparse:
            return [ring_allreduce("gradients of both tables (one pack)", "float32",
                                   sum(int(np.prod(t.shape)) for t in self.tables), world)]
        width, index = self.spec.data.embed, self.index_dtype.name
        counted = []
        for name, rows in zip(TABLES, lengths.T):
            longest = int(rows.max())
            counted += [ring_allgather(f"{name} gradient lengths", "int32", [1] * world, rank),
                        ring_allgather(f"{name} gradient values", "float32", [longest * width] * world, rank),
                        ring_allgather(f"{name} gradient indices", index, [longest] * world, rank)]
        return counted

    def communication(self) -> list[dict]:
        """The mean step's collectives (common.comm records), counted from the tensors handed the strategy."""
        return per_step(self._counted)

    def communication_seconds(self) -> float | None:
        """The mean step's seconds in the strategy's collective (graph timestamps around it)."""
        return float(np.mean([s.numpy() for s in self._collective_seconds])) if self._collective_seconds else None

    def _loss(self, *batch: tf.Tensor) -> tf.Tensor:
        if self.packed:
            return packed_loss_and_rows(*self.tables, PackedTensors(*batch), grads=False)[0]
        return skipgram_loss(*self.tables, *batch)

    def _loss_and_rows(self, *batch: tf.Tensor) -> tuple[tf.Tensor, list[Rows]]:
        if self.packed:
            loss, *rows = packed_loss_and_rows(*self.tables, PackedTensors(*batch))
            return loss, rows
        with tf.GradientTape() as tape:
            loss = skipgram_loss(*self.tables, *batch)
        return loss, [padded_rows(g) for g in tape.gradient(loss, self.tables)]

    def _apply(self, table: tf.Variable, slots: tuple[tf.Variable, tf.Variable], grad: Rows,
               t: tf.Tensor, ids: int) -> None:
        s = self.spec
        vocab = int(table.shape[0])
        if s.optimizer == "sgd":  # packed padding subtracts its zero rows from row 0: exact
            table.scatter_sub(tf.IndexedSlices(s.lr * grad.values, grad.indices))
            return
        m, v = slots
        b1_t, b2_t = tf.pow(s.beta1, t), tf.pow(s.beta2, t)
        if not s.sparse:  # fused kernel, eps moved inside so the update is torch's m_hat / (sqrt(v_hat) + eps)
            tf.raw_ops.ResourceApplyAdam(var=table.handle, m=m.handle, v=v.handle, beta1_power=b1_t,
                                         beta2_power=b2_t, lr=s.lr, beta1=s.beta1, beta2=s.beta2,
                                         epsilon=s.eps * tf.sqrt(1.0 - b2_t), grad=grad.dense(vocab))
            return
        step_size = s.lr * tf.sqrt(1.0 - b2_t) / (1.0 - b1_t)  # lazy Adam: the batch's rows only, global step t
        if s.compile and dense_shaped(vocab, ids):  # unfused (plain tf.function), this form measured slower
            used = present(grad.indices, vocab)[:, None]
            g = grad.dense(vocab)
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

    def _apply_table(self, i: int, grad: Rows, t: tf.Tensor) -> None:
        self._apply(self.tables[i], self.slots[i], grad, t, grad.indices.shape[0] or self.ids_per_step[i])

    def _train_step(self, *batch: tf.Tensor) -> tf.Tensor:
        loss, grads = self._loss_and_rows(*batch)
        self.steps_done.assign_add(1)
        t = tf.cast(self.steps_done, tf.float32)
        for i, grad in enumerate(grads):
            (self._update_fns[i] if self.xla_update_only else functools.partial(self._apply_table, i))(grad, t)
        return loss

    def _train_loop(self, lo: tf.Tensor, hi: tf.Tensor, *block: tf.Tensor) -> tf.Tensor:
        """Steps lo..hi-1 of a stacked block, as one XLA while loop; the block's losses come back
        (entries outside lo..hi are zero), so the host syncs once per segment."""
        losses = tf.zeros(tf.shape(block[0])[:1], tf.float32)
        for i in tf.range(lo, hi):
            loss = self._train_step(*(t[i] for t in block))
            losses = tf.tensor_scatter_nd_update(losses, [[i]], [loss])
        return losses

    def train(self, prepared: list[Tensors] | Segments | list[ReplicaBatch]) -> np.ndarray:
        if self.strategy is not None:
            return self._train_replica(prepared)  # type: ignore[arg-type]
        with tf.device(self.device):
            if isinstance(prepared, Segments):
                losses = [self._loop_fn(tf.constant(lo), tf.constant(hi), *block)[lo:hi]
                          for block, lo, hi in prepared.views]
                return tf.concat(losses, 0).numpy().astype(np.float64) if losses else np.zeros(0)
            losses = [self._step_fn(*batch) for batch in prepared]
        return tf.stack(losses).numpy().astype(np.float64) if losses else np.zeros(0)

    def _train_replica(self, prepared: list[ReplicaBatch]) -> np.ndarray:
        losses = []
        for batch in prepared:
            loss, seconds = self._replicated_fn(batch.scale, *batch.tensors)
            losses.append(loss)
            self._collective_seconds.append(seconds)
            self._counted.append(self._count(batch.lengths))
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
                g.values.numpy()

    def loss_and_grads(self, batch: Batch) -> tuple[float, np.ndarray, np.ndarray]:
        with tf.device(self.device):
            if self.packed:
                one: Tensors = self._packed_tensors(pack(batch, packed_length([batch])))
            else:
                one = self._one(self.prepare([batch])[0])
            loss, grads = self._grads_fn(*one)
            dense = [g.dense(int(t.shape[0])).numpy().astype(np.float64) for g, t in zip(grads, self.tables)]
        return float(loss), dense[0], dense[1]

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        return self.tables[0].numpy(), self.tables[1].numpy()
