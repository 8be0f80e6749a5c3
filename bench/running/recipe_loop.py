"""The baseline: training the way the book's PyTorch code does, on this suite's examples.

Per-example Python lists, a DataLoader whose collate function pads each batch in Python to
its longest row (the book's `batchify`, with its 4 worker processes), the book's loss
scaling and `l.sum().backward()`. The examples are draw 0 of the shared data layer, so the
loop sees the same data as the backends (in the DataLoader's own shuffle order: its losses
are not comparable step by step, its speed is the point). Runs in the torch env.
"""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.executing.processes import die_with
from bench.running.worker import Progress, Timeline, check_vectors, finish, outcome, record
from common.batches import load_dataset
from common.init import initial_weights
from common.machine import MachineLoad
from common.spec import RunSpec

WORKERS = 4  # d2l.get_dataloader_workers()


class Examples(torch.utils.data.Dataset):
    """(center, contexts, negatives) as Python objects, as the book's PTBDataset holds them."""

    def __init__(self, centers: list[int], contexts: list[list[int]], negatives: list[list[int]]) -> None:
        self.centers, self.contexts, self.negatives = centers, contexts, negatives

    def __getitem__(self, index: int) -> tuple[int, list[int], list[int]]:
        return self.centers[index], self.contexts[index], self.negatives[index]

    def __len__(self) -> int:
        return len(self.centers)


def batchify(data: list[tuple[int, list[int], list[int]]]) -> tuple[torch.Tensor, ...]:
    """Pad every row to the batch's longest; contexts first, then noise, as the book does."""
    max_len = max(len(c) + len(n) for _, c, n in data)
    centers, contexts_negatives, masks, labels = [], [], [], []
    for center, context, negative in data:
        cur_len = len(context) + len(negative)
        centers += [center]
        contexts_negatives += [context + negative + [0] * (max_len - cur_len)]
        masks += [[1] * cur_len + [0] * (max_len - cur_len)]
        labels += [[1] * len(context) + [0] * (max_len - len(context))]
    return (torch.tensor(centers).reshape((-1, 1)), torch.tensor(contexts_negatives),
            torch.tensor(masks), torch.tensor(labels))


def examples(spec: RunSpec, data_dir: str | None, download: bool):
    dataset = load_dataset(spec.data, data_dir, download)
    sampler = dataset.sampler(0)
    rows = dataset.rows_source(0).rows(np.arange(sampler.draw.centers.size))
    cn, m = rows.context_negative.tolist(), rows.contexts.tolist()
    k = spec.data.noise
    data = Examples(rows.center.tolist(), [r[:n] for r, n in zip(cn, m)], [r[n:n * (1 + k)] for r, n in zip(cn, m)])
    return dataset, data


def _dies_with(parent: int) -> Callable[[int], None]:
    """A DataLoader worker_init_fn: the worker is SIGKILLed when `parent` dies."""
    arm = die_with(parent)  # prctl looked up here, before the workers fork
    return lambda worker_id: arm()


def train(spec: RunSpec, data_dir: str | None = None, download: bool = True,
          export_vectors: Path | None = None, progress: Progress | None = None) -> dict:
    t0 = time.perf_counter()
    dataset, data = examples(spec, data_dir, download)
    check_vectors(export_vectors, len(dataset.vocab), spec.data.embed)
    torch.manual_seed(spec.data.seed)
    warnings.filterwarnings("ignore", message=".*worker processes in total.*")  # the book's 4 on any machine
    # Its workers die with this process (PR_SET_PDEATHSIG), not seconds later by torch's own watchdog.
    loader = torch.utils.data.DataLoader(data, spec.data.batch_size, shuffle=True, collate_fn=batchify,
                                         num_workers=WORKERS, worker_init_fn=_dies_with(os.getpid()))
    net = nn.Sequential(nn.Embedding(len(dataset.vocab), spec.data.embed),
                        nn.Embedding(len(dataset.vocab), spec.data.embed))
    for layer, init in zip(net, initial_weights(spec.data.seed, len(dataset.vocab), spec.data.embed)):
        layer.weight.data.copy_(torch.from_numpy(init))
    optimizer = torch.optim.Adam(net.parameters(), lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps)
    timings = {"load_seconds": time.perf_counter() - t0, "first_step_seconds": None}
    timeline, epoch_losses, epoch_seconds = Timeline(), [], []
    load, machine_load = MachineLoad(), None  # its clock is the whole epoch, DataLoader included: so is this span
    limit = spec.max_steps or len(loader) * spec.data.epochs
    for _ in range(spec.data.epochs):
        load.start()
        t, total, count, epoch_examples = time.perf_counter(), 0.0, 0, 0
        for center, context_negative, mask, label in loader:
            if len(timeline.losses) >= limit:
                break
            optimizer.zero_grad()
            pred = torch.bmm(net[0](center), net[1](context_negative).permute(0, 2, 1))
            bce = nn.functional.binary_cross_entropy_with_logits(
                pred.reshape(label.shape).float(), label.float(), weight=mask, reduction="none").mean(dim=1)
            loss = bce / mask.sum(axis=1) * mask.shape[1]
            loss.sum().backward()
            optimizer.step()
            total, count = total + float(loss.detach().sum()), count + loss.numel()  # the book's metric.add
            if timings["first_step_seconds"] is None:  # from the loop's start: the DataLoader's workers start too
                timings["first_step_seconds"] = time.perf_counter() - t
            timeline.losses.append(float(loss.detach().mean()))
            timeline.sizes.append(loss.numel())
            epoch_examples += loss.numel()
        seconds = time.perf_counter() - t
        machine_load = load.stop()  # after the loop, so its worker processes are reaped and counted as its own
        if epoch_examples:
            epoch_seconds.append(seconds)
            epoch_losses.append(total / count)
            timeline.segments.append((epoch_examples, seconds))
        if progress:
            progress(len(timeline.losses), limit)
    timings["train_seconds"] = float(sum(epoch_seconds))
    env = {"backend": "recipe-loop", "versions": {"torch": torch.__version__}, "device_name": "cpu",
           "loader_workers": WORKERS}
    # No data hash: the same examples, but in the DataLoader's order and padded per batch.
    status, error = outcome(timeline.losses)
    result = record(spec, status, error, env, None, timeline, epoch_losses, epoch_seconds, timings, machine_load)
    result["kind"] = "recipe-loop"
    finish(result, dataset.vocab.tokens, net[0].weight.detach().numpy(), export_vectors)
    return result
