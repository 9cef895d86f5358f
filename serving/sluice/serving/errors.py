"""Data-plane errors, each with the HTTP status every host maps it to.

Backends, codecs and the router raise these; `app.py` renders them as `{"error": "..."}` with `status_code`.
Anything else escaping a backend is treated as `BackendUnavailable` (503) by the router: the backend is unusable
right now, like an unreachable one. Anything else escaping a host's own code is a logged 500 "internal error".
"""

from __future__ import annotations


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
        return {"error": self.message}


class InvalidInput(ServingError):
    """400: the request is malformed or does not match the model's inputs (the message names the input)."""

    status_code = 400


class Unauthorized(ServingError):
    """401: admin endpoint called without the configured bearer token."""

    status_code = 401


class ModelNotFound(ServingError):
    """404: no such model (or version) is served here."""

    status_code = 404


class PayloadTooLarge(ServingError):
    """413: the body exceeds `ServingConfig.max_request_bytes`; raised before the whole body is read."""

    status_code = 413


class UnsupportedMediaType(ServingError):
    """415: the Content-Type is not JSON."""

    status_code = 415


class BackendError(ServingError):
    """500: the backend failed while running the model (a 5xx-class error: fallback to stable applies)."""

    status_code = 500


class BackendUnavailable(ServingError):
    """503: the backend cannot be reached or is not ready (5xx-class: fallback to stable applies)."""

    status_code = 503


class BackendTimeout(ServingError):
    """504: the backend did not answer within `ServingConfig.request_timeout_s` (5xx-class)."""

    status_code = 504
