"""Real servers for provider tests: an exporter publishing the router's own metrics class, and Prometheus.

Both bind 127.0.0.1 on free ports and are always stopped. Prometheus scrapes every second so tests are quick.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client import start_http_server

from sluice.serving.metrics import RouterMetrics

MODEL = "fraud"
PROMETHEUS = shutil.which("prometheus")


@dataclass
class Exporter:
    metrics: RouterMetrics
    url: str
    address: str  # host:port for a scrape config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def exporter() -> Iterator[Exporter]:
    """The router's RouterMetrics (exact names, labels and buckets of the data plane) over real HTTP."""
    metrics = RouterMetrics(MODEL)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    try:
        port = server.server_port
        yield Exporter(metrics, f"http://127.0.0.1:{port}/metrics", f"127.0.0.1:{port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def prometheus(exporter: Exporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the exporter every second; yields its base URL."""
    if PROMETHEUS is None:
        pytest.skip("the prometheus binary is not installed (Debian package 'prometheus')")
    root: Path = tmp_path_factory.mktemp("prometheus")
    config = root / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: router\n    static_configs: [{{targets: ['{exporter.address}']}}]\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not become ready: {(root / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
