"""Split accuracy, sticky assignment, override and live updates through the real HTTP app over keep-alive."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

import aiohttp
import httpx
import pytest
from tests.serving.helpers import ADMIN_HEADERS, MODEL, OnnxBackend, config, row, serve, v2_body

from sluice.serving.router import Router

pytestmark = pytest.mark.usefixtures("both_servers")  # the router's HttpServer and plain ASGI (uvicorn)

URL = f"/v2/models/{MODEL}/infer"
BODY = json.dumps(v2_body(row())).encode()
JSON = {"content-type": "application/json"}


async def _hammer(session: aiohttp.ClientSession, n: int, concurrency: int) -> Counter[str]:
    """n requests over `concurrency` keep-alive connections; counts the serving variant, fails on any non-200."""
    counts: Counter[str] = Counter()
    statuses: Counter[int] = Counter()

    async def worker(k: int) -> None:
        for _ in range(k):
            async with session.post(URL, data=BODY, headers=JSON) as r:
                await r.read()
                statuses[r.status] += 1
                counts[r.headers.get("x-sluice-variant", "error")] += 1

    per = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
    await asyncio.gather(*(worker(k) for k in per))
    assert statuses == Counter({200: n}), statuses
    return counts


def _weights(stable: int) -> str:
    return config(
        variants=[
            {"name": "stable", "version": "v1", "uri": "file://v1.onnx", "weight": stable},
            {"name": "canary", "version": "v2", "uri": "file://v2.onnx", "weight": 100 - stable},
        ]
    ).model_dump_json()


@pytest.fixture
def router(model_bytes: bytes) -> Router:
    backends = {"stable": OnnxBackend(model_bytes, "v1"), "canary": OnnxBackend(model_bytes, "v2")}
    return Router(config(sticky_header="x-user", override_enabled=True), backends)


async def test_split_is_within_one_point_over_10000_requests_and_right_after_a_weight_change(router: Router) -> None:
    with serve(router) as base:
        connector = aiohttp.TCPConnector(limit=8)  # 8 keep-alive connections carry all requests
        async with aiohttp.ClientSession(base, connector=connector) as session:
            counts = await _hammer(session, 10_000, concurrency=8)
            assert abs(counts["canary"] / 10_000 - 0.10) <= 0.01, counts

            async with session.put("/admin/config", data=_weights(70), headers={**JSON, **ADMIN_HEADERS}) as r:
                assert r.status == 200, await r.text()
            first = await _hammer(session, 500, concurrency=8)  # right after the change
            assert abs(first["canary"] / 500 - 0.30) <= 0.01, first
            rest = await _hammer(session, 2_000, concurrency=8)
            assert abs((first + rest)["canary"] / 2_500 - 0.30) <= 0.01, first + rest

            async with session.get("/metrics") as r:
                metrics = await r.text()
            assert f'sluice_variant_weight_percent{{model="{MODEL}",variant="canary",version="v2"}} 30.0' in metrics


async def test_sticky_header_keeps_a_user_on_one_variant_and_override_wins(router: Router) -> None:
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            seen: dict[str, set[str]] = {}
            for user in range(200):
                for _ in range(3):
                    r = await client.post(URL, content=BODY, headers={"x-user": f"u{user}"})
                    seen.setdefault(f"u{user}", set()).add(r.headers["x-sluice-variant"])
            assert all(len(v) == 1 for v in seen.values())
            assert {"stable", "canary"} == set().union(*seen.values())

            # The same users land on the same variants in a separate process (hash is not salted).
            code = (
                "import sys; from sluice.serving.split import sticky_pick;"
                "print(','.join(sticky_pick(u, ['stable','canary'], [90,10]) for u in sys.argv[1:]))"
            )
            users = sorted(seen)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", code, *users, stdout=asyncio.subprocess.PIPE
            )
            stdout, _ = await proc.communicate()
            assert proc.returncode == 0
            assert stdout.decode().strip().split(",") == [next(iter(seen[u])) for u in users]

            r = await client.post(URL, content=BODY, headers={"x-sluice-variant": "canary", "x-user": "u0"})
            assert r.status_code == 200
            assert r.headers["x-sluice-variant"] == "canary"
            assert r.headers["x-sluice-model-version"] == "v2"
            assert r.json()["model_version"] == "v2"

            r = await client.post(URL, content=BODY, headers={"x-sluice-variant": "blue"})
            assert r.status_code == 400
            assert r.json()["error"] == (
                "header 'x-sluice-variant': unknown variant 'blue'; allowed: ['stable', 'canary']"
            )


async def test_url_version_selects_the_variant(router: Router) -> None:
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            r = await client.post(f"/v2/models/{MODEL}/versions/v2/infer", content=BODY)
            assert r.status_code == 200
            assert r.headers["x-sluice-variant"] == "canary"
            r = await client.post(f"/v2/models/{MODEL}/versions/v9/infer", content=BODY)
            assert r.status_code == 404
            assert "has no version 'v9'" in r.json()["error"]


async def test_live_updates_under_concurrent_load_fail_nothing(model_bytes: bytes) -> None:
    """40 config swaps (weights, mirror on/off, a variant added and removed) while 8 clients keep sending."""
    slow = OnnxBackend(model_bytes, "v3", delay_s=0.02)  # in flight while being removed
    backends = {"stable": OnnxBackend(model_bytes, "v1"), "canary": OnnxBackend(model_bytes, "v2"), "arm": slow}

    def factory(v: object, _: object) -> OnnxBackend:
        return backends[v.name]  # type: ignore[attr-defined]

    router = Router(config(), {k: backends[k] for k in ("stable", "canary")}, factory=factory)
    three = [
        {"name": "stable", "version": "v1", "uri": "file://v1.onnx", "weight": 40},
        {"name": "canary", "version": "v2", "uri": "file://v2.onnx", "weight": 30},
        {"name": "arm", "version": "v3", "uri": "file://v3.onnx", "weight": 30},
    ]
    configs = [
        config(variants=three).model_dump_json(),
        config(mirror={"variant": "canary", "percent": 50}).model_dump_json(),
        _weights(50),
        _weights(100),
    ]
    with serve(router) as base:
        limits = httpx.Limits(max_connections=9, max_keepalive_connections=9)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
            stop = asyncio.Event()
            statuses: Counter[int] = Counter()
            variants: Counter[str] = Counter()

            async def load() -> None:
                while not stop.is_set():
                    r = await client.post(URL, content=BODY)
                    statuses[r.status_code] += 1
                    variants[r.headers.get("x-sluice-variant", "?")] += 1

            workers = [asyncio.create_task(load()) for _ in range(8)]
            try:
                for i in range(40):
                    r = await client.put("/admin/config", content=configs[i % len(configs)], headers=ADMIN_HEADERS)
                    assert r.status_code == 200, r.text
                    await asyncio.sleep(0.03)
            finally:
                stop.set()
                await asyncio.gather(*workers)
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) > 500
    assert variants["arm"] > 0  # the added variant really served
    assert slow.closed  # the removed variant's backend was closed once its requests had finished
