"""Framework-free core shared by every backend env: corpus, sampling, batches, spec, init."""
