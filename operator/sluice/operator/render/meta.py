"""Names, labels and ownerReferences of every child, all derived from the owner so they survive operator restarts.

Versions are free-form (`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`, up to 63 characters) and owner names are DNS
subdomains (up to 253), but object names here must be DNS-1123 labels and label values at most 63 characters. Any
string that does not fit as-is gets a short hash of the original appended, so two versions that only differ in case
or punctuation (`v1.0` / `v1-0` / `V1_0`) never share a workload.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from sluice.operator.render import Owner

MAX_LABEL = 63
HASH_LEN = 8

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
DEPLOYMENT_LABEL = "sluice.dev/model-deployment"
COMPONENT_LABEL = "app.kubernetes.io/component"  # router, tritonserver, serve-metrics: what a Service fronts
VERSION_LABEL = "sluice.dev/model-version"
APP_NAME = "sluice-model"
MANAGER = "sluice-operator"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LEN]


def _with_hash(cleaned: str, original: str, strip: str) -> str:
    """`cleaned` clipped so that `-<hash of original>` fits in 63 characters."""
    head = cleaned[: MAX_LABEL - HASH_LEN - 1].strip(strip)
    return f"{head}-{_digest(original)}" if head else _digest(original)


def dns_label(text: str) -> str:
    """`text` as a DNS-1123 label (object and Service names): kept when valid, else cleaned plus a hash of it."""
    if len(text) <= MAX_LABEL and _DNS_LABEL.match(text):
        return text
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return _with_hash(cleaned, text, "-")


def label_value(text: str) -> str:
    """`text` as a label value: kept when valid (every CRD-valid version is), else cleaned plus a hash of it."""
    if len(text) <= MAX_LABEL and _LABEL_VALUE.match(text):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-_.")
    return _with_hash(cleaned, text, "-_.")


def ray_service_name(owner: Owner) -> str:
    """The RayService is named like its ModelDeployment (one per owner; `kubectl get rayservice NAME` just works)."""
    return owner.name


def version_workload_name(owner: Owner, version: str) -> str:
    """Deployment/Service of one version (triton): `<md>-<version>` as a DNS-1123 label."""
    return dns_label(f"{owner.name}-{version}")


def router_name(owner: Owner) -> str:
    """The Sluice router in front of the triton workloads."""
    return dns_label(f"{owner.name}-router")


def labels(owner: Owner, version: str | None = None) -> dict[str, str]:
    """Labels on every child; per-version workloads add the version, so pods can be told apart."""
    instance = label_value(owner.name)
    out = {
        NAME_LABEL: APP_NAME,
        INSTANCE_LABEL: instance,
        MANAGED_BY_LABEL: MANAGER,
        DEPLOYMENT_LABEL: instance,
    }
    if version is not None:
        out[VERSION_LABEL] = label_value(version)
    return out


def selector(owner: Owner, version: str) -> dict[str, str]:
    """`matchLabels` of one version's pods: only labels that never change for the life of the workload."""
    return {DEPLOYMENT_LABEL: label_value(owner.name), VERSION_LABEL: label_value(version)}


def owner_reference(owner: Owner) -> dict[str, Any]:
    """The ModelDeployment as controller: deleting it garbage-collects every child."""
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_meta(owner: Owner, name: str, version: str | None = None) -> dict[str, Any]:
    """`metadata` of a child named `name` in the owner's namespace."""
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, version),
        "ownerReferences": [owner_reference(owner)],
    }
