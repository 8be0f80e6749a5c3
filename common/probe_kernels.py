"""The probe's numba kernels (imported only where numba is present; common/probe.py).

Each thread owns a slice and loops the repeats inside one parallel launch, so a launch is paid
once per timing. `cache=True`: compiled once per machine; where the cache cannot be written numba
compiles anyway (about a second) and says so in a warning.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

KERNEL = {"parallel": True, "cache": True, "fastmath": {"contract"}}  # no reassociation: 8 chained FMAs stay 8
FMA_CHAIN = 8  # FMAs per element per repeat in fma()


@njit(**KERNEL)
def copy(a, b, reps, threads):
    """b = a, then a = b, ...: no repeat is a no-op a compiler could drop. Moves 2 n floats a repeat."""
    n = a.size
    for t in prange(threads):
        lo, hi = n * t // threads, n * (t + 1) // threads
        sa, sb = a[lo:hi], b[lo:hi]  # slices: a loop over range(lo, hi) did not vectorise (4 GB/s, not 26)
        for r in range(reps):
            if r % 2 == 0:
                for i in range(sa.size):
                    sb[i] = sa[i]
            else:
                for i in range(sa.size):
                    sa[i] = sb[i]


@njit(**KERNEL)
def triad(a, b, c, reps, threads):
    """a = b + s c with s changing each repeat: 3 n floats a repeat."""
    n = a.size
    for t in prange(threads):
        lo, hi = n * t // threads, n * (t + 1) // threads
        sa, sb, sc = a[lo:hi], b[lo:hi], c[lo:hi]
        for r in range(reps):
            s = np.float32(0.5 + 1e-3 * r)
            for i in range(sa.size):
                sa[i] = sb[i] + s * sc[i]


@njit(**KERNEL)
def fma(x, reps):
    """FMA_CHAIN chained FMAs on every element of each thread's L1-resident row, vectorised across
    the row: 2 * FMA_CHAIN * x.size FLOPs a repeat. The values settle at 1.0 (no overflow, no
    denormals)."""
    mul, add = np.float32(0.999), np.float32(1e-3)
    for t in prange(x.shape[0]):
        row = x[t]
        for _ in range(reps):
            for i in range(row.size):
                v = row[i]
                v = v * mul + add
                v = v * mul + add
                v = v * mul + add
                v = v * mul + add
                v = v * mul + add
                v = v * mul + add
                v = v * mul + add
                v = v * mul + add
                row[i] = v
