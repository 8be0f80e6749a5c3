"""The roofline of a run: the bytes and FLOPs a skip-gram step cannot avoid, and the rate the
machine's measured bandwidth and FLOP rate allow for them (README, "The roofline").

Compulsory traffic, per step, for V words, D floats a row (4 bytes), B examples, the batch's
touched rows (U_c distinct centers, U_x distinct context and noise words, both measured on the
run's own batches) and its slots (n = B x L padded, S real slots packed):

    inputs     padded: 4 B + 6 B L (int32 centers; int32 ids, uint8 mask and label per slot)
               packed: 4 B + 16 S (int32 centers; int32 id and example, float32 label and weight)
    gather     4 D (U_c + U_x)        each touched row of both tables read once for the forward
    gradients  8 D (U_c + U_x)        each touched row's gradient written once and read once
    optimiser  dense Adam: 48 D V     w, m and v of both tables read and written (6 x 2 x V x D x 4)
               lazy Adam:  24 D (U_c + U_x)   the same for the touched rows only
               SGD:         8 D (U_c + U_x)   w of the touched rows read and written

    FLOPs      6 D n + 10 n           the dot, both gradients (a multiply-add is 2 FLOPs), and about
                                      10 for the loss and sigmoid of each slot
               + 12 per Adam element (dense: 2 V D; lazy: (U_c + U_x) D), 2 per SGD element

The working set, where the bandwidth is read from the probe's curve, is what one step must hold:
dense Adam both tables' w, m, v and gradient (32 D V bytes), lazy Adam the touched rows' (16 D
(U_c + U_x)), SGD w and gradient of the touched rows (8 D (U_c + U_x)), plus the inputs. The bound is

    B / max(bytes / bandwidth(working set), FLOPs / peak FLOP rate)   examples per second.

Every choice errs towards a higher bound (best-of-repeats bandwidth of the fastest stream, the
smallest working set that holds a step, a transcendental counted as one FLOP at the FMA rate),
so no run should exceed it; what it leaves out (the per-slot logits and gradients a kernel keeps
in registers, launches, latency of the gathers) is why real runs fall below it.
"""
from __future__ import annotations

from collections.abc import Iterable, Sized
from dataclasses import asdict, dataclass

import numpy as np

from common.batches import Batch
from common.packing import touched_rows
from common.probe import Probe, bandwidth_at, cached_probe, unavailable
from common.spec import RunSpec

FLOAT = 4
PADDED_SLOT_BYTES = 4 + 1 + 1      # int32 id, uint8 mask, uint8 label
PACKED_SLOT_BYTES = 4 + 4 + 4 + 4  # int32 id and example, float32 label and weight (common/packing.py)
SLOT_FLOPS = 10                    # exp, log1p, the loss's max/mul/add, the sigmoid, the weight
ADAM_FLOPS = 12                    # per element: two moment updates (4 each), the step (4 with sqrt, div)
SGD_FLOPS = 2
UPDATES = ("adam", "lazy_adam", "sgd")
STATS_BATCHES = 128                # batches of the epoch the touched rows are counted on, evenly spread


@dataclass(frozen=True)
class BatchStats:
    """What a step touches, the mean over the run's batches (measured, not assumed)."""

    examples: float      # B, examples a step (the last batch of an epoch is smaller)
    row_length: int      # L, slots a padded row
    slots: float         # S, real (unmasked) slots a step
    center_rows: float   # U_c, distinct centers a step
    context_rows: float  # U_x, distinct context and noise words in real slots a step
    batches: int         # how many batches the means are over

    def to_dict(self) -> dict:
        return asdict(self)


def measure(batches: Iterable[Batch], count: int | None = None, limit: int = STATS_BATCHES) -> BatchStats:
    """Means over up to `limit` of the `count` batches `batches` yields (a sequence's length by
    default), evenly spread. Each chosen batch is counted as it streams by and none is kept, so an
    epoch of any size costs one batch's memory (the counts are np.unique's: a few ms a batch at
    V = 1M, so an epoch of 671 is sampled, not walked)."""
    total = len(batches) if count is None and isinstance(batches, Sized) else count
    if not total:
        raise ValueError("no batch to measure")
    wanted = set(np.linspace(0, total - 1, min(limit, total)).astype(int).tolist())
    rows: list[tuple[int, int, int, int]] = []  # examples, real slots, U_c, U_x of each chosen batch
    row_length = 0
    for i, batch in enumerate(batches):
        if i in wanted:
            row_length = int(batch.context_negative.shape[1])
            rows.append((batch.center.size, int(np.count_nonzero(batch.mask)), *touched_rows(batch)))
    if not rows:
        raise ValueError("no batch to measure")
    means = np.array(rows, dtype=np.float64).mean(axis=0)
    return BatchStats(examples=float(means[0]), row_length=row_length, slots=float(means[1]),
                      center_rows=float(means[2]), context_rows=float(means[3]), batches=len(rows))


@dataclass(frozen=True)
class StepCost:
    bytes: float        # compulsory bytes a step moves
    flops: float        # FLOPs a step computes
    working_set: float  # bytes a step must hold: where its bandwidth is read


def update_rule(optimizer: str, sparse: bool) -> str:
    """The run's update in the model's terms: SGD (touched rows), lazy Adam (sparse), dense Adam."""
    return "sgd" if optimizer == "sgd" else "lazy_adam" if sparse else "adam"


def step_cost(vocab: int, embed: int, stats: BatchStats, update: str, layout: str) -> StepCost:
    """The module docstring's formulas for one step."""
    if update not in UPDATES or layout not in ("padded", "packed"):
        raise ValueError(f"no cost model for update {update!r}, layout {layout!r}")
    row = FLOAT * embed
    touched = stats.center_rows + stats.context_rows
    if layout == "padded":
        slots = stats.examples * stats.row_length
        inputs = FLOAT * stats.examples + PADDED_SLOT_BYTES * slots
    else:
        slots = stats.slots
        inputs = FLOAT * stats.examples + PACKED_SLOT_BYTES * slots
    optimiser_rows = {"adam": 2 * vocab, "lazy_adam": touched, "sgd": touched}[update]
    optimiser_bytes = {"adam": 6, "lazy_adam": 6, "sgd": 2}[update] * row * optimiser_rows
    optimiser_flops = (SGD_FLOPS if update == "sgd" else ADAM_FLOPS) * embed * optimiser_rows
    held = {"adam": 8 * vocab, "lazy_adam": 4 * touched, "sgd": 2 * touched}[update]  # rows of w, m, v, grad
    return StepCost(bytes=inputs + row * touched + 2 * row * touched + optimiser_bytes,
                    flops=(6 * embed + SLOT_FLOPS) * slots + optimiser_flops,
                    working_set=row * held + inputs)


def bound(cost: StepCost, examples: float, bandwidth: float | None, peak_flops: float | None) -> float | None:
    """Examples/s the machine allows a step of `cost`: B / max(bytes / bandwidth, FLOPs / peak)."""
    if not bandwidth or not peak_flops:
        return None
    return examples / max(cost.bytes / bandwidth, cost.flops / peak_flops)


def roofline(vocab: int, embed: int, stats: BatchStats, update: str, layout: str, probe: Probe) -> dict:
    """A result's `roofline` record. Without a usable probe the bytes and FLOPs are still there,
    the machine's figures and the bound are null, and `unavailable` says why."""
    cost = step_cost(vocab, embed, stats, update, layout)
    bandwidth = bandwidth_at(probe, cost.working_set)
    peak = None if probe.get("error") else probe.get("peak_flops")
    rate = bound(cost, stats.examples, bandwidth, peak)
    record = {"bytes_per_step": cost.bytes, "flops_per_step": cost.flops, "bandwidth_bytes_per_s": bandwidth,
              "peak_flops_per_s": peak, "bound_examples_per_s": rate, "working_set_bytes": cost.working_set,
              "update": update, "layout": layout, "stats": stats.to_dict(),
              "probe": probe}
    if rate is None:
        record["unavailable"] = probe.get("error") or "the probe has no figures"
    else:
        assert bandwidth and peak  # bound() gives a rate only with both
        record["bound_by"] = "memory" if cost.bytes / bandwidth >= cost.flops / peak else "compute"
    return record


# Published figures of GPUs no session has measured yet: (bytes/s, float32 FLOP/s without tensor cores).
PUBLISHED_GPUS = {
    "H100 SXM": (3.35e12, 67e12),  # NVIDIA H100 datasheet: HBM3 3.35 TB/s, FP32 67 TFLOPS
    "H200": (4.8e12, 67e12),       # NVIDIA H200 datasheet: HBM3e 4.8 TB/s, FP32 67 TFLOPS
}


def published_gpu(device_name: str) -> tuple[str, tuple[float, float]] | None:
    """The published figures of a GPU named like `device_name` (nvidia-smi's or a framework's name),
    if we hold them: an H100 is taken as the SXM part only when its name says HBM3 or SXM."""
    name = device_name.upper()
    if "H200" in name:
        return "H200", PUBLISHED_GPUS["H200"]
    if "H100" in name and ("HBM3" in name or "SXM" in name):
        return "H100 SXM", PUBLISHED_GPUS["H100 SXM"]
    return None


def gpu_probe(label: str, figures: tuple[float, float]) -> Probe:
    """A probe record from published figures: one bandwidth at every size (HBM has no cache curve
    worth the name at these working sets; L2 is 50-60 MB and left out, erring low)."""
    bandwidth, flops = figures
    return {"method": f"published ({label})", "sizes": [1], "bandwidth": [bandwidth], "peak_flops": flops}


def for_run(spec: RunSpec, vocab: int, stats: BatchStats, device_name: str) -> dict:
    """The roofline record of a run of `spec`: on a CPU against this process's probe (the suite's,
    handed down, or measured once here), on a GPU against its published figures where we hold them."""
    if spec.device.startswith("cuda"):
        known = published_gpu(device_name)
        machine = gpu_probe(*known) if known else unavailable(f"no measured or published figures for {device_name}")
    else:
        machine = cached_probe()
    return roofline(vocab, spec.data.embed, stats, update_rule(spec.optimizer, spec.sparse), spec.layout, machine)
