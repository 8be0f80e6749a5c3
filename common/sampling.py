"""The recipe's sampling (sec_word2vec_data), vectorised and counter-based.

Subsampling keeps each token with probability min(1, sqrt(t * N / count)); every token of
a sentence with >= 2 kept tokens is a center with a window drawn from 1..max_window; each
context gets K noise words drawn with weights count^0.75, never <unk> and never one of
that example's contexts. Every draw is keyed by (seed, stream, draw, item), so an example's
row is the same whichever chunk, batch or process builds it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from common import rng
from common.corpus import Corpus, Vocab
from common.errors import BenchError
from common.spec import DataSpec

_WINDOW, _NOISE = 2, 3  # stream ids (batches.py holds 11, 12; init.py 21, 22; zipf.py 31)
_TOKENS_PER_CHUNK = 1 << 22  # bounds the memory of subsampling large corpora


def keep_probability(vocab: Vocab, threshold: float) -> np.ndarray:
    """P(keep) per vocabulary index; 0 for <unk>, which the recipe drops first."""
    counts = vocab.counts.astype(np.float64)
    total = counts[1:].sum()
    prob = np.zeros_like(counts)
    prob[1:] = np.minimum(1.0, np.sqrt(threshold / counts[1:] * total))
    return prob


class NoiseTable:
    """Inverse-CDF sampling of count^0.75 weights (0 at <unk>), with a guide table.

    count^0.75 is computed as sqrt(sqrt(c*c*c)): only correctly rounded IEEE operations, so
    the table is bit-identical under every numpy and libm (np.power's SIMD paths may not be).
    The guide table (Chen 1974) maps the top bits of u to the first index that u's bucket can
    reach, so a lookup is a gather plus about one comparison instead of a binary search; it
    returns exactly what `searchsorted(cdf, u * total, side="right")` would.
    """

    _GUIDE_BITS = 16

    def __init__(self, counts: np.ndarray) -> None:
        if counts.size < 2:
            raise BenchError("vocabulary is empty (only <unk>): lower --min-freq or use a larger corpus")
        c = counts.astype(np.float64)
        weights = np.sqrt(np.sqrt(c * c * c))
        weights[0] = 0.0
        self.cdf = np.cumsum(weights)
        self.total = self.cdf[-1]
        edges = np.arange(1 << self._GUIDE_BITS) * (self.total / (1 << self._GUIDE_BITS))
        self.guide = np.searchsorted(self.cdf, edges, side="right")

    def lookup(self, u: np.ndarray) -> np.ndarray:
        """Vocabulary indices for uniforms `u` (any shape)."""
        shape, u = u.shape, u.ravel()
        target = u * self.total
        idx = self.guide[(u * (1 << self._GUIDE_BITS)).astype(np.int64)]
        todo = np.flatnonzero(self.cdf[idx] <= target)
        while todo.size:
            idx[todo] += 1
            todo = todo[self.cdf[idx[todo]] <= target[todo]]
        return idx.astype(np.int32).reshape(shape)


class Rows(NamedTuple):
    """Examples in compact form: mask and label follow from the context counts (see `layout`)."""

    center: np.ndarray            # (R,) int32
    context_negative: np.ndarray  # (R, L) int32
    contexts: np.ndarray          # (R,) uint8: m, the number of contexts of each row


def layout(contexts: np.ndarray, noise: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """mask (1 on the m contexts and m*K noise words) and label (1 on the contexts), uint8."""
    cols = np.arange(width, dtype=np.int16)
    m = contexts.astype(np.int16)[:, None]
    return (cols < m * (1 + noise)).view(np.uint8), (cols < m).view(np.uint8)


@dataclass(frozen=True)
class Draw:
    """One draw of subsampling: the kept tokens and which of them are centers."""

    tokens: np.ndarray        # (T,) int32: kept token ids, sentences concatenated
    line_offsets: np.ndarray  # (lines + 1,) int64: line i spans tokens[off[i]:off[i+1]]
    centers: np.ndarray       # (E,) int64: positions in `tokens` of every example's center
    center_lines: np.ndarray  # (E,) int32: the line of each center, to find its sentence bounds


def subsample(corpus: Corpus, remap: np.ndarray, keep_prob: np.ndarray, key: int) -> Draw:
    """Drop <unk>, subsample, and list the centers (tokens of lines keeping >= 2 tokens)."""
    lengths = corpus.line_lengths
    line_ends = np.cumsum(lengths)
    kept_ids, kept_lines = [], []
    start_line = 0
    while start_line < lengths.size:
        t0 = int(line_ends[start_line - 1]) if start_line else 0
        end_line = int(np.searchsorted(line_ends, t0 + _TOKENS_PER_CHUNK, side="right"))
        end_line = max(end_line, start_line + 1)
        t1 = int(line_ends[end_line - 1])
        ids = remap[corpus.word_ids[t0:t1]]
        keep = rng.uniform(key, np.arange(t0, t1, dtype=np.uint64)) < keep_prob[ids]
        kept_ids.append(ids[keep])
        line_of = np.repeat(np.arange(start_line, end_line, dtype=np.int32), lengths[start_line:end_line])
        kept_lines.append(line_of[keep])
        start_line = end_line
    tokens = np.concatenate(kept_ids)  # int32, as remap is
    per_line = np.bincount(np.concatenate(kept_lines), minlength=lengths.size)
    offsets = np.concatenate([[0], np.cumsum(per_line)])
    is_center = np.repeat(per_line >= 2, per_line)
    lines = np.repeat(np.arange(per_line.size, dtype=np.int32), per_line)
    centers = np.flatnonzero(is_center)
    return Draw(tokens, offsets, centers, lines[centers])


class Sampler:
    """Builds the fixed-layout rows of any examples of one draw: contexts, noise, padding."""

    def __init__(self, spec: DataSpec, draw: Draw, table: NoiseTable, draw_index: int) -> None:
        self.spec, self.draw, self.table, self.draw_index = spec, draw, table, draw_index
        self.window_key = rng.stream_key(spec.seed, _WINDOW, draw_index)
        self.noise_key = rng.stream_key(spec.seed, _NOISE, draw_index)
        w = spec.window
        self.offsets = np.concatenate([np.arange(-w, 0), np.arange(1, w + 1)])

    def windows(self, examples: np.ndarray) -> np.ndarray:
        """Window size of each example, uniform on 1..max_window."""
        u = rng.uniform(self.window_key, examples.astype(np.uint64))
        return 1 + (u * self.spec.window).astype(np.int64)

    def _bounds(self, examples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi): the span of each example's sentence in `tokens`."""
        line = self.draw.center_lines[examples]
        return self.draw.line_offsets[line], self.draw.line_offsets[line + 1]

    def context_counts(self, examples: np.ndarray) -> np.ndarray:
        """How many contexts each example has (window clipped to its sentence)."""
        pos = self.draw.centers[examples]
        lo, hi = self._bounds(examples)
        w = self.windows(examples)
        return np.minimum(w, pos - lo) + np.minimum(w, hi - 1 - pos)

    def pairs(self) -> int:
        """Center-context pairs in the whole draw, counted in chunks (bounded memory)."""
        n, step = self.draw.centers.size, 1 << 22
        return sum(int(self.context_counts(np.arange(s, min(n, s + step))).sum()) for s in range(0, n, step))

    def _noise(self, counters: np.ndarray, contexts: np.ndarray) -> np.ndarray:
        """Noise ids for a (rows, m*K) counter matrix, none equal to a context of its row.

        A draw that hits one of its row's m contexts is redrawn with the next attempt's key,
        as the recipe's rejection loop does.
        """
        noise = self.table.lookup(rng.uniform(self.noise_key, counters))
        for attempt in range(1, 1001):
            clash = np.zeros(noise.shape, dtype=bool)
            for k in range(contexts.shape[1]):
                clash |= noise == contexts[:, k:k + 1]
            if not clash.any():
                return noise
            key = rng.stream_key(self.noise_key, attempt)
            noise[clash] = self.table.lookup(rng.uniform(key, counters[clash]))
        raise BenchError("noise sampling cannot avoid the contexts: the vocabulary is too "
                         "small for these settings; lower --min-freq or --noise")

    def rows(self, examples: np.ndarray) -> Rows:
        """center (R,), context_negative (R, L) and the context count m of each example.

        Row layout: the m contexts (sentence order), then their m*K noise words, then zeros.
        Rows are handled in groups of equal m, so every group's arrays are dense.
        """
        spec, tokens, noise_k = self.spec, self.draw.tokens, self.spec.noise
        n_rows, width = examples.size, spec.row_length
        slots = 2 * spec.window * noise_k
        pos = self.draw.centers[examples]
        lo, hi = self._bounds(examples)
        q = pos[:, None] + self.offsets
        valid = (np.abs(self.offsets) <= self.windows(examples)[:, None]) & (q >= lo[:, None]) & (q < hi[:, None])
        n_ctx = valid.sum(axis=1)

        cn = np.zeros((n_rows, width), dtype=np.int32)
        for m in range(1, self.offsets.size + 1):
            r = np.flatnonzero(n_ctx == m)
            if r.size == 0:
                continue
            contexts = tokens[q[r][valid[r]]].reshape(r.size, m)
            counters = (examples[r].astype(np.uint64)[:, None] * np.uint64(slots)
                        + np.arange(m * noise_k, dtype=np.uint64))
            cn[r, :m] = contexts
            cn[r, m:m * (1 + noise_k)] = self._noise(counters, contexts)
        return Rows(tokens[pos], cn, n_ctx.astype(np.uint8))
