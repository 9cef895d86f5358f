"""Names and labels of the metrics the data plane exports; rollout analysis queries exactly these.

Kept in one place so the router that writes them and the analysis that reads them cannot drift apart.
All carry the labels `model`, `version` and `variant` unless noted.
"""

from __future__ import annotations

PREFIX = "sluice"

# Counter, extra label `code` (HTTP status as a string).
REQUESTS_TOTAL = f"{PREFIX}_requests_total"
# Histogram of end-to-end router latency, seconds.
REQUEST_DURATION_SECONDS = f"{PREFIX}_request_duration_seconds"
# Histogram of backend model-call batch sizes (label `variant` only where the backend reports it).
BATCH_SIZE = f"{PREFIX}_batch_size"
# Histogram of the model's primary score (first output, max class probability or value), 0..1 buckets.
PREDICTION_SCORE = f"{PREFIX}_prediction_score"
# Counter of shadow comparisons, extra label `outcome` in {agree, disagree, error}.
SHADOW_COMPARISONS_TOTAL = f"{PREFIX}_shadow_comparisons_total"
# Counter of shadow copies dropped because too many were in flight (labels of the mirror variant).
SHADOW_DROPPED_TOTAL = f"{PREFIX}_shadow_dropped_total"
# Histogram of |shadow score - primary score|.
SHADOW_SCORE_DIFF = f"{PREFIX}_shadow_score_difference"
# Gauge 1/0: model loaded and warmed up, extra label `provider` (onnxruntime execution provider).
MODEL_LOADED = f"{PREFIX}_model_loaded"
# Gauge: current traffic weight percent of each variant.
VARIANT_WEIGHT = f"{PREFIX}_variant_weight_percent"

# Experiment outcomes (POST /v2/models/{name}/outcomes), joined to the arm that served the request; extra label
# `metric` (a configured outcome metric). Sum and squares are exposed with gauge type (see sluice.serving.outcomes).
OUTCOMES_TOTAL = f"{PREFIX}_outcomes_total"
OUTCOME_VALUE_SUM = f"{PREFIX}_outcome_value_sum"
OUTCOME_VALUE_SQUARES_SUM = f"{PREFIX}_outcome_value_squares_sum"
# Counter, labels `model` and `metric` only: outcomes whose id was not (or no longer) known.
OUTCOMES_UNMATCHED_TOTAL = f"{PREFIX}_outcomes_unmatched_total"
# Gauge and counter, label `model` only: ids held by the outcome store, and ids dropped before their TTL because
# the store was full (a sign that `outcomes.max_entries` is smaller than request rate x outcome delay).
OUTCOME_STORE_ENTRIES = f"{PREFIX}_outcome_store_entries"
OUTCOME_STORE_EVICTED_TOTAL = f"{PREFIX}_outcome_store_evicted_total"

# Drift: rows per bin of each watched feature, extra labels `policy`, `feature` and `bin` (decimal index 0..k-1 in
# the profile's order; numeric: k = len(edges) + 1, bin i holds edges[i-1] <= x < edges[i], open at both ends;
# categorical: the top-K categories, then "other" last). `feature` is `input[column]`, `input`, or `prediction`.
FEATURE_BIN_TOTAL = f"{PREFIX}_feature_bin_total"
# Counter, extra label `policy`: rows binned for that policy (every row of every primary request).
FEATURE_ROWS_TOTAL = f"{PREFIX}_feature_rows_total"
# Counter, extra labels `policy` and `feature`: rows where the feature was missing (input or column absent, row
# count different from the request's, NaN, unparseable). Always FEATURE_ROWS_TOTAL - sum of that feature's bins.
FEATURE_MISSING_TOTAL = f"{PREFIX}_feature_missing_total"
# Counter: requests whose feature counting (drift bins) failed; the request is still answered, its rows not counted.
FEATURE_ERRORS_TOTAL = f"{PREFIX}_feature_errors_total"

LABELS = ("model", "version", "variant")

# Bucket edges, identical for every variant: PSI between canary and stable is computed from these buckets.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
SCORE_BUCKETS = tuple(round(i * 0.05, 2) for i in range(1, 21))  # 0.05, 0.10, ..., 1.0 (+Inf)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
