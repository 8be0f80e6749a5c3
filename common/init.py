"""Shared initial weights: every backend starts from the same two float32 tables."""
from __future__ import annotations

import numpy as np

from common import rng

_CENTER, _CONTEXT = 21, 22


def xavier_uniform(seed: int, stream: int, rows: int, cols: int) -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / (rows + cols)), from counter-based draws (same in every env)."""
    bound = np.sqrt(6.0 / (rows + cols))
    u = rng.uniform(rng.stream_key(seed, stream), np.arange(rows * cols, dtype=np.uint64))
    return ((2.0 * u - 1.0) * bound).astype(np.float32).reshape(rows, cols)


def initial_weights(seed: int, vocab_size: int, embed: int) -> tuple[np.ndarray, np.ndarray]:
    """(center table v, context table u), each (V, D) float32."""
    return (xavier_uniform(seed, _CENTER, vocab_size, embed),
            xavier_uniform(seed, _CONTEXT, vocab_size, embed))
