"""Client-chosen ids and keys are bounded before routing: request ids (v2 `id`, REST and gRPC), the sticky unit key,
outcome values; generated ids are random; an id two arms served is never credited; a failing feature counter or a
lowered size limit never costs an answer. Real HTTP on both servers, tritonclient.grpc for gRPC."""

from __future__ import annotations

import re
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tests.serving.helpers import ADMIN_HEADERS, MODEL, OnnxBackend, config, row, serve, v2_body
from tests.serving.test_grpc import serve_grpc
from tritonclient.utils import InferenceServerException

from sluice.serving import metric_names as mn
from sluice.serving.outcomes import MAX_ID_LENGTH, AssignmentStore
from sluice.serving.router import Router

URL = f"/v2/models/{MODEL}/infer"
OUT = f"/v2/models/{MODEL}/outcomes"
OUTCOMES = {"metrics": {"converted": "conversion", "revenue": "mean"}}
X = np.array([[3, 0, 0, 0], [-3, 0, 0, 0]], dtype=np.float32)
HOSTILE_IDS = ["ok\r\nset-cookie: pwned=1", "caf\u20ac", "a\nb", "tab\there", "x" * (MAX_ID_LENGTH + 1), ""]


def _router(model_bytes: bytes, **kw: Any) -> Router:
    backends = {"stable": OnnxBackend(model_bytes, "v1"), "canary": OnnxBackend(model_bytes, "v2")}
    return Router(config(sticky_header="x-user", outcomes=OUTCOMES, **kw), backends)


def _grpc_inputs() -> list[Any]:
    item = grpcclient.InferInput("X", list(X.shape), "FP32")
    item.set_data_from_numpy(X)
    return [item]


@pytest.mark.usefixtures("both_servers")
async def test_hostile_v2_ids_are_a_400_naming_id_before_the_model_runs(model_bytes: bytes) -> None:
    router = _router(model_bytes)
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            for bad in HOSTILE_IDS:
                r = await client.post(URL, json=v2_body(row(), id=bad))
                assert r.status_code == 400, (bad[:20], r.status_code, r.text[:200])
                assert "'id'" in r.json()["error"]
                assert "set-cookie" not in r.headers
                assert "x-sluice-request-id" not in r.headers
            ok = await client.post(URL, json=v2_body(row(), id="x" * MAX_ID_LENGTH))
            assert ok.status_code == 200
            assert ok.headers["x-sluice-request-id"] == "x" * MAX_ID_LENGTH
    assert len(router.outcomes.store) == 1  # only the good request was routed and recorded


def test_hostile_grpc_ids_are_invalid_argument(model_bytes: bytes) -> None:
    router = _router(model_bytes)
    with serve_grpc(router) as target, grpcclient.InferenceServerClient(target) as client:
        for bad in ["a\nb", "caf\u20ac", "x" * 100_000, "ok\r\nset-cookie: x"]:
            with pytest.raises(InferenceServerException) as info:
                client.infer(MODEL, _grpc_inputs(), request_id=bad)
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT", (bad[:20], info.value)
            assert "'id'" in str(info.value.message())
        answer = client.infer(MODEL, _grpc_inputs(), request_id="fine-1")
        assert answer.get_response().id == "fine-1"
    assert len(router.outcomes.store) == 1


@pytest.mark.usefixtures("both_servers")
async def test_sticky_unit_keys_are_bounded_like_ids(model_bytes: bytes) -> None:
    router = _router(model_bytes)
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            r = await client.post(URL, json=v2_body(row()), headers={"x-user": "u" * (MAX_ID_LENGTH + 1)})
            assert r.status_code == 400
            assert "x-user" in r.json()["error"]
            r = await client.post(URL, json=v2_body(row()), headers={"x-user": "u" * MAX_ID_LENGTH})
            assert r.status_code == 200
    assert len(router.outcomes.store) == 2  # the request's generated id and the unit


def test_the_store_refuses_unbounded_keys() -> None:
    store = AssignmentStore(10, 60.0)
    with pytest.raises(ValueError, match="at most 256"):
        store.record("k" * (MAX_ID_LENGTH + 1), "stable", "v1")
    assert len(store) == 0


@pytest.mark.usefixtures("both_servers")
async def test_generated_request_ids_are_random_not_a_counter(model_bytes: bytes) -> None:
    router = _router(model_bytes)
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            ids = [(await client.post(URL, json=v2_body(row()))).headers["x-sluice-request-id"] for _ in range(20)]
    assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids), ids[:3]
    assert len(set(ids)) == 20
    # no shared prefix: 96 random bits each, so none can be derived from another
    assert len({i[:12] for i in ids}) == 20


@pytest.mark.usefixtures("both_servers")
async def test_outcome_values_beyond_the_bound_are_422_naming_value(model_bytes: bytes) -> None:
    router = _router(model_bytes)
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            r = await client.post(URL, json=v2_body(row(), id="r1"))
            assert r.status_code == 200
            for value in (1e200, -1e151):
                bad = await client.post(OUT, json={"id": "r1", "metric": "revenue", "value": value})
                assert bad.status_code == 422
                assert "value" in bad.json()["error"]
            good = await client.post(OUT, json={"id": "r1", "metric": "revenue", "value": 1e150})
            assert good.status_code == 202
            text = (await client.get("/metrics")).text
    squares = [line for line in text.splitlines() if line.startswith(mn.OUTCOME_VALUE_SQUARES_SUM + "{")]
    assert squares
    assert all("inf" not in line.lower() for line in squares), squares


@pytest.mark.usefixtures("both_servers")
async def test_an_id_two_arms_served_is_never_credited_to_either(model_bytes: bytes) -> None:
    """Every client sends `"id": "1"`: the id is ambiguous, so its outcomes are unmatched (not credited to the arm
    recorded last); an id one arm served several times is still joined."""
    router = _router(model_bytes)
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            arms = set()
            for user in range(200):  # distinct units (sticky, 90/10) until both arms served id "1"
                r = await client.post(URL, json=v2_body(row(), id="1"), headers={"x-user": f"u{user}"})
                arms.add(r.headers["x-sluice-variant"])
                if len(arms) == 2:
                    break
            assert arms == {"stable", "canary"}
            served = {
                (await client.post(URL, json=v2_body(row(), id="mine"), headers={"x-user": "me"})).headers[
                    "x-sluice-variant"
                ]
                for _ in range(2)
            }
            assert len(served) == 1  # one unit, one arm
            got = await client.post(
                OUT,
                json={"outcomes": [{"id": i, "metric": "converted", "value": 1} for i in ("1", "mine")]},
            )
            assert got.json() == {"accepted": 1, "unmatched": 1, "unmatched_ids": ["1"]}
            text = (await client.get("/metrics")).text
    credited = [line for line in text.splitlines() if line.startswith(mn.OUTCOMES_TOTAL + "{")]
    assert len(credited) == 1, credited
    assert f'variant="{served.pop()}"' in credited[0], credited


@pytest.mark.usefixtures("both_servers")
async def test_a_failing_feature_counter_is_counted_and_the_request_answered(
    model_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = _router(model_bytes, drift=[{"policy": "p", "prediction": {"edges": [0.5]}}])
    assert router.features.active

    def boom(*args: object) -> None:
        raise ZeroDivisionError("a bug in feature counting")

    monkeypatch.setattr(router.features, "observe", boom)  # fault injection: the bug the guard is for
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            for _ in range(3):
                r = await client.post(URL, json=v2_body(row()))
                assert r.status_code == 200, r.text
            text = (await client.get("/metrics")).text
    errors = [line for line in text.splitlines() if line.startswith(mn.FEATURE_ERRORS_TOTAL + "{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in errors) == 3.0, errors


def test_grpc_follows_a_lowered_max_request_bytes(model_bytes: bytes) -> None:
    """The gRPC server's receive limit is set at start; a smaller limit PUT later applies per request."""
    router = _router(model_bytes)
    big = np.zeros((10_000, 4), np.float32)  # 160 kB: under the start limit (8 MiB), over 1 KiB + framing
    item = grpcclient.InferInput("X", list(big.shape), "FP32")
    item.set_data_from_numpy(big)
    with serve_grpc(router) as target, serve(router) as base, grpcclient.InferenceServerClient(target) as client:
        assert client.infer(MODEL, [item]).as_numpy("label").shape == (10_000,)
        current = httpx.get(f"{base}/admin/config", headers=ADMIN_HEADERS).json()
        r = httpx.put(f"{base}/admin/config", json={**current, "max_request_bytes": 1024}, headers=ADMIN_HEADERS)
        assert r.status_code == 200, r.text
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, [item])
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "max_request_bytes" in str(info.value.message())
        assert client.infer(MODEL, _grpc_inputs()).as_numpy("label").shape == (2,)
