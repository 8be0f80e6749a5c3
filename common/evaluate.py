"""Judging embeddings: cosine neighbours (the recipe's "chip"), word similarity, analogies.

The word-pair files come with gensim's wheel (gensim/test/test_data): WordSim-353, SimLex-999
and the analogy questions. Found through SKIPGRAM_EVAL_DATA, else wherever gensim is
installed (without importing it: the MXNet env cannot install gensim beside numpy 1.23).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from common.cache import atomic_file
from common.errors import BenchError

SIMILARITY_SETS = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}
ANALOGY_FILE = "questions-words.txt"
PROBE_WORDS = ("chip", "market", "stock", "president", "japan", "computer")


def neighbours(vectors: np.ndarray, tokens: list[str], word: str, k: int) -> list[tuple[str, float]]:
    """The k nearest words to `word` by cosine similarity, itself excluded (the recipe's get_similar_tokens)."""
    index = {t: i for i, t in enumerate(tokens)}
    if word not in index:
        raise BenchError(f"{word!r} is not in the vocabulary ({len(tokens)} words, min_freq applies); try another word")
    w = vectors.astype(np.float64)
    x = w[index[word]]
    cos = w @ x / np.sqrt((w * w).sum(axis=1) * (x @ x) + 1e-9)
    order = [i for i in np.argsort(-cos, kind="stable")[:k + 1] if i != index[word]][:k]
    return [(tokens[i], round(float(cos[i]), 4)) for i in order]


def eval_data_dir() -> Path | None:
    explicit = os.environ.get("SKIPGRAM_EVAL_DATA")
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data"
    return folder if folder.is_dir() else None


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged, as Spearman's rho needs."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(x.size)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    return float(np.corrcoef(rx, ry)[0, 1])


def _unit(vectors: np.ndarray) -> np.ndarray:
    w = vectors.astype(np.float64)
    return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)


def word_similarity(vectors: np.ndarray, index: dict[str, int], path: Path) -> dict:
    """Spearman between human scores and cosine, over pairs whose words are both known (lower-cased)."""
    unit = _unit(vectors)
    human, model, total = [], [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        a, b, score = line.split("\t")[:3]
        total += 1
        a, b = a.lower(), b.lower()
        if a in index and b in index:
            human.append(float(score))
            model.append(float(unit[index[a]] @ unit[index[b]]))
    rho = spearman(np.array(human), np.array(model)) if len(human) > 2 else float("nan")
    return {"spearman": round(rho, 4), "pairs": len(human), "total": total}


def analogies(vectors: np.ndarray, index: dict[str, int], path: Path) -> dict:
    """3CosAdd accuracy (b - a + c, excluding a, b, c) over questions with all four words known."""
    unit = _unit(vectors)
    rows, total = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(":") or not line.strip():
            continue
        total += 1
        words = line.lower().split()
        if all(w in index for w in words):
            rows.append([index[w] for w in words])
    if not rows:
        return {"accuracy": float("nan"), "questions": 0, "total": total}
    q = np.array(rows)
    correct = 0
    for start in range(0, len(q), 1024):
        a, b, c, d = q[start:start + 1024].T
        scores = (unit[b] - unit[a] + unit[c]) @ unit.T
        for col in (a, b, c):
            scores[np.arange(len(a)), col] = -np.inf
        correct += int((scores.argmax(axis=1) == d).sum())
    return {"accuracy": round(correct / len(q), 4), "questions": len(q), "total": total}


def evaluate(vectors: np.ndarray, tokens: list[str]) -> dict:
    """All three benchmarks, or a note saying why they were skipped."""
    folder = eval_data_dir()
    if folder is None:
        return {"skipped": "word-pair files not found: install gensim or set SKIPGRAM_EVAL_DATA"}
    index = {t: i for i, t in enumerate(tokens)}
    result = {name: word_similarity(vectors, index, folder / file) for name, file in SIMILARITY_SETS.items()}
    result["analogy"] = analogies(vectors, index, folder / ANALOGY_FILE)
    return result


def write_word2vec(path: Path, tokens: list[str], vectors: np.ndarray) -> None:
    """word2vec text format (gensim's KeyedVectors.load_word2vec_format reads it), written atomically."""
    with atomic_file(path) as f:
        f.write(f"{vectors.shape[0]} {vectors.shape[1]}\n".encode())
        for token, row in zip(tokens, vectors):
            f.write((token + " " + " ".join(f"{x:.6g}" for x in row) + "\n").encode())


def read_word2vec(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        rows, dim = (int(x) for x in lines[0].split())
        tokens = [line.split(" ", 1)[0] for line in lines[1:rows + 1]]
        vectors = np.array([line.split(" ")[1:] for line in lines[1:rows + 1]], dtype=np.float32)
    except (OSError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise BenchError(f"cannot read word vectors from {path} ({exc.__class__.__name__}): "
                         f"expected word2vec text format, as `train --export-vectors` writes") from None
    if vectors.shape != (rows, dim):
        raise BenchError(f"{path} declares {rows}x{dim} vectors but holds {vectors.shape}")
    return tokens, vectors
