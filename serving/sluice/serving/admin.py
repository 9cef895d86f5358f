"""Who may use the router's control endpoints (`GET|PUT /admin/config`) and the variant override header.

Locked by default: every host needs a bearer token. Where it comes from, first match wins:
`$SLUICE_ADMIN_TOKEN_FILE` (a mounted Kubernetes Secret), `$SLUICE_ADMIN_TOKEN`, else — for the hosts that own
a process (`sluice serve`, the standalone router) — a random token written to a 0600 file whose path is printed.
A host built without any token (the Ray ingress when no Secret is mounted) answers 403 on admin endpoints.
The mounted file is re-read whenever it changes (kubelet swaps a Secret volume's files in place), so a rotated or
late-created Secret takes effect without restarting the pod.
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
from dataclasses import dataclass, field
from pathlib import Path

from sluice.serving.errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)

TOKEN_ENV = "SLUICE_ADMIN_TOKEN"
TOKEN_FILE_ENV = "SLUICE_ADMIN_TOKEN_FILE"
URI_SCHEMES_ENV = "SLUICE_ADMIN_URI_SCHEMES"
# Model URI schemes a config change may introduce. Plain http is left out: a URI the router fetches is a request
# it makes on the caller's behalf (SSRF), and https at least names a host that proves who it is.
DEFAULT_URI_SCHEMES = ("file", "https", "s3", "gs")


@dataclass(slots=True)
class AdminAuth:
    """The admin credential of one router; `None` token means the admin API is switched off (until `mounted` has one).

    `mounted` is `$SLUICE_ADMIN_TOKEN_FILE`: each check stats it (one syscall, on admin requests and override
    headers only) and re-reads it when it changed, so a rotated Secret replaces the token. A missing or empty file
    keeps the token in use: a deleted Secret is re-created by the operator, and until then nothing locks out.
    """

    token: str | None
    token_file: Path | None = None
    uri_schemes: tuple[str, ...] = DEFAULT_URI_SCHEMES
    generated: bool = False  # the token file is ours to delete on shutdown
    mounted: Path | None = None
    _stamp: tuple[int, int, int] | None = field(default=None, repr=False, compare=False)

    def current(self) -> str | None:
        """The token now, after re-reading the mounted file if it changed since the last look."""
        if self.mounted is not None:
            self._reread(self.mounted)
        return self.token

    def _reread(self, path: Path) -> None:
        try:
            st = path.stat()
        except OSError:
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            text = path.read_text().strip()
        except OSError:
            return
        if not text or text == self.token:
            return
        if self.token is not None:
            log.info("admin token changed in %s: the new one is in use", path)
        remove_token_file(self)  # a token generated while the Secret was absent is replaced by the Secret's
        self.token, self.token_file, self.generated = text, path, False

    def allows(self, headers: Mapping[str, str]) -> bool:
        """True when `headers` carry `Authorization: Bearer <token>` (compared in constant time)."""
        token = self.current()
        if not token:
            return False
        given = headers.get("authorization", "")
        return hmac.compare_digest(given.encode("latin-1", "replace"), f"Bearer {token}".encode())

    def require(self, headers: Mapping[str, str]) -> None:
        """Raise 403 when the admin API is off, 401 when the credential is missing or wrong."""
        if not self.current():
            raise Forbidden(f"the admin API is off on this router: set ${TOKEN_ENV} or ${TOKEN_FILE_ENV}")
        if not self.allows(headers):
            raise Unauthorized("admin endpoint needs 'Authorization: Bearer <token>'")


def _schemes() -> tuple[str, ...]:
    raw = os.environ.get(URI_SCHEMES_ENV)
    if raw is None:
        return DEFAULT_URI_SCHEMES
    return tuple(s.strip().lower() for s in raw.split(",") if s.strip())


def from_env() -> AdminAuth:
    """The token the environment configures (file first), or an AdminAuth with the admin API off.

    With `$SLUICE_ADMIN_TOKEN_FILE` set the file stays watched even while it is missing or empty (an optional
    Secret not created yet): once it holds a token, that token is the one in use.
    """
    path = os.environ.get(TOKEN_FILE_ENV)
    mounted = Path(path) if path else None
    if mounted is not None:
        auth = AdminAuth(None, None, _schemes(), mounted=mounted)
        if auth.current():
            return auth
        log.warning("admin token file %s is missing or empty; admin API off unless $%s is set", path, TOKEN_ENV)
    token = os.environ.get(TOKEN_ENV, "").strip()
    return AdminAuth(token or None, None, _schemes(), mounted=mounted)


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
    return AdminAuth(token, Path(path), auth.uri_schemes, generated=True, mounted=auth.mounted)


def remove_token_file(auth: AdminAuth) -> None:
    """Delete a generated token file (not one the operator mounted)."""
    if auth.generated and auth.token_file is not None:
        auth.token_file.unlink(missing_ok=True)
