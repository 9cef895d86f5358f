"""`sluice profile DATA -o profile.json`: a reference profile of training data for a DriftPolicy.

Exit codes: 0 written, 2 bad input (the message names the file, column or option).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sluice.drift.data import read_columns, select
from sluice.drift.profile import DEFAULT_BINS, DEFAULT_SAMPLE_SIZE, DEFAULT_TOP_K, ProfileError, build_profile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA", help="training data: .csv, .parquet, .npy or .npz")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the profile JSON")
    parser.add_argument(
        "--bins", type=int, default=DEFAULT_BINS, help=f"quantile bins per numeric feature (default {DEFAULT_BINS})"
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        help=f"categories kept per categorical feature; the rest count as 'other' (default {DEFAULT_TOP_K})",
    )
    parser.add_argument(
        "--sample-size",
        type=int,
        default=DEFAULT_SAMPLE_SIZE,
        help=f"values kept per numeric feature for exact KS; 0 keeps none (default {DEFAULT_SAMPLE_SIZE})",
    )
    parser.add_argument(
        "--categorical", action="append", default=[], metavar="FEATURE", help="treat a numeric feature as categorical"
    )
    parser.add_argument(
        "--prediction", metavar="COLUMN", help="column (or .npz array) holding the model output; keyed 'prediction'"
    )
    parser.add_argument(
        "--as-input",
        metavar="NAME",
        help="key a table's columns as NAME[0], NAME[1], ... (the model's 2-D input NAME), in file order",
    )
    parser.add_argument("--npy-name", default="input", help="input name of a .npy array (default: input)")
    parser.add_argument("--feature", action="append", default=[], metavar="FEATURE", help="profile only these")
    parser.add_argument("--seed", type=int, default=0, help="seed of the KS sample (default 0)")


def run(args: argparse.Namespace) -> int:
    try:
        columns = read_columns(args.data, as_input=args.as_input, prediction=args.prediction, npy_name=args.npy_name)
        if args.feature:
            columns = select(columns, args.feature, args.data)
        profile = build_profile(
            columns,
            categorical=args.categorical,
            bins=args.bins,
            top_k=args.top_k,
            sample_size=args.sample_size,
            seed=args.seed,
            source=Path(args.data).name,
        )
    except ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        Path(args.output).write_text(profile.to_json(), encoding="utf-8")
    except OSError as exc:
        print(f"error: {args.output}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return 2
    kinds = [f.type for f in profile.features]
    print(
        f"wrote {args.output}: {profile.rows} rows, {kinds.count('numeric')} numeric and "
        f"{kinds.count('categorical')} categorical features"
    )
    return 0
