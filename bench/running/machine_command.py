"""`python -m bench machine` (the probe: what this machine moves and computes) and `python -m bench
roofline` (the cost model's bytes, FLOPs and bounds for a corpus, here and on published GPUs)."""
from __future__ import annotations

import argparse
import json
import sys

from bench.options import data_spec
from common.batches import load_dataset
from common.errors import BenchError
from common.machine import cpu_model
from common.probe import Probe, probe
from common.roofline import PUBLISHED_GPUS, UPDATES, gpu_probe, measure, roofline

# The largest vocabulary the model is asked about: word ids are int32 everywhere in the stream.
MAX_VOCAB = 2 ** 31 - 1


def _shown(n: int) -> str:
    """An integer as a message shows it: a 400-digit one by its size, not its digits."""
    text = str(n)
    return text if len(text) <= 20 else f"a number of {len(text.lstrip('-'))} digits"


def _size(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:g} B"


def probe_lines(result: Probe) -> list[str]:
    """The probe as a table: bandwidth at each working set (best, and each stream's spread), peak FLOPs."""
    if result.get("error"):
        return [f"no bound: {result['error']}"]
    caches = ", ".join(f"{level} {_size(size)}" for level, size in (result.get("caches") or {}).items())
    lines = [f"machine probe: {result['method']}, {result['threads']} threads, {result.get('seconds', 0):.1f} s; "
             f"{cpu_model()}" + (f" ({caches})" if caches else ""),
             f"{'working set':>12}  {'GB/s (best)':>11}  " + "  ".join(
                 f"{name + ' best/median/worst':>26}" for name in result["kernels"])]
    for i, size in enumerate(result["sizes"]):
        streams = "  ".join(f"{s[i]['best'] / 1e9:10.1f} /{s[i]['median'] / 1e9:6.1f} /{s[i]['worst'] / 1e9:6.1f}"
                            for s in result["kernels"].values())
        lines.append(f"{_size(size):>12}  {result['bandwidth'][i] / 1e9:11.1f}  {streams}")
    spread = result["peak_flops_spread"]
    lines.append(f"peak float32 FMA: {result['peak_flops'] / 1e9:.1f} GFLOP/s (median {spread['median'] / 1e9:.1f}, "
                 f"worst {spread['worst'] / 1e9:.1f} of the repeats)")
    return lines


def run(args: argparse.Namespace) -> int:
    result = probe()
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(probe_lines(result)))
    if result.get("error"):
        print(f"error: {result['error']}", file=sys.stderr)
        return 1
    return 0


def run_roofline(args: argparse.Namespace) -> int:
    """The model on the first epoch of the data the flags describe: each update and layout's bytes
    and FLOPs a step, and its bound on this machine (unless --no-probe) and on each published GPU;
    --vocab N repeats it with V = N and the same touched rows (the step of a larger vocabulary)."""
    if args.vocab is not None and not 1 <= args.vocab <= MAX_VOCAB:
        raise BenchError(f"--vocab must be a whole number from 1 to {MAX_VOCAB:,} (word ids are int32), "
                         f"got {_shown(args.vocab)}")
    spec = data_spec(args)
    dataset = load_dataset(spec, args.data_dir, not args.no_download)
    count = dataset.batches_per_epoch(0)
    stats = measure(dataset.epoch(0), count)  # streamed: the epoch is never held whole
    machines: list[tuple[str, Probe]] = [] if args.no_probe else [("this machine", probe())]
    machines += [(name, gpu_probe(name, figures)) for name, figures in PUBLISHED_GPUS.items()]
    for name, m in machines:
        if m.get("error"):
            print(f"{name}: no bound: {m['error']}")
        else:
            print(f"{name}: {m['method']}, peak {m['peak_flops'] / 1e12:.3g} TFLOP/s, bandwidth "
                  f"{min(m['bandwidth']) / 1e9:,.0f}-{max(m['bandwidth']) / 1e9:,.0f} GB/s")
    print(f"touched a step (mean of {stats.batches} of {count} batches): {stats.examples:.0f} examples, "
          f"{stats.slots:.0f} real slots of {stats.examples * stats.row_length:.0f}, {stats.center_rows:.0f} center "
          f"rows, {stats.context_rows:.0f} context rows")
    for vocab in [len(dataset.vocab), *([args.vocab] if args.vocab is not None else [])]:
        print(f"\nV = {vocab:,}, D = {spec.embed}")
        print(f"{'update':>9} {'layout':>6} {'MB/step':>8} {'MFLOP/step':>10} {'working set':>11}  " +
              "  ".join(f"{name + ' ex/s':>22}" for name, _ in machines))
        for update in UPDATES:
            for layout in ("padded", "packed"):
                records = [roofline(vocab, spec.embed, stats, update, layout, m) for _, m in machines]
                first = records[0]
                bounds = "  ".join(_bound_text(r) for r in records)
                print(f"{update:>9} {layout:>6} {first['bytes_per_step'] / 1e6:8.1f} "
                      f"{first['flops_per_step'] / 1e6:10.1f} "
                      f"{_size(first['working_set_bytes']):>11}  {bounds}")
    return 0


def _bound_text(record: dict) -> str:
    """A bound and what bounds it (memory at the bandwidth of its working set, or compute)."""
    rate = record["bound_examples_per_s"]
    if rate is None:
        return f"{'-':>22}"
    by = f"{record['bandwidth_bytes_per_s'] / 1e9:,.0f} GB/s" if record["bound_by"] == "memory" else "FLOPs"
    return f"{rate:,.0f} ({by})".rjust(22)
