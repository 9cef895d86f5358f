"""Child names and labels are valid Kubernetes names/label values for every version the CRD admits, and distinct."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.api.model_deployment import ModelSpec
from sluice.operator.render import Owner
from sluice.operator.render.meta import (
    DEPLOYMENT_LABEL,
    VERSION_LABEL,
    child_meta,
    dns_label,
    label_value,
    labels,
    owner_reference,
    ray_service_name,
    router_name,
    selector,
    version_workload_name,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
VERSION_PATTERN = ModelSpec.model_json_schema()["properties"]["version"]["pattern"]
# Owner names are DNS-1123 subdomains (what the API server allows for a custom resource's name), up to 253 chars.
SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"

versions = st.from_regex(VERSION_PATTERN, fullmatch=True).filter(lambda v: len(v) <= 63)
owner_names = st.from_regex(SUBDOMAIN, fullmatch=True).filter(lambda n: len(n) <= 253)

OWNER = Owner(name="iris", namespace="ml", uid="0b6f7c1e-1111-2222-3333-444455556666")


def valid_label(value: str) -> bool:
    return len(value) <= 63 and LABEL_VALUE.match(value) is not None


def valid_dns(value: str) -> bool:
    return len(value) <= 63 and DNS_LABEL.match(value) is not None


@settings(max_examples=300, deadline=None)
@given(name=owner_names, version=versions)
def test_names_and_labels_are_valid_for_any_crd_version(name: str, version: str) -> None:
    owner = Owner(name=name, namespace="ns", uid="u")
    assert valid_dns(version_workload_name(owner, version))
    assert valid_dns(router_name(owner))
    for value in labels(owner, version).values():
        assert valid_label(value), value
    for value in selector(owner, version).values():
        assert valid_label(value), value


@settings(max_examples=300, deadline=None)
@given(a=versions, b=versions)
def test_distinct_versions_get_distinct_workloads(a: str, b: str) -> None:
    if a != b:
        assert version_workload_name(OWNER, a) != version_workload_name(OWNER, b)
        assert labels(OWNER, a)[VERSION_LABEL] != labels(OWNER, b)[VERSION_LABEL]


def test_versions_that_differ_only_in_punctuation_or_case_do_not_collide() -> None:
    names = {version_workload_name(OWNER, v) for v in ("v1.0", "v1-0", "V1_0", "v1_0", "V1.0")}
    assert len(names) == 5
    assert all(valid_dns(n) for n in names)


def test_plain_names_are_kept_readable() -> None:
    assert version_workload_name(OWNER, "v2") == "iris-v2"
    assert router_name(OWNER) == "iris-router"
    assert ray_service_name(OWNER) == "iris"
    assert labels(OWNER, "1.2.0_rc1")[VERSION_LABEL] == "1.2.0_rc1"  # every CRD-valid version is a label value


def test_long_names_are_clipped_with_a_hash() -> None:
    owner = Owner(name="m" * 60, namespace="ns", uid="u")
    a, b = version_workload_name(owner, "a" * 63), version_workload_name(owner, "b" * 63)
    assert len(a) == 63
    assert len(b) == 63
    assert a != b
    assert valid_dns(a)
    assert valid_dns(b)
    long_owner = Owner(name="x" * 100, namespace="ns", uid="u")
    assert valid_label(labels(long_owner)[DEPLOYMENT_LABEL])


def test_dns_label_and_label_value_keep_valid_input_and_fix_the_rest() -> None:
    assert dns_label("abc-1") == "abc-1"
    assert valid_dns(dns_label("-A.b_"))
    assert valid_dns(dns_label("..."))  # nothing survives cleaning: the hash alone
    assert label_value("A.b_c") == "A.b_c"
    assert valid_label(label_value("-x" * 50))


def test_child_meta_carries_namespace_labels_and_controller_reference() -> None:
    meta = child_meta(OWNER, "iris-v1", "v1")
    assert meta["name"] == "iris-v1"
    assert meta["namespace"] == "ml"
    assert meta["labels"] == {
        "app.kubernetes.io/name": "sluice-model",
        "app.kubernetes.io/instance": "iris",
        "app.kubernetes.io/managed-by": "sluice-operator",
        "sluice.dev/model-deployment": "iris",
        "sluice.dev/model-version": "v1",
    }
    assert meta["ownerReferences"] == [owner_reference(OWNER)]
    ref = owner_reference(OWNER)
    assert ref == {
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "ModelDeployment",
        "name": "iris",
        "uid": OWNER.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert "sluice.dev/model-version" not in child_meta(OWNER, "iris")["labels"]
    assert selector(OWNER, "v1").items() <= meta["labels"].items()
