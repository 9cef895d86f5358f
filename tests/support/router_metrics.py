"""Router /metrics for tests that run no router.

- `exported_router_metrics(model)`: the router's own metrics class (`sluice.serving.metrics.RouterMetrics`: exact
  names, labels and buckets) over real HTTP; the test records requests into it as a router would.
- `SyntheticRouterMetrics`: one Prometheus text endpoint per ModelDeployment, in the router's metric names, with
  healthy traffic for both variants, or 5xx on the canary for the names in `bad`, so that the operator's analysis
  passes or fails for real without anyone sending requests.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import start_http_server

from sluice.serving import metric_names as mn
from sluice.serving.metrics import RouterMetrics


@dataclass
class Exporter:
    metrics: RouterMetrics
    url: str  # the /metrics URL
    address: str  # host:port for a scrape config


@contextlib.contextmanager
def exported_router_metrics(model: str) -> Iterator[Exporter]:
    """`RouterMetrics(model)` served on 127.0.0.1 (a free port) until the block ends."""
    metrics = RouterMetrics(model)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    try:
        port = server.server_port
        yield Exporter(metrics, f"http://127.0.0.1:{port}/metrics", f"127.0.0.1:{port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class SyntheticRouterMetrics:
    """Router /metrics per ModelDeployment at `/{namespace}/{name}/metrics` (the model is named like the MD).

    Each scrape adds 200 requests per variant (all answered in ~4 ms); for names in `bad` half the canary's are 500s.
    """

    def __init__(self) -> None:
        self.bad: set[str] = set()
        self._scrapes: dict[str, int] = {}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if len(parts) != 3 or parts[2] != "metrics":
                    self.send_error(404)
                    return
                body = outer.text(parts[1]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="router-metrics", daemon=True)
        self.url_format = f"http://127.0.0.1:{self._server.server_address[1]}/{{namespace}}/{{name}}/metrics"

    def __enter__(self) -> SyntheticRouterMetrics:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def text(self, model: str) -> str:
        with self._lock:
            n = self._scrapes[model] = self._scrapes.get(model, 0) + 1
        total = 200 * n
        lines = [f"# TYPE {mn.REQUESTS_TOTAL} counter", f"# TYPE {mn.REQUEST_DURATION_SECONDS} histogram"]
        for variant in ("stable", "canary"):
            labels = f'model="{model}",version="x",variant="{variant}"'
            errors = total // 2 if variant == "canary" and model in self.bad else 0
            lines.append(f'{mn.REQUESTS_TOTAL}{{{labels},code="200"}} {total - errors}')
            lines.append(f'{mn.REQUESTS_TOTAL}{{{labels},code="500"}} {errors}')
            for le in mn.LATENCY_BUCKETS:
                count = total if le >= 0.005 else 0
                lines.append(f'{mn.REQUEST_DURATION_SECONDS}_bucket{{{labels},le="{le}"}} {count}')
            lines.append(f'{mn.REQUEST_DURATION_SECONDS}_bucket{{{labels},le="+Inf"}} {total}')
            lines.append(f"{mn.REQUEST_DURATION_SECONDS}_count{{{labels}}} {total}")
            lines.append(f"{mn.REQUEST_DURATION_SECONDS}_sum{{{labels}}} {total * 0.004}")
        return "\n".join(lines) + "\n"
