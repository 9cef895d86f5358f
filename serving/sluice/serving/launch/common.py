"""What every local plane shares: its error, the readiness wait and its temp dirs."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

from sluice.serving.config import ServingConfig


class LaunchError(RuntimeError):
    """The data plane could not start; the message says which part and why."""


def wait_ready(url: str, config: ServingConfig, timeout_s: float) -> None:
    """Poll /v2/models/NAME/ready; on timeout the error carries each weighted version's not-ready reason."""
    import httpx

    model = config.model_name
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(f"{url}/v2/models/{model}/ready", timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        time.sleep(0.1)
    reasons = []
    for v in config.variants:
        if v.weight > 0:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = httpx.get(f"{url}/v2/models/{model}/versions/{v.version}", timeout=5)
                if r.status_code != 200:
                    reasons.append(f"{v.name} {v.version}: {r.json().get('error', r.text)}")
    raise LaunchError(f"model {model} did not become ready within {timeout_s:g} s ({'; '.join(reasons) or last})")


def temp_dir(prefix: str) -> Path:
    """A fresh directory for one plane's files (Ray's session dir); the plane removes it with `remove_tree`."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
