"""`sluice crds`: write the CRDs generated from the API models into crds/ and the Helm chart's crds/."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sluice.api.crd import render_all


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="crds", help="directory for <plural>.sluice.dev.yaml (default: crds)")
    parser.add_argument(
        "--chart-dir",
        default="helm/sluice",
        help="Helm chart whose crds/ gets byte-identical copies; skipped when the chart is absent "
        "(default: helm/sluice)",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file is out of date")


def run(args: argparse.Namespace) -> int:
    targets = [Path(args.output_dir)]
    chart = Path(args.chart_dir)
    if (chart / "Chart.yaml").is_file():
        targets.append(chart / "crds")
    stale = []
    for directory in targets:
        for filename, text in render_all().items():
            path = directory / filename
            current = path.read_text(encoding="utf-8") if path.is_file() else None
            if current == text:
                continue
            stale.append(path)
            if not args.check:
                directory.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    for path in stale:
        print(f"{'out of date' if args.check else 'wrote'} {path}", file=sys.stderr if args.check else sys.stdout)
    if args.check and stale:
        print("run `sluice crds` to regenerate", file=sys.stderr)
        return 1
    if not stale:
        print("CRDs up to date in " + ", ".join(str(t) for t in targets))
    return 0
