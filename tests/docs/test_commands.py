"""Every command in the docs' ```bash blocks is one Sluice understands, and every repository path it names exists.

Running them all would start Ray, tritonserver and clusters; the CLI's own parsers and the benchmarks' flags are
checked instead, so a renamed flag, subcommand or file fails here. (The main job and a few others were run by hand
when the docs were written: see the dates next to their numbers.)
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
from tests.docs.support import REPO

from sluice.cli import kubectl
from sluice.cli.main import COMMANDS, build_parser

GENERATED = {Path("docs/reference/api.md"), Path("docs/benchmarks.md")}
PAGES = [REPO / "README.md"]
PAGES += [p for p in sorted((REPO / "docs").rglob("*.md")) if p.relative_to(REPO) not in GENERATED]
TOP_LEVEL = ("manifests/", "helm/", "crds/", "benchmarks/", "scripts/", "operator/", "serving/", "tests/", "docs/")


def _commands(page: Path) -> list[str]:
    """Commands of the page's ```bash blocks: continuations and quotes spanning lines joined, comments dropped."""
    out: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        pending = ""
        for raw in block.replace("\\\n", " ").splitlines():
            pending = f"{pending}\n{raw}" if pending else raw
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quote still open: the command goes on on the next line
                continue
            if words:
                out.append(shlex.join(words))
            pending = ""
        assert not pending, f"{page}: unterminated quote in a bash block: {pending!r}"
    return out


ALL = [(page.relative_to(REPO).as_posix(), cmd) for page in PAGES for cmd in _commands(page)]


def test_the_docs_show_commands() -> None:
    assert len(ALL) > 40


def _argv(cmd: str) -> list[str]:
    words = shlex.split(cmd)
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # KUBECONFIG=... sluice operator
        words = words[1:]
    return words


def _parse(parser_args: list[str], build: object) -> None:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            build.parse_args(parser_args)  # type: ignore[attr-defined]
        except SystemExit as exc:
            if exc.code:
                pytest.fail(f"refused: {stderr.getvalue().strip()}")


@pytest.mark.parametrize(("page", "cmd"), ALL)
def test_command(page: str, cmd: str) -> None:
    words = _argv(cmd)
    for word in words:
        path = word.split("=", 1)[-1]
        if path.startswith(TOP_LEVEL) or path in ("kind-config.yaml", "mkdocs.yml", "pyproject.toml"):
            found = any(REPO.glob(path)) if "*" in path else (REPO / path).exists()
            assert found, f"{page}: `{cmd}` names {path}, which does not exist"
    tool, args = (words[0], words[1:]) if words else ("", [])
    if tool in ("scripts/sluice", ".venv/bin/sluice", "sluice"):
        assert args, f"{page}: `{cmd}` has no subcommand"
        assert args[0] in COMMANDS, f"{page}: `{cmd}`: no subcommand {args[0]!r}"
        _parse(args, build_parser(only=args[0]))
    elif tool == "kubectl" and args[:1] == ["sluice"]:
        _parse(args[1:], kubectl.build_parser())
    elif tool in (".venv/bin/python", "python") and args and args[0].startswith("benchmarks/"):
        script = (REPO / args[0]).read_text()
        for flag in (a.split("=", 1)[0] for a in args[1:] if a.startswith("--")):
            assert f'"{flag}"' in script, f"{page}: `{cmd}`: {args[0]} has no option {flag}"
