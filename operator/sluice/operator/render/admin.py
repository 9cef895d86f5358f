"""The router's admin token, mounted the same way into every pod that runs a Sluice router (Triton's router, Ray).

The token lives in the Secret `<deployment>-router-admin` (key `token`), which the operator creates once per
ModelDeployment (sluice/operator/admin_secret.py; a platform team may create it first). The mount is optional, so a
router starts before (or without) it, and then writes a random token into its own pod (reachable only by
`kubectl exec`): the admin API is never open. Routers re-read the file when it changes. docs/serving/security.md.
"""

from __future__ import annotations

import base64
from typing import Any

from sluice.operator.render import Owner
from sluice.operator.render.meta import child_meta, router_name

ADMIN_DIR = "/var/run/sluice/admin"
# sluice.serving.admin.TOKEN_FILE_ENV (the operator does not import the serving host modules).
ADMIN_TOKEN_FILE_ENV = "SLUICE_ADMIN_TOKEN_FILE"
VOLUME = "admin-token"
TOKEN_KEY = "token"


def admin_secret_name(owner: Owner) -> str:
    return f"{router_name(owner)}-admin"


def admin_secret(owner: Owner, token: str) -> dict[str, Any]:
    """The Secret holding `token`, owned by the ModelDeployment (it goes when the ModelDeployment goes)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": child_meta(owner, admin_secret_name(owner)),
        "type": "Opaque",
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def mount_admin_token(owner: Owner, pod: dict[str, Any], container: dict[str, Any]) -> None:
    """Add the optional Secret volume to `pod` and its mount and `$SLUICE_ADMIN_TOKEN_FILE` to `container`."""
    container.setdefault("env", []).append({"name": ADMIN_TOKEN_FILE_ENV, "value": f"{ADMIN_DIR}/{TOKEN_KEY}"})
    container.setdefault("volumeMounts", []).append({"name": VOLUME, "mountPath": ADMIN_DIR, "readOnly": True})
    pod.setdefault("volumes", []).append(
        {"name": VOLUME, "secret": {"secretName": admin_secret_name(owner), "optional": True}}
    )
