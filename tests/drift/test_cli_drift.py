"""`sluice drift`: per-feature scores, the verdict, and exit codes 0 / 1 / 2, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from sluice.cli.main import main


def _write(path: Path, rows: int, seed: int, shift: float = 0.0, kind_p: tuple[float, float] = (0.7, 0.3)) -> Path:
    rng = np.random.default_rng(seed)
    pq.write_table(
        pa.table(
            {
                "a": rng.normal(shift, 1, rows),
                "b": rng.normal(0, 1, rows),
                "kind": rng.choice(["x", "y"], rows, p=list(kind_p)),
                "out": rng.uniform(0, 10, rows),
            }
        ),
        path,
    )
    return path


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    reference = _write(tmp_path / "train.parquet", 20_000, seed=1)
    profile = tmp_path / "profile.json"
    assert main(["profile", str(reference), "-o", str(profile), "--prediction", "out"]) == 0
    return {
        "reference": reference,
        "profile": profile,
        "same": _write(tmp_path / "same.parquet", 5000, seed=2),
        "shifted": _write(tmp_path / "shifted.parquet", 5000, seed=3, shift=0.8),
        "kinds": _write(tmp_path / "kinds.parquet", 5000, seed=4, kind_p=(0.3, 0.7)),
    }


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


def test_unshifted_batch_exits_0_and_shifted_exits_1(data: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    common = ["drift", "--reference", str(data["profile"]), "--prediction", "out", "--output", "json"]
    assert main([*common, "--current", str(data["same"])]) == 0
    report = _json(capsys)
    assert report["state"] == "Ok"
    assert [f["name"] for f in report["features"]] == ["a", "b", "kind", "prediction"]
    assert [f["method"] for f in report["features"]] == ["psi", "psi", "chi2", "psi"]

    assert main([*common, "--current", str(data["shifted"])]) == 1
    report = _json(capsys)
    assert report["state"] == "Drifted"
    assert {f["name"]: f["state"] for f in report["features"]}["a"] == "Drifted"
    assert report["driftedFeatures"] == 1

    assert main([*common, "--current", str(data["kinds"])]) == 1
    kind = next(f for f in _json(capsys)["features"] if f["name"] == "kind")
    assert kind["state"] == "Drifted"
    assert kind["adjustedPValue"] < 0.05


def test_raw_data_as_reference_and_exact_ks_matches_scipy(
    data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["drift", "--reference", str(data["profile"]), "--current", str(data["shifted"]), "--prediction", "out"]
    assert main([*args, "--method", "ks", "--exact-ks", "--feature", "a", "--output", "json"]) == 1
    feature = _json(capsys)["features"][0]
    profile = json.loads(data["profile"].read_text())
    sample = next(f for f in profile["features"] if f["name"] == "a")["sample"]
    current = pq.read_table(data["shifted"]).column("a").to_numpy()
    expected = stats.ks_2samp(sample, current)
    assert feature["score"] == pytest.approx(expected.statistic, abs=1e-9)
    assert feature["pValue"] == pytest.approx(expected.pvalue, abs=1e-9)

    from_data = ["drift", "--reference", str(data["reference"]), "--current", str(data["shifted"])]
    assert main([*from_data, "--prediction", "out"]) == 1
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["FEATURE", "METHOD", "SCORE", "P", "P(HOLM)", "ROWS", "STATE"]
    assert text.strip().splitlines()[-1].startswith("Drifted: 1 of 4 evaluated features drifted")


def test_bad_input_exits_2_naming_the_problem(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["drift", "--reference", str(data["profile"])]
    assert main([*base, "--current", str(data["same"])]) == 2  # the profile has `prediction`, the batch lacks it
    assert "no feature 'prediction', which the reference has" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"schemaVersion": 1, "rows": 1, "features": []}')
    assert main(["drift", "--reference", str(bad), "--current", str(data["same"])]) == 2
    assert "features: List should have at least 1 item" in capsys.readouterr().err
    assert main([*base, "--current", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err
    assert main([*base, "--current", str(data["same"]), "--feature", "zzz"]) == 2
    assert "feature 'zzz' is not in the profile" in capsys.readouterr().err
    assert main([*base, "--current", str(data["same"]), "--warning", "0.5", "--critical", "0.2"]) == 2
    assert "--warning 0.5 must be between 0 and --critical 0.2" in capsys.readouterr().err
    text = tmp_path / "strings.csv"
    text.write_text("a,b,kind,out\nx,y,z,w\n")
    assert main([*base, "--current", str(text), "--prediction", "out"]) == 2
    assert "feature 'a': numeric in the profile" in capsys.readouterr().err


def test_tiny_batch_is_no_data_and_exits_0(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = _write(tmp_path / "tiny.parquet", 50, seed=9, shift=3.0)
    args = ["drift", "--reference", str(data["profile"]), "--current", str(tiny), "--prediction", "out"]
    assert main([*args, "--output", "json"]) == 0
    assert _json(capsys)["state"] == "NoData"


def test_the_installed_entry_point_runs(data: dict[str, Path]) -> None:
    sluice = Path(sys.executable).parent / "sluice"
    done = subprocess.run(
        [
            str(sluice),
            "drift",
            "--reference",
            str(data["profile"]),
            "--current",
            str(data["shifted"]),
            "--prediction",
            "out",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "Drifted" in done.stdout
