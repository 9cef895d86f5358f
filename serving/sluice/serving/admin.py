"""Who may use the router's control endpoints (`GET|PUT /admin/config`) and the variant override header.

Locked by default: every host needs a bearer token. Where it comes from, first match wins:
`$SLUICE_ADMIN_TOKEN_FILE` (a mounted Kubernetes Secret), `$SLUICE_ADMIN_TOKEN`, else — for the hosts that own
a process (`sluice serve`, the standalone router) — a random token written to a 0600 file whose path is printed.
A host built without any token (the Ray ingress when no Secret is mounted) answers 403 on admin endpoints.
A token, not a loopback-only listener, because a router in a pod is reached through its Service: a second
listener on 127.0.0.1 would lock the operator's own tooling (`kubectl port-forward`) out as well.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sluice.serving.errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)

TOKEN_ENV = "SLUICE_ADMIN_TOKEN"
TOKEN_FILE_ENV = "SLUICE_ADMIN_TOKEN_FILE"
URI_SCHEMES_ENV = "SLUICE_ADMIN_URI_SCHEMES"
# Model URI schemes a config change may introduce. Plain http is left out: a URI the router fetches is a request
# it makes on the caller's behalf (SSRF), and https at least names a host that proves who it is.
DEFAULT_URI_SCHEMES = ("file", "https", "s3", "gs")


@dataclass(frozen=True, slots=True)
class AdminAuth:
    """The admin credential of one router; `None` token means the admin API is switched off."""

    token: str | None
    token_file: Path | None = None
    uri_schemes: tuple[str, ...] = DEFAULT_URI_SCHEMES
    generated: bool = False  # the token file is ours to delete on shutdown

    def allows(self, headers: Mapping[str, str]) -> bool:
        """True when `headers` carry `Authorization: Bearer <token>` (compared in constant time)."""
        if not self.token:
            return False
        given = headers.get("authorization", "")
        return hmac.compare_digest(given.encode("latin-1", "replace"), f"Bearer {self.token}".encode())

    def require(self, headers: Mapping[str, str]) -> None:
        """Raise 403 when the admin API is off, 401 when the credential is missing or wrong."""
        if not self.token:
            raise Forbidden(f"the admin API is off on this router: set ${TOKEN_ENV} or ${TOKEN_FILE_ENV}")
        if not self.allows(headers):
            raise Unauthorized("admin endpoint needs 'Authorization: Bearer <token>'")


def _schemes() -> tuple[str, ...]:
    raw = os.environ.get(URI_SCHEMES_ENV)
    if raw is None:
        return DEFAULT_URI_SCHEMES
    return tuple(s.strip().lower() for s in raw.split(",") if s.strip())


def from_env() -> AdminAuth:
    """The token the environment configures (file first), or an AdminAuth with the admin API off."""
    path = os.environ.get(TOKEN_FILE_ENV)
    if path:
        file = Path(path)
        try:
            token = file.read_text().strip()
        except OSError:
            token = ""
        if token:
            return AdminAuth(token, file, _schemes())
        log.warning("admin token file %s is missing or empty; admin API off unless $%s is set", path, TOKEN_ENV)
    token = os.environ.get(TOKEN_ENV, "").strip()
    return AdminAuth(token or None, None, _schemes())


def for_process(name: str) -> AdminAuth:
    """The configured token, or a new random one written to a 0600 file (path in `token_file`) for this process."""
    auth = from_env()
    if auth.token:
        return auth
    token = secrets.token_urlsafe(32)
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    fd, path = tempfile.mkstemp(prefix=f"sluice-{name}-", suffix=".admin-token", dir=base)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode() + b"\n")
    finally:
        os.close(fd)
    return AdminAuth(token, Path(path), auth.uri_schemes, generated=True)


def remove_token_file(auth: AdminAuth) -> None:
    """Delete a generated token file (not one the operator mounted)."""
    if auth.generated and auth.token_file is not None:
        auth.token_file.unlink(missing_ok=True)
