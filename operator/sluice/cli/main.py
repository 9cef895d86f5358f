"""`sluice`: one entry point; each subcommand lives in its own module and is imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

# name -> (module, one-line help). A module exposes `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "crds": ("sluice.cli.crds", "generate the CustomResourceDefinitions from the API models"),
    "validate": ("sluice.cli.validate", "check Sluice YAML against the API and say which field is wrong"),
    "serve": ("sluice.cli.serve", "serve a ModelDeployment's versions on this machine (no cluster)"),
    "run": ("sluice.cli.run", "serve a ModelDeployment locally and carry out its rollout"),
    "operator": ("sluice.cli.operator", "run the Kubernetes operator"),
    "profile": ("sluice.cli.profile", "build a reference profile (bin edges, counts, KS sample) from training data"),
    "drift": ("sluice.cli.drift", "compare a batch of data with a reference profile and say which features drifted"),
}


class _Command(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _load(name: str) -> _Command:
    return cast(_Command, importlib.import_module(COMMANDS[name][0]))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="Walk new ML model versions into production safely.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        command = _load(name)
        command.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in args_list if a in COMMANDS), None)
    parser = build_parser(only=chosen)
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    return _load(args.command).run(args)


if __name__ == "__main__":
    sys.exit(main())
