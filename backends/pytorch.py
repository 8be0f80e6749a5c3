"""PyTorch: nn.Embedding tables; dense Adam, or sparse=True gradients with SparseAdam."""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from backends.base import Backend
from common.batches import Batch
from common.spec import RunSpec

Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


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


def skipgram_loss(center_w: torch.Tensor, context_w: torch.Tensor, center: torch.Tensor,
                  cn: torch.Tensor, mask: torch.Tensor, label: torch.Tensor, sparse: bool) -> torch.Tensor:
    """Mean over examples of the masked mean of BCE-with-logits over each row."""
    v = F.embedding(center, center_w, sparse=sparse)          # (B, D)
    u = F.embedding(cn, context_w, sparse=sparse)             # (B, L, D)
    pred = torch.bmm(u, v.unsqueeze(2)).squeeze(2)            # (B, L)
    bce = F.binary_cross_entropy_with_logits(pred, label, reduction="none")
    return ((bce * mask).sum(dim=1) / mask.sum(dim=1)).mean()


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, spec: RunSpec, init_center: np.ndarray, init_context: np.ndarray) -> None:
        super().__init__(spec, init_center, init_context)
        self.device = torch.device(spec.device)
        keep_freed_memory()
        self.center_w = torch.nn.Parameter(torch.tensor(init_center, device=self.device))
        self.context_w = torch.nn.Parameter(torch.tensor(init_context, device=self.device))
        params = [self.center_w, self.context_w]
        if spec.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=spec.lr)
        elif spec.sparse:
            self.optimizer = torch.optim.SparseAdam(params, lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps)
        else:
            self.optimizer = torch.optim.Adam(params, lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps,
                                              foreach=False, fused=True)
        self.loss_fn = torch.compile(skipgram_loss) if spec.compile else skipgram_loss

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

    def prepare(self, batches: Sequence[Batch]) -> list[Tensors]:
        """Tensors on the device (mask and label cast there, after the 1-byte copy); on CUDA
        the whole epoch is resident before timing starts."""
        def move(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(self.device, non_blocking=True)
        return [(move(b.center), move(b.context_negative), move(b.mask).float(), move(b.label).float())
                for b in batches]

    def _loss(self, batch: Tensors) -> torch.Tensor:
        return self.loss_fn(self.center_w, self.context_w, *batch, self.spec.sparse)

    def train(self, prepared: list[Tensors]) -> np.ndarray:
        losses = []
        for batch in prepared:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._loss(batch)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
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
        loss = self._loss(self.prepare([batch])[0])
        loss.backward()
        grads = [p.grad.to_dense() if p.grad.is_sparse else p.grad for p in (self.center_w, self.context_w)]
        result = loss.item(), *(g.cpu().double().numpy() for g in grads)
        self.optimizer.zero_grad(set_to_none=True)
        return result  # type: ignore[return-value]

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        return self.center_w.detach().cpu().numpy().copy(), self.context_w.detach().cpu().numpy().copy()
