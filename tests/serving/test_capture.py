"""Reference capture (`reference.fromStableVersion`): the router's bounded reservoir sample and its endpoint."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from pydantic import ValidationError
from scipy import stats
from tests.serving.helpers import ADMIN_HEADERS, MODEL, OnnxBackend, config, serve

from sluice.serving.capture import Captures
from sluice.serving.config import MAX_CAPTURE_VALUES, MAX_CATEGORY_CHARS, DriftProfileConfig, ServingConfig
from sluice.serving.router import Router
from sluice.serving.scores import Scored
from sluice.serving.tensors import Tensor

URL = f"/v2/models/{MODEL}/infer"
TOKEN = "capture-token-0123456789"


def capture(policy: str = "p", **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"version": "v1", "token": TOKEN, "features": [{"input": "x"}], **kw}
    return {"policy": policy, "capture": body}


def captures(seed: int = 0, **kw: Any) -> Captures:
    return Captures([DriftProfileConfig.model_validate(capture(**kw))], seed=seed)


def stream(c: Captures, values: np.ndarray, seed: int) -> None:
    """Offer `values` in batches of random sizes (1 to 300 rows), as requests would come."""
    rng = np.random.default_rng(seed)
    i = 0
    while i < len(values):
        n = int(rng.integers(1, 300))
        c.observe("v1", [Tensor("x", values[i : i + n])], None)
        i += n


def test_the_reservoir_is_bounded_and_counts_every_row() -> None:
    c = captures(size=500)
    stream(c, np.arange(50_000, dtype=np.float64), seed=1)
    reservoir = c.reservoirs["p"]
    assert reservoir.values.shape == (500, 1)  # allocated once, never grows
    sample = c.sample("p")
    assert sample is not None
    assert (sample["rows"], sample["kept"], sample["size"]) == (50_000, 500, 500)
    values = sample["features"][0]["values"]
    assert len(values) == 500
    assert values == sorted(values)
    assert len(set(values)) == 500
    assert sample["features"][0]["missing"] == 0


def test_the_sample_is_uniform_over_the_stream() -> None:
    """A uniform reservoir keeps each row with probability size/n: the kept stream positions fall evenly into ten
    deciles (chi-square goodness of fit, seeded), and each position's inclusion rate over many small runs is even."""
    n, size = 20_000, 2_000
    c = captures(size=size, seed=7)
    stream(c, np.arange(n, dtype=np.float64), seed=2)
    kept = np.asarray((c.sample("p") or {})["features"][0]["values"])
    observed = np.bincount((kept // (n // 10)).astype(int), minlength=10)
    assert stats.chisquare(observed).pvalue > 0.01, observed
    # Inclusion per stream position over 2,000 runs of 100 rows into 10 slots: each position ~ 2,000 * 0.1 = 200
    # times (goodness of fit over all 100 positions: an off-by-one at the fill boundary would show).
    hits = np.zeros(100)
    for seed in range(2000):
        small = captures(size=10, seed=seed)
        stream(small, np.arange(100, dtype=np.float64), seed=seed)
        hits[np.asarray((small.sample("p") or {})["features"][0]["values"], dtype=int)] += 1
    assert hits.sum() == 2000 * 10
    assert stats.chisquare(hits).pvalue > 0.01, hits


def test_categorical_values_prediction_labels_and_missing_rows() -> None:
    c = captures(
        size=100,
        features=[{"input": "country", "type": "categorical"}, {"input": "grid", "column": 1}, {"input": "gone"}],
        prediction="categorical",
    )
    country = np.array([b"de", "us", None, b"de", "x" * 1000], dtype=object)
    grid = np.array([[1, 3], [20, 1], [-5, 9], [0, 7], [10, 3]], dtype=np.int64)
    scored = Scored(scores=np.array([0.1, 0.9, 0.2, 0.8, 0.7]), labels=np.array([0, 1, 0, 1, 2]))
    c.observe("v1", [Tensor("country", country), Tensor("grid", grid)], scored)
    sample = c.sample("p")
    assert sample is not None
    by = {f["name"]: f for f in sample["features"]}
    assert by["country"] == {
        "name": "country",
        "type": "categorical",
        "missing": 1,
        "values": sorted(["de", "us", "de", "x" * MAX_CATEGORY_CHARS]),
    }
    assert by["grid[1]"]["values"] == [1.0, 3.0, 3.0, 7.0, 9.0]
    assert (by["gone"]["values"], by["gone"]["missing"]) == ([], 5)  # no such input: every row missing
    assert by["prediction"]["values"] == ["0", "0", "1", "1", "2"]
    # Numeric predictions are the scores; a request without scores leaves them missing.
    numeric = captures(size=100, prediction="numeric")
    numeric.observe("v1", [Tensor("x", np.array([1.0, np.nan, np.inf]))], Scored(np.array([0.5, 0.25, 1.0]), None))
    numeric.observe("v1", [Tensor("x", np.array([2.0]))], None)
    by = {f["name"]: f for f in (numeric.sample("p") or {})["features"]}
    assert (by["x"]["values"], by["x"]["missing"]) == ([1.0, 2.0], 2)  # NaN and inf are missing
    assert (by["prediction"]["values"], by["prediction"]["missing"]) == ([0.25, 0.5, 1.0], 1)
    # Other versions are not sampled.
    numeric.observe("v2", [Tensor("x", np.array([5.0]))], None)
    assert (numeric.sample("p") or {})["rows"] == 4


def test_reconfigure_keeps_an_unchanged_capture_and_restarts_a_changed_one() -> None:
    a, b = DriftProfileConfig.model_validate(capture("a")), DriftProfileConfig.model_validate(capture("b"))
    c = Captures([a, b])
    c.observe("v1", [Tensor("x", np.arange(10.0))], None)
    b2 = DriftProfileConfig.model_validate(capture("b", version="v2"))
    c.configure([b2, a])
    assert (c.sample("a") or {})["rows"] == 10
    assert (c.sample("b") or {})["rows"] == 0
    c.configure([])
    assert not c.active
    assert c.sample("a") is None


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"policy": "p", "capture": {**capture()["capture"], "token": "short"}}, "at least 16"),
        ({"policy": "p", "capture": {**capture()["capture"], "size": 10_001}}, "less than or equal to 10000"),
        ({**capture(), "prediction": {"edges": [0.5]}}, "capture takes no bins"),
        (capture(features=[], prediction=None), "needs at least one feature"),
        (capture(features=[{"input": "x"}, {"input": "x"}]), "must be unique"),
        (capture(features=[{"input": "x", "column": i} for i in range(21)]), f"limit of {MAX_CAPTURE_VALUES}"),
    ],
)
def test_captures_are_validated(profile: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DriftProfileConfig.model_validate(profile)


def test_captures_are_bounded_per_router() -> None:
    ten = [{"input": "x", "column": i} for i in range(10)]
    with pytest.raises(ValidationError, match="captures of 300000 values"):
        config(drift=[capture(p, features=ten) for p in ("a", "b", "c")])


@pytest.mark.usefixtures("both_servers")
async def test_the_endpoint_serves_the_stable_versions_rows_to_the_token_only(model_bytes: bytes) -> None:
    """Over real HTTP: only rows v1 (stable) served are sampled, a binned policy still counts, the capture
    exports no bins, and the sample answers 404 / 401 / 200 as documented."""
    backends = {"stable": OnnxBackend(model_bytes, "v1"), "canary": OnnxBackend(model_bytes, "v2")}
    cap = capture("cap", features=[{"input": "X", "column": c} for c in range(4)], prediction="numeric")
    binned = {"policy": "bins", "features": [{"input": "X", "column": 0, "edges": [0.0]}]}
    router = Router(config(drift=[cap, binned]), backends)
    rng = np.random.default_rng(5)
    stable: list[np.ndarray] = []
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            for n in [1, 3, 20, 7, 40, 2, 15, 9, 30, 11]:
                x = rng.normal(size=(n, 4)).astype(np.float32)
                body = {"inputs": [{"name": "X", "shape": [n, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
                r = await client.post(URL, json=body)
                assert r.status_code == 200, r.text
                if r.headers["x-sluice-variant"] == "stable":
                    stable.append(x)
            path = "/v2/drift/cap/sample"
            assert (await client.get("/v2/drift/bins/sample")).status_code == 404  # no capture for that policy
            assert (await client.get(path)).status_code == 401
            assert (await client.get(path, headers={"authorization": "Bearer wrong-token-000000"})).status_code == 401
            assert (await client.get(path, headers=ADMIN_HEADERS)).status_code == 200
            bearer = {"authorization": f"Bearer {TOKEN}"}
            summary = (await client.get(f"{path}?values=false", headers=bearer)).json()
            sample = (await client.get(path, headers=bearer)).json()
            metrics = (await client.get("/metrics")).text
    x = np.concatenate(stable)
    assert "values" not in summary["features"][0]
    assert summary["rows"] == sample["rows"] == sample["kept"] == len(x)
    assert (sample["policy"], sample["version"]) == ("cap", "v1")
    by = {f["name"]: f["values"] for f in sample["features"]}
    for c in range(4):
        assert by[f"X[{c}]"] == sorted(x[:, c].astype(np.float64).tolist())
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    scores = session.run(None, {"X": x})[1][:, 1].astype(np.float64)
    np.testing.assert_allclose(by["prediction"], np.sort(scores), atol=1e-6)  # float32, batch-dependent
    assert 'policy="bins"' in metrics
    assert 'policy="cap"' not in metrics


def test_a_capture_is_valid_serving_config() -> None:
    cfg = ServingConfig.model_validate(
        {
            "model_name": MODEL,
            "variants": [{"name": "stable", "version": "v1", "uri": "file://v1.onnx", "weight": 100}],
            "drift": [capture()],
        }
    )
    assert cfg.drift[0].capture is not None
    assert cfg.drift[0].bins_total == 0
