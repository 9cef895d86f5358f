"""The init-container step of a Triton pod: fetch model files into a repository, verify them, write config.pbtxt.

    python -m sluice.serving.triton.prepare --model iris --dest /models \\
        --version v1 --uri https://example.org/iris-v1.onnx --sha256 <hex> [--version v2 --uri ...]

``--version``/``--uri``/``--sha256`` repeat once per version, in the same order (``--sha256`` for all or none).
Fetching reuses the model runtime's loader (``file:``, ``http(s)://``, ``s3://``, ``gs://``; relative ``file:`` URIs
resolve against the working directory); the file is written to a temporary name next to its destination and renamed
only after its sha256 matched, so a half-written or tampered model is never served.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sluice.serving.triton.repository import (
    MODEL_FILE,
    Flavour,
    ModelVersion,
    RepositoryError,
    RepositorySpec,
    version_numbers,
    write_model,
)


class FetchError(RuntimeError):
    """A model file could not be fetched or did not match its checksum."""


def fetch_into(uri: str, dest: Path, *, sha256: str | None = None, base_dir: Path | None = None) -> Path:
    """Fetch ``uri`` with the shared model runtime's loader, verify ``sha256``, write ``dest`` atomically."""
    from sluice.serving.runtime import ModelLoadError, verify_sha256
    from sluice.serving.runtime import fetch as fetch_bytes

    try:
        data = fetch_bytes(uri, base_dir or Path.cwd())
        verify_sha256(data, sha256, uri)
    except ModelLoadError as exc:
        raise FetchError(str(exc)) from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def prepare(spec: RepositorySpec, repository: Path) -> Path:
    """Fetch every version of ``spec`` into ``repository/<model>/<n>/model.onnx`` and write config.pbtxt."""
    numbers = version_numbers(spec.versions)
    files: dict[str, Path] = {}
    for version in spec.versions:
        target = repository / spec.model_name / str(numbers[version.label]) / MODEL_FILE
        files[version.label] = fetch_into(version.uri, target, sha256=version.sha256)
    return write_model(spec, repository, files)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name (directory in the repository)")
    parser.add_argument("--dest", required=True, type=Path, help="model repository directory")
    parser.add_argument("--version", action="append", required=True, help="version label (repeat per version)")
    parser.add_argument("--uri", action="append", required=True, help="model file URI (repeat per version)")
    parser.add_argument("--sha256", action="append", default=[], help="expected sha256 (repeat per version)")
    parser.add_argument("--flavour", choices=[f.value for f in Flavour], default=Flavour.ONNXRUNTIME.value)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--no-dynamic-batching", action="store_true")
    parser.add_argument("--preferred-batch-size", type=int, action="append", default=[])
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per instance; 0 runs KIND_CPU instances")
    parser.add_argument("--instances", type=int, default=1, help="instance count")


def spec_from_args(args: argparse.Namespace) -> RepositorySpec:
    if len(args.version) != len(args.uri):
        raise RepositoryError(f"got {len(args.version)} --version but {len(args.uri)} --uri; give one of each")
    if args.sha256 and len(args.sha256) != len(args.uri):
        raise RepositoryError(f"got {len(args.sha256)} --sha256 for {len(args.uri)} --uri; give one per uri or none")
    hashes = args.sha256 or [None] * len(args.uri)
    return RepositorySpec(
        model_name=args.model,
        versions=tuple(
            ModelVersion(label, uri, digest) for label, uri, digest in zip(args.version, args.uri, hashes, strict=True)
        ),
        flavour=Flavour(args.flavour),
        max_batch_size=args.max_batch_size,
        dynamic_batching=not args.no_dynamic_batching,
        preferred_batch_sizes=tuple(args.preferred_batch_size),
        max_queue_delay_us=args.max_queue_delay_us,
        gpus=args.gpus,
        instance_count=args.instances,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sluice.serving.triton.prepare", description=(__doc__ or "").split("\n")[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        model_dir = prepare(spec_from_args(args), args.dest)
    except (RepositoryError, FetchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"prepared {model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
