"""The DriftPolicy controller's pure parts: the model-input check, the Job it builds, reading the Job's report, the
undo command it writes, and the annotation codec the ModelDeployment controller reads (limits, bad annotations)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import yaml

from sluice.api.drift_policy import DriftPolicySpec
from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import VersionRef
from sluice.drift.actions import CreateRetrainJob
from sluice.drift.profile import build_profile
from sluice.engine.driftpolicy import router_profile
from sluice.engine.routing import ExperimentArms, Routing
from sluice.operator.config import OperatorConfig
from sluice.operator.controllers.driftpolicy import (
    inputs_problem,
    job_outcome,
    reported_model,
    retrain_job,
    undo_command,
)
from sluice.operator.driftprofiles import PREFIX, annotation_key, encode, profiles_on
from sluice.operator.render import Desired, Owner
from sluice.operator.render.ray import RayRenderer
from sluice.operator.render.triton import TritonRenderer
from sluice.rollout.observations import Command, CommandKind
from sluice.serving.config import MAX_PROFILES
from sluice.serving.configsource import parse_config
from sluice.serving.ray.spec import INGRESS_NAME

SPEC = DriftPolicySpec.model_validate(
    {
        "target": {"name": "fraud"},
        "reference": {"uri": "file:///p.json"},
        "features": [{"name": "features", "index": 3}, {"name": "prediction"}],
    }
)
META = {"name": "fraud", "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]}


def test_inputs_problem_names_the_field_of_a_missing_input_or_column() -> None:
    assert inputs_problem(SPEC, META) is None
    wrong = SPEC.model_copy(update={"features": [SPEC.features[0].model_copy(update={"name": "amount"})]})
    problem = inputs_problem(wrong, META)
    assert problem is not None
    assert (problem.reason, problem.field) == ("FeatureNotInModel", "spec.features[0].name")
    past = SPEC.model_copy(update={"features": [SPEC.features[1], SPEC.features[0].model_copy(update={"index": 4})]})
    problem = inputs_problem(past, META)
    assert problem is not None
    assert problem.field == "spec.features[1].index"
    dynamic = {"name": "fraud", "inputs": [{"name": "features", "shape": [-1, -1]}]}
    assert inputs_problem(past, dynamic) is None  # an unknown width cannot be checked here


def test_retrain_job_is_owned_by_the_policy_and_carries_the_env() -> None:
    owner = Owner("p", "ns", "uid-1", kind="DriftPolicy")
    template: dict[str, Any] = {
        "metadata": {"labels": {"team": "ml"}},
        "spec": {
            "template": {
                "spec": {
                    "containers": [{"name": "t", "image": "i", "env": [{"name": "SLUICE_POLICY", "value": "old"}]}]
                }
            }
        },
    }
    action = CreateRetrainJob("p-retrain-1", (("SLUICE_POLICY", "p"), ("SLUICE_TARGET", "fraud")))
    job = retrain_job(owner, template, action)
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "DriftPolicy"
    assert job["metadata"]["labels"] == {"team": "ml", "sluice.dev/drift-policy": "p"}
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "SLUICE_POLICY", "value": "p"}, {"name": "SLUICE_TARGET", "value": "fraud"}]
    assert template["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] == "old"  # not mutated


def _pod(message: str) -> dict[str, object]:
    terminated = {"exitCode": 0, "message": message}
    return {"metadata": {"name": "p"}, "status": {"containerStatuses": [{"state": {"terminated": terminated}}]}}


def test_reported_model_reads_the_termination_message_or_says_why_not() -> None:
    model, why = reported_model([_pod(json.dumps({"uri": "s3://m/v3.onnx", "version": "v3", "extra": 1}))])
    assert (model, why) == ({"uri": "s3://m/v3.onnx", "version": "v3"}, "")
    assert reported_model([_pod("done")])[1].endswith("is not JSON: 'done'")
    assert "needs string fields uri and version" in reported_model([_pod('{"uri": "x"}')])[1]
    assert reported_model([])[0] is None


def test_job_outcome_follows_the_job_conditions() -> None:
    assert job_outcome({}) == "running"
    assert job_outcome({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == "succeeded"
    assert job_outcome({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) == "failed"
    assert job_outcome({"status": {"succeeded": 1}}) == "succeeded"


def test_undo_command_is_what_the_target_parses_and_names_the_decision() -> None:
    value = undo_command("fraud-drift", "0123456789abcdef/0/rollback")
    assert Command.parse(value).kind is CommandKind.UNDO
    assert value == undo_command("fraud-drift", "0123456789abcdef/0/rollback")  # taken again after a restart
    assert value != undo_command("fraud-drift", "fedcba9876543210/0/rollback")  # a later decision
    assert value != undo_command("other", "0123456789abcdef/0/rollback")


def test_profiles_on_skips_bad_annotations_and_keeps_the_router_limits() -> None:
    rng = np.random.default_rng(0)
    profile = build_profile({"features[3]": rng.normal(size=500), "prediction": rng.uniform(size=500)})
    good = {annotation_key(f"p{i}"): encode(router_profile(f"p{i}", SPEC, profile)) for i in range(MAX_PROFILES + 2)}
    body = {"metadata": {"annotations": {**good, PREFIX + "broken": "{nope", "other": "x"}}}
    found = profiles_on(body)
    assert len(found) == MAX_PROFILES
    assert all(p.features[0].key == "features[3]" and p.prediction is not None for p in found)
    assert profiles_on({"metadata": {}}) == ()
    assert annotation_key("A_Long.Name" * 10).startswith(PREFIX)
    assert len(annotation_key("x" * 253)) - len(PREFIX) <= 63


def test_both_renderers_hand_the_bins_to_the_router_with_or_without_experiment_arms() -> None:
    rng = np.random.default_rng(1)
    profile = build_profile({"features[3]": rng.normal(size=500), "prediction": rng.uniform(size=500)})
    drift = (router_profile("p", SPEC, profile),)
    v1, v2 = VersionRef(version="v1", uri="s3://m/v1.onnx"), VersionRef(version="v2", uri="s3://m/v2.onnx")
    arms = ExperimentArms(
        "ab", (("control", v1, 50), ("treatment", v2, 50)), "x-user", "salt", "converted", "conversion"
    )
    owner = Owner("fraud", "default", "uid")
    for with_arms in (None, arms):
        desired = Desired(Routing(stable=v1), (v1,), arms=with_arms, drift=drift)
        spec = ModelDeploymentSpec.model_validate({"backend": "triton", "model": {"name": "fraud", **v1.model_dump()}})
        by_kind = {c["kind"]: c for c in TritonRenderer().children(owner, spec, desired, OperatorConfig())}
        assert parse_config(by_kind["ConfigMap"]["data"]).drift == drift
        spec = spec.model_copy(update={"backend": "ray"})
        [rs] = RayRenderer().children(owner, spec, desired, OperatorConfig())
        app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
        ingress = next(d for d in app["deployments"] if d["name"] == INGRESS_NAME)
        assert [p["policy"] for p in ingress["user_config"]["config"]["drift"]] == ["p"]
