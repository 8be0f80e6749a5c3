"""What padding costs, per framework, from a suite's own runs: each packed run beside the padded
run of the same spec (same backend, variant, device, data), its speed ratio and how far their
losses are apart. The two compute the same function (docs/computed.md, "Layout"), so losses
differ only by float32 rounding: a gap beyond that would be a bug, and the page shows it."""
from __future__ import annotations

import numpy as np

from bench.results.schema import measured, settings_key
from common.spec import RunSpec

FASTER = 1.05  # a ratio within 5 % of 1 is "about as fast": a shared VM's run-to-run drift


def padding_cost(results: list[dict]) -> list[dict]:
    """One row per backend run measured on both layouts: label, packed/padded speed, the largest
    |loss difference| over the steps both ran, and a verdict in words. Fastest gain first."""
    pairs: dict[str, dict[str, dict]] = {}
    for r in measured(results):
        if r.get("rate_median"):
            pairs.setdefault(settings_key(r["spec"], "layout"), {})[r["spec"].get("layout", "padded")] = r
    rows = []
    for pair in pairs.values():
        if set(pair) != {"padded", "packed"}:
            continue
        padded, packed = pair["padded"], pair["packed"]
        ratio = packed["rate_median"] / padded["rate_median"]
        steps = min(len(padded["losses"]), len(packed["losses"]))
        gap = float(np.max(np.abs(np.subtract(padded["losses"][:steps], packed["losses"][:steps])))) if steps else None
        rows.append({"run": RunSpec.from_dict(padded["spec"]).label, "ratio": ratio, "steps": steps, "gap": gap,
                     "rates": (padded["rate_median"], packed["rate_median"]),
                     "verdict": "faster" if ratio > FASTER else "slower" if ratio < 1 / FASTER else "about as fast"})
    return sorted(rows, key=lambda row: -row["ratio"])
