"""The Sluice API (group sluice.dev, version v1alpha1) as typed models; the CRDs are generated from them."""

from sluice.api.base import API_VERSION, COMMAND_ANNOTATION, GROUP, VERSION, Condition, ConditionStatus, parse_duration
from sluice.api.drift_policy import DriftPolicy, DriftPolicySpec, DriftPolicyStatus
from sluice.api.experiment import Experiment, ExperimentSpec, ExperimentStatus
from sluice.api.model_deployment import ModelDeployment, ModelDeploymentSpec
from sluice.api.status import ModelDeploymentStatus, Phase, Verdict

__all__ = [
    "API_VERSION",
    "COMMAND_ANNOTATION",
    "GROUP",
    "VERSION",
    "Condition",
    "ConditionStatus",
    "DriftPolicy",
    "DriftPolicySpec",
    "DriftPolicyStatus",
    "Experiment",
    "ExperimentSpec",
    "ExperimentStatus",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "Phase",
    "Verdict",
    "parse_duration",
]
