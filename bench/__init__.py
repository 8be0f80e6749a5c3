"""Command line, worker, harness and report of the skip-gram bench."""
