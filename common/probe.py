"""The machine probe: what this machine can move and compute, so a run is read against hardware.

Two figures, each the best of a few repeats (STREAM's convention: the best repeat is the one
least disturbed), with the spread kept beside it:

* memory bandwidth, streams on every core (numba `prange` copy and triad where numba is present,
  numpy ufuncs on a thread per core otherwise), at working-set sizes from inside L2 to past the
  last-level cache: a run's bound uses the bandwidth at its own working set, interpolated in log
  size (`bandwidth_at`);
* the peak float32 FMA rate: a numba loop of chained FMAs over an L1-resident row per thread
  (vectorised), or numpy's float32 matmul (BLAS) without numba.

About two seconds. A probe that cannot run returns {"error": why}: "no bound", never a made-up
figure. One probe serves a whole process (`cached_probe`) or suite (the harness hands its probe to
every run in a file named by PROBE_VARIABLE, which the run checks and `use`s); nothing here runs
per step.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

PROBE_VARIABLE = "SKIPGRAM_MACHINE_PROBE_FILE"  # a file holding the probe the harness hands a run
SCHEMA = 1
REPEATS = 5            # timed repeats per kernel and size (their spread is recorded)
STREAM_BYTES = 256e6   # bytes one timed repeat moves: 2.5 ms at 100 GB/s, 25 ms at 10 GB/s
FLOP_WORK = 1e9        # FLOPs one timed repeat computes: 10 ms at 100 GFLOP/s
FLOP_REPEATS = 5
MAX_BYTES = 512 << 20  # largest working set: past every LLC we met (the Intel VM reports 480 MB)
MIN_BYTES = 256 << 10  # inside any L2
Probe = dict  # {"method", "threads", "sizes", "bandwidth", "kernels", "peak_flops", ...} or {"error": ...}


def cache_sizes() -> dict[int, int]:
    """Data or unified cache size in bytes by level, from sysfs (empty where it cannot be read)."""
    sizes: dict[int, int] = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            level, text = int((index / "level").read_text()), (index / "size").read_text().strip()
            unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            sizes[level] = int(text.rstrip("KMG")) * unit
        except (OSError, ValueError):
            continue
    return sizes


def working_set_sizes(caches: dict[int, int]) -> list[int]:
    """Powers of two from inside L2 to four times the last-level cache (at least 64 MiB, at most
    MAX_BYTES): every level a run's working set may sit in, and memory past them."""
    top = min(MAX_BYTES, max(64 << 20, 4 * max(caches.values(), default=0)))
    sizes, size = [], min(MIN_BYTES, caches.get(2, MIN_BYTES))
    while size <= top:
        sizes.append(size)
        size *= 2
    return sizes


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _timed(run: Callable[[int], None], reps: int, work_per_rep: float, repeats: int) -> list[float]:
    """`run(reps)` after a warm-up, `repeats` times: rates (work per second). reps is set from the
    work, not from a first timing: on a shared machine a parallel launch may wait milliseconds for
    a core, and a calibration that met such a wait would time launches instead of work."""
    run(1)  # warm-up: first touch, compilation, caches
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        run(reps)
        rates.append(work_per_rep * reps / (time.perf_counter() - t))
    return rates


def _reps(work_per_rep: float, work: float) -> int:
    return max(1, round(work / work_per_rep))


FMA_ROW = 512  # float32s in a thread's FMA row: 2 KiB, in L1


def _numba_probe(sizes: list[int]) -> Probe:
    import numba

    from common import probe_kernels as k

    threads = min(numba.get_num_threads(), _cores())
    numba.set_num_threads(threads)
    kernels: dict[str, list[list[float]]] = {"copy": [], "triad": []}
    for size in sizes:
        n = size // 8  # copy: two float32 arrays of n
        a, b = np.ones(n, np.float32), np.zeros(n, np.float32)

        def copy(reps: int, a: np.ndarray = a, b: np.ndarray = b) -> None:
            k.copy(a, b, reps, threads)
        kernels["copy"].append(_timed(copy, _reps(8.0 * n, STREAM_BYTES), 8.0 * n, REPEATS))
        n = size // 12  # triad: three arrays of n
        a, b, c = np.zeros(n, np.float32), np.ones(n, np.float32), np.ones(n, np.float32)

        def triad(reps: int, a: np.ndarray = a, b: np.ndarray = b, c: np.ndarray = c) -> None:
            k.triad(a, b, c, reps, threads)
        kernels["triad"].append(_timed(triad, _reps(12.0 * n, STREAM_BYTES), 12.0 * n, REPEATS))
        del a, b, c, copy, triad  # the kernels' defaults hold the arrays too
    x = np.ones((threads, FMA_ROW), np.float32)
    per_rep = 2.0 * k.FMA_CHAIN * x.size
    flops = _timed(lambda reps: k.fma(x, reps), _reps(per_rep, FLOP_WORK), per_rep, FLOP_REPEATS)
    return _record("numba", threads, sizes, kernels, flops)


def _numpy_probe(sizes: list[int]) -> Probe:
    """Without numba: numpy's copy and add (STREAM's Add: a = b + c) on a thread per core, each on
    its own slice (numpy releases the GIL inside a ufunc), and a float32 matmul for the FLOP rate."""
    threads = _cores()
    kernels: dict[str, list[list[float]]] = {"copy": [], "add": []}
    with ThreadPoolExecutor(threads) as pool:
        def on_slices(n: int, body: Callable[[slice, int], None]) -> Callable[[int], None]:
            parts = [slice(n * t // threads, n * (t + 1) // threads) for t in range(threads)]

            def run(reps: int) -> None:
                list(pool.map(lambda part: body(part, reps), parts))
            return run

        for size in sizes:
            n = size // 8
            a, b = np.ones(n, np.float32), np.zeros(n, np.float32)

            def copy(part: slice, reps: int, a: np.ndarray = a, b: np.ndarray = b) -> None:
                for r in range(reps):
                    np.copyto(b[part], a[part]) if r % 2 == 0 else np.copyto(a[part], b[part])
            kernels["copy"].append(_timed(on_slices(n, copy), _reps(8.0 * n, STREAM_BYTES), 8.0 * n, REPEATS))
            n = size // 12
            a, b, c = np.zeros(n, np.float32), np.ones(n, np.float32), np.ones(n, np.float32)

            def add(part: slice, reps: int, a: np.ndarray = a, b: np.ndarray = b, c: np.ndarray = c) -> None:
                for _ in range(reps):
                    np.add(b[part], c[part], out=a[part])
            kernels["add"].append(_timed(on_slices(n, add), _reps(12.0 * n, STREAM_BYTES), 12.0 * n, REPEATS))
            del a, b, c, copy, add  # the kernels' defaults hold the arrays too
    side = 1024
    x, y = np.ones((side, side), np.float32), np.ones((side, side), np.float32)
    out = np.empty_like(x)

    def matmul(reps: int) -> None:
        for _ in range(reps):
            np.matmul(x, y, out=out)
    flops = _timed(matmul, _reps(2.0 * side ** 3, FLOP_WORK), 2.0 * side ** 3, FLOP_REPEATS)
    return _record("numpy threads", threads, sizes, kernels, flops)


def _spread(rates: list[float]) -> dict[str, float]:
    return {"best": max(rates), "median": float(np.median(rates)), "worst": min(rates)}


def _record(method: str, threads: int, sizes: list[int], kernels: dict[str, list[list[float]]],
            flops: list[float]) -> Probe:
    """The probe's JSON record. `bandwidth` at each size is the best repeat of the fastest stream:
    the most the machine moved there, so a bound drawn from it is an upper bound."""
    return {"schema": SCHEMA, "method": method, "threads": threads, "sizes": sizes,
            "bandwidth": [max(max(rates[i]) for rates in kernels.values()) for i in range(len(sizes))],
            "kernels": {name: [_spread(r) for r in rates] for name, rates in kernels.items()},
            "peak_flops": max(flops), "peak_flops_spread": _spread(flops)}


def probe(sizes: list[int] | None = None, use_numba: bool | None = None) -> Probe:
    """Measure this machine now (about two seconds); {"error": why} where it cannot be measured."""
    started = time.perf_counter()
    sizes = sizes or working_set_sizes(cache_sizes())
    try:
        if use_numba is None:
            try:
                import numba  # noqa: F401
                use_numba = True
            except ImportError:
                use_numba = False
        result = _numba_probe(sizes) if use_numba else _numpy_probe(sizes)
    except Exception as exc:  # noqa: BLE001 (numba's compiler, a thread that cannot start, memory)
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return unavailable(f"the machine probe failed: {exc.__class__.__name__}: {first_line}")
    result["seconds"] = time.perf_counter() - started
    result["caches"] = {f"L{level}": size for level, size in sorted(cache_sizes().items())}
    return check(result)


def unavailable(reason: str) -> Probe:
    return {"schema": SCHEMA, "error": reason}


def check(result: Probe) -> Probe:
    """A probe whose figures are not all finite and positive is no probe (a clock that did not
    move, a thread that did nothing): say so instead of bounding runs with it."""
    figures = list(result.get("bandwidth") or []) + [result.get("peak_flops")]
    if result.get("error") is None and (not result.get("sizes") or
                                        not all(isinstance(f, (int, float)) and math.isfinite(f) and f > 0
                                                for f in figures)):
        return unavailable(f"the machine probe gave no usable figure ({result.get('method')}: {figures[:3]}...)")
    return result


def bandwidth_at(result: Probe, working_set: float) -> float | None:
    """Bytes/s the machine can sustain at a working set of `working_set` bytes, taken so that the
    bound is an upper bound: the rate at the largest probed size not above it (a working set
    between two sizes, e.g. 22 MB over a 16 MB L3, is partly served from the cache that held the
    smaller one: interpolating toward the larger size's streaming rate undercounts, and a fused
    run once beat such a bound), on the curve made non-increasing in size (a smaller set is never
    slower than a larger one: a dip is noise of the probe). Under the smallest size: its rate."""
    if result.get("error") or not result.get("sizes"):
        return None
    sizes = np.asarray(result["sizes"], dtype=np.float64)
    rates = np.maximum.accumulate(np.asarray(result["bandwidth"], dtype=np.float64)[::-1])[::-1]
    below = np.flatnonzero(sizes <= max(working_set, 1.0))
    return float(rates[below[-1]] if below.size else rates[0])


_CACHED: Probe | None = None


def use(result: Probe) -> None:
    """Make `result` this process's probe (the one its harness handed it)."""
    global _CACHED
    _CACHED = check(result)


def cached_probe() -> Probe:
    """This process's probe: the one `use`d, else measured once."""
    global _CACHED
    if _CACHED is None:
        _CACHED = probe()
    return _CACHED
