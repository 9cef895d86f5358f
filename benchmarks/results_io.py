"""One writer for `benchmarks/results/NAME.json`, so every benchmark carries the keys the docs page reads.

The house keys: `benchmark` (name), `command` (how to rerun), `measured_at` (ISO UTC), `machine` (short text) and
`summary` (flat dicts, one per table row of the benchmarks page); anything else goes in as detail. Imported by the
scripts as a sibling module (`python benchmarks/NAME.py` puts `benchmarks/` first on `sys.path`).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HOUSE_KEYS = ("benchmark", "command", "measured_at", "machine", "summary")


def machine_text() -> str:
    """What the numbers were measured on, in one line: CPUs, Python and the load when the run started."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load {load:.2f} at start"


def rerun_command(script: str, argv: Sequence[str] | None = None) -> str:
    """`python benchmarks/SCRIPT ARGS...` as this run was invoked (argv defaults to the process's own)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"benchmarks/{script}", *args])


def now_utc() -> str:
    """ISO 8601 UTC, seconds precision, `Z` suffix (the form the other result files use)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_results(
    path: Path,
    benchmark: str,
    command: str,
    machine: str,
    summary: Sequence[Mapping[str, Any]],
    detail: Mapping[str, Any],
    measured_at: str | None = None,
) -> dict[str, Any]:
    """Write the house keys first, then `detail` (which may not reuse a house key), and return what was written."""
    clash = sorted(set(detail) & set(HOUSE_KEYS))
    if clash:
        raise ValueError(f"detail repeats the house key(s) {clash}: pass them as arguments")
    for i, row in enumerate(summary):
        nested = [k for k, v in row.items() if isinstance(v, (dict, list, tuple))]
        if nested:
            raise ValueError(f"summary row {i} is not flat: {nested} hold nested values")
    report: dict[str, Any] = {
        "benchmark": benchmark,
        "command": command,
        "measured_at": measured_at or now_utc(),
        "machine": machine,
        "summary": [dict(row) for row in summary],
        **detail,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report
