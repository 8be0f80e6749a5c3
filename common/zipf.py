"""Generated Zipf corpora: scale tests and benchmarks without a download."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from common import rng
from common.cache import atomic_file

_TOKENS_PER_BLOCK = 1 << 22


def write_zipf_corpus(path: Path, tokens: int, vocab: int, seed: int = 0,
                      exponent: float = 1.0, sentence_length: int = 20) -> str:
    """Write `tokens` words drawn from Zipf(exponent) over `vocab` words, `sentence_length` a line;
    return the SHA-256 of what was written (so a cached copy can be checked before use).

    Written block by block (bounded memory) under a temporary name, then renamed.
    """
    weights = 1.0 / np.arange(1, vocab + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    words = np.array([f"w{i}" for i in range(vocab)])
    key = rng.stream_key(seed, 31)
    digest = hashlib.sha256()
    with atomic_file(path) as out:
        for start in range(0, tokens, _TOKENS_PER_BLOCK):
            n = min(_TOKENS_PER_BLOCK, tokens - start)
            u = rng.uniform(key, np.arange(start, start + n, dtype=np.uint64))
            ids = np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), vocab - 1)
            seps = np.where((np.arange(start, start + n) + 1) % sentence_length == 0, "\n", " ")
            data = "".join(np.char.add(words[ids], seps).tolist()).encode()
            digest.update(data)
            out.write(data)
    return digest.hexdigest()
