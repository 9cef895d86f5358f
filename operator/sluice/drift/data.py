"""Read tabular data (CSV, Parquet, NumPy .npy/.npz) into named 1-D columns keyed as the router keys features.

CSV and Parquet go through pyarrow (the `data` extra), not a hand-written parser. A 2-D NumPy array named `x`
gives the keys `x[0]`, `x[1]`, ...; a 1-D one gives `x`. `as_input` keys table columns the same way, so a CSV of
a model's input columns matches the features of a DriftPolicy on that model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from sluice.drift.profile import PREDICTION, ProfileError, feature_key

Columns = dict[str, npt.NDArray[Any]]

SUFFIXES = (".csv", ".parquet", ".pq", ".npy", ".npz")


def _array_columns(name: str, array: npt.NDArray[Any], source: str) -> Columns:
    if array.ndim == 1:
        return {name: array}
    if array.ndim == 2:
        return {feature_key(name, j): array[:, j] for j in range(array.shape[1])}
    raise ProfileError(f"{source}: array {name!r} has {array.ndim} dimensions; profiles take 1-D or 2-D arrays")


def _pyarrow_table(path: Path) -> Any:
    try:
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pa_parquet
    except ModuleNotFoundError:
        raise ProfileError(f"{path}: reading CSV or Parquet needs pyarrow: pip install 'sluice[data]'") from None
    try:
        if path.suffix == ".csv":
            return pa_csv.read_csv(path)
        return pa_parquet.read_table(path)
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc}") from None
    except Exception as exc:  # pyarrow raises ArrowInvalid & co. for malformed files
        raise ProfileError(f"{path}: not valid {path.suffix.lstrip('.')}: {exc}") from None


def _table_columns(table: Any) -> Columns:
    out: Columns = {}
    for name in table.column_names:
        column = table.column(name)
        kind = str(column.type)
        if kind.startswith(("int", "uint")) and column.null_count:
            out[name] = column.cast("float64").to_numpy()  # nulls become NaN, counted as missing
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


def read_columns(
    path: str | Path, *, as_input: str | None = None, prediction: str | None = None, npy_name: str = "input"
) -> Columns:
    """Named 1-D columns of a data file. `prediction` names the column (or .npz array) holding the model output.

    With `as_input`, the table's other columns become `as_input[0]`, `as_input[1]`, ... in file order.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ProfileError(f"{path}: unknown data format {path.suffix!r}; expected one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise ProfileError(f"{path}: no such file")
    named: Columns
    if path.suffix in (".npy", ".npz"):
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ProfileError(f"{path}: not a valid {path.suffix} file: {exc}") from None
        if isinstance(loaded, np.ndarray):
            if prediction is not None:
                raise ProfileError(f"{path}: prediction: a .npy file holds one array; use .npz to add a prediction")
            return _array_columns(npy_name, loaded, str(path))
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files}
        if prediction is not None and prediction not in arrays:
            raise ProfileError(f"{path}: prediction: no array named {prediction!r} (arrays: {', '.join(arrays)})")
        named = {}
        for key, array in arrays.items():
            if key == prediction:
                output = array[:, 0] if array.ndim == 2 and array.shape[1] == 1 else array
                if output.ndim != 1:
                    raise ProfileError(f"{path}: prediction: array {key!r} must be 1-D (one output per row)")
                named[PREDICTION] = output
            else:
                named.update(_array_columns(key, array, str(path)))
        return named
    table_columns = _table_columns(_pyarrow_table(path))
    if prediction is not None and prediction not in table_columns:
        raise ProfileError(f"{path}: prediction: no column named {prediction!r} (columns: {', '.join(table_columns)})")
    named = {}
    inputs = [name for name in table_columns if name != prediction]
    for j, name in enumerate(inputs):
        named[feature_key(as_input, j) if as_input else name] = table_columns[name]
    if prediction is not None:
        named[PREDICTION] = table_columns[prediction]
    return named


def select(columns: Columns, names: Sequence[str], source: str) -> Columns:
    """Only the named columns, in that order; a missing one is an error naming it."""
    missing = [n for n in names if n not in columns]
    if missing:
        raise ProfileError(f"{source}: no feature {missing[0]!r} (has: {', '.join(columns)})")
    return {n: columns[n] for n in names}
