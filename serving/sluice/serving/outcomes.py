"""Outcomes: which arm served a request id or unit id (a bounded store), and per-arm sums of reported outcomes.

The router records each enrolled request's id (and its unit id) with the arm that served it; a client later posts
`{id, metric, value}` and the value is added to that arm's count, sum and sum of squares. Those three numbers per
arm and metric are what every statistic of the experiment needs (mean, variance, conversion rate), and they are
exported on /metrics, so the built-in provider and Prometheus read the same numbers.

The store is an insertion-ordered dict with one TTL for all entries, so the oldest entry is always first: expiry
and eviction pop from the front in O(1), and a lookup never scans.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sluice.serving import metric_names as mn
from sluice.serving.config import OutcomesConfig
from sluice.serving.errors import InvalidInput, Unprocessable
from sluice.serving.protocol.limits import MAX_ID_LENGTH

# Largest |value| an outcome may carry: its square (summed per arm) stays far from float overflow, so one outcome
# cannot turn an arm's sum of squares into inf (and its variance into nan) and force a verdict.
MAX_OUTCOME_VALUE = 1e150
# What the store holds for an id served by two different arms (clients reusing or sharing an id): never joined.
AMBIGUOUS = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One reported outcome, validated."""

    id: str
    metric: str
    value: float


class AssignmentStore:
    """id -> (variant, version, expires_at), at most `max_entries`, each kept `ttl_s` after its last record.

    Measured memory per entry (tests/serving/test_outcomes.py): about 300 bytes with a 32-character id
    (the dict slot, the key string and a 3-tuple; variant and version strings are shared).
    """

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        self.evicted = 0  # dropped to stay within max_entries (not expired): a sign the store is too small

    def __len__(self) -> int:
        return len(self._entries)

    def resize(self, max_entries: int, ttl_s: float) -> None:
        """New limits apply from now; entries over the new size go at once, oldest first."""
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._trim(self._clock())

    def record(self, key: str, variant: str, version: str) -> None:
        """Remember that `key` was served by (variant, version). A key still held for another arm becomes
        ambiguous: its outcomes are never credited to either arm (they count as unmatched) rather than to the
        arm that happened to be recorded last."""
        if len(key) > MAX_ID_LENGTH:
            raise ValueError(f"store keys are at most {MAX_ID_LENGTH} characters; got {len(key)}")
        now = self._clock()
        entries = self._entries
        held = entries.get(key)
        if held is not None:
            entries.move_to_end(key)  # a returning unit keeps its entry fresh
            if held[2] > now and (held[0], held[1]) != (variant, version):
                variant = version = AMBIGUOUS
        entries[key] = (variant, version, now + self.ttl_s)
        self._trim(now)

    def lookup(self, key: str) -> tuple[str, str] | None:
        """(variant, version) that served `key`, or None when unknown or expired."""
        now = self._clock()
        self._expire(now)
        hit = self._entries.get(key)
        if hit is None or hit[2] <= now or hit[0] == AMBIGUOUS:
            return None
        return hit[0], hit[1]

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            first = next(iter(entries.values()))
            if first[2] > now:
                return
            entries.popitem(last=False)

    def _trim(self, now: float) -> None:
        self._expire(now)
        entries = self._entries
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
            self.evicted += 1


def parse_outcomes(body: Any, config: OutcomesConfig) -> list[Outcome]:
    """One `{id, metric, value}` or `{"outcomes": [...]}`, all validated before any is counted.

    Shape errors are the client's 400; a known metric with a value its kind cannot take, or a metric not
    configured, is a 422 naming the item and field.
    """
    if isinstance(body, dict) and "outcomes" in body:
        if set(body) != {"outcomes"}:
            raise InvalidInput(
                f"a batch is {{'outcomes': [...]}} alone; unexpected fields {sorted(set(body) - {'outcomes'})}"
            )
        items = body["outcomes"]
        if not isinstance(items, list) or not items:
            raise InvalidInput("'outcomes' must be a non-empty list of {id, metric, value}")
        prefix = "outcomes"
    elif isinstance(body, dict):
        items, prefix = [body], ""
    else:
        raise InvalidInput('body must be {"id", "metric", "value"} or {"outcomes": [...]}')
    if len(items) > config.max_batch:
        raise Unprocessable(f"at most {config.max_batch} outcomes per request, got {len(items)}")
    return [_parse_one(item, f"{prefix}[{i}]" if prefix else "", config.metrics) for i, item in enumerate(items)]


def _parse_one(item: Any, where: str, kinds: Mapping[str, str]) -> Outcome:
    at = f"{where}." if where else ""
    if not isinstance(item, dict):
        raise InvalidInput(f"{where or 'body'}: an outcome is an object {{id, metric, value}}")
    extra = set(item) - {"id", "metric", "value"}
    if extra:
        raise InvalidInput(f"{where or 'body'}: unexpected fields {sorted(extra)}")
    rid, metric, value = item.get("id"), item.get("metric"), item.get("value")
    if not isinstance(rid, str) or not rid or len(rid) > MAX_ID_LENGTH:
        raise InvalidInput(f"{at}id: must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    if not isinstance(metric, str):
        raise InvalidInput(f"{at}metric: must be a string")
    kind = kinds.get(metric)
    if kind is None:
        shown = metric if len(metric) <= 64 else metric[:64] + "..."
        raise Unprocessable(f"{at}metric: {shown!r} is not a configured outcome metric; accepted: {sorted(kinds)}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Unprocessable(f"{at}value: must be a finite number")
    if abs(value) > MAX_OUTCOME_VALUE:
        raise Unprocessable(f"{at}value: must be within +-{MAX_OUTCOME_VALUE:g}")
    if kind == "conversion" and value not in (0, 1):
        raise Unprocessable(f"{at}value: metric {metric!r} is a conversion, so 0 or 1; got {value}")
    return Outcome(rid, metric, float(value))


class OutcomeTotals(Collector):
    """Per (version, variant, metric): count, sum and sum of squares; per metric: unmatched ids. For /metrics.

    `sluice_outcome_value_sum` and `..._squares_sum` are exposed with gauge type: the text format reserves counter
    samples for names ending in `_total`, and a mean metric's sum may go down (negative values).
    """

    def __init__(self, model: Callable[[], str], store: AssignmentStore) -> None:
        self._model = model
        self._store = store
        self.enabled = False  # a router without outcome metrics exports no (empty) outcome families
        self.joined: dict[tuple[str, str, str], list[float]] = {}  # (version, variant, metric) -> [n, sum, sumsq]
        self.unmatched: dict[str, int] = {}

    def add(self, version: str, variant: str, metric: str, value: float) -> None:
        acc = self.joined.get((version, variant, metric))
        if acc is None:
            acc = self.joined[(version, variant, metric)] = [0.0, 0.0, 0.0]
        acc[0] += 1
        acc[1] += value
        acc[2] += value * value

    def miss(self, metric: str) -> None:
        self.unmatched[metric] = self.unmatched.get(metric, 0) + 1

    def collect(self) -> Iterator[Metric]:
        if not (self.enabled or self.joined or self.unmatched):
            return
        labels = [*mn.LABELS, "metric"]
        model = self._model()
        count = CounterMetricFamily(
            mn.OUTCOMES_TOTAL.removesuffix("_total"), "Outcomes joined to the arm that served them.", labels=labels
        )
        total = GaugeMetricFamily(mn.OUTCOME_VALUE_SUM, "Sum of joined outcome values.", labels=labels)
        squares = GaugeMetricFamily(mn.OUTCOME_VALUE_SQUARES_SUM, "Sum of squared outcome values.", labels=labels)
        for (version, variant, metric), (n, s, s2) in list(self.joined.items()):
            key = [model, version, variant, metric]
            count.add_metric(key, n)
            total.add_metric(key, s)
            squares.add_metric(key, s2)
        unmatched = CounterMetricFamily(
            mn.OUTCOMES_UNMATCHED_TOTAL.removesuffix("_total"),
            "Outcomes whose id was not (or no longer) known.",
            labels=["model", "metric"],
        )
        for metric, n_miss in list(self.unmatched.items()):
            unmatched.add_metric([model, metric], n_miss)
        entries = GaugeMetricFamily(mn.OUTCOME_STORE_ENTRIES, "Ids held by the outcome store.", labels=["model"])
        entries.add_metric([model], len(self._store))
        evicted = CounterMetricFamily(
            mn.OUTCOME_STORE_EVICTED_TOTAL.removesuffix("_total"),
            "Ids dropped before their TTL because the store was full.",
            labels=["model"],
        )
        evicted.add_metric([model], self._store.evicted)
        yield from (count, total, squares, unmatched, entries, evicted)


class Outcomes:
    """The router's outcome side: records who served what, joins reported outcomes, keeps the totals."""

    def __init__(self, config: OutcomesConfig | None, model: Callable[[], str]) -> None:
        self.config = config
        self.store = AssignmentStore(config.max_entries if config else 1, config.ttl_s if config else 1.0)
        self.totals = OutcomeTotals(model, self.store)
        self.totals.enabled = config is not None

    def configure(self, config: OutcomesConfig | None) -> None:
        """A new config keeps the store (a weight change must not forget who was served); limits apply at once."""
        self.config = config
        self.totals.enabled = config is not None
        if config is not None:
            self.store.resize(config.max_entries, config.ttl_s)

    @property
    def enabled(self) -> bool:
        return self.config is not None

    def record(self, request_id: str, unit: str | None, variant: str, version: str) -> None:
        self.store.record(request_id, variant, version)
        if unit is not None and unit != request_id:
            self.store.record(unit, variant, version)

    def report(self, outcomes: list[Outcome]) -> tuple[int, list[str]]:
        """(matched count, unmatched ids) after joining each outcome to its arm."""
        matched, missed = 0, []
        for o in outcomes:
            hit = self.store.lookup(o.id)
            if hit is None:
                self.totals.miss(o.metric)
                missed.append(o.id)
                continue
            variant, version = hit
            self.totals.add(version, variant, o.metric, o.value)
            matched += 1
        return matched, missed
