"""Real servers for provider tests: an exporter publishing the router's own metrics class, and Prometheus.

Both bind 127.0.0.1 on free ports and are always stopped. Prometheus scrapes every second so tests are quick.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tests.support import free_port, wait_for
from tests.support.router_metrics import Exporter, exported_router_metrics

MODEL = "fraud"
PROMETHEUS = shutil.which("prometheus")


@pytest.fixture(scope="session")
def exporter() -> Iterator[Exporter]:
    """The router's RouterMetrics (exact names, labels and buckets of the data plane) over real HTTP."""
    with exported_router_metrics(MODEL) as exporter:
        yield exporter


def _write_config(path: Path, targets: dict[str, str]) -> None:
    jobs = "".join(f"  - job_name: {job}\n    static_configs: [{{targets: ['{t}']}}]\n" for job, t in targets.items())
    path.write_text(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{jobs}")


@dataclass
class Prometheus:
    url: str
    config: Path
    targets: dict[str, str]

    def scrape(self, job: str, address: str) -> None:
        """Add a scrape target and reload the configuration through the lifecycle API."""
        self.targets[job] = address
        _write_config(self.config, self.targets)
        httpx.post(f"{self.url}/-/reload", timeout=10).raise_for_status()


@pytest.fixture(scope="session")
def prometheus_server(exporter: Exporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A real Prometheus scraping the exporter every second (more targets via `scrape`)."""
    if PROMETHEUS is None:
        pytest.skip("the prometheus binary is not installed (Debian package 'prometheus')")
    root: Path = tmp_path_factory.mktemp("prometheus")
    config = root / "prometheus.yml"
    targets = {"exporter": exporter.address}
    _write_config(config, targets)
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

        def ready() -> bool:
            assert proc.poll() is None, f"prometheus exited: {(root / 'prometheus.log').read_text()[-2000:]}"
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("prometheus to be ready", ready, 20)
        yield Prometheus(url, config, targets)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def prometheus(prometheus_server: Prometheus) -> str:
    """Base URL of the session's Prometheus."""
    return prometheus_server.url
