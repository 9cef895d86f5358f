"""The docs site builds with no warning, and the README stays a front door with the two commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from tests.docs.support import REPO

VENV_BIN = Path(sys.executable).parent
README = (REPO / "README.md").read_text()


def _fenced_commands(text: str) -> list[str]:
    """Command lines of the ```bash blocks, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    mkdocs = VENV_BIN / "mkdocs"
    assert mkdocs.exists(), f"{mkdocs} is missing: the test extra has mkdocs; run scripts/test (or scripts/setup.sh)"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "api" / "index.html").is_file()


def test_every_page_in_the_nav_exists() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())

    def pages(node: object) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [p for item in node for p in pages(item)]
        if isinstance(node, dict):
            return [p for value in node.values() for p in pages(value)]
        return []

    listed = pages(config["nav"])
    assert listed, "mkdocs.yml has an empty nav"
    missing = [p for p in listed if not (REPO / "docs" / p).is_file()]
    assert not missing, f"nav pages missing from docs/: {missing}"


def test_readme_is_a_front_door_with_the_two_commands() -> None:
    lines = README.count("\n")
    assert lines <= 250, f"README.md has {lines} lines; move detail into docs/ (at most ~250)"
    commands = _fenced_commands(README)
    assert commands[:2] == ["scripts/sluice run -f manifests/examples/01-canary-good.yaml --load 40", "scripts/test"]


def test_readme_links_point_at_existing_files() -> None:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if "://" not in t]
    assert local, "README.md links into docs/"
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    steps = [line for line in ci if line and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert steps == [_fenced_commands(README)[1]]


def test_contributor_layout_names_only_paths_that_exist() -> None:
    """The layout block in the contributor guide may lag behind new packages, but never names one that is gone."""
    guide = (REPO / "docs" / "contributing" / "index.md").read_text()
    block = guide.split("## Layout", 1)[1].split("```", 2)[1]
    missing: list[str] = []
    base = ""
    for line in block.splitlines():
        head = line.split("  ", 1)[0].strip()
        if head:  # a line that names a folder (or folders) in its first column
            for folder in head.split():
                base = folder if folder.endswith("/") else base
                if not (REPO / folder).exists():
                    missing.append(folder)
        text = line.strip().split("  ", 1)[-1] if head else line
        for name in re.findall(r"(?<![\w/.])((?:[a-z_]+/)*[a-z_]+(?:\.py|/))(?=[\s,;()]|$)", text):
            if not ((REPO / base / name).exists() or (REPO / name).exists()):
                missing.append(base + name)
    assert not missing, f"docs/contributing/index.md names paths that do not exist: {missing}"
