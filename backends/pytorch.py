"""PyTorch: nn.Embedding tables; dense Adam, or sparse=True gradients with lazy Adam (LazyAdam:
SparseAdam's function without its sort; its dense-shaped update compiled in `prepare`). On
the CPU, `compile` compiles the loss from the gathered rows (forward and backward), one graph
per batch shape, each compiled in `prepare`.

Packed layout (common/packing.py): flat, one slot per real context or noise word. The centers
are gathered once per example (B rows), then repeated to the slots by `example` with the same
index_add_-backed gather (its backward sums N slot gradients into B rows), so a step computes
one dot, one BCE and one weighted sum per real slot and nothing for padding; compiled, only the
per-slot math is compiled and the gathers and their scatters stay eager, as in the padded form.

On cuda, two ways to stop paying one Python launch sequence per step: `graph` captures the
whole dense step (forward, backward, fused capturable Adam) as one CUDA graph per batch shape,
replayed after each batch is copied into its static inputs on the device; `compile` is
torch.compile's reduce-overhead mode, whose CUDA graphs cover forward and backward. TF32 is off:
every matmul is full float32, as on the CPU.

Data-parallel (spec.workers > 1, started by torchrun): the tables live in one nn.Module (SkipGram)
whose forward is the step's loss, wrapped in DistributedDataParallel on gloo (backends/torch_ddp.py):
the same math, with DDP's allreduce inside backward. One process calls the module's forward
directly, as it called the loss before.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from backends.base import Backend
from backends.torch_ddp import Counter, join
from backends.torch_lazy_adam import LazyAdam
from common.batches import Batch
from common.packing import pack_epoch
from common.sharding import THREADS_VARIABLE
from common.spec import RunSpec


class PaddedTensors(NamedTuple):
    """A padded batch on the device: the recipe's (B, L) rows."""
    center: torch.Tensor    # (B,) int32
    ids: torch.Tensor       # (B, L) int32: contexts and noise words, 0 on padding
    mask: torch.Tensor      # (B, L) float32
    label: torch.Tensor     # (B, L) float32


class PackedTensors(NamedTuple):
    """A packed batch on the device (common/packing.py's PackedBatch): N real slots then padding."""
    center: torch.Tensor    # (B,) int32
    ids: torch.Tensor       # (N,) int64: index_add_ takes 0.4x the time with int64 indices
    example: torch.Tensor   # (N,) int64
    label: torch.Tensor     # (N,) float32
    weight: torch.Tensor    # (N,) float32: 0 on padding


Tensors = PaddedTensors | PackedTensors


class Scaled(NamedTuple):
    """A data-parallel rank's slice with its loss factor (common.sharding.Shard.scale)."""
    batch: Tensors
    scale: float


Prepared = Tensors | Scaled
RowsLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
RELABEL_SEED = 26  # the fixed permutation of the vocabulary's rows (any fixed seed: it is a relabelling)
TABLES = ("center", "context")


def relabelling(vocab: int) -> np.ndarray:
    """A fixed random permutation of the rows: row r of the caller's tables is row perm[r] here.

    index_add_ on the CPU with int64 indices splits its work between threads by destination
    row, and the vocabulary is sorted by frequency, so with the rows in that order one thread
    gets most of a batch's row-adds; scattered over the table they split evenly. The
    relabelling is applied to the tables at init and to the ids in `prepare`, and undone in
    `embeddings` and `loss_and_grads`: every row's arithmetic is what it was (Adam is row-wise),
    so results are those of the unpermuted tables up to the order of float32 sums."""
    return np.random.default_rng(RELABEL_SEED).permutation(vocab)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    torch's CPU tensors come straight from malloc, so by default each step's large activations
    (the (B, 60, 100) gather: 12 MB at batch 512) are fresh mmaps or a re-grown heap top, page-
    faulted in again every step. PyTorch's CPU tuning advice is a caching allocator (jemalloc,
    tcmalloc); these two settings give glibc the same habit: +10 % examples/s at batch 512,
    +56 % at 8192 (PERFORMANCE.md). Returns False where libc has no mallopt (macOS, musl).
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    int_max = 2**31 - 1  # mallopt takes a C int
    return bool(mallopt(_M_MMAP_THRESHOLD, int_max)) and bool(mallopt(_M_TRIM_THRESHOLD, int_max))


def loss_of_rows(v: torch.Tensor, u: torch.Tensor, mask: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """The loss from the gathered rows: v (B, D) centers, u (B, L, D) contexts and noise.

    Each example's dots are a (L, D) x (D,) matrix-vector product: written as a multiply and a
    sum rather than `bmm`, whose CPU kernel takes 1.8x as long, forward and backward, at PTB's
    shapes; under torch.compile inductor fuses them into the loss (PERFORMANCE.md, "torch at
    its best")."""
    pred = (u * v.unsqueeze(1)).sum(dim=2)                    # (B, L)
    bce = F.binary_cross_entropy_with_logits(pred, label, reduction="none")
    return ((bce * mask).sum(dim=1) / mask.sum(dim=1)).mean()


class IndexAddGather(torch.autograd.Function):
    """F.embedding(ids, table) for a dense gradient, whose backward sums the gathered rows'
    gradients into the (V, D) table with index_add_ on int64 ids: on the CPU that scatter takes
    0.7x the time of embedding_dense_backward, what F.embedding's backward runs (PERFORMANCE.md,
    "torch at its best"). The ids are cast in the step (30k of them: microseconds), so the
    prepared epoch keeps int32 batches."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ids = ids.long()
        ctx.save_for_backward(ids)
        ctx.rows = table.shape[0]
        return F.embedding(ids, table)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (ids,) = ctx.saved_tensors
        width = grad.shape[-1]
        return grad.new_zeros(ctx.rows, width).index_add_(0, ids.reshape(-1), grad.reshape(-1, width)), None


def packed_loss_of_rows(v_slots: torch.Tensor, u: torch.Tensor, label: torch.Tensor,
                        weight: torch.Tensor) -> torch.Tensor:
    """The packed loss from the gathered rows: v_slots and u (N, D), each slot's center and
    context rows; weight 1 / (count * B) on real slots, 0 on padding (common/packing.py)."""
    pred = (u * v_slots).sum(dim=1)                           # (N,)
    return F.binary_cross_entropy_with_logits(pred, label, weight=weight, reduction="sum")


def gather(table: torch.Tensor, ids: torch.Tensor, sparse: bool, padding_row: int | None = None) -> torch.Tensor:
    """The rows `ids` of `table`. A sparse gradient is F.embedding's (uncoalesced, no scatter:
    LazyAdam sums it), without the entries of `padding_row` where given (F.embedding's
    padding_idx drops them from the sparse gradient: fewer values to sum, and the row is not
    marked present); a dense one on the CPU is IndexAddGather's. On cuda F.embedding's own
    backward stays (not measured there)."""
    if sparse or table.device.type != "cpu":
        return F.embedding(ids, table, padding_idx=padding_row if sparse else None, sparse=sparse)
    return IndexAddGather.apply(table, ids)


def skipgram_loss(center_w: torch.Tensor, context_w: torch.Tensor, center: torch.Tensor,
                  cn: torch.Tensor, mask: torch.Tensor, label: torch.Tensor, sparse: bool,
                  rows_loss: RowsLoss = loss_of_rows, padding_row: int | None = None) -> torch.Tensor:
    """Mean over examples of the masked mean of BCE-with-logits over each row. The gathers (and
    so their backward, the scatter-add into the tables' gradients) always run eagerly; only
    `rows_loss` is compiled: inductor lowers the embedding's backward on the CPU to atomic
    float adds, 30k rows x 100 of them a step, which made the compiled step 4x slower than eager
    (PERFORMANCE.md, "torch at its best")."""
    v = gather(center_w, center, sparse)                      # (B, D)
    u = gather(context_w, cn, sparse, padding_row)            # (B, L, D)
    return rows_loss(v, u, mask, label)


def packed_rows(center_w: torch.Tensor, context_w: torch.Tensor, batch: PackedTensors, sparse: bool,
                padding_row: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each slot's center row and context row, (N, D) each. Centers are gathered once per
    example and then repeated by `example`: a sparse gradient names B center rows, not N, and
    the repeat's backward sums into a (B, D) block that stays in cache."""
    v = gather(center_w, batch.center, sparse)                # (B, D)
    v_slots = gather(v, batch.example, False)                 # (N, D)
    return v_slots, gather(context_w, batch.ids, sparse, padding_row)  # (N, D) each


def packed_skipgram_loss(center_w: torch.Tensor, context_w: torch.Tensor, batch: PackedTensors, sparse: bool,
                         rows_loss: RowsLoss = packed_loss_of_rows, padding_row: int | None = None) -> torch.Tensor:
    """The packed loss (the same function as skipgram_loss's, on real slots only): gathers
    eager, `rows_loss` (the per-slot math) compiled or not, as in the padded form."""
    return rows_loss(*packed_rows(center_w, context_w, batch, sparse, padding_row), batch.label, batch.weight)


class SkipGram(torch.nn.Module):
    """The two tables as nn.Embedding modules, and the step's loss as forward: DDP finds the
    parameters that give sparse gradients by their module (nn.Embedding(sparse=True)) and starts
    each step's reduction in forward, so the loss must be computed inside the module it wraps."""

    def __init__(self, center: torch.Tensor, context: torch.Tensor, sparse: bool, rows_loss: RowsLoss,
                 padding_row: int | None) -> None:
        super().__init__()
        self.center = torch.nn.Embedding.from_pretrained(center, freeze=False, sparse=sparse)
        self.context = torch.nn.Embedding.from_pretrained(context, freeze=False, sparse=sparse)
        self.sparse, self.rows_loss, self.padding_row = sparse, rows_loss, padding_row  # rows_loss: the layout's

    def forward(self, batch: Tensors) -> torch.Tensor:
        if isinstance(batch, PackedTensors):
            return packed_skipgram_loss(self.center.weight, self.context.weight, batch, self.sparse,
                                        self.rows_loss, self.padding_row)
        return skipgram_loss(self.center.weight, self.context.weight, *batch, self.sparse, self.rows_loss,
                             self.padding_row)


def full_float32() -> None:
    """No TF32 anywhere: GPU losses must match the CPU's (and the contract tests' tolerances)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


class GraphedStep:
    """One whole dense training step captured as a CUDA graph for one batch shape.

    The graph reads fixed input buffers and writes the loss into a fixed output, so each step
    is: copy the batch into `inputs` on the device, replay (one launch). Capture follows the
    PyTorch docs: warm-up steps on a side stream first (they initialise Adam's state and the
    allocator's pool), gradients set to None so backward allocates them from the graph's pool.
    The warm-up steps change the weights and Adam's state, so both are restored afterwards, in
    place: the graph holds their addresses. Adam must be fused and capturable (its step count
    lives on the device).
    """

    WARMUP = 3

    def __init__(self, backend: TorchBackend, batch: Tensors) -> None:
        self.inputs = batch._make(t.clone() for t in batch)  # real indices: warm-up must gather valid rows
        saved = backend.snapshot()
        side = torch.cuda.Stream(backend.device)
        side.wait_stream(torch.cuda.current_stream(backend.device))
        with torch.cuda.stream(side), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")  # warm-up runs uncaptured on purpose
            for _ in range(self.WARMUP):
                backend.eager_step(self.inputs)
        torch.cuda.current_stream(backend.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        backend.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.loss = backend.eager_step(self.inputs)
        backend.restore(saved)

    def __call__(self, batch: Tensors) -> torch.Tensor:
        for static, new in zip(self.inputs, batch):
            static.copy_(new, non_blocking=True)
        self.graph.replay()
        return self.loss


class TorchBackend(Backend):
    name = "torch"
    # padding_idx on sparse context gathers (see padding_row): off, as it measured no faster
    # (PERFORMANCE.md, "torch, round two"); kept switchable for a quiet machine to decide.
    drop_padding = False

    def __init__(self, spec: RunSpec, init_center: np.ndarray, init_context: np.ndarray) -> None:
        super().__init__(spec, init_center, init_context)
        self.device = torch.device(spec.device)
        if os.environ.get(THREADS_VARIABLE):
            torch.set_num_threads(int(os.environ[THREADS_VARIABLE]))
        keep_freed_memory()
        full_float32()
        self.perm = relabelling(init_center.shape[0])  # perm[r]: where the caller's row r lives here
        self._unperm = torch.from_numpy(self.perm).to(self.device)
        inverse = np.argsort(self.perm)
        # Padding's row (0 before the relabelling), never in a real slot (common/packing.py):
        # dropped from sparse gradients. LazyAdam then leaves it unmarked, which changes nothing:
        # marked, its zero gradient moved neither it nor its moments. Always dropped across
        # ranks: a rank then hands gloo only the rows its slice names (common.comm.model_torch).
        dropped = self.drop_padding or spec.workers > 1
        self.padding_row: int | None = int(self.perm[0]) if dropped else None
        self.packed = spec.layout == "packed"
        on_gpu = self.device.type == "cuda"
        rows_loss = packed_loss_of_rows if self.packed else loss_of_rows
        # reduce-overhead: forward and backward replayed as CUDA graphs (cudagraph trees) on cuda.
        self.rows_loss = torch.compile(rows_loss, mode="reduce-overhead" if on_gpu else None, fullgraph=True,
                                       dynamic=False) if spec.compile else rows_loss
        self.model = SkipGram(torch.tensor(init_center[inverse], device=self.device),
                              torch.tensor(init_context[inverse], device=self.device), spec.sparse,
                              self.rows_loss, self.padding_row)
        self.center_w, self.context_w = self.model.center.weight, self.model.context.weight
        params = [self.center_w, self.context_w]
        self.loss_of: Callable[[Tensors], torch.Tensor] = self.model.forward
        self.counter: Counter | None = None
        if spec.workers > 1:  # after the tables, before the optimiser: DDP broadcasts rank 0's weights
            self.loss_of, self.counter, self.world = join(self.model, TABLES)
        if spec.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=spec.lr)
        elif spec.sparse:
            self.optimizer = LazyAdam(params, lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps)
        else:
            self.optimizer = torch.optim.Adam(params, lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps,
                                              foreach=False, fused=True, capturable=spec.graph)
        if on_gpu:  # graph capture and side streams act on the current device: make it this one
            torch.cuda.set_device(self.gpu_index)
        # cudagraph trees reuse their output buffers at the next step: mark each step, keep copies.
        self._new_cudagraph_step = spec.compile and on_gpu
        self._graphs: dict[tuple, GraphedStep] = {}
        self._compiled: set[tuple] = set()

    @classmethod
    def gpu_count(cls) -> int:
        return torch.cuda.device_count()

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"torch": torch.__version__}

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return "cpu"

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def peak_memory_bytes(self) -> int | None:
        return int(torch.cuda.max_memory_allocated(self.device)) if self.device.type == "cuda" else None

    def prepare(self, batches: Sequence[Batch], scales: Sequence[float] | None = None) -> list[Prepared]:
        """Tensors on the device (mask and label cast there, after the 1-byte copy); on CUDA
        the whole epoch is resident before timing starts. Packed: re-laid by common.packing
        first, one length for the epoch (one compiled graph or CUDA graph for all of it). On a
        data-parallel rank each slice goes with its loss factor (`scales`)."""
        prepared = self._prepared(batches)
        if scales is None:
            return list(prepared)
        return [Scaled(batch, scale) for batch, scale in zip(prepared, scales, strict=True)]

    def _prepared(self, batches: Sequence[Batch]) -> list[Tensors]:
        def move(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(self.device, non_blocking=True)
        prepared: list[Tensors]
        if self.packed:
            prepared = [PackedTensors(move(self.perm[p.center].astype(np.int32)), move(self.perm[p.ids]),
                                      move(p.example.astype(np.int64)), move(p.label), move(p.weight))
                        for p in pack_epoch(batches)]
        else:
            prepared = [PaddedTensors(move(self.perm[b.center].astype(np.int32)),
                                      move(self.perm[b.context_negative].astype(np.int32)), move(b.mask).float(),
                                      move(b.label).float()) for b in batches]
        t = time.perf_counter()
        if self.spec.graph:  # capture each new batch shape now, before the clock (like compilation)
            for batch in prepared:
                self._graph_for(batch)
        elif self.spec.compile:  # compile each new batch shape now (the epoch's short last batch too)
            for batch in prepared:
                self._compile_for(batch)
        lazy = isinstance(self.optimizer, LazyAdam)
        if lazy:  # its dense-shaped update is compiled, likewise now; across ranks the gradient is
            # the ranks' coalesced union, at most N slices' ids: compiled wherever it may be taken
            for ids in {(b[0].numel() * self.world.size, b[1].numel() * self.world.size) for b in prepared}:
                self.optimizer.compile_for(ids)
        if self.spec.graph or self.spec.compile or lazy:
            self.compile_seconds += time.perf_counter() - t
        return prepared

    def _compile_for(self, batch: Tensors) -> None:
        """Compile the loss's forward and backward for this batch's shape (dynamic=False: one
        graph per shape) on detached copies of its rows, leaving the weights and Adam untouched."""
        shape = tuple(t.shape for t in batch)
        if shape in self._compiled:
            return
        with torch.no_grad():
            if isinstance(batch, PackedTensors):
                v, u = packed_rows(self.center_w, self.context_w, batch, sparse=False)
                rest = batch.label, batch.weight
            else:
                v, u = self.center_w[batch.center], self.context_w[batch.ids]
                rest = batch.mask, batch.label
        if self._new_cudagraph_step:
            torch.compiler.cudagraph_mark_step_begin()
        self.rows_loss(v.requires_grad_(), u.requires_grad_(), *rest).backward()
        self._compiled.add(shape)

    def _graph_for(self, batch: Tensors) -> GraphedStep:
        shape = tuple(t.shape for t in batch)
        if shape not in self._graphs:
            self._graphs[shape] = GraphedStep(self, batch)
        return self._graphs[shape]

    def snapshot(self) -> dict[tuple[int, str], torch.Tensor]:
        """Copies of the weights and every optimiser state tensor (GraphedStep's warm-up undo)."""
        return {where: t.detach().clone() for where, t in self._state_tensors().items()}

    def restore(self, saved: dict[tuple[int, str], torch.Tensor]) -> None:
        """Put a snapshot back in place, keeping every tensor's storage (a graph points at it).
        State created since the snapshot is zeroed: Adam's fresh state (moments, step) is zeros."""
        with torch.no_grad():
            for where, tensor in self._state_tensors().items():
                tensor.copy_(saved[where]) if where in saved else tensor.zero_()

    def _state_tensors(self) -> dict[tuple[int, str], torch.Tensor]:
        tables = (self.center_w, self.context_w)
        state = {(i, k): v for i, p in enumerate(tables) for k, v in self.optimizer.state[p].items()
                 if torch.is_tensor(v)}
        return {(0, "weight"): self.center_w, (1, "weight"): self.context_w, **state}

    def eager_step(self, batch: Tensors, scale: float = 1.0) -> torch.Tensor:
        """Loss, gradients and the update, launched op by op (what a graph captures); the
        gradients are of the loss times `scale`, the loss returned is the slice's own."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(batch)
        (loss * scale if scale != 1.0 else loss).backward()
        self.optimizer.step()
        return loss.detach()

    def _loss(self, batch: Tensors) -> torch.Tensor:
        if self._new_cudagraph_step:
            torch.compiler.cudagraph_mark_step_begin()
        return self.loss_of(batch)

    def train(self, prepared: list[Prepared]) -> np.ndarray:
        losses = []
        for item in prepared:
            batch, scale = item if isinstance(item, Scaled) else (item, 1.0)
            loss = self._graph_for(batch)(batch) if self.spec.graph else self.eager_step(batch, scale)
            # a graph's (or cudagraph tree's) loss buffer is overwritten next step: keep a copy
            losses.append(loss.clone() if self.spec.graph or self._new_cudagraph_step else loss)
        return torch.stack(losses).cpu().numpy().astype(np.float64) if losses else np.zeros(0)

    def forward(self, prepared_batch: Tensors) -> None:
        with torch.no_grad():
            self._loss(prepared_batch).item()

    def forward_backward(self, prepared_batch: Tensors) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._loss(prepared_batch).backward()
        self.sync()

    def loss_and_grads(self, batch: Batch) -> tuple[float, np.ndarray, np.ndarray]:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(self._prepared([batch])[0])
        loss.backward()
        grads = [(p.grad.to_dense() if p.grad.is_sparse else p.grad)[self._unperm]
                 for p in (self.center_w, self.context_w)]
        result = loss.item(), *(g.cpu().double().numpy() for g in grads)
        self.optimizer.zero_grad(set_to_none=True)
        return result  # type: ignore[return-value]

    def communication(self) -> list[dict]:
        """What DDP handed gloo a step (counted by its comm hook), on a data-parallel rank; a
        collective: every rank calls it, after training."""
        return self.counter.collectives(self.world.rank) if self.counter is not None else []

    def communication_seconds(self) -> float | None:
        """The mean seconds a step spent in its collectives (first bucket handed over to last one reduced)."""
        return self.counter.seconds_per_step() if self.counter is not None else None

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            return self.center_w[self._unperm].cpu().numpy(), self.context_w[self._unperm].cpu().numpy()
