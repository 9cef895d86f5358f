"""Object stores on 127.0.0.1 for the http(s)://, s3:// and gs:// reads (model files, drift references): real
servers speaking each API, found by the official clients through their own environment variables, as they would
find a store in CI.

- `http_dir`: the standard library's HTTP server over a fresh directory; yields (base URL, the directory).

- `s3`: moto's server mode (`ThreadedMotoServer`, S3's REST API in memory); boto3 reaches it through
  AWS_ENDPOINT_URL with dummy credentials. Bucket `models` exists.
- `gcs`: gcp-storage-emulator (the GCS JSON API in memory); google-cloud-storage reaches it through
  STORAGE_EMULATOR_HOST. Bucket `models` exists.

Both fixtures set the variables in this process (monkeypatch), so a subprocess started inside the test (the
operator, `sluice run`) inherits them. Each yields a client for the test's own uploads.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support import free_port

BUCKET = "models"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving a fresh directory (404 for what is not in it); always shut down."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's S3 server on 127.0.0.1 with bucket `models`; yields a boto3 S3 client bound to it."""
    boto3 = pytest.importorskip("boto3", reason="the s3 extra (boto3) is not installed")
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        server.stop()


@pytest.fixture
def gcs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """gcp-storage-emulator on 127.0.0.1 with bucket `models`; yields a google-cloud-storage client bound to it."""
    storage = pytest.importorskip(
        "google.cloud.storage", reason="the gcs extra (google-cloud-storage) is not installed"
    )
    emulator = pytest.importorskip("gcp_storage_emulator.server", reason="gcp-storage-emulator is not installed")
    port = free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    try:
        yield storage.Client()
    finally:
        server.stop()
