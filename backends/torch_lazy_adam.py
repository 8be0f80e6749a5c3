"""Lazy Adam (torch.optim.SparseAdam's function) that finds the batch's rows without a sort.

SparseAdam coalesces each sparse gradient: a sort of the batch's 30k indices, most of its step
(7.5 ms of 10.4 on PTB). The same update needs only the set of rows the batch used and each
row's summed gradient, which a scatter gives without ordering anything: the gradient's values
are index_add_-ed into a persistent zeroed (V, D) buffer and the rows are marked in a (V,) flag
array. Then, per table, one of the two layouts the XLA backends use (common/lazy_adam.py):

* rows: the marked rows are read back with nonzero (a scan), stepped row by row (gathered,
  updated, scattered back), and only those rows of the buffer and the flags are cleared, so the
  step's cost follows the batch, not V (large vocabularies);
* dense-shaped, when the batch names most of the table (PTB's context table: 30,720 ids, V =
  6,719): Adam for every row, kept only where marked, as one compiled pointwise pass
  (torch.compile, static shapes: one vectorised loop over the table, which also clears the
  buffer and the flags). Eager, the row-wise form makes ~15 passes over 64 % of the table.

Unmarked rows' weights and moments are unchanged bit for bit in both.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from common.lazy_adam import dense_shaped


def masked_adam(p: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, summed: torch.Tensor,
                used: torch.Tensor, step_size: torch.Tensor, beta1: float, beta2: float, eps: float) -> None:
    """The lazy step on every row of a table, written back only where `used`; `summed` and
    `used` are left zero. step_size is a 0-d tensor, so one compiled graph serves every step."""
    keep = used.unsqueeze(1)
    m = exp_avg * beta1 + summed * (1 - beta1)
    v = exp_avg_sq * beta2 + summed * summed * (1 - beta2)
    p.copy_(torch.where(keep, p - step_size * (m / (v.sqrt() + eps)), p))
    exp_avg.copy_(torch.where(keep, m, exp_avg))
    exp_avg_sq.copy_(torch.where(keep, v, exp_avg_sq))
    summed.zero_()
    used.zero_()


@functools.cache
def compiled_masked_adam():
    """masked_adam compiled, built on first use: torch.compile imports dynamo (seconds), which
    a run that never takes the dense-shaped layout need not pay."""
    return torch.compile(masked_adam, fullgraph=True, dynamic=False)


class LazyAdam(torch.optim.Optimizer):
    """Only the rows a step's sparse gradient names move; the step count t is global, eps sits
    beside the uncorrected sqrt(v) and step_size = lr * sqrt(1 - b2^t) / (1 - b1^t), as in
    SparseAdam (and backends/reference.py's lazy Optimizer.update)."""

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p),
                         summed=torch.zeros_like(p), used=torch.zeros(p.shape[0], dtype=torch.bool, device=p.device),
                         step_size=torch.zeros((), dtype=p.dtype, device=p.device))
        return state

    @torch.no_grad()
    def compile_for(self, ids_per_step: Sequence[int]) -> None:
        """Compile the dense-shaped update now (before a clock) for each parameter, in order,
        that a step naming this many ids would run dense-shaped: a call with no row marked,
        which changes nothing."""
        for group in self.param_groups:
            for p, ids in zip(group["params"], ids_per_step):
                if dense_shaped(p.shape[0], ids):
                    self._masked_update(p, self._state(p), group)

    @torch.no_grad()
    def step(self, closure=None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                state["step"] += 1
                t = state["step"]
                step_size = group["lr"] * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
                indices, values = p.grad._indices()[0], p.grad._values()
                state["summed"].index_add_(0, indices, values)
                state["used"].index_fill_(0, indices, True)
                if dense_shaped(p.shape[0], indices.numel()):
                    state["step_size"].fill_(step_size)
                    self._masked_update(p, state, group)
                    continue
                rows, g = self._rows_and_grad(state["summed"], state["used"])
                m = state["exp_avg"].index_select(0, rows).mul_(beta1).add_(g, alpha=1 - beta1)
                v = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                p.index_add_(0, rows, m.div_(v.sqrt_().add_(group["eps"])), alpha=-step_size)

    @staticmethod
    def _masked_update(p: torch.Tensor, state: dict, group: dict) -> None:
        """The dense-shaped layout: the compiled masked pass at the step size in state."""
        compiled_masked_adam()(p, state["exp_avg"], state["exp_avg_sq"], state["summed"], state["used"],
                               state["step_size"], *group["betas"], group["eps"])

    @staticmethod
    def _rows_and_grad(summed: torch.Tensor, used: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The marked rows (ascending) and their summed gradients; `summed` and `used` are left
        all zero again for the next step."""
        rows = used.nonzero().squeeze(1)
        g = summed.index_select(0, rows)
        summed.index_fill_(0, rows, 0)
        used.index_fill_(0, rows, False)
        return rows, g
