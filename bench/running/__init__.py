"""One run in this interpreter: the worker, the baselines, and the train / data commands."""
