"""A reference profile from a captured sample (`reference.fromStableVersion`), with the same code `sluice profile` uses.

The router's sample (`GET /v2/drift/{policy}/sample`) gives, per feature, the non-missing values of the rows it
kept (sorted on their own) and how many of those rows had none. Each feature becomes a column of the same length
(missing rows as NaN / None), and `build_profile` makes the profile: quantile edges, top-K categories, and a sorted
sample for exact KS, shrunk until the JSON fits `max_bytes` (a ConfigMap holds at most 1 MiB).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sluice.drift.profile import DEFAULT_BINS, DEFAULT_SAMPLE_SIZE, DEFAULT_TOP_K, Profile, ProfileError, build_profile

MAX_PROFILE_BYTES = 900_000  # under a ConfigMap's 1 MiB, with room for its metadata


def profile_from_sample(
    sample: Mapping[str, Any],
    *,
    source: str,
    bins: int = DEFAULT_BINS,
    top_k: int = DEFAULT_TOP_K,
    max_bytes: int = MAX_PROFILE_BYTES,
) -> Profile:
    """The profile of a router's capture sample; ProfileError names a feature without any value, or a sample
    whose parts do not add up."""
    try:
        kept = int(sample["kept"])
        features = list(sample["features"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"{source}: not a capture sample: {exc}") from None
    columns: dict[str, Any] = {}
    categorical: list[str] = []
    for feature in features:
        name, kind = str(feature.get("name")), feature.get("type")
        values, missing = list(feature.get("values") or []), int(feature.get("missing") or 0)
        if len(values) + missing != kept:
            raise ProfileError(f"{source}: feature {name!r}: {len(values)} values + {missing} missing != {kept} rows")
        if not values:
            raise ProfileError(f"feature {name!r}: none of the {kept} sampled rows had a value")
        if kind == "categorical":
            columns[name] = np.asarray([str(v) for v in values] + [None] * missing, dtype=object)
            categorical.append(name)
        else:
            columns[name] = np.concatenate([np.asarray(values, dtype=np.float64), np.full(missing, np.nan)])
    size = DEFAULT_SAMPLE_SIZE
    while True:
        profile = build_profile(
            columns, categorical=categorical, bins=bins, top_k=top_k, sample_size=size, source=source
        )
        length = len(profile.to_json().encode())
        if length <= max_bytes:
            return profile
        if size == 0:
            raise ProfileError(f"{source}: the profile takes {length} bytes without KS samples (limit {max_bytes})")
        size = int(size * max_bytes / length * 0.9)
