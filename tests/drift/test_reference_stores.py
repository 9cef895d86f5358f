"""DriftPolicy references over s3://, gs:// and http(s)://, read through the one object reader (serving/objects.py)
by the operator and by `sluice run`. Real servers, no mocks: moto's S3 server, gcp-storage-emulator and the standard
library's HTTP server, all on 127.0.0.1 (tests/support/object_stores.py); the official clients find them through
their own environment variables (AWS_ENDPOINT_URL, STORAGE_EMULATOR_HOST), which the operator's and `sluice run`'s
processes inherit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from tests.drift.test_operator_drift import (
    DP_PATH,
    Load,
    create,
    dp_condition,
    events_about,
    has_reason,
    policy,
    served_drift,
    state,
    target_doc,
)
from tests.support import wait_for
from tests.support.emulator import EmulatorThread
from tests.support.operator_process import EXAMPLES, Cluster, running_operator
from tests.support.simulator import simulating

from sluice.drift.profile import load_profile
from sluice.engine.reference import read_reference
from sluice.local.driftpolicy import reference_uri

PROFILE = EXAMPLES / "models" / "fraud-v1.profile.json"
LOCAL_EXAMPLE = EXAMPLES / "05-drift-local.yaml"
SLUICE = str(Path(sys.executable).parent / "sluice")


@dataclass
class Store:
    """One object store with bucket `models`: `put` uploads and answers the object's URI."""

    scheme: str
    client: Any

    def put(self, key: str, data: bytes) -> str:
        if self.scheme == "s3":
            self.client.put_object(Bucket="models", Key=key, Body=data)
        else:
            self.client.bucket("models").blob(key).upload_from_string(data)
        return f"{self.scheme}://models/{key}"


@pytest.fixture(params=["s3", "gs"])
def store(request: pytest.FixtureRequest) -> Store:
    return Store(request.param, request.getfixturevalue("s3" if request.param == "s3" else "gcs"))


def test_each_store_reads_the_profile_and_names_what_went_wrong(store: Store) -> None:
    uri = store.put("fraud/v1.profile.json", PROFILE.read_bytes())
    profile, problem = read_reference(uri)
    assert problem is None
    assert profile == load_profile(PROFILE)

    missing_object = f"{store.scheme}://models/fraud/v9.profile.json"
    missing_bucket = f"{store.scheme}://nowhere/fraud/v1.profile.json"
    for bad, why in ((missing_object, "no such object in bucket 'models'"), (missing_bucket, "'nowhere'")):
        profile, problem = read_reference(bad)
        assert profile is None
        assert problem is not None
        assert (problem.reason, problem.field) == ("ReferenceUnreachable", "spec.reference.uri")
        assert problem.message.startswith(bad), problem.message
        assert why in problem.message, problem.message

    _, problem = read_reference(uri, max_bytes=1000)
    assert problem is not None
    assert (problem.reason, problem.field) == ("ReferenceInvalid", "spec.reference.uri")
    assert f"{PROFILE.stat().st_size} bytes, over the 1000-byte cap" in problem.message

    _, problem = read_reference(store.put("fraud/garbage.json", b"{not json"))
    assert problem is not None
    assert problem.reason == "ReferenceInvalid"
    assert "not JSON" in problem.message


def test_s3_without_credentials_says_so(s3: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """boto3's default chain finds nothing (no variables, no files, no instance metadata): the message says so."""
    uri = Store("s3", s3).put("fraud/v1.profile.json", PROFILE.read_bytes())
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    _, problem = read_reference(uri)
    assert problem is not None
    assert problem.reason == "ReferenceUnreachable"
    assert "NoCredentialsError" in problem.message, problem.message


def test_http_and_relative_file_references(http_dir: tuple[str, Path], tmp_path: Path) -> None:
    url, root = http_dir
    shutil.copy(PROFILE, root / "v1.profile.json")
    profile, problem = read_reference(f"{url}/v1.profile.json")
    assert problem is None
    assert profile == load_profile(PROFILE)
    _, problem = read_reference(f"{url}/v9.profile.json")
    assert problem is not None
    assert problem.reason == "ReferenceUnreachable"
    assert "HTTP 404" in problem.message
    # sluice run: file:PATH and file://PATH relative to the YAML's directory; the rest unchanged.
    base = EXAMPLES
    assert reference_uri("file://models/fraud-v1.profile.json", base) == PROFILE.as_uri()
    assert reference_uri("file:models/fraud-v1.profile.json", base) == PROFILE.as_uri()
    assert reference_uri(PROFILE.as_uri(), tmp_path) == PROFILE.as_uri()
    for other in ("s3://models/a.json", "gs://models/a.json", f"{url}/a.json"):
        assert reference_uri(other, base) == other
    # The operator has no YAML directory: a file URI must be absolute.
    _, problem = read_reference("file://models/fraud-v1.profile.json")
    assert problem is not None
    assert problem.reason == "ReferenceUnreachable"
    assert "file:///abs/path" in problem.message


def test_the_operator_reads_s3_and_gs_references_and_a_missing_one_touches_nothing(
    example_plane: Any,
    cluster: Cluster,
    kube_emulator: EmulatorThread,
    kubeconfig: Path,
    tmp_path: Path,
    s3: Any,
    gcs: Any,
) -> None:
    """Policies whose profile lives in S3 and in GCS are evaluated (the bins reach the router, the state is Ok);
    a missing object or bucket is a ReferenceUnreachable condition naming spec.reference.uri and nothing more."""
    s3_uri = Store("s3", s3).put("fraud/v1.profile.json", PROFILE.read_bytes())
    gs_uri = Store("gs", gcs).put("fraud/v1.profile.json", PROFILE.read_bytes())
    env = {"SLUICE_ROUTER_METRICS_URL": example_plane.metrics_url}  # the store variables are inherited
    with (
        running_operator(kubeconfig, tmp_path, (cluster.ns,), env),
        simulating(kube_emulator.url, cluster.ns, plane=example_plane),
    ):
        cluster.apply_md(target_doc())
        wait_for("v1 stable", lambda: cluster.status("fraud").get("phase") == "Stable", 60)
        create(cluster, DP_PATH, policy("from-s3", reference={"uri": s3_uri}))
        create(cluster, DP_PATH, policy("from-gs", reference={"uri": gs_uri}))
        missing = {
            "no-object": "s3://models/fraud/v9.profile.json",
            "no-bucket": "s3://nowhere/fraud/v1.profile.json",
            "gs-no-object": "gs://models/fraud/v9.profile.json",
        }
        for name, uri in missing.items():
            create(cluster, DP_PATH, policy(name, {"type": "rollback", "cooldown": "1h"}, reference={"uri": uri}))
        wait_for("both policies' bins on the router", lambda: sorted(served_drift(cluster)) == ["from-gs", "from-s3"])
        with Load(example_plane.url):
            for name in ("from-s3", "from-gs"):
                wait_for(f"{name} Ok", partial(lambda n: state(cluster, n) == "Ok", name), 60)
        for name, uri in missing.items():
            wait_for(f"{name}: ReferenceUnreachable", partial(has_reason, cluster, name, "ReferenceUnreachable"), 30)
            condition = dp_condition(cluster, name, "Evaluated")
            assert condition["status"] == "False"
            assert condition["message"].startswith("spec.reference.uri"), condition
            assert uri in condition["message"], condition
            assert "ReferenceUnreachable" in events_about(cluster, name)
            assert "lastAction" not in (cluster.get(f"{DP_PATH}/{name}") or {}).get("status", {})
        assert sorted(served_drift(cluster)) == ["from-gs", "from-s3"]  # only the readable policies' bins
        md = cluster.md("fraud") or {}
        assert md["spec"]["model"]["version"] == "v1"
        assert "sluice.dev/command" not in (md["metadata"].get("annotations") or {})  # no rollback asked


def _sluice_run(example: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [SLUICE, "run", "-f", str(example), "--backend", "onnx", "--output", "json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        status = json.loads(done.stdout)
    except ValueError:
        status = {}
    return done.returncode, status, done.stdout + done.stderr


def _local_example(tmp_path: Path, uri: str) -> Path:
    """Example 05 with its reference at `uri`, a short window and its models by absolute path."""
    text = (
        LOCAL_EXAMPLE.read_text()
        .replace("file://models/fraud-v1.profile.json", uri)
        .replace("file:models/", f"file:{EXAMPLES}/models/")
        .replace("window: 20s", "window: 4s")
        .replace("interval: 5s", "interval: 1s")
        .replace("minSamples: 200", "minSamples: 100")
    )
    assert uri in text
    example = tmp_path / "drift.yaml"
    example.write_text(text)
    return example


def test_sluice_run_reads_the_reference_from_s3_and_gs(s3: Any, gcs: Any, tmp_path: Path) -> None:
    for store in (Store("s3", s3), Store("gs", gcs)):
        uri = store.put("fraud/v1.profile.json", PROFILE.read_bytes())
        code, status, out = _sluice_run(_local_example(tmp_path, uri), "--load", "40", "--timeout", "6")
        # Read and used: the windows were scored on its bins (unshifted load; a short window's state may still
        # wobble, so the exit code is 0 or, on a noisy window, 1 — never 3, the code of an unusable reference).
        assert code in (0, 1), out
        evaluated = next(c for c in status["conditions"] if c["type"] == "Evaluated")
        assert evaluated["status"] == "True", evaluated
        scored = {f["name"]: f for f in status["features"]}
        assert set(scored) == {"features[0]", "features[1]", "features[2]", "features[3]", "prediction"}, out
        assert all(f["samples"] >= 100 and f.get("score") is not None for f in scored.values()), out


def test_sluice_run_a_missing_s3_object_is_a_condition_and_exit_3(s3: Any, tmp_path: Path) -> None:
    uri = "s3://models/fraud/v9.profile.json"
    code, status, out = _sluice_run(_local_example(tmp_path, uri), "--timeout", "30")
    assert code == 3, out
    evaluated = next(c for c in status["conditions"] if c["type"] == "Evaluated")
    assert evaluated["reason"] == "ReferenceUnreachable"
    assert evaluated["message"].startswith(f"spec.reference.uri: {uri}: no such object in bucket 'models'"), evaluated
    assert "lastAction" not in status
