"""`sluice validate -f FILE...`: check Sluice YAML against the API models and name every wrong field.

The models carry the same rules as the CRDs, so what passes here is what the API server accepts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sluice.api.loading import LoadedDocument, load_documents


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        required=True,
        metavar="FILE",
        help="YAML file, directory of *.yaml/*.yml (not recursive), or - for stdin; repeatable",
    )


def _expand(name: str) -> list[Path] | None:
    path = Path(name)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return None


def _documents(name: str) -> list[LoadedDocument]:
    if name == "-":
        return list(load_documents(sys.stdin.read(), "<stdin>"))
    return list(load_documents(Path(name).read_text(encoding="utf-8"), name))


def run(args: argparse.Namespace) -> int:
    failed = False
    names: list[str] = []
    for name in args.files:
        expanded = _expand(name)
        if expanded is None:
            names.append(name)
        elif expanded:
            names += [str(p) for p in expanded]
        else:
            print(f"ERROR {name}: no *.yaml files in this directory", file=sys.stderr)
            failed = True
    for name in names:
        try:
            documents = _documents(name)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(f"ERROR {name}: cannot read: {reason}", file=sys.stderr)
            failed = True
            continue
        if not documents:
            print(f"ERROR {name}: no YAML documents", file=sys.stderr)
            failed = True
        for doc in documents:
            if doc.obj is not None:
                print(f"OK {doc.obj.kind}/{doc.obj.metadata.name}")
                continue
            assert doc.error is not None
            failed = True
            for error in doc.error.errors:
                print(f"ERROR {doc.error.kind}/{doc.error.name} ({doc.source}) {error}", file=sys.stderr)
    return 1 if failed else 0
