"""Reference profiles: built from CSV, Parquet and NumPy files, validated on load with errors naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from sluice.cli.main import main
from sluice.drift.data import read_columns
from sluice.drift.profile import (
    CategoricalFeature,
    NumericFeature,
    ProfileError,
    bin_numeric,
    build_profile,
    load_profile,
    parse_profile,
)


def _table(rows: int = 5000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "age": rng.normal(40, 10, rows),
            "income": rng.lognormal(10, 1, rows),
            "country": rng.choice(["de", "fr", "us", "jp"], rows, p=[0.4, 0.3, 0.2, 0.1]),
            "score": rng.uniform(0, 5, rows),  # a regression output above 1
        }
    )


def test_numeric_profile_has_quantile_edges_open_ends_and_sorted_sample() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=100_000)
    profile = build_profile({"x": values}, bins=10, sample_size=1000)
    feature = profile.feature("x")
    assert isinstance(feature, NumericFeature)
    assert len(feature.edges) == 9
    assert len(feature.counts) == 10
    assert sum(feature.counts) == 100_000
    np.testing.assert_allclose(feature.edges, np.quantile(values, np.arange(1, 10) / 10))
    assert max(feature.counts) - min(feature.counts) <= 2  # equal mass
    assert len(feature.sample) == 1000
    assert feature.sample == sorted(feature.sample)
    assert set(feature.sample) <= set(values.tolist())


def test_bins_follow_searchsorted_right_and_nan_is_missing() -> None:
    edges = np.array([0.0, 1.0])
    assert bin_numeric(np.array([-5.0, 0.0, 0.5, 1.0, 7.0, np.nan]), edges).tolist() == [1, 2, 2]
    feature = build_profile({"x": np.array([1.0, 2.0, np.nan, 3.0])}, bins=2).feature("x")
    assert isinstance(feature, NumericFeature)
    assert feature.missing == 1
    assert sum(feature.counts) == 3


@settings(max_examples=150, deadline=None)
@given(
    values=hst.lists(
        hst.one_of(hst.floats(-10, 10), hst.just(float("nan")), hst.integers(-3, 3).map(float)), max_size=200
    ),
    edges=hst.lists(hst.integers(-40, 40).map(lambda i: i / 4), min_size=0, max_size=60, unique=True).map(sorted),
)
def test_counting_by_comparison_equals_searchsorted_binning(values: list[float], edges: list[float]) -> None:
    array, e = np.asarray(values, dtype=float), np.asarray(edges, dtype=float)
    finite = array[~np.isnan(array)]
    expected = np.bincount(np.searchsorted(e, finite, side="right"), minlength=e.size + 1)
    assert bin_numeric(array, e).tolist() == expected.tolist()


def test_heavy_ties_collapse_edges_instead_of_repeating_them() -> None:
    feature = build_profile({"x": np.array([0.0] * 90 + [1.0] * 10)}, bins=10).feature("x")
    assert isinstance(feature, NumericFeature)
    assert feature.edges == sorted(set(feature.edges))
    assert sum(feature.counts) == 100


def test_categorical_top_k_then_other() -> None:
    values = np.array(["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"])
    feature = build_profile({"c": values}, top_k=2).feature("c")
    assert isinstance(feature, CategoricalFeature)
    assert feature.categories == ["a", "b"]
    assert feature.counts == [5, 3, 3]


def test_csv_parquet_and_numpy_give_the_same_profile(tmp_path: Path) -> None:
    table = _table()
    pa_csv.write_csv(table, tmp_path / "train.csv")
    pq.write_table(table, tmp_path / "train.parquet")
    from_csv = build_profile(read_columns(tmp_path / "train.csv", prediction="score"))
    from_parquet = build_profile(read_columns(tmp_path / "train.parquet", prediction="score"))
    assert from_csv.model_dump() == from_parquet.model_dump()
    assert [f.name for f in from_csv.features] == ["age", "income", "country", "prediction"]
    assert from_csv.feature("country").type == "categorical"
    prediction = from_csv.feature("prediction")
    assert isinstance(prediction, NumericFeature)
    assert prediction.edges[-1] > 1.0  # regression outputs keep their own range

    x = np.column_stack([table["age"].to_numpy(), table["income"].to_numpy()])
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "xy.npz", input=x, out=table["score"].to_numpy())
    from_npy = build_profile(read_columns(tmp_path / "x.npy"))
    from_npz = build_profile(read_columns(tmp_path / "xy.npz", prediction="out"))
    assert [f.name for f in from_npy.features] == ["input[0]", "input[1]"]
    assert [f.name for f in from_npz.features] == ["input[0]", "input[1]", "prediction"]
    assert from_npy.feature("input[0]").model_dump() == {**from_csv.feature("age").model_dump(), "name": "input[0]"}
    as_input = read_columns(tmp_path / "train.csv", as_input="x", prediction="score")
    assert list(as_input) == ["x[0]", "x[1]", "x[2]", "prediction"]


def test_profile_round_trips_through_json(tmp_path: Path) -> None:
    profile = build_profile({"a": np.arange(100.0), "b": np.array(["x", "y"] * 50)}, source="t.csv")
    path = tmp_path / "p.json"
    path.write_text(profile.to_json())
    assert json.loads(path.read_text())["schemaVersion"] == 1
    assert load_profile(path) == profile


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schemaVersion=2), "schemaVersion: expected 1, got 2"),
        (lambda d: d.pop("rows"), "rows: Field required"),
        (lambda d: d["features"][0].update(counts=[1, 2]), "features.0.numeric: .*counts has 2 entries"),
        (lambda d: d["features"][0].update(edges=[3.0, 1.0, *d["features"][0]["edges"][2:]]), "strictly increasing"),
        (lambda d: d["features"][1].update(categories=["x"]), "features.1.categorical: .*counts has 3 entries"),
        (lambda d: d["features"][0].update(type="ordinal"), "features.0: Input tag 'ordinal'"),
        (lambda d: d["features"].append(d["features"][0]), "feature 'a' appears twice"),
        (lambda d: d.update(colour="red"), "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_profiles_name_the_field(mutate: object, message: str) -> None:
    data = json.loads(build_profile({"a": np.arange(100.0), "b": np.array(["x", "y"] * 50)}).to_json())
    mutate(data)  # type: ignore[operator]
    with pytest.raises(ProfileError, match=message):
        parse_profile(json.dumps(data), "p.json")


def test_not_json_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"p\.json: not JSON"):
        parse_profile("{", "p.json")
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "absent.json")


def test_cli_writes_a_profile_and_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pq.write_table(_table(), tmp_path / "train.parquet")
    out = tmp_path / "profile.json"
    assert (
        main(["profile", str(tmp_path / "train.parquet"), "-o", str(out), "--bins", "5", "--prediction", "score"]) == 0
    )
    profile = load_profile(out)
    age = profile.feature("age")
    assert isinstance(age, NumericFeature)
    assert len(age.counts) == 5
    assert "3 numeric and 1 categorical" in capsys.readouterr().out

    assert main(["profile", str(tmp_path / "train.parquet"), "-o", str(out), "--prediction", "nope"]) == 2
    assert "prediction: no column named 'nope'" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,4,5\n")
    assert main(["profile", str(tmp_path / "bad.csv"), "-o", str(out)]) == 2
    assert "bad.csv: not valid csv" in capsys.readouterr().err
    assert main(["profile", str(tmp_path / "data.xlsx"), "-o", str(out)]) == 2
    assert "unknown data format '.xlsx'" in capsys.readouterr().err
    assert main(["profile", str(tmp_path / "train.parquet"), "-o", str(out), "--bins", "1"]) == 2
    assert "bins: need at least 2" in capsys.readouterr().err


EXAMPLE_MODELS = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "models"


def test_model_keys_the_features_and_adds_its_predictions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--model` gives the shipped example profile (models/make_profile.py) from the same rows."""
    rng = np.random.default_rng(1)  # traffic.features(4000, seed=1): the rows fraud-v1 was trained on
    np.save(tmp_path / "x.npy", rng.normal(0.0, 1.0, size=(4000, 4)).astype(np.float32))
    out = tmp_path / "p.json"
    model = str(EXAMPLE_MODELS / "fraud-v1.onnx")
    assert main(["profile", str(tmp_path / "x.npy"), "--model", model, "--sample-size", "1000", "-o", str(out)]) == 0
    made = load_profile(out)
    shipped = load_profile(EXAMPLE_MODELS / "fraud-v1.profile.json")
    assert [f.name for f in made.features] == ["features[0]", "features[1]", "features[2]", "features[3]", "prediction"]
    assert made.features == shipped.features
    prediction = made.feature("prediction")
    assert isinstance(prediction, NumericFeature)
    assert 0.0 < prediction.edges[0] < prediction.edges[-1] < 1.0  # P(fraud) per row

    np.save(tmp_path / "narrow.npy", np.zeros((10, 3), dtype=np.float32))
    capsys.readouterr()
    assert main(["profile", str(tmp_path / "narrow.npy"), "--model", model, "-o", str(out)]) == 2
    assert "input 'features' has 4 columns, the data 3" in capsys.readouterr().err
    assert main(["profile", str(tmp_path / "x.npy"), "--model", str(tmp_path / "none.onnx"), "-o", str(out)]) == 2
    assert "none.onnx: cannot load" in capsys.readouterr().err
    assert main(["profile", str(tmp_path / "x.npy"), "--model", model, "--as-input", "x", "-o", str(out)]) == 2
    assert "drop --prediction/--as-input" in capsys.readouterr().err
