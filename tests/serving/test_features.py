"""Online feature histograms for DriftPolicies: bin counts equal np.histogram's, over real HTTP on both servers."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from tests.serving.helpers import MODEL, OnnxBackend, config, serve

from sluice.serving import metric_names as mn
from sluice.serving.config import MAX_EDGES, DriftProfileConfig
from sluice.serving.features import FeatureCounts
from sluice.serving.router import Router
from sluice.serving.scores import Scored
from sluice.serving.tensors import InferRequest, InferResponse, ModelMetadata, Tensor, TensorSpec

URL = f"/v2/models/{MODEL}/infer"
EDGES = {0: [-1.0, -0.25, 0.0, 0.5, 1.5], 1: [-0.5, 0.5], 3: [-2.0, -1.0, 0.0, 1.0, 2.0, 3.0]}
SCORE_EDGES = [0.1, 0.3, 0.5, 0.7, 0.9]


def _hist(values: np.ndarray, edges: list[float]) -> list[int]:
    """The reference: np.histogram on the same edges with open ends (bin i holds edges[i-1] <= x < edges[i])."""
    counts, _ = np.histogram(values, bins=[-np.inf, *edges, np.inf])
    return [int(c) for c in counts]


def _profile(**kw: Any) -> dict[str, Any]:
    features: list[dict[str, Any]] = [{"input": "X", "column": c, "edges": e} for c, e in EDGES.items()]
    features.append({"input": "X", "column": 9, "edges": [0.0]})  # beyond the input's 4 columns: missing
    features.append({"input": "absent", "edges": [0.0]})  # no such input: missing
    base: dict[str, Any] = {"policy": "fraud-drift", "features": features, "prediction": {"edges": SCORE_EDGES}}
    base.update(kw)
    return base


def _families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _bins(fam: dict[str, dict[tuple[tuple[str, str], ...], float]], feature: str, variant: str) -> list[int]:
    got = {
        int(dict(k)["bin"]): int(v)
        for k, v in fam[mn.FEATURE_BIN_TOTAL].items()
        if dict(k)["feature"] == feature and dict(k)["variant"] == variant
    }
    return [got[i] for i in range(len(got))]


@pytest.mark.usefixtures("both_servers")
async def test_bin_counts_over_http_equal_np_histogram_on_the_same_rows(model_bytes: bytes) -> None:
    backends = {"stable": OnnxBackend(model_bytes, "v1"), "canary": OnnxBackend(model_bytes, "v2")}
    router = Router(config(drift=[_profile()]), backends)
    rng = np.random.default_rng(11)
    sent: dict[str, list[np.ndarray]] = {"stable": [], "canary": []}
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            # Batch sizes from 1 (one broadcast compare) to 600 rows (a searchsorted per feature).
            for n in [1, 1, 2, 5, 17, 64, 600, 3, 1, 250]:
                x = rng.normal(scale=1.5, size=(n, 4)).astype(np.float32)
                x[0, 0] = -0.25  # exactly on an edge: goes up, as in np.histogram
                body = {"inputs": [{"name": "X", "shape": [n, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
                r = await client.post(URL, json=body)
                assert r.status_code == 200, r.text
                sent[r.headers["x-sluice-variant"]].append(x)
            text = (await client.get("/metrics")).text
    fam = _families(text)
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    for variant, batches in sent.items():
        if not batches:
            continue
        x = np.concatenate(batches)
        for col, edges in EDGES.items():
            assert _bins(fam, f"X[{col}]", variant) == _hist(x[:, col], edges), (variant, col)
        probs = session.run(None, {"X": x})[1]
        assert _bins(fam, "prediction", variant) == _hist(probs[:, 1].astype(np.float64), SCORE_EDGES)
        labels = (("model", MODEL), ("policy", "fraud-drift"), ("variant", variant))
        rows = {k: v for k, v in fam[mn.FEATURE_ROWS_TOTAL].items() if dict(k)["variant"] == variant}
        assert list(rows.values()) == [len(x)]
        assert all(set(labels) <= set(k) for k in rows)
        missing = {
            dict(k)["feature"]: v for k, v in fam[mn.FEATURE_MISSING_TOTAL].items() if dict(k)["variant"] == variant
        }
        assert missing == {"X[0]": 0, "X[1]": 0, "X[3]": 0, "X[9]": len(x), "absent": len(x), "prediction": 0}
    assert sum(len(b) for b in sent.values()) == 10


class Regressor:
    """An in-test regression model: y = 10 * sum(x) per row, far outside the 0..1 score buckets."""

    async def infer(self, request: InferRequest) -> InferResponse:
        x = request.inputs[0].data.astype(np.float64)
        y = 10 * x.reshape(x.shape[0], -1).sum(axis=1, keepdims=True)
        return InferResponse(MODEL, "v1", (Tensor("variable", y.astype(np.float32)),))

    async def ready(self) -> bool:
        return True

    async def metadata(self) -> ModelMetadata:
        return ModelMetadata(
            MODEL, "v1", "test", (TensorSpec("X", "FP32", (-1, 4)),), (TensorSpec("variable", "FP32", (-1, 1)),)
        )

    async def close(self) -> None:
        return None


async def test_regression_predictions_bin_on_the_profile_edges_not_score_buckets() -> None:
    edges = [-40.0, -10.0, 0.0, 10.0, 40.0]
    cfg = config(
        variants=[{"name": "stable", "version": "v1", "uri": "file://r.onnx", "weight": 100}],
        drift=[{"policy": "reg", "prediction": {"edges": edges}}],
    )
    router = Router(cfg, {"stable": Regressor()})
    x = np.random.default_rng(3).normal(scale=2, size=(300, 4)).astype(np.float32)
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            for chunk in np.array_split(x, 7):
                body = {
                    "inputs": [{"name": "X", "shape": list(chunk.shape), "datatype": "FP32", "data": chunk.tolist()}]
                }
                assert (await client.post(URL, json=body)).status_code == 200
            fam = _families((await client.get("/metrics")).text)
    y = (10 * x.astype(np.float64).sum(axis=1)).astype(np.float32).astype(np.float64)
    got = _bins(fam, "prediction", "stable")
    assert got == _hist(y, edges)
    assert min(got[0], got[-1]) > 0  # values beyond +-40 land in the open ends


def _render(fc: FeatureCounts) -> str:
    reg = CollectorRegistry()
    reg.register(fc)
    return generate_latest(reg).decode()


def test_categorical_bytes_ints_nan_and_missing_are_counted_exactly() -> None:
    profile = DriftProfileConfig.model_validate(
        {
            "policy": "p",
            "features": [
                {"input": "country", "categories": ["de", "fr", "us"]},
                {"input": "grid", "column": 1, "categories": ["3", "1", "7"]},
                {"input": "grid", "column": 0, "edges": [0.0, 10.0]},
                {"input": "amount", "edges": [1.0, 2.0]},
                {"input": "wide", "edges": [0.0]},  # a 3-column input named without a column: missing
            ],
            "prediction": {"categories": ["0", "1"]},
        }
    )
    fc = FeatureCounts([profile], lambda: MODEL)
    country = np.array([b"de", b"us", b"xx", b"de", b"fr"], dtype=object)
    grid = np.array([[1, 3], [20, 1], [-5, 9], [0, 7], [10, 3]], dtype=np.int64)
    amount = np.array([0.5, np.nan, 1.0, 2.0, 9.0])
    wide = np.zeros((5, 3), dtype=np.float32)
    scored = Scored(scores=np.array([0.1, 0.9, 0.2, 0.8, 0.7]), labels=np.array([0, 1, 0, 1, 2]))
    tensors = [Tensor("country", country), Tensor("grid", grid), Tensor("amount", amount), Tensor("wide", wide)]
    fc.observe("v1", "stable", tensors, scored)
    fam = _families(_render(fc))
    assert _bins(fam, "country", "stable") == [2, 1, 1, 1]  # de, fr, us, other (xx)
    assert _bins(fam, "grid[1]", "stable") == [2, 1, 1, 1]  # "3" twice, "1", "7", other (9)
    assert _bins(fam, "grid[0]", "stable") == _hist(grid[:, 0].astype(float), [0.0, 10.0])
    assert _bins(fam, "amount", "stable") == [1, 1, 2]  # the NaN row is missing
    assert _bins(fam, "wide", "stable") == [0, 0]
    assert _bins(fam, "prediction", "stable") == [2, 2, 1]  # label 2 is no category: other
    missing = {dict(k)["feature"]: v for k, v in fam[mn.FEATURE_MISSING_TOTAL].items()}
    assert missing == {"country": 0, "grid[1]": 0, "grid[0]": 0, "amount": 1, "wide": 5, "prediction": 0}
    # Every feature: rows == bins + missing.
    rows = next(iter(fam[mn.FEATURE_ROWS_TOTAL].values()))
    for feature, miss in missing.items():
        assert sum(_bins(fam, feature, "stable")) + miss == rows == 5

    # A request whose input has fewer rows than the first one: all of that feature's rows are missing.
    fc.observe("v1", "stable", [Tensor("country", country), Tensor("amount", amount[:2])], None)
    fam = _families(_render(fc))
    missing = {dict(k)["feature"]: v for k, v in fam[mn.FEATURE_MISSING_TOTAL].items()}
    assert missing["amount"] == 1 + 5
    assert missing["grid[0]"] == 5
    assert missing["prediction"] == 5  # no scores (a model without numeric outputs)


def test_reconfigure_keeps_unchanged_policies_and_restarts_changed_ones() -> None:
    a = DriftProfileConfig.model_validate({"policy": "a", "features": [{"input": "x", "edges": [0.0]}]})
    b = DriftProfileConfig.model_validate({"policy": "b", "features": [{"input": "x", "edges": [1.0, 2.0]}]})
    fc = FeatureCounts([a, b], lambda: MODEL)
    fc.observe("v1", "stable", [Tensor("x", np.array([-1.0, 0.5, 1.5, 3.0]))], None)
    b2 = DriftProfileConfig.model_validate({"policy": "b", "features": [{"input": "x", "edges": [1.0, 5.0]}]})
    fc.configure([b2, a])  # a moved and kept; b's edges changed: its counts restart
    fam = _families(_render(fc))
    by_policy = {(dict(k)["policy"], int(dict(k)["bin"])): v for k, v in fam[mn.FEATURE_BIN_TOTAL].items()}
    assert by_policy == {("a", 0): 1, ("a", 1): 3, ("b", 0): 0, ("b", 1): 0, ("b", 2): 0}
    rows = {dict(k)["policy"]: v for k, v in fam[mn.FEATURE_ROWS_TOTAL].items()}
    assert rows == {"a": 4, "b": 0}


@pytest.mark.parametrize(
    ("bins", "message"),
    [
        ({"edges": [0.0, 0.0]}, "strictly increasing"),
        ({"edges": [1.0, 0.5]}, "strictly increasing"),
        ({"edges": [0.0, float("inf")]}, "finite"),
        ({"edges": [float(i) for i in range(MAX_EDGES + 1)]}, "at most"),
        ({"edges": [0.0], "categories": ["a"]}, "exactly one"),
        ({}, "exactly one"),
        ({"categories": ["a", "a"]}, "unique"),
    ],
)
def test_bins_are_validated(bins: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DriftProfileConfig.model_validate({"policy": "p", "features": [{"input": "x", **bins}]})


def test_profiles_are_validated_as_a_whole() -> None:
    with pytest.raises(ValidationError, match="feature keys must be unique"):
        DriftProfileConfig.model_validate(
            {"policy": "p", "features": [{"input": "x", "edges": [0.0]}, {"input": "x", "edges": [1.0]}]}
        )
    with pytest.raises(ValidationError, match="policy names must be unique"):
        config(drift=[_profile(), _profile()])
    many = [{"input": "x", "column": c, "edges": [float(i) for i in range(100)]} for c in range(200)]
    with pytest.raises(ValidationError, match="exceed the limit"):
        config(drift=[{"policy": "p", "features": many}])


_finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@example(edges=[[-1.0, 0.0, 2.5], [0.0], [-3.0, 3.0, 7.0, 100.0]], rows=4000, seed=5)  # searchsorted per feature
@example(edges=[[0.0, 1.0]], rows=1, seed=6)  # one row: the broadcast compare
@given(
    edges=st.lists(st.lists(_finite, min_size=1, max_size=12, unique=True).map(sorted), min_size=1, max_size=4),
    rows=st.integers(min_value=1, max_value=700),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_property_bins_equal_np_histogram_and_nan_is_missing(edges: list[list[float]], rows: int, seed: int) -> None:
    """Random edges and data (values on the edges, +-inf and NaN included), both the broadcast and the
    searchsorted path (by batch size): every feature's bins equal np.histogram's, NaN rows are missing."""
    rng = np.random.default_rng(seed)
    width = len(edges)
    x = rng.normal(scale=1e3, size=(rows, width)).astype(np.float32)
    for j, e in enumerate(edges):  # a quarter of the values exactly on an edge
        on = rng.random(rows) < 0.25
        x[on, j] = rng.choice(np.asarray(e, dtype=np.float32), size=int(on.sum()))
    specials = np.array([np.nan, np.inf, -np.inf], dtype=np.float32)
    mask = rng.random((rows, width)) < 0.05
    x[mask] = rng.choice(specials, size=int(mask.sum()))
    profile = DriftProfileConfig.model_validate(
        {"policy": "p", "features": [{"input": "X", "column": j, "edges": e} for j, e in enumerate(edges)]}
    )
    fc = FeatureCounts([profile], lambda: MODEL)
    half = rows // 2
    for part in (x[:half], x[half:]):  # counts add up over requests
        if len(part):
            fc.observe("v1", "stable", [Tensor("X", part)], None)
    whole = FeatureCounts([profile], lambda: MODEL)
    whole.observe("v1", "stable", [Tensor("X", x)], None)
    assert np.array_equal(whole.counts[("v1", "stable")][0], fc.counts[("v1", "stable")][0])
    fam = _families(_render(fc))
    missing = {dict(k)["feature"]: v for k, v in fam[mn.FEATURE_MISSING_TOTAL].items()}
    for j, e in enumerate(edges):
        col = x[:, j]
        # float32 data against float64 edges, as the router compares them.
        assert _bins(fam, f"X[{j}]", "stable") == _hist(col[~np.isnan(col)].astype(np.float64), e)
        assert missing[f"X[{j}]"] == int(np.isnan(col).sum())
