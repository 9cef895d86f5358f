"""Session fixtures: the ONNX models are trained and converted once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.serving import helpers
from tests.serving.helpers import train


@pytest.fixture(scope="session")
def model_bytes() -> bytes:
    return train(flip=False)


@pytest.fixture(scope="session")
def flipped_model_bytes() -> bytes:
    """Same features, inverted labels: every prediction's label differs from `model_bytes`."""
    return train(flip=True)


@pytest.fixture(params=["sluice", "uvicorn"])
def both_servers(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test under the router's own HttpServer and under uvicorn (the plain ASGI app, as in Ray Serve)."""
    helpers.SERVER["kind"] = request.param
    try:
        yield request.param
    finally:
        helpers.SERVER["kind"] = "sluice"
