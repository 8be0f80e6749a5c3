"""The options every command that reads a corpus shares, and the data spec they make: one
definition for the CLI (bench/cli.py) and the commands under bench/running/, which must not
import the CLI itself."""
from __future__ import annotations

import argparse

from common.spec import SAMPLING_MODES, DataSpec


def add_data_args(parser: argparse.ArgumentParser, epochs: int) -> None:
    """The flags that determine the batch stream, shared by every command that reads PTB."""
    d = DataSpec()
    g = parser.add_argument_group("data")
    g.add_argument("--data-dir", help="folder holding ptb.train.txt (default: $PTB_DIR, the cache, a download)")
    g.add_argument("--corpus", default=d.corpus, help="ptb (default), zipf:TOKENS:WORDS[:SEED] (generated, e.g. "
                   "zipf:10M:100k), or a text file (identified by its SHA-256)")
    g.add_argument("--no-download", action="store_true", help="fail instead of downloading PTB")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--window", type=int, default=d.window, help="max context window")
    g.add_argument("--noise", type=int, default=d.noise, help="noise words per context (K)")
    g.add_argument("--min-freq", type=int, default=d.min_freq)
    g.add_argument("--embed", type=int, default=d.embed, help="embedding size")
    g.add_argument("--sampling", choices=SAMPLING_MODES, default=d.sampling,
                   help="static: the recipe (draw once); dynamic: redraw every epoch")
    g.add_argument("--epochs", type=int, default=epochs)


def data_spec(args: argparse.Namespace) -> DataSpec:
    from common.corpora import spec_fields

    return DataSpec(seed=args.seed, batch_size=args.batch_size, window=args.window, noise=args.noise,
                    min_freq=args.min_freq, embed=args.embed, sampling=args.sampling, epochs=args.epochs,
                    **spec_fields(args.corpus))
