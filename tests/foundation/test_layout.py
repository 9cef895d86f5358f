"""The two source roots stay a namespace package and never shadow the standard library's `operator`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from tests.foundation.crd_tools import REPO


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def test_stdlib_operator_still_imports_from_the_repo_root() -> None:
    result = _run(sys.executable, "-c", "import operator; operator.add; print(operator.__file__)")
    assert result.returncode == 0, result.stderr
    assert "site-packages" not in result.stdout
    assert not result.stdout.startswith(str(REPO)), f"the repo's operator/ shadows the stdlib: {result.stdout}"


def test_both_halves_of_the_namespace_package_import() -> None:
    result = _run(sys.executable, "-c", "import sluice.api, sluice.serving, sluice.cli.main; print('ok')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_no_package_markers_where_there_must_be_none() -> None:
    assert not (REPO / "operator" / "__init__.py").exists(), "operator/ must not be a package (stdlib operator)"
    for root in ("operator", "serving"):
        assert not (REPO / root / "sluice" / "__init__.py").exists(), f"{root}/sluice must be a namespace package"


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with `tree`'s pyproject.toml contracts over `tree`'s source roots (not the installed ones)."""
    roots = [str(tree / root) for root in SOURCE_ROOTS]
    installed = {str(REPO / root) for root in SOURCE_ROOTS}
    code = (
        "import sys\n"
        f"sys.path[:0] = {roots!r}\n"
        f"sys.path[:] = [p for p in sys.path if p not in {sorted(installed)!r} or p in {roots!r}]\n"
        "from importlinter.cli import lint_imports\n"
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, timeout=300, check=False
    )


SOURCE_ROOTS = ("operator", "serving")


def test_import_contracts_hold() -> None:
    """lint-imports on pyproject.toml as written: every contract must name modules that exist and must hold."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"Contracts: {len(config['contracts'])} kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("operator/sluice/api/base.py", "import sluice.engine", "control plane: cli >"),
        ("operator/sluice/operator/kube.py", "import sluice.local", "control plane: cli >"),
        ("operator/sluice/engine/routing.py", "import sluice.serving.router", "reaches serving only through"),
        # The object reader is the one more door into serving; the model runtime next to it stays shut ...
        ("operator/sluice/engine/reference.py", "import sluice.serving.runtime", "reaches serving only through"),
        # ... and the reader itself cannot bring a model runtime into the operator image.
        ("serving/sluice/serving/objects.py", "import onnxruntime", "the operator image has no Ray"),
        ("operator/sluice/rollout/core.py", "import httpx", "do no I/O"),
        ("serving/sluice/serving/router.py", "import sluice.serving.app", "serving layers:"),
        ("serving/sluice/serving/config.py", "import sluice.api", "serving never imports the control plane"),
        ("operator/sluice/operator/render/meta.py", "import sluice.operator.platform", "no import cycles"),
    ],
)
def test_a_broken_import_breaks_its_contract(tmp_path: Path, module: str, bad_import: str, contract: str) -> None:
    """A copy of the tree with one forbidden import added fails lint-imports, naming the contract it breaks."""
    for root in SOURCE_ROOTS:
        shutil.copytree(
            REPO / root / "sluice", tmp_path / root / "sluice", ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{bad_import}  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout[-3000:]
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in " ".join(broken.split()), result.stdout[-3000:]
