"""`sluice validate -f FILE...`: check Sluice YAML against the API models and name every wrong field."""

from __future__ import annotations

import argparse
import sys

from sluice.api.loading import load_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f", "--filename", dest="files", action="append", required=True, metavar="FILE", help="YAML file (repeatable)"
    )


def run(args: argparse.Namespace) -> int:
    failed = False
    for filename in args.files:
        try:
            documents = load_file(filename)
        except OSError as exc:
            print(f"ERROR {filename}: cannot read: {exc.strerror or exc}", file=sys.stderr)
            failed = True
            continue
        if not documents:
            print(f"ERROR {filename}: no YAML documents", file=sys.stderr)
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
