"""Counter-based random numbers: every draw is a pure function of (seed, stream, counter).

Why not numpy's Generator: its methods' streams may change between numpy releases, and the
MXNet env runs numpy 1.23 while the TensorFlow env runs numpy 2.x. SplitMix64 uses only
wrapping uint64 arithmetic, so every env, chunk size and batch order draws the same numbers,
and any batch can be rebuilt on demand without replaying a sequential generator.
"""
from __future__ import annotations

import numpy as np

_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix_int(z: int) -> int:
    """SplitMix64 finaliser on a Python int (used for keys, where numpy scalars would warn)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def stream_key(*parts: int) -> int:
    """Fold integers (seed, stream id, epoch, ...) into one 64-bit key."""
    key = 0
    for part in parts:
        key = _mix_int((key + (part & _MASK) * _GAMMA + _GAMMA) & _MASK)
    return key


def random_bits(key: int, counters: np.ndarray) -> np.ndarray:
    """64 random bits per counter: SplitMix64 of key + counter * gamma."""
    z = counters.astype(np.uint64, copy=False) * np.uint64(_GAMMA)
    z += np.uint64(key)
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def uniform(key: int, counters: np.ndarray) -> np.ndarray:
    """Float64 uniforms in [0, 1) with 53 random bits each (exact, so identical everywhere)."""
    return (random_bits(key, counters) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
