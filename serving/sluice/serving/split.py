"""Deterministic traffic assignment: weighted split, sticky buckets and the mirror sampler.

Deterministic on purpose: smooth weighted round-robin gives every window of 100 requests exactly the configured
percentages, so the observed share is right even in the first seconds after a weight change, where random draws
would wander by several points.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence


class SmoothWeighted:
    """Smooth weighted round-robin (as in nginx): picks interleave, any 100 consecutive picks match the weights."""

    def __init__(self, names: Sequence[str], weights: Sequence[int]) -> None:
        if len(names) != len(weights) or sum(weights) <= 0:
            raise ValueError("need one positive-summing weight per name")
        self._names = list(names)
        self._weights = list(weights)
        self._total = sum(weights)
        self._current = [0] * len(weights)
        self._lock = threading.Lock()

    def pick(self) -> str:
        with self._lock:
            best = 0
            for i, w in enumerate(self._weights):
                self._current[i] += w
                if self._current[i] > self._current[best]:
                    best = i
            self._current[best] -= self._total
            return self._names[best]


def bucket(key: str, salt: str = "") -> int:
    """0..99 from blake2b of salt and key: the same on every process, replica and restart (unlike Python's salted
    hash()). A salt (an experiment's uid) makes experiments assign independently; an empty one hashes the key
    alone. The salt goes in as blake2b's key (hashed first when over blake2b's 64-byte key limit), so salt and key
    never run into each other as they would if concatenated."""
    raw = salt.encode()
    if len(raw) > 64:
        raw = hashlib.blake2b(raw).digest()
    digest = hashlib.blake2b(key.encode(), digest_size=8, key=raw).digest()
    return int.from_bytes(digest, "big") % 100


def sticky_pick(key: str, names: Sequence[str], weights: Sequence[int], salt: str = "") -> str:
    """The variant whose cumulative weight range holds the key's bucket; weight-0 variants never match."""
    b = bucket(key, salt)
    edge = 0
    for name, w in zip(names, weights, strict=True):
        edge += w
        if b < edge:
            return name
    return names[-1]


class EveryNth:
    """Samples exactly `percent` of calls, evenly spread (Bresenham): 25% mirrors calls 4, 8, 12, ..."""

    def __init__(self, percent: int) -> None:
        self._percent = percent
        self._n = 0
        self._lock = threading.Lock()

    def sample(self) -> bool:
        with self._lock:
            self._n += 1
            return (self._n * self._percent) // 100 != ((self._n - 1) * self._percent) // 100
