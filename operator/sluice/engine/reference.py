"""A DriftPolicy's reference profile read from `spec.reference.uri`, the same way in the operator and `sluice run`.

The bytes come from serving's object reader (file:///, http(s)://, s3://, gs://; one reader for models and
references, with each store client's default credentials); what goes wrong becomes the `Problem` the drift core
reports, naming spec.reference.uri. The read blocks: the operator runs it in a thread.
"""

from __future__ import annotations

from sluice.drift.observations import Problem
from sluice.drift.profile import Profile, ProfileError, parse_profile
from sluice.serving.objects import ObjectReadError, ObjectTooLarge, read_object

MAX_REFERENCE_BYTES = 64 * 1024 * 1024
REFERENCE_TIMEOUT_S = 30.0  # connect and read timeouts of one read
FIELD = "spec.reference.uri"


def read_reference(uri: str, max_bytes: int = MAX_REFERENCE_BYTES) -> tuple[Profile | None, Problem | None]:
    """The profile at the absolute `uri`, or the problem: ReferenceUnreachable when it cannot be read (missing
    object or bucket, refused, no client library), ReferenceInvalid when it is over `max_bytes` or not a profile."""
    try:
        data = read_object(uri, max_bytes, REFERENCE_TIMEOUT_S)
    except ObjectTooLarge as exc:
        return None, Problem("ReferenceInvalid", FIELD, str(exc))
    except ObjectReadError as exc:
        return None, Problem("ReferenceUnreachable", FIELD, str(exc))
    try:
        return parse_profile(data, source=uri), None
    except ProfileError as exc:
        return None, Problem("ReferenceInvalid", FIELD, str(exc))
