"""How fast the API emulator (tests/support/emulator.py) answers, beside plain kmock 0.8, in one run.

    .venv/bin/python benchmarks/kube_emulator.py [--count 1000]

Creates `count` ModelDeployments (structural schema + CEL rules checked on each) and ConfigMaps (no schema) over
one keep-alive HTTP connection, the same ModelDeployments from 8 threads, lists them, and measures how soon a watch
sees a create. Plain kmock creates the same ConfigMaps as the baseline. Writes benchmarks/results/kube_emulator.json.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import kmock
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.kube import start_emulator  # noqa: E402

from results_io import machine_text, rerun_command, write_results  # noqa: E402

EXAMPLE = ROOT / "manifests" / "examples" / "10-canary-ray.yaml"
MDS = "/apis/sluice.dev/v1alpha1/namespaces/default/modeldeployments"
CMS = "/api/v1/namespaces/default/configmaps"


def creates_per_second(url: str, path: str, bodies: list[dict[str, Any]]) -> float:
    with httpx.Client(base_url=url, timeout=60) as client:
        started = time.perf_counter()
        for body in bodies:
            response = client.post(path, json=body)
            assert response.status_code in (200, 201), response.text
        return len(bodies) / (time.perf_counter() - started)


def threaded_creates_per_second(url: str, path: str, bodies: list[dict[str, Any]], threads: int = 8) -> float:
    chunks = [bodies[i::threads] for i in range(threads)]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda chunk: creates_per_second(url, path, chunk), chunks))
    return len(bodies) / (time.perf_counter() - started)


def watch_latency_ms(url: str, samples: int = 100) -> float:
    """Median time from a create's 201 to its ADDED event on an open watch."""
    seen: dict[str, float] = {}
    ready = threading.Event()

    def watch() -> None:
        params = {"watch": "true", "timeoutSeconds": "30", "labelSelector": "bench=watch"}
        with httpx.stream("GET", url + CMS, params=params, timeout=60) as response:
            ready.set()  # headers arrived: the emulator subscribed the watch before it sent them
            for line in response.iter_lines():
                if line:
                    event = json.loads(line)
                    seen[event["object"]["metadata"]["name"]] = time.perf_counter()
                    if len(seen) == samples:
                        return

    thread = threading.Thread(target=watch)
    thread.start()
    assert ready.wait(10), "the watch did not open"
    sent: dict[str, float] = {}
    with httpx.Client(base_url=url) as client:
        for index in range(samples):
            name = f"watch-{index}"
            body = {"metadata": {"name": name, "labels": {"bench": "watch"}}}
            client.post(CMS, json=body)
            sent[name] = time.perf_counter()
            time.sleep(0.005)
    thread.join(40)
    return statistics.median((seen[name] - sent[name]) * 1000 for name in sent if name in seen)


class PlainKmock:
    """kmock's own emulator on a free port, in a thread (the baseline)."""

    def __init__(self) -> None:
        self.handler = kmock.KubernetesEmulator()
        self.handler.resources["v1/configmaps"] = kmock.ResourceInfo(kind="ConfigMap", namespaced=True)
        self._loop = asyncio.new_event_loop()
        self._ready: Future[str] = Future()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: self._loop.run_until_complete(self._main()), daemon=True)

    async def _main(self) -> None:
        async with kmock.Server(self.handler, host="127.0.0.1") as server:
            self._ready.set_result(str(server.url).rstrip("/"))
            await asyncio.get_running_loop().run_in_executor(None, self._stop.wait)

    def __enter__(self) -> str:
        self._thread.start()
        return self._ready.result(timeout=30)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    template = yaml.safe_load(EXAMPLE.read_text())

    def mds(prefix: str, distinct: bool = False) -> list[dict[str, Any]]:
        out = []
        for index in range(args.count):
            body = copy.deepcopy(template)
            body["metadata"] = {"name": f"{prefix}-{index}", "labels": {"bench": prefix}}
            if distinct:  # every spec differs, so CEL verdicts on the whole spec cannot be reused
                body["spec"]["model"]["version"] = f"v{index}"
                body["spec"]["model"]["uri"] = f"s3://models/fraud/v{index}.onnx"
            out.append(body)
        return out

    cms = [{"metadata": {"name": f"cm-{i}"}, "data": {"k": "v" * 64}} for i in range(args.count)]
    emulator = start_emulator()
    try:
        url = emulator.url
        md_rate = creates_per_second(url, MDS, mds("seq"))
        md_distinct = creates_per_second(url, MDS, mds("distinct", distinct=True))
        md_threaded = threaded_creates_per_second(url, MDS, mds("par"))
        cm_rate = creates_per_second(url, CMS, cms)
        with httpx.Client(base_url=url, timeout=60) as client:
            started = time.perf_counter()
            listed = client.get(MDS, params={"labelSelector": "bench=seq"}).json()["items"]
            list_ms = (time.perf_counter() - started) * 1000
        assert len(listed) == args.count
        watch_ms = watch_latency_ms(url)
    finally:
        emulator.stop()
    no_cel = start_emulator(cel_rules=False)
    try:
        md_no_cel = creates_per_second(no_cel.url, MDS, mds("distinct", distinct=True))
    finally:
        no_cel.stop()
    with PlainKmock() as plain_url:
        kmock_cm_rate = creates_per_second(plain_url, CMS, cms)

    result: dict[str, Any] = {
        "count": args.count,
        "sluice_emulator": {
            "modeldeployment_creates_per_s": round(md_rate, 1),
            "modeldeployment_creates_per_s_distinct_specs": round(md_distinct, 1),
            "modeldeployment_creates_per_s_distinct_specs_cel_off": round(md_no_cel, 1),
            "modeldeployment_creates_per_s_8_threads": round(md_threaded, 1),
            "configmap_creates_per_s": round(cm_rate, 1),
            "list_modeldeployments_ms": round(list_ms, 1),
            "watch_event_latency_ms_median": round(watch_ms, 2),
        },
        "plain_kmock": {"configmap_creates_per_s": round(kmock_cm_rate, 1)},
        "ratios": {
            "configmap_creates_sluice_over_kmock": round(cm_rate / kmock_cm_rate, 2),
            "modeldeployment_over_configmap_creates": round(md_rate / cm_rate, 2),
            "distinct_cel_on_over_cel_off": round(md_distinct / md_no_cel, 2),
        },
        "seconds_for_1000_identical_modeldeployments": round(1000 / md_rate, 2),
        "seconds_for_1000_distinct_modeldeployments": round(1000 / md_distinct, 2),
    }
    out = ROOT / "benchmarks" / "results" / "kube_emulator.json"
    command = rerun_command("kube_emulator.py")
    report = write_results(out, "kube_emulator", command, machine_text(), summary_rows(result), result)
    print(json.dumps(report, indent=2))


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per measured quantity: the table of the benchmarks page."""
    rows: list[dict[str, Any]] = [
        {"server": "Sluice emulator", "what": k, "value": v} for k, v in result["sluice_emulator"].items()
    ]
    rows += [{"server": "plain kmock", "what": k, "value": v} for k, v in result["plain_kmock"].items()]
    rows += [{"server": "ratio", "what": k, "value": v} for k, v in result["ratios"].items()]
    return rows


if __name__ == "__main__":
    main()
