"""`sluice profile DATA -o profile.json`: a reference profile of training data for a DriftPolicy.

With `--model MODEL.onnx` the data's columns are the model's (single) input, in order: features are keyed by the
model's input name and the prediction is the model's score on every row, as the router scores it (a classifier's
P(class 1) or predicted-class probability, a regressor's first output).

Exit codes: 0 written, 2 bad input (the message names the file, column or option).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from sluice.drift.data import Columns, read_columns, select
from sluice.drift.profile import (
    DEFAULT_BINS,
    DEFAULT_SAMPLE_SIZE,
    DEFAULT_TOP_K,
    PREDICTION,
    ProfileError,
    build_profile,
    feature_key,
    is_numeric,
)
from sluice.serving.scores import score_outputs
from sluice.serving.tensors import Tensor


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
    parser.add_argument(
        "--model",
        metavar="MODEL.onnx",
        help="key the columns by the model's input and add its predictions on the rows (needs onnxruntime)",
    )


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}
BATCH_ROWS = 65_536


def with_model_predictions(columns: Columns, model: str) -> Columns:
    """The columns as the model's 2-D input (keyed `input[j]`) plus `prediction`: the model's score per row."""
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        raise ProfileError("--model needs onnxruntime: pip install 'sluice[cpu]'") from None
    try:
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise ProfileError(f"--model {model}: cannot load: {exc}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ProfileError(f"--model {model}: has {len(inputs)} inputs; profiles with --model take one 2-D input")
    first = inputs[0]
    dtype = _ORT_DTYPES.get(first.type)
    if dtype is None:
        raise ProfileError(f"--model {model}: input {first.name!r} is {first.type}; float or double inputs only")
    width = first.shape[1] if len(first.shape) == 2 and isinstance(first.shape[1], int) else None
    text = [name for name, values in columns.items() if not is_numeric(values)]
    if text:
        raise ProfileError(f"--model: column {text[0]!r} is not numeric, but the model's input is {first.type}")
    if width is not None and width != len(columns):
        raise ProfileError(f"--model {model}: input {first.name!r} has {width} columns, the data {len(columns)}")
    matrix = np.column_stack([np.asarray(v, dtype=dtype) for v in columns.values()])
    scores = []
    for start in range(0, len(matrix), BATCH_ROWS):
        outputs = session.run(None, {first.name: matrix[start : start + BATCH_ROWS]})
        names = [o.name for o in session.get_outputs()]
        scored = score_outputs(tuple(Tensor(n, np.asarray(o)) for n, o in zip(names, outputs, strict=True)))
        if scored is None:
            raise ProfileError(f"--model {model}: no numeric output to take a prediction from")
        scores.append(scored.scores)
    out: Columns = {feature_key(first.name, j): matrix[:, j] for j in range(matrix.shape[1])}
    out[PREDICTION] = np.concatenate(scores) if scores else np.empty(0)
    return out


def run(args: argparse.Namespace) -> int:
    try:
        if args.model and (args.prediction or args.as_input):
            raise ProfileError("--model names the features and makes the prediction: drop --prediction/--as-input")
        columns = read_columns(args.data, as_input=args.as_input, prediction=args.prediction, npy_name=args.npy_name)
        if args.model:
            columns = with_model_predictions(columns, args.model)
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
