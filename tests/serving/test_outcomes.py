"""Outcomes joined to arms, sticky assignment with a salt, enrolment: over real HTTP on both servers."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from tests.serving.helpers import ADMIN_HEADERS, MODEL, OnnxBackend, config, row, serve, v2_body

from sluice.serving import metric_names as mn
from sluice.serving.config import ServingConfig
from sluice.serving.launch import start_data_plane
from sluice.serving.outcomes import AssignmentStore
from sluice.serving.router import Router
from sluice.serving.split import bucket

URL = f"/v2/models/{MODEL}/infer"
OUT = f"/v2/models/{MODEL}/outcomes"
OUTCOMES = {"metrics": {"converted": "conversion", "revenue": "mean"}}
ARMS = [
    {"name": "control", "version": "v1", "uri": "file://v1.onnx", "weight": 50},
    {"name": "treatment", "version": "v2", "uri": "file://v2.onnx", "weight": 50},
]


def _router(model_bytes: bytes, **kw: Any) -> Router:
    backends = {"control": OnnxBackend(model_bytes, "v1"), "treatment": OnnxBackend(model_bytes, "v2")}
    cfg: dict[str, Any] = {
        "variants": ARMS,
        "sticky_header": "x-user",
        "sticky_salt": "exp-uid-1",
        "outcomes": OUTCOMES,
    }
    cfg.update(kw)
    return Router(config(**cfg), backends)


def _series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted labels: value} of every sample named `name` in a /metrics page (parsed by prometheus_client)."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def _arm(labels: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    d = dict(labels)
    return d["variant"], d["metric"]


@pytest.mark.usefixtures("both_servers")
async def test_100_outcomes_split_by_arm_sum_to_what_was_sent(model_bytes: bytes) -> None:
    router = _router(model_bytes)
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            served: dict[str, str] = {}
            for i in range(100):
                r = await client.post(URL, json=v2_body(row(seed=i), id=f"req-{i}"))
                assert r.status_code == 200, r.text
                assert r.headers["x-sluice-request-id"] == f"req-{i}"
                assert r.json()["id"] == f"req-{i}"
                served[f"req-{i}"] = r.headers["x-sluice-variant"]
            assert set(served.values()) == {"control", "treatment"}
            conv: list[dict[str, Any]] = [
                {"id": f"req-{i}", "metric": "converted", "value": int(i % 3 == 0)} for i in range(100)
            ]
            rev: list[dict[str, Any]] = [
                {"id": f"req-{i}", "metric": "revenue", "value": (i % 7) * 1.5 - 2.0} for i in range(100)
            ]
            r = await client.post(OUT, json={"outcomes": conv + rev})
            assert r.status_code == 202, r.text
            assert r.json() == {"accepted": 200, "unmatched": 0, "unmatched_ids": []}
            text = (await client.get("/metrics")).text

    expected: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for o in conv + rev:
        acc = expected[(served[str(o["id"])], str(o["metric"]))]
        acc[0] += 1
        acc[1] += float(o["value"])
        acc[2] += float(o["value"]) ** 2
    counts = {_arm(k): v for k, v in _series(text, mn.OUTCOMES_TOTAL).items()}
    sums = {_arm(k): v for k, v in _series(text, mn.OUTCOME_VALUE_SUM).items()}
    squares = {_arm(k): v for k, v in _series(text, mn.OUTCOME_VALUE_SQUARES_SUM).items()}
    assert counts == {k: v[0] for k, v in expected.items()}
    assert sums == pytest.approx({k: v[1] for k, v in expected.items()}, abs=1e-9)
    assert squares == pytest.approx({k: v[2] for k, v in expected.items()}, abs=1e-9)
    assert sum(v for (arm, m), v in counts.items() if m == "converted") == 100
    assert f'{mn.OUTCOMES_TOTAL}{{metric="converted",model="{MODEL}",variant="control",version="v1"}}' in text
    assert _series(text, mn.OUTCOME_STORE_ENTRIES) == {(("model", MODEL),): 100}
    assert _series(text, mn.OUTCOME_STORE_EVICTED_TOTAL) == {(("model", MODEL),): 0}


@pytest.mark.usefixtures("both_servers")
async def test_generated_ids_unit_ids_and_unmatched(model_bytes: bytes) -> None:
    router = _router(model_bytes)
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            r = await client.post(URL, json=v2_body(row()), headers={"x-user": "alice"})
            assert r.status_code == 200
            rid = r.headers["x-sluice-request-id"]  # made up by the router: the client sent no id
            assert "id" not in r.json()
            arm = r.headers["x-sluice-variant"]
            one = await client.post(OUT, json={"id": rid, "metric": "revenue", "value": 12.5})
            assert one.status_code == 202
            assert one.json()["accepted"] == 1
            unit = await client.post(OUT, json={"id": "alice", "metric": "converted", "value": 1})
            assert unit.json()["accepted"] == 1
            miss = await client.post(OUT, json={"outcomes": [{"id": "nobody", "metric": "converted", "value": 0}] * 3})
            assert miss.status_code == 202
            assert miss.json() == {"accepted": 0, "unmatched": 3, "unmatched_ids": ["nobody"] * 3}
            text = (await client.get("/metrics")).text
    counts = {_arm(k): v for k, v in _series(text, mn.OUTCOMES_TOTAL).items()}
    assert counts == {(arm, "revenue"): 1, (arm, "converted"): 1}
    unmatched = _series(text, mn.OUTCOMES_UNMATCHED_TOTAL)
    assert unmatched == {(("metric", "converted"), ("model", MODEL)): 3}


@pytest.mark.usefixtures("both_servers")
async def test_bad_outcomes_are_refused_whole_and_named(model_bytes: bytes) -> None:
    router = _router(model_bytes, outcomes={**OUTCOMES, "max_batch": 5, "max_body_bytes": 2048})
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            r = await client.post(URL, json=v2_body(row(), id="r1"))
            assert r.status_code == 200

            async def post(body: Any) -> httpx.Response:
                return await client.post(OUT, content=json.dumps(body), headers={"content-type": "application/json"})

            ok = {"id": "r1", "metric": "converted", "value": 1}
            cases = [
                ({"outcomes": [ok, {"id": "r1", "metric": "converted", "value": 0.5}]}, 422, "outcomes[1].value"),
                ({"id": "r1", "metric": "converted", "value": True}, 422, "value"),
                ({"id": "r1", "metric": "clicks", "value": 1}, 422, "'clicks' is not a configured outcome metric"),
                ({"outcomes": [ok] * 6}, 422, "at most 5 outcomes"),
                ({"id": "", "metric": "converted", "value": 1}, 400, "id"),
                ({"id": "r1", "metric": "converted"}, 422, "value"),
                ({"id": "r1", "metric": "converted", "value": 1, "extra": 2}, 400, "unexpected fields ['extra']"),
                ([ok], 400, "body must be"),
                ({"outcomes": []}, 400, "non-empty list"),
            ]
            for body, status, needle in cases:
                resp = await post(body)
                assert resp.status_code == status, (body, resp.text)
                assert needle in resp.json()["error"], (body, resp.text)
            nan = await client.post(OUT, content=b'{"id":"r1","metric":"revenue","value":NaN}')
            assert nan.status_code == 400
            big = await client.post(OUT, content=b" " * 4096, headers={"content-type": "application/json"})
            assert big.status_code == 413
            other = await client.post("/v2/models/other/outcomes", json=ok)
            assert other.status_code == 404
            text = (await client.get("/metrics")).text
    # Nothing of a refused batch was counted, not even its valid first item.
    assert _series(text, mn.OUTCOMES_TOTAL) == {}
    assert _series(text, mn.OUTCOMES_UNMATCHED_TOTAL) == {}


async def test_a_router_without_outcome_metrics_answers_404_and_adds_no_header(model_bytes: bytes) -> None:
    router = _router(model_bytes, outcomes=None)
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            r = await client.post(URL, json=v2_body(row()))
            assert "x-sluice-request-id" not in r.headers
            resp = await client.post(OUT, json={"id": "x", "metric": "converted", "value": 1})
            assert resp.status_code == 404
            assert "takes no outcomes" in resp.json()["error"]


@pytest.mark.usefixtures("both_servers")
async def test_enrolment_unit_sends_requests_without_a_unit_to_control_unenrolled(model_bytes: bytes) -> None:
    router = _router(model_bytes, enrolment="unit", control_variant="treatment", override_enabled=True)
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            anon = []
            for i in range(20):
                r = await client.post(URL, json=v2_body(row(), id=f"anon-{i}"))
                assert r.headers["x-sluice-variant"] == "treatment"  # the named control arm
                anon.append(r.headers["x-sluice-request-id"])
            users: Counter[str] = Counter()
            for u in range(60):
                r = await client.post(URL, json=v2_body(row(), id=f"u-{u}"), headers={"x-user": f"user-{u}"})
                users[r.headers["x-sluice-variant"]] += 1
            forced = await client.post(
                URL, json=v2_body(row(), id="forced"), headers={"x-user": "user-1", "x-sluice-variant": "control"}
            )
            assert forced.headers["x-sluice-variant"] == "control"
            body = {"outcomes": [{"id": i, "metric": "converted", "value": 1} for i in [*anon, "forced", "u-0"]]}
            r = await client.post(OUT, json=body)
    assert users.keys() == {"control", "treatment"}  # hashed units reach both arms
    # Unenrolled and forced requests are not arm samples: their outcomes are unmatched; the unit's request matches.
    assert (r.json()["accepted"], r.json()["unmatched"]) == (1, 21)


def test_sticky_assignment_is_a_fixed_salted_hash_the_same_on_every_replica(model_bytes: bytes) -> None:
    def expected(key: str, salt: str) -> int:
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8, key=salt.encode()).digest(), "big") % 100

    assert bucket("user-1", "exp-uid-1") == expected("user-1", "exp-uid-1")
    assert bucket("user-1") == int.from_bytes(hashlib.blake2b(b"user-1", digest_size=8).digest(), "big") % 100
    long_salt = "s" * 300  # over blake2b's key limit: hashed, not truncated
    assert bucket("user-1", long_salt) != bucket("user-1", "s" * 299)
    a, b = _router(model_bytes), _router(model_bytes)  # two replicas
    other = _router(model_bytes, sticky_salt="exp-uid-2")
    picks_a = [a.choose(sticky_key=f"user-{u}") for u in range(500)]
    assert picks_a == [b.choose(sticky_key=f"user-{u}") for u in range(500)]
    picks_other = [other.choose(sticky_key=f"user-{u}") for u in range(500)]
    moved = sum(x != y for x, y in zip(picks_a, picks_other, strict=True))
    assert 150 < moved < 350  # independent assignments agree about half the time at 50/50


async def test_a_weight_change_keeps_who_was_served(model_bytes: bytes) -> None:
    router = _router(model_bytes)
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            r = await client.post(URL, json=v2_body(row(), id="before"))
            arm = r.headers["x-sluice-variant"]
            arms = [{**a, "weight": 100 if a["name"] != arm else 0} for a in ARMS]
            cfg = config(variants=arms, sticky_header="x-user", outcomes=OUTCOMES).model_dump_json()
            put = await client.put(
                "/admin/config", content=cfg, headers={"content-type": "application/json", **ADMIN_HEADERS}
            )
            assert put.status_code == 200, put.text
            resp = await client.post(OUT, json={"id": "before", "metric": "converted", "value": 1})
            assert resp.json()["accepted"] == 1
            text = (await client.get("/metrics")).text
    assert {_arm(k) for k in _series(text, mn.OUTCOMES_TOTAL)} == {(arm, "converted")}


def test_store_expires_after_ttl_and_evicts_the_oldest_beyond_max_entries() -> None:
    now = [0.0]
    store = AssignmentStore(max_entries=3, ttl_s=10.0, clock=lambda: now[0])
    for i in range(3):
        store.record(f"r{i}", "a", "v1")
        now[0] += 1
    assert store.lookup("r0") == ("a", "v1")
    store.record("r3", "b", "v2")  # the fourth: r0, the oldest, goes
    assert (store.lookup("r0"), store.evicted, len(store)) == (None, 1, 3)
    store.record("r1", "a", "v1")  # recorded again at t=3: refreshed, now the newest
    now[0] = 12.5  # r2 (recorded at t=2) expired at 12; r3 and the refreshed r1 (t=3) live until 13
    assert store.lookup("r2") is None
    assert (store.lookup("r1"), store.lookup("r3"), len(store)) == (("a", "v1"), ("b", "v2"), 2)
    now[0] = 13.0
    assert (store.lookup("r1"), store.lookup("r3"), len(store)) == (None, None, 0)
    for i in range(3):
        store.record(f"s{i}", "a", "v1")
    store.resize(max_entries=1, ttl_s=1.0)  # a smaller store drops the oldest at once
    assert (len(store), store.lookup("s2")) == (1, ("a", "v1"))


def test_store_memory_per_entry_is_bounded() -> None:
    """The figure stated in docs/serving/outcomes-and-features.md: ~300 bytes per entry with 32-character ids."""
    n = 20_000
    # Only what the store and this test allocate (a server thread left by another test allocates too): the id
    # strings are made here and live on in the store only, the dict slots and tuples in sluice/serving.
    ours = [tracemalloc.Filter(True, "*/sluice/serving/*", all_frames=True), tracemalloc.Filter(True, __file__)]
    tracemalloc.start(8)
    try:
        store = AssignmentStore(max_entries=n, ttl_s=3600)
        before = tracemalloc.take_snapshot().filter_traces(ours)
        for i in range(n):
            store.record(f"{i:032x}", "treatment", "v2")
        after = tracemalloc.take_snapshot().filter_traces(ours)
        used = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    per_entry = used / n
    assert len(store) == n
    print(f"assignment store: {per_entry:.0f} bytes per entry (32-character ids)")
    assert 100 < per_entry < 400, per_entry
    store.record("one-more", "treatment", "v2")
    assert len(store) == n  # bounded


def test_config_is_validated_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="enrolment 'unit' needs sticky_header"):
        config(enrolment="unit")
    with pytest.raises(ValidationError, match="control_variant 'nope'"):
        config(control_variant="nope")
    with pytest.raises(ValidationError, match="invalid metric name"):
        config(outcomes={"metrics": {"Bad Name": "mean"}})
    with pytest.raises(ValidationError, match="conversion"):
        config(outcomes={"metrics": {"x": "median"}})


def test_the_local_data_plane_of_sluice_serve_takes_outcomes_and_bins_features() -> None:
    """`start_data_plane` (what `sluice serve` and `sluice run` use) with the example models and onnxruntime."""
    models = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "models"
    cfg = ServingConfig.model_validate(
        {
            "model_name": "fraud",
            "variants": [
                {"name": "control", "version": "v1", "uri": "file:fraud-v1.onnx", "weight": 50},
                {"name": "treatment", "version": "v2", "uri": "file:fraud-v2.onnx", "weight": 50},
            ],
            "sticky_header": "x-user",
            "sticky_salt": "exp-1",
            "outcomes": OUTCOMES,
            "drift": [{"policy": "d", "features": [{"input": "features", "column": 0, "edges": [0.0]}]}],
        }
    )
    plane = start_data_plane(cfg, "onnx", models)
    try:
        with httpx.Client(base_url=plane.url, timeout=30) as client:
            arms = {}
            for u in range(20):
                body = {
                    "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [u - 10, 0, 0, 0]}]
                }
                r = client.post("/v2/models/fraud/infer", json=body, headers={"x-user": f"user-{u}"})
                assert r.status_code == 200, r.text
                arms[f"user-{u}"] = r.headers["x-sluice-variant"]
            outcomes = [{"id": u, "metric": "converted", "value": 1} for u in arms]
            r = client.post("/v2/models/fraud/outcomes", json={"outcomes": outcomes})
            assert r.status_code == 202
            assert r.json()["accepted"] == 20
            text = client.get("/metrics").text
    finally:
        plane.stop()
    counts = {_arm(k)[0]: v for k, v in _series(text, mn.OUTCOMES_TOTAL).items()}
    assert counts == dict(Counter(arms.values()))
    bins = _series(text, mn.FEATURE_BIN_TOTAL)
    assert sum(bins.values()) == 20
    below = sum(v for k, v in bins.items() if dict(k)["bin"] == "0")
    assert below == 10  # u - 10 < 0 for u in 0..9


def test_salted_buckets_are_uniform_so_the_split_holds() -> None:
    """10,000 units over 100 buckets: a chi-squared test of uniformity does not reject, and a 10/90 split holds."""
    from scipy.stats import chisquare

    counts = Counter(bucket(f"user-{u}", "exp-uid-1") for u in range(10_000))
    assert chisquare([counts[b] for b in range(100)]).pvalue > 0.001
    share = sum(counts[b] for b in range(10)) / 10_000
    assert abs(share - 0.10) < 0.01
