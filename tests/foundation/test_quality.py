"""The gate for the whole tree: mypy strict and ruff (lint + format). Fails when anyone leaves errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.foundation.crd_tools import REPO

VENV_BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=280, check=False)


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    result = _run(str(VENV_BIN / "mypy"))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_ruff_lint_is_clean() -> None:
    result = _run(str(VENV_BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout[-6000:]


def test_ruff_format_is_clean() -> None:
    result = _run(str(VENV_BIN / "ruff"), "format", "--check", ".")
    assert result.returncode == 0, result.stdout[-6000:]
