"""Data-plane errors, each with the HTTP status every host maps it to.

Backends, codecs and the router raise these; `app.py` renders them as `{"error": "..."}` with `status_code`.
Anything else escaping a backend is treated as `BackendUnavailable` (503) by the router: the backend is unusable
right now, like an unreachable one. Anything else escaping a host's own code is a logged 500 "internal error".
"""

from __future__ import annotations

import re

# A URI inside a message: scheme://anything-but-space, or file:relative. Enough to find model URIs and endpoints.
_URI = re.compile(r"\b(?:[a-zA-Z][a-zA-Z0-9+.-]*://|file:)[^\s'\"]*[^\s'\":,.;)]")
_SECRET_PARTS = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^/@\s]*@)?([^?#]*)([?#].*)?$")


def redact_uris(text: str) -> str:
    """`text` with each URI's credentials (user:pass@) and query string (presigned-URL signatures) cut: for logs."""

    def one(match: re.Match[str]) -> str:
        parts = _SECRET_PARTS.match(match.group(0))
        if parts is None:
            return match.group(0)
        return parts.group(1) + parts.group(2) + ("?<redacted>" if parts.group(3) else "")

    return _URI.sub(one, text)


def hide_uris(text: str) -> str:
    """`text` with every URI replaced by `<uri>`: what a client may read of a server-side failure."""
    return _URI.sub("<uri>", text)


def clip(value: str, limit: int = 64) -> str:
    """A client-supplied name shortened for echoing in an error (never echo unbounded input)."""
    return value if len(value) <= limit else value[:limit] + f"...({len(value)} chars)"


class ServingError(Exception):
    """Base class: a message safe to show the client and the HTTP status it maps to."""

    status_code = 500
    # Set by the router once a variant was chosen, so the request is counted against the variant that failed.
    variant: str | None = None
    version: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, str]:
        """The client's view: a server-side (5xx) failure never shows model URIs or backend addresses."""
        return {"error": hide_uris(self.message) if self.status_code >= 500 else self.message}


class InvalidInput(ServingError):
    """400: the request is malformed or does not match the model's inputs (the message names the input)."""

    status_code = 400


class Unauthorized(ServingError):
    """401: admin endpoint called without the configured bearer token."""

    status_code = 401


class Forbidden(ServingError):
    """403: the admin API is switched off on this host (no token configured)."""

    status_code = 403


class ModelNotFound(ServingError):
    """404: no such model (or version) is served here."""

    status_code = 404


class NotFound(ServingError):
    """Something other than a model that this server does not have (e.g. a drift capture): 404."""

    status_code = 404


class PayloadTooLarge(ServingError):
    """413: the body exceeds `ServingConfig.max_request_bytes` (raised before the whole body is read), or a tensor
    exceeds `max_request_rows` / `max_request_elements` (raised before its data is converted)."""

    status_code = 413


class Unprocessable(ServingError):
    """422: well-formed, but a value its field cannot take (an unknown outcome metric, a conversion other than 0/1)."""

    status_code = 422


class UnsupportedMediaType(ServingError):
    """415: the Content-Type is not JSON."""

    status_code = 415


class ConfigRejected(ServingError):
    """422: a well-formed config this router will not apply (a URI scheme not allowed, a model that does not load);
    the config in service stays."""

    status_code = 422


class BackendError(ServingError):
    """500: the backend failed while running the model (a 5xx-class error: fallback to stable applies)."""

    status_code = 500


class BackendUnavailable(ServingError):
    """503: the backend cannot be reached or is not ready (5xx-class: fallback to stable applies)."""

    status_code = 503


class BackendTimeout(ServingError):
    """504: the backend did not answer within `ServingConfig.request_timeout_s` (5xx-class)."""

    status_code = 504
