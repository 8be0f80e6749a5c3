"""Many runs: planning a suite, the per-backend envs, the harness that runs and records them."""
