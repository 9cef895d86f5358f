"""Drift detection on 1,000,000 rows x 20 numeric columns (5 shifted): Sluice against scipy, NannyML, alibi-detect
and Evidently, side by side in one run, each peer in its own virtualenv (their pins clash).

    .venv/bin/python benchmarks/drift.py [--rows 1000000] [--make-venvs] [--tools sluice,scipy,nannyml,alibi,evidently]

`--make-venvs` creates .tmp/venv-{nannyml,alibi,evidently} with `python3 -m venv` and pip (Evidently needs
pandas<3, alibi-detect numpy<2; NannyML 0.13.1 imports statsmodels without declaring it). A peer that cannot be
installed or fails is recorded in the JSON with its error, never left out silently. Sluice and scipy run in this
project's .venv. Every tool runs in its own process on the same .npy files; times cover only the drift work.

Shifted columns: c0 mean +0.5 sd, c1 mean +0.25 sd, c2 sd x1.5, c3 mean +0.1 sd, c4 mean +0.05 sd; c5..c19 are
unshifted. A second current split drawn from the reference distribution gives each tool's false-positive rate.
Writes benchmarks/results/drift.json. The machine is shared: the load average is recorded; compare tools by ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TMP = ROOT / ".tmp"
DATA = TMP / "drift-bench"  # per row count: see make_data
COLUMNS = 20
SHIFTED = ["c0", "c1", "c2", "c3", "c4"]
PEERS = {
    "nannyml": ["nannyml==0.13.1", "statsmodels"],
    "alibi": ["alibi-detect==0.13.0", "numpy<2"],
    "evidently": ["evidently==0.7.23", "pandas<3"],
}
FLAG_RULES = {
    "sluice": "psi>=0.1: PSI on 10 quantile bins >= 0.1; ks_*_holm: Holm-adjusted KS p < 0.05",
    "scipy": "ks_2samp p < 0.05 per column (no correction)",
    "alibi": "KSDrift(p_val=0.05), drift_type='feature' (no correction)",
    "nannyml": "UnivariateDriftCalculator KS, default chunking (10 chunks), any analysis chunk alerting",
    "evidently": "DataDriftPreset defaults: Wasserstein distance (normed) >= 0.1 for numeric columns",
}


def make_data(rows: int, seed: int = 20261129) -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    marker = DATA / f"rows-{rows}"
    if marker.exists():
        return
    rng = np.random.default_rng(seed)
    np.save(DATA / "reference.npy", rng.normal(size=(rows, COLUMNS)))
    current = rng.normal(size=(rows, COLUMNS))
    current[:, 0] += 0.5
    current[:, 1] += 0.25
    current[:, 2] *= 1.5
    current[:, 3] += 0.1
    current[:, 4] += 0.05
    np.save(DATA / "current.npy", current)
    del current
    np.save(DATA / "unshifted.npy", rng.normal(size=(rows, COLUMNS)))
    for old in DATA.glob("rows-*"):
        old.unlink()
    marker.touch()


def make_venv(tool: str) -> str | None:
    """Create .tmp/venv-TOOL with the peer installed; returns an error text, or None when it works."""
    venv = TMP / f"venv-{tool}"
    if not (venv / "bin" / "python").exists():
        made = subprocess.run(["python3", "-m", "venv", str(venv)], capture_output=True, text=True, check=False)
        if made.returncode != 0:
            return made.stderr.strip()[-2000:]
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", *PEERS[tool]], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return done.stderr.strip()[-2000:]
    return None


def interpreter(tool: str) -> Path:
    return Path(sys.executable) if tool in ("sluice", "scipy") else TMP / f"venv-{tool}" / "bin" / "python"


def run_tool(tool: str, split: str, timeout_s: float) -> dict[str, Any]:
    python = interpreter(tool)
    if not python.exists():
        return {"tool": tool, "error": f"no interpreter at {python.relative_to(ROOT)}: run with --make-venvs"}
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [str(python), str(ROOT / "benchmarks" / "drift_peers.py"), tool, str(DATA), split],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return {"tool": tool, "error": f"timed out after {timeout_s:.0f} s"}
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"tool": tool, "error": (done.stderr.strip() or done.stdout.strip())[-2000:], "rc": done.returncode}
    result: dict[str, Any] = json.loads(lines[-1])
    result["process_wall_seconds"] = wall
    return result


def _rate(flagged: list[str], truth: set[str]) -> tuple[int, int]:
    return len(set(flagged) & truth), len(set(flagged) - truth)


def summarise(results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    truth = set(SHIFTED)
    unshifted_columns = COLUMNS
    sluice_s = results.get("sluice", {}).get("current", {}).get("seconds")
    rows: list[dict[str, Any]] = []
    for tool, splits in results.items():
        shifted, null = splits.get("current", {}), splits.get("unshifted", {})
        if "error" in shifted or not shifted:
            rows.append({"tool": tool, "method": "-", "error": shifted.get("error", "not run")[:300]})
            continue
        for method, flagged in shifted["flagged"].items():
            false_flags = null.get("flagged", {}).get(method) if "error" not in null else None
            true_pos, false_pos = _rate(flagged, truth)
            seconds = shifted["seconds"]
            if tool == "sluice" and method == "ks_exact_holm":
                seconds = shifted["exact_ks_seconds"]
            rows.append(
                {
                    "tool": tool,
                    "version": shifted["version"],
                    "method": method,
                    "seconds": round(seconds, 3),
                    "x_sluice_time": round(seconds / sluice_s, 1) if sluice_s else None,
                    "peak_rss_mib": round(shifted["peak_rss_mib"]),
                    "shifted_flagged_of_5": true_pos,
                    "unshifted_flagged_in_shifted_run": false_pos,
                    "flagged": ",".join(sorted(flagged, key=lambda c: int(c[1:]))),
                    "false_positive_rate_unshifted_split": (
                        round(len(false_flags) / unshifted_columns, 3) if false_flags is not None else None
                    ),
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tools", default="sluice,scipy,nannyml,alibi,evidently")
    parser.add_argument("--make-venvs", action="store_true", help="create the peers' virtualenvs under .tmp/")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per tool and split")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "drift.json"))
    args = parser.parse_args()
    tools = args.tools.split(",")
    install_errors = {}
    if args.make_venvs:
        for tool in tools:
            if tool in PEERS:
                error = make_venv(tool)
                if error:
                    install_errors[tool] = error
    make_data(args.rows)
    load_before = os.getloadavg()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for tool in tools:
        results[tool] = {}
        for split in ("current", "unshifted"):
            if tool in install_errors:
                results[tool][split] = {"tool": tool, "error": f"install failed: {install_errors[tool]}"}
                continue
            results[tool][split] = run_tool(tool, split, args.timeout)
            print(
                tool,
                split,
                json.dumps({k: v for k, v in results[tool][split].items() if k in ("seconds", "flagged", "error")}),
            )
    load_after = os.getloadavg()
    checks: dict[str, Any] = {}
    sluice, scipy_run = results.get("sluice", {}).get("current", {}), results.get("scipy", {}).get("current", {})
    if "ks_exact_statistic" in sluice and "ks_statistic" in scipy_run:
        checks["exact_ks_max_abs_diff_statistic_vs_scipy"] = float(
            np.max(np.abs(np.subtract(sluice["ks_exact_statistic"], scipy_run["ks_statistic"])))
        )
        checks["exact_ks_max_abs_diff_p_value_vs_scipy"] = float(
            np.max(np.abs(np.subtract(sluice["ks_exact_p"], scipy_run["ks_p"])))
        )
    if "seconds" in sluice:
        checks["sluice_psi_ks_seconds"] = sluice["seconds"]
        checks["sluice_psi_ks_goal_0_5_s_met"] = sluice["seconds"] <= 0.5
        checks["sluice_score_traced_peak_mib"] = sluice["score_traced_peak_mib"]
        checks["sluice_score_rss_growth_mib"] = sluice["score_rss_growth_mib"]
        checks["input_mib_current"] = sluice["input_mib"] / 2
        checks["sluice_memory_goal_2x_input_met"] = max(
            sluice["score_traced_peak_mib"], sluice["score_rss_growth_mib"]
        ) <= 2 * (sluice["input_mib"] / 2)
        peers = [
            results[t]["current"]["seconds"]
            for t in results
            if t != "sluice" and "seconds" in results[t].get("current", {})
        ]
        if peers:
            checks["fastest_peer_seconds"] = min(peers)
            checks["speedup_vs_fastest_peer"] = min(peers) / sluice["seconds"]
    report = {
        "benchmark": "drift",
        "command": ".venv/bin/python benchmarks/drift.py --make-venvs",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after",
        "rows": args.rows,
        "columns": COLUMNS,
        "shifted_columns": SHIFTED,
        "flag_rules": FLAG_RULES,
        "summary": summarise(results),
        "checks": checks,
        "install_errors": install_errors,
        "detail": results,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    for row in report["summary"]:
        print(row)
    print(json.dumps(checks, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
