"""`sluice drift --reference profile.json|DATA --current DATA`: which features of a batch drifted, for CI pipelines.

The same statistics and verdict as a DriftPolicy, on whole files. Exit codes: 0 no drift (Ok, Warning or NoData),
1 drift, 2 bad input (the message names the file, feature or option).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sluice.api.drift_policy import DriftMethod, DriftState
from sluice.drift.core import Evaluation, Settings, WatchedFeature, evaluate, summary
from sluice.drift.data import Columns, read_columns
from sluice.drift.profile import (
    DEFAULT_BINS,
    DEFAULT_TOP_K,
    Profile,
    ProfileError,
    build_profile,
    count_values,
    load_profile,
)

DEFAULT_MIN_SAMPLES = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", required=True, metavar="PROFILE|DATA", help="a profile JSON or training data")
    parser.add_argument(
        "--current", required=True, metavar="DATA", help="the batch to check: .csv, .parquet, .npy, .npz"
    )
    methods = [m.value for m in DriftMethod]
    parser.add_argument("--method", choices=methods, default="psi", help="statistic for numeric features (default psi)")
    parser.add_argument(
        "--categorical-method",
        choices=["psi", "js", "chi2"],
        default="chi2",
        help="statistic for categorical features (default chi2)",
    )
    parser.add_argument("--warning", type=float, default=0.1, help="score for Warning (default 0.1)")
    parser.add_argument("--critical", type=float, default=0.25, help="score for Drifted (default 0.25)")
    parser.add_argument("--alpha", type=float, default=0.05, help="Holm-corrected significance for ks/chi2 (0.05)")
    parser.add_argument(
        "--drift-share", type=float, default=0.0, help="share of drifted features for a drifted verdict (default: any)"
    )
    parser.add_argument(
        "--min-samples",
        type=int,
        default=DEFAULT_MIN_SAMPLES,
        help=f"fewer rows of a feature report NoData (default {DEFAULT_MIN_SAMPLES})",
    )
    parser.add_argument(
        "--exact-ks", action="store_true", help="ks on the raw values against the profile's sample, not on bins"
    )
    parser.add_argument("--feature", action="append", default=[], metavar="FEATURE", help="check only these")
    parser.add_argument("--prediction", metavar="COLUMN", help="column (or .npz array) holding the model output")
    parser.add_argument("--as-input", metavar="NAME", help="key table columns as NAME[0], NAME[1], ...")
    parser.add_argument("--npy-name", default="input", help="input name of a .npy array (default: input)")
    parser.add_argument("--bins", type=int, default=DEFAULT_BINS, help="bins when profiling DATA given as reference")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="categories when profiling DATA")
    parser.add_argument("--categorical", action="append", default=[], metavar="FEATURE", help="numeric as categorical")
    parser.add_argument("--output", choices=["text", "json"], default="text", help="text table or JSON")


def _read(path: str, args: argparse.Namespace) -> Columns:
    return read_columns(path, as_input=args.as_input, prediction=args.prediction, npy_name=args.npy_name)


def _reference(args: argparse.Namespace) -> Profile:
    if Path(args.reference).suffix == ".json":
        return load_profile(args.reference)
    columns = _read(args.reference, args)
    return build_profile(
        columns, categorical=args.categorical, bins=args.bins, top_k=args.top_k, source=Path(args.reference).name
    )


def _check_options(args: argparse.Namespace) -> None:
    if not 0 <= args.warning <= args.critical:
        raise ProfileError(f"--warning {args.warning} must be between 0 and --critical {args.critical}")
    if not 0 < args.alpha < 1:
        raise ProfileError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if not 0 <= args.drift_share <= 1:
        raise ProfileError(f"--drift-share must be between 0 and 1, got {args.drift_share}")
    if args.min_samples < 1:
        raise ProfileError(f"--min-samples must be at least 1, got {args.min_samples}")


def compare(args: argparse.Namespace) -> Evaluation:
    """Profile (or load) the reference, count the current batch on its bins, evaluate."""
    _check_options(args)
    profile = _reference(args)
    current = _read(args.current, args)
    names = args.feature or [f.name for f in profile.features]
    watched, window, raw = [], {}, {}
    for name in names:
        feature = profile.feature(name)
        if name not in current:
            raise ProfileError(
                f"{args.current}: no feature {name!r}, which the reference has (has: {', '.join(current)})"
            )
        method = DriftMethod(args.method if feature.type == "numeric" else args.categorical_method)
        watched.append(WatchedFeature(name, feature.type, method))
        window[name] = count_values(feature, current[name]).tolist()
        if args.exact_ks and feature.type == "numeric":
            raw[name] = current[name]
    settings = Settings(tuple(watched), args.warning, args.critical, args.alpha, args.min_samples, args.drift_share)
    return evaluate(settings, profile, window, raw)


def _as_json(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "state": evaluation.state.value,
        "driftedFeatures": evaluation.drifted,
        "evaluatedFeatures": evaluation.evaluated,
        "driftedShare": evaluation.share,
        "score": evaluation.score,
        "message": summary(evaluation),
        "features": [
            {
                "name": f.key,
                "method": f.method.value,
                "score": f.score,
                "pValue": f.p_value,
                "adjustedPValue": f.adjusted_p_value,
                "samples": f.samples,
                "state": f.state.value,
            }
            for f in evaluation.features
        ],
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _table(evaluation: Evaluation) -> str:
    rows = [("FEATURE", "METHOD", "SCORE", "P", "P(HOLM)", "ROWS", "STATE")]
    rows += [
        (f.key, f.method.value, _fmt(f.score), _fmt(f.p_value), _fmt(f.adjusted_p_value), str(f.samples), f.state.value)
        for f in evaluation.features
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join([*lines, "", f"{evaluation.state.value}: {summary(evaluation)}"])


def run(args: argparse.Namespace) -> int:
    try:
        evaluation = compare(args)
    except ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output == "json":
        print(json.dumps(_as_json(evaluation), indent=1))
    else:
        print(_table(evaluation))
    return 1 if evaluation.state == DriftState.DRIFTED else 0
