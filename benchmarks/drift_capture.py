"""What a reference capture (`fromStableVersion`) costs the router per request, beside bin counting, in one run.

    .venv/bin/python benchmarks/drift_capture.py [--requests 20000] [--rounds 3]

The same 20 numeric features + the prediction, as one `Captures` (a reservoir of 9,523 rows: the router's bound of
200,000 values over 21 keys) and as one `FeatureCounts` profile (9 edges each), offered the same requests at batch 1
and 32, in interleaved rounds. A capture costs most while its reservoir fills (every row is read out); once it has
seen many times its size, a batch costs one random draw and the rare row that replaces a slot ("full" is timed after
one untimed pass over the requests). Each row reports the mean per request over the
rounds' medians. On this shared 2-core VM read the numbers as ratios of the rows measured side by side.
Results: benchmarks/results/drift_capture.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from results_io import machine_text, rerun_command, write_results
from sluice.serving.capture import Captures
from sluice.serving.config import DriftProfileConfig
from sluice.serving.features import FeatureCounts
from sluice.serving.scores import Scored
from sluice.serving.tensors import Tensor

RESULTS = Path(__file__).parent / "results" / "drift_capture.json"
WIDTH = 20
EDGES = [
    round(float(e), 4) for e in np.quantile(np.random.default_rng(1).normal(size=10_000), np.linspace(0.1, 0.9, 9))
]


def _capture() -> Captures:
    profile = {
        "policy": "bench",
        "capture": {
            "version": "1",
            "size": 200_000 // (WIDTH + 1),
            "token": "benchmark-token-0000",
            "features": [{"input": "x", "column": j} for j in range(WIDTH)],
            "prediction": "numeric",
        },
    }
    return Captures([DriftProfileConfig.model_validate(profile)], seed=0)


def _counts() -> FeatureCounts:
    profile = {
        "policy": "bench",
        "features": [{"input": "x", "column": j, "edges": EDGES} for j in range(WIDTH)],
        "prediction": {"edges": EDGES},
    }
    return FeatureCounts([DriftProfileConfig.model_validate(profile)], lambda: "m")


def _requests(batch: int, n: int) -> list[tuple[list[Tensor], Scored]]:
    rng = np.random.default_rng(batch)
    return [
        ([Tensor("x", rng.normal(size=(batch, WIDTH)).astype(np.float32))], Scored(rng.uniform(size=batch), None))
        for _ in range(n)
    ]


def _time(fn: Any, requests: list[tuple[list[Tensor], Scored]]) -> float:
    """Mean microseconds per request of `fn(inputs, scored)` over `requests`."""
    t0 = time.perf_counter()
    for inputs, scored in requests:
        fn(inputs, scored)
    return (time.perf_counter() - t0) / len(requests) * 1e6


def measure(requests: int, rounds: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for batch in (1, 32):
        work = _requests(batch, requests)
        filling: list[float] = []
        full: list[float] = []
        counting: list[float] = []
        for _ in range(rounds):
            counts = _counts()
            counting.append(_time(lambda i, s, c=counts: c.observe("1", "stable", i, s), work))
            cap = _capture()
            size = next(iter(cap.reservoirs.values())).config.size
            fill = work[: max(1, size // batch)]  # the requests that fill the reservoir
            filling.append(_time(lambda i, s, c=cap: c.observe("1", i, s), fill))
            for inputs, scored in work:  # a capture that has seen many times its size: the steady state
                cap.observe("1", inputs, scored)
            full.append(_time(lambda i, s, c=cap: c.observe("1", i, s), work))
        for what, values in (
            ("FeatureCounts.observe (bins, for comparison)", counting),
            ("Captures.observe, reservoir filling", filling),
            ("Captures.observe, reservoir full", full),
        ):
            rows.append({"path": what, "batch": batch, "mean_us_per_request": round(statistics.median(values), 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    summary = measure(args.requests, args.rounds)
    for row in summary:
        print(row)
    write_results(
        RESULTS,
        "drift_capture",
        rerun_command("drift_capture.py"),
        machine_text(),
        summary,
        {
            "features": WIDTH,
            "reservoir_rows": 200_000 // (WIDTH + 1),
            "requests_per_round": args.requests,
            "rounds": args.rounds,
        },
    )


if __name__ == "__main__":
    main()
