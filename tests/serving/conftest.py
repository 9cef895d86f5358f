"""Session fixtures: the ONNX models are trained and converted once."""

from __future__ import annotations

import pytest
from tests.serving.helpers import train


@pytest.fixture(scope="session")
def model_bytes() -> bytes:
    return train(flip=False)


@pytest.fixture(scope="session")
def flipped_model_bytes() -> bytes:
    """Same features, inverted labels: every prediction's label differs from `model_bytes`."""
    return train(flip=True)
