"""Which text a run trains on, as its spec names it: PTB, a generated Zipf corpus, or a user's file.

The spec holds the corpus's identity, never where it lies: `ptb` (verified by its SHA-256, as
`common.ptb` does), `zipf:TOKENS:WORDS[:SEED]` (regenerated deterministically wherever it is
needed, cached), or `sha256:<digest>` for a user's file, whose path the spec records beside it
but outside its key. A changed file is a different spec; a file whose content changed between
planning and training is caught by its digest.
"""
from __future__ import annotations

import math
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from common.cache import atomic_write_bytes, cache_dir, cache_root, free_bytes
from common.errors import BenchError
from common.ptb import TRAIN_SHA256, check_text_file, find_ptb, sha256_file

if TYPE_CHECKING:
    import numpy as np

    from common.corpus import Corpus

PTB = "ptb"
# Beyond these a generated corpus is a typo, not a benchmark: 2e9 tokens is a 20 GB text file and
# 8 GB of ids; 1e8 distinct words would not fit a table on any machine the suite targets.
MAX_TOKENS, MAX_WORDS = 2_000_000_000, 100_000_000
_SUFFIXES = {"": 1, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9}
_ZIPF = re.compile(r"zipf:([^:]*):([^:]*)(?::([^:]*))?")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CHUNK = 1 << 20  # words per block when planning a generated corpus: its memory, not the corpus's
# Up to this min_freq a word's chance to reach it is summed exactly (min_freq Poisson terms);
# above, the Wilson-Hilferty approximation (one term, error < 2e-4 there): planning stays O(WORDS).
_EXACT_MIN_FREQ = 32
SEED_FORM = "a whole number from 0 to 2^63 - 1, such as 42"
_FORMS = "ptb, zipf:TOKENS:WORDS[:SEED] (e.g. zipf:10M:100k) or the path of a text file"


@dataclass(frozen=True)
class Zipf:
    """A generated corpus: `tokens` words drawn from Zipf(1) over `words` distinct words."""

    tokens: int
    words: int
    seed: int = 0

    @property
    def name(self) -> str:
        """The canonical spelling: `zipf:1M:10k` and `zipf:1000000:10000:0` are one corpus, one key."""
        return f"zipf:{format_size(self.tokens)}:{format_size(self.words)}" + (f":{self.seed}" if self.seed else "")

    @property
    def path(self) -> Path:
        return cache_dir() / f"zipf-{self.tokens}-{self.words}-{self.seed}.txt"

    def text_bytes(self) -> int:
        """An upper bound on the generated file's size: every token as long as the longest word."""
        return self.tokens * (len(f"w{self.words - 1}") + 1)

    def expected_counts(self, limit: int | None = None) -> Iterator[np.ndarray]:
        """Each word's expected count (the generator's probabilities times the tokens), in rank
        order, a block of words at a time (bounded memory at any WORDS); the first `limit` words."""
        import numpy as np  # here: every command imports this module through the spec

        scale = self.tokens / harmonic(self.words)
        end = self.words if limit is None else min(limit, self.words)
        for start in range(0, end, _CHUNK):
            yield scale / np.arange(start + 1, min(start + _CHUNK, end) + 1, dtype=np.float64)


@lru_cache(maxsize=16)
def harmonic(n: int) -> float:
    """1 + 1/2 + ... + 1/n, summed a block at a time (the generator's weights' total)."""
    import numpy as np

    return math.fsum(float((1.0 / np.arange(start + 1, min(start + _CHUNK, n) + 1, dtype=np.float64)).sum())
                     for start in range(0, n, _CHUNK))


def parse_size(text: str, what: str, value: str, form: str = "a whole number such as 1M or 10k") -> int:
    """`100M`, `10k`, `1.5M` or `250000` as an exact integer (never through a float: seeds above
    2^53 must not alias their neighbours); anything else says `what` must be `form`."""
    match = re.fullmatch(r"(\d{1,30})(?:\.(\d{1,30}))?([kKmMgG]?)", text.strip())
    number = None
    if match:
        whole, fraction, scale = match.group(1), match.group(2) or "", _SUFFIXES[match.group(3).lower()]
        number = Fraction(int(whole + fraction) * scale, 10 ** len(fraction))
    if number is None or number.denominator != 1:
        raise BenchError(f"invalid corpus {value!r}: {what} must be {form}, got {text!r}")
    return int(number)


def format_size(n: int) -> str:
    for suffix, scale in (("G", 10 ** 9), ("M", 10 ** 6), ("k", 10 ** 3)):
        if n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


def parse_zipf(value: str) -> Zipf:
    """A `zipf:` corpus, its sizes checked: zero, negative or absurd ones are one line here."""
    match = _ZIPF.fullmatch(value)
    if not match:
        raise BenchError(f"invalid corpus {value!r}: write zipf:TOKENS:WORDS[:SEED], e.g. zipf:10M:100k")
    tokens, words = parse_size(match.group(1), "TOKENS", value), parse_size(match.group(2), "WORDS", value)
    seed = parse_size(match.group(3), "SEED", value, SEED_FORM) if match.group(3) is not None else 0
    checks = [(1 <= tokens <= MAX_TOKENS, f"TOKENS must be between 1 and {format_size(MAX_TOKENS)}"),
              (2 <= words <= MAX_WORDS, f"WORDS must be between 2 and {format_size(MAX_WORDS)}"),
              (words <= tokens, "WORDS cannot exceed TOKENS (most words would never occur)"),
              (seed < 2 ** 63, f"SEED must be {SEED_FORM}")]
    for ok, message in checks:
        if not ok:
            raise BenchError(f"invalid corpus {value!r}: {message}")
    return Zipf(tokens, words, seed)


def check_name(value: str) -> str:
    """A spec's corpus field in canonical form (ptb, zipf:..., sha256:...), or an error."""
    if value == PTB or _DIGEST.fullmatch(value):
        return value
    if value.startswith("zipf:"):
        return parse_zipf(value).name
    raise BenchError(f"invalid setting: corpus must be {_FORMS}, got {value!r}")


@cache
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_digest(path: Path) -> str:
    """A text file's SHA-256, after refusing what cannot be a corpus (missing, a folder, binary)."""
    try:
        check_text_file(path)
        stat = path.stat()
        return _digest(path, stat.st_size, stat.st_mtime_ns)
    except OSError as exc:
        raise BenchError(f"corpus file {path} cannot be read ({exc.strerror}): fix its permissions") from None


def spec_fields(value: str | None) -> dict:
    """What a user's --corpus (or a suite file's `corpus`) puts into a data spec: the corpus's
    identity, and for a file its absolute path (recorded, not part of the key)."""
    if value is None or value == PTB:
        return {}
    if value.startswith("zipf:"):
        return {"corpus": parse_zipf(value).name}
    if _DIGEST.fullmatch(value):
        raise BenchError(f"corpus {value} names a digest: give the file's path, its digest is taken from it")
    try:
        path = Path(value).expanduser().resolve()
    except (OSError, RuntimeError):  # RuntimeError: Python 3.11's "Symlink loop"
        raise BenchError(f"corpus file {value} is a symbolic link loop (or a path that cannot be resolved): "
                         f"name the text file itself") from None
    return {"corpus": f"sha256:{file_digest(path)}", "corpus_path": str(path)}


def corpus_file(corpus: str, path: str | None, data_dir: str | None = None, download: bool = True) -> Path:
    """The text file a spec's corpus is: PTB found and verified, a Zipf corpus generated into the
    cache on first use, or the recorded file, refused unless its content is still the digest's."""
    if corpus == PTB:
        return find_ptb(data_dir, download)
    if corpus.startswith("zipf:"):
        return generated(parse_zipf(corpus))
    if path is None:
        raise BenchError(f"corpus {corpus} has no file path in its spec: pass --corpus PATH")
    actual = file_digest(Path(path))
    if f"sha256:{actual}" != corpus:
        raise BenchError(f"corpus file {path} changed since the run was planned: its sha256 is {actual}, the "
                         f"spec's {corpus.removeprefix('sha256:')}; restore the file or plan the suite again")
    return Path(path)


def generated(zipf: Zipf) -> Path:
    """The Zipf corpus's file in the cache, written now (atomically) if it is not there yet."""
    generated_digest(zipf)
    return zipf.path


def generated_digest(zipf: Zipf) -> str:
    """The SHA-256 the Zipf corpus's cached file was written with, generating the file (and
    recording its digest beside it) if either is missing: the digest a cached copy is checked by."""
    from common.zipf import write_zipf_corpus

    cache_root()  # refused here if others could have written the file or its digest
    sidecar = zipf.path.with_name(zipf.path.name + ".sha256")
    if zipf.path.exists() and sidecar.exists():
        recorded = sidecar.read_text(encoding="ascii", errors="replace").strip()
        if re.fullmatch(r"[0-9a-f]{64}", recorded):
            return recorded
    folder = zipf.path.parent
    free = free_bytes(folder)  # None: unknown, the write itself says if the disk fills
    if free is not None and free < zipf.text_bytes():
        raise BenchError(f"corpus {zipf.name} needs up to {zipf.text_bytes() / 2 ** 30:.1f} GiB in {folder}, "
                         f"which has {free / 2 ** 30:.1f} GiB free: free space or use fewer tokens")
    digest = write_zipf_corpus(zipf.path, zipf.tokens, zipf.words, zipf.seed)
    atomic_write_bytes(sidecar, f"{digest}\n".encode())
    return digest


def expected_vocab(zipf: Zipf, min_freq: int) -> tuple[float, float]:
    """Expected vocabulary size (<unk> included) and in-vocabulary tokens of a Zipf corpus at
    `min_freq`, without generating it: each word's count is about Poisson(expected count), so it
    enters the vocabulary with probability P(X >= min_freq). O(WORDS) time, one block's memory."""
    vocab, tokens = 1.0, 0.0
    for counts in zipf.expected_counts():
        inside = 1.0 - _poisson_below(counts, min_freq)
        vocab += float(inside.sum())
        tokens += float((inside * counts).sum())
    return vocab, tokens


def _poisson_below(lam: np.ndarray, m: int) -> np.ndarray:
    """P(X < m) for X ~ Poisson(lam), elementwise: the sum of its m terms for small m, else the
    Wilson-Hilferty normal approximation of P(chi2(2m) > 2 lam)."""
    import numpy as np

    if m <= _EXACT_MIN_FREQ:
        term = np.exp(-lam)  # underflows to 0 past lam 745, where P(X < 32) is 0 anyway
        below = term.copy()
        for k in range(1, m):
            term *= lam / k
            below += term
        return np.clip(below, 0.0, 1.0)
    z = (np.cbrt(lam / m) - (1 - 1 / (9 * m))) * math.sqrt(9 * m)
    return 0.5 * _erfc(z / math.sqrt(2))


def _erfc(x: np.ndarray) -> np.ndarray:
    """erfc, elementwise, to 1.5e-7 (Abramowitz and Stegun 7.1.26): numpy has none."""
    import numpy as np

    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    tail = poly * np.exp(-a * a)
    return np.where(x >= 0, tail, 2.0 - tail)


def describe(corpus: str, corpus_path: str | None) -> str:
    """How messages name a spec's corpus: a user's file by its path, else by its name."""
    return corpus_path or corpus


def load(corpus: str, corpus_path: str | None, data_dir: str | None = None, download: bool = True) -> Corpus:
    """The spec's corpus as arrays. A file corpus that is not on this machine (a cluster node) is
    found by its digest among the corpora tokenised here; else the error names the file."""
    from common.corpus import CorpusChanged, cached_corpus, load_corpus  # numpy: only for commands that read data

    if _DIGEST.fullmatch(corpus) and not Path(corpus_path or "").is_file():
        found = cached_corpus(corpus.removeprefix("sha256:"))
        if found is not None:
            return found
        raise BenchError(f"corpus file {corpus_path} is not on this machine ({socket.gethostname()}) and no corpus "
                         f"of its {corpus} was tokenised here: copy the file there (any path; it is found by its "
                         f"digest once tokenised)")
    path = corpus_file(corpus, corpus_path, data_dir, download)
    if corpus.startswith("zipf:"):  # its name is its identity: a cached copy edited since is made again
        zipf = parse_zipf(corpus)
        try:
            return load_corpus(path, generated_digest(zipf))
        except CorpusChanged:
            for made in (zipf.path, zipf.path.with_name(zipf.path.name + ".sha256")):
                made.unlink(missing_ok=True)
            return load_corpus(generated(zipf), generated_digest(zipf))
    # The digest the text is known by: what is tokenised (or found cached) must be of it.
    return load_corpus(path, TRAIN_SHA256 if corpus == PTB else corpus.removeprefix("sha256:"))
