"""One drift tool on the benchmark's data, run in that tool's own interpreter; prints one JSON line.

    PYTHON benchmarks/drift_peers.py TOOL DATA_DIR CURRENT      (TOOL: sluice, scipy, nannyml, alibi, evidently)

Only numpy and the tool itself are imported, so each peer runs in its own virtualenv (their pins clash). The data
is converted to the tool's usual input (pandas DataFrame, 2-D array, columns) before the clock starts; the time
covers everything the tool does with the reference and the current data. A column is flagged as each tool flags
it by default (see FLAG_RULES in benchmarks/drift.py).
"""

from __future__ import annotations

import json
import resource
import sys
import time
import tracemalloc
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ALPHA = 0.05


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_sluice(ref: np.ndarray, cur: np.ndarray) -> dict[str, Any]:
    from sluice.drift import statistics as st
    from sluice.drift.profile import build_profile, count_values

    ref_cols = {f"c{j}": np.ascontiguousarray(ref[:, j]) for j in range(ref.shape[1])}
    cur_cols = {f"c{j}": np.ascontiguousarray(cur[:, j]) for j in range(cur.shape[1])}
    del ref, cur
    t0 = time.perf_counter()
    profile = build_profile(ref_cols, bins=10)
    profile_s = time.perf_counter() - t0
    features = [profile.feature(k) for k in cur_cols]
    ref_counts = np.asarray([f.counts for f in features], dtype=np.float64)

    def score() -> tuple[Any, Any, Any]:
        counts = np.stack([count_values(f, cur_cols[f.name]) for f in features]).astype(np.float64)
        psi = st.psi(ref_counts, counts)
        d, p = st.ks_binned(ref_counts, counts)
        return psi, d, st.holm(p)

    small = {k: v[:1000] for k, v in cur_cols.items()}
    for f in features:  # warm-up: first calls into scipy.stats build its distributions' docs and caches
        count_values(f, small[f.name])
    st.ks_binned(ref_counts, ref_counts)
    t0 = time.perf_counter()
    psi, d, adjusted = score()
    score_s = time.perf_counter() - t0
    rss_before = _rss_mib()
    tracemalloc.start()  # a second, traced run for memory (tracing slows allocations, so it is not timed)
    score()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Exact KS on the raw values (sort-merge), for the equality check against scipy and its own timing.
    t0 = time.perf_counter()
    exact = [st.ks_exact(ref_cols[k], cur_cols[k]) for k in cur_cols]
    exact_s = time.perf_counter() - t0
    exact_adjusted = st.holm([e.p_value for e in exact])
    return {
        "seconds": score_s,
        "profile_seconds": profile_s,
        "exact_ks_seconds": exact_s,
        "score_traced_peak_mib": traced_peak / 2**20,
        "score_rss_growth_mib": _peak_rss_mib() - rss_before,
        "flagged": {
            "psi>=0.1": [k for k, v in zip(cur_cols, psi, strict=True) if v >= 0.1],
            "ks_binned_holm": [k for k, v in zip(cur_cols, adjusted, strict=True) if v < ALPHA],
            "ks_exact_holm": [k for k, v in zip(cur_cols, exact_adjusted, strict=True) if v < ALPHA],
        },
        "psi": psi.tolist(),
        "ks_binned": d.tolist(),
        "ks_exact_statistic": [e.statistic for e in exact],
        "ks_exact_p": [e.p_value for e in exact],
    }


def run_scipy(ref: np.ndarray, cur: np.ndarray) -> dict[str, Any]:
    from scipy import stats

    ref_cols = [np.ascontiguousarray(ref[:, j]) for j in range(ref.shape[1])]
    cur_cols = [np.ascontiguousarray(cur[:, j]) for j in range(cur.shape[1])]
    t0 = time.perf_counter()
    results = [stats.ks_2samp(a, b) for a, b in zip(ref_cols, cur_cols, strict=True)]
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "flagged": {"ks_2samp p<0.05": [f"c{j}" for j, r in enumerate(results) if r.pvalue < ALPHA]},
        "ks_statistic": [float(r.statistic) for r in results],
        "ks_p": [float(r.pvalue) for r in results],
    }


def run_alibi(ref: np.ndarray, cur: np.ndarray) -> dict[str, Any]:
    from alibi_detect.cd import KSDrift

    t0 = time.perf_counter()
    detector = KSDrift(ref, p_val=ALPHA)
    result = detector.predict(cur, drift_type="feature", return_p_val=True)
    seconds = time.perf_counter() - t0
    is_drift = np.asarray(result["data"]["is_drift"]).ravel()
    return {
        "seconds": seconds,
        "flagged": {"KSDrift feature p<0.05": [f"c{j}" for j, v in enumerate(is_drift) if v]},
        "ks_p": np.asarray(result["data"]["p_val"], dtype=float).ravel().tolist(),
    }


def run_nannyml(ref: np.ndarray, cur: np.ndarray) -> dict[str, Any]:
    import warnings

    import nannyml as nml
    import pandas as pd

    columns = [f"c{j}" for j in range(ref.shape[1])]
    ref_df, cur_df = pd.DataFrame(ref, columns=columns), pd.DataFrame(cur, columns=columns)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc = nml.UnivariateDriftCalculator(column_names=columns, continuous_methods=["kolmogorov_smirnov"])
        calc.fit(ref_df)
        result = calc.calculate(cur_df).filter(period="analysis").to_df()
    seconds = time.perf_counter() - t0
    flagged = [c for c in columns if bool(result[(c, "kolmogorov_smirnov", "alert")].any())]
    return {"seconds": seconds, "chunks": len(result), "flagged": {"KS alert in any chunk (default chunking)": flagged}}


def run_evidently(ref: np.ndarray, cur: np.ndarray) -> dict[str, Any]:
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    columns = [f"c{j}" for j in range(ref.shape[1])]
    ref_df, cur_df = pd.DataFrame(ref, columns=columns), pd.DataFrame(cur, columns=columns)
    t0 = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(current_data=cur_df, reference_data=ref_df)
    data = snapshot.dict()
    seconds = time.perf_counter() - t0
    flagged, methods = [], set()
    for metric in data["metrics"]:
        config = metric.get("config", {})
        if config.get("type") == "evidently:metric_v2:ValueDrift":
            methods.add(config["method"])
            if float(metric["value"]) >= float(config["threshold"]):
                flagged.append(config["column"])
    return {"seconds": seconds, "flagged": {f"default preset ({', '.join(sorted(methods))} >= 0.1)": flagged}}


TOOLS = {
    "sluice": ("sluice", run_sluice),
    "scipy": ("scipy", run_scipy),
    "alibi": ("alibi-detect", run_alibi),
    "nannyml": ("nannyml", run_nannyml),
    "evidently": ("evidently", run_evidently),
}


def main() -> None:
    tool, data_dir, current = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    distribution, run = TOOLS[tool]
    ref = np.load(data_dir / "reference.npy")
    cur = np.load(data_dir / f"{current}.npy")
    input_mib = (ref.nbytes + cur.nbytes) / 2**20
    rss_loaded = _rss_mib()
    out = run(ref, cur)
    out.update(
        tool=tool,
        version=metadata.version(distribution),
        numpy=np.__version__,
        python=sys.version.split()[0],
        input_mib=input_mib,
        rss_after_load_mib=rss_loaded,
        peak_rss_mib=_peak_rss_mib(),
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
