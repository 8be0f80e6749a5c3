"""`python -m bench data`: what the data layer produces, as numbers (--summary) or arrays (--dump)."""
from __future__ import annotations

import argparse
import io
import json
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.options import data_spec
from common.batches import Dataset, StreamHash, load_dataset
from common.cache import atomic_write_bytes, check_writable
from common.init import initial_weights
from common.rowcache import RowTable


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    spec = data_spec(args)
    if args.dump:  # before the corpus is read: finding out afterwards wastes the work
        check_writable(Path(args.dump), "--dump")
    dataset = load_dataset(spec, args.data_dir, not args.no_download)
    if args.dump:
        dump(dataset, Path(args.dump))
        return 0
    digest, batches = StreamHash(), 0
    for _, batch in dataset.stream():
        digest.update(batch)
        batches += 1
    sampler = dataset.sampler(0)
    source = dataset.rows_source(0)  # the row cache knows every example's context count
    pairs = source.contexts.sum(dtype=np.int64) if isinstance(source, RowTable) else sampler.pairs()
    summary = {
        "vocab_size": len(dataset.vocab),
        "corpus_tokens": int(dataset.corpus.word_ids.size),
        "tokens_after_subsampling": int(sampler.draw.tokens.size),
        "examples": int(sampler.draw.centers.size),
        "pairs": int(pairs),
        "batches": batches,
        "epochs": spec.epochs,
        "data_hash": digest.hexdigest(),
        "corpus_sha256": dataset.corpus.sha256,
        "spec": spec.to_dict(),
        "seconds": round(time.perf_counter() - start, 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
    }
    print(json.dumps(summary))
    return 0


def dump_bytes(dataset: Dataset) -> int:
    """The dump's size: per example a center (int32) and a row of ids (int32), mask and label
    (uint8); two float32 tables of V x embed; tokens as fixed-width unicode (4 bytes a char)."""
    spec, vocab = dataset.spec, dataset.vocab
    examples = int(dataset.sampler(0).draw.centers.size)
    longest = max(len(t) for t in vocab.tokens)
    return (examples * (4 + spec.row_length * 6) + 2 * len(vocab) * spec.embed * 4
            + len(vocab) * (4 * longest + 8) + (64 << 10))


def dump(dataset: Dataset, path: Path) -> None:
    """The first epoch exactly as backends receive it, concatenated, plus vocab and init weights."""
    check_writable(path, "--dump", needed=dump_bytes(dataset))  # now that its size is known
    batches = list(dataset.epoch(0))
    arrays: dict[str, Any] = {name: np.concatenate([getattr(b, name) for b in batches]) for name in batches[0]._fields}
    center, context = initial_weights(dataset.spec.seed, len(dataset.vocab), dataset.spec.embed)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, tokens=np.array(dataset.vocab.tokens), counts=dataset.vocab.counts,
             init_center=center, init_context=context)
    atomic_write_bytes(path, buffer.getvalue())
