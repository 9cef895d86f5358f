"""scripts/sluice and scripts/test set up .venv on first use, and only then.

They run here in a copy of the repository's skeleton whose scripts/setup.sh is a stand-in that counts its runs and
writes a fake .venv (a real setup takes minutes and the network); the wrappers and ensure-env.sh are the real files.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from tests.docs.support import REPO

FAKE_SETUP = """#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
echo run >> setup-runs
[ -f fail-setup ] && { echo "setup failed on purpose" >&2; exit 7; }
mkdir -p .venv/bin
for tool in python sluice; do
  printf '#!/usr/bin/env bash\\necho "%s cwd=$PWD args=$*"\\n' "$tool" > .venv/bin/$tool
  chmod +x .venv/bin/$tool
done
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    for name in ("sluice", "test", "ensure-env.sh"):
        shutil.copy2(REPO / "scripts" / name, tmp_path / "scripts" / name)
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "scripts" / "setup.sh").write_text(FAKE_SETUP)
    return tmp_path


def _run(root: Path, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(root / "scripts" / argv[0]), *argv[1:]],
        cwd=cwd or root,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _setup_runs(root: Path) -> int:
    runs = root / "setup-runs"
    return len(runs.read_text().split()) if runs.exists() else 0


def test_the_real_wrappers_are_executable() -> None:
    for name in ("sluice", "test"):
        assert (REPO / "scripts" / name).stat().st_mode & 0o111, f"scripts/{name} is not executable"


def test_first_use_sets_up_then_the_stamp_short_circuits(root: Path) -> None:
    first = _run(root, "test", "-q", "tests/docs")
    assert first.returncode == 0, first.stderr
    assert _setup_runs(root) == 1
    assert "setting up .venv" in first.stderr
    assert first.stdout.strip() == f"python cwd={root} args=-m pytest -q tests/docs"

    second = _run(root, "test", "-x")
    assert second.returncode == 0, second.stderr
    assert _setup_runs(root) == 1, "setup ran again although nothing changed"
    assert second.stderr == ""
    assert second.stdout.strip() == f"python cwd={root} args=-m pytest -x"


def test_sluice_keeps_the_callers_directory_and_arguments(root: Path) -> None:
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    result = _run(root, "sluice", "run", "-f", "my model.yaml", "--load", "40", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sluice cwd={elsewhere} args=run -f my model.yaml --load 40"
    assert _setup_runs(root) == 1
    assert _run(root, "test").returncode == 0
    assert _setup_runs(root) == 1, "scripts/test should reuse what scripts/sluice set up"


@pytest.mark.parametrize("changed", ["pyproject.toml", "scripts/setup.sh"])
def test_a_changed_input_sets_up_again(root: Path, changed: str) -> None:
    assert _run(root, "test").returncode == 0
    with (root / changed).open("a") as f:
        f.write("\n# changed\n")
    assert _run(root, "test").returncode == 0
    assert _setup_runs(root) == 2


def test_a_missing_venv_sets_up_again(root: Path) -> None:
    assert _run(root, "test").returncode == 0
    shutil.rmtree(root / ".venv")
    assert _run(root, "test").returncode == 0
    assert _setup_runs(root) == 2


def test_a_failed_setup_stops_and_leaves_no_stamp(root: Path) -> None:
    (root / "fail-setup").touch()
    result = _run(root, "sluice", "run")
    assert result.returncode == 7
    assert "setup failed on purpose" in result.stderr
    assert result.stdout == ""
    assert not (root / ".venv" / ".sluice-setup-stamp").exists()
    (root / "fail-setup").unlink()
    assert _run(root, "sluice", "--help").returncode == 0
    assert _setup_runs(root) == 2
