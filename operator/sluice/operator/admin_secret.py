"""The router's admin-token Secret: created once per ModelDeployment, never rewritten.

Not a child like the others: `apply` makes the live object match what was rendered, and a rendered random token
would replace the live one on every render (and lock out whoever holds it). So this child is create-only: a POST
with a fresh `secrets.token_urlsafe(32)` (256 bits); 409 AlreadyExists means a token is there (ours from before a
restart, or one a platform team created first) and it is kept as it is. The operator never reads a Secret (RBAC:
`create` on secrets, nothing else), so it cannot leak a token it did not just make.

A deleted Secret (a rotation) is noticed by trying again every `recheck_s` (one POST, answered 409 while it exists);
the ModelDeployment's ownerReference lets the garbage collector delete it with the ModelDeployment.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from sluice.operator.kube import ApiError, KubeClient
from sluice.operator.render import Owner
from sluice.operator.render.admin import admin_secret, admin_secret_name

log = logging.getLogger(__name__)

RECHECK_S = 60.0  # how soon a deleted Secret is made again (one create per ModelDeployment per interval)


class AdminSecret:
    """Makes sure one ModelDeployment's `<name>-router-admin` Secret exists, without ever changing its data."""

    def __init__(
        self,
        client: KubeClient,
        owner: Owner,
        *,
        recheck_s: float = RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.owner, self.recheck_s, self.clock = client, owner, recheck_s, clock
        self.name = admin_secret_name(owner)
        self._tried_at: float | None = None
        self._problem = ""  # the last refusal logged (each distinct one is logged once)

    async def ensure(self) -> bool:
        """Create the Secret if it is missing (at most once per `recheck_s`); True when this call created it.

        A refusal other than 409 (e.g. a chart without the `create secrets` rule) is logged, not raised: the mount is
        optional and the model serves without it (its router keeps the admin API locked with a token of its own).
        """
        now = self.clock()
        if self._tried_at is not None and now - self._tried_at < self.recheck_s:
            return False
        self._tried_at = now
        try:
            await self.client.create(admin_secret(self.owner, secrets.token_urlsafe(32)))
        except ApiError as exc:
            if exc.code == 409:
                self._problem = ""
                return False
            if exc.message != self._problem:
                self._problem = exc.message
                log.warning(
                    "%s/%s: could not create the admin Secret %s (%s); trying again in %.0f s",
                    self.owner.namespace,
                    self.owner.name,
                    self.name,
                    exc,
                    self.recheck_s,
                )
            return False
        self._problem = ""
        log.info("%s/%s: created the admin Secret %s", self.owner.namespace, self.owner.name, self.name)
        return True
