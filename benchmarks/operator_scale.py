"""1,000 ModelDeployments created at once against the API emulator: how long until the operator has rendered each.

    .venv/bin/python benchmarks/operator_scale.py [--count 1000] [--threads 8] [--profile]

Starts the emulator, the KubeRay stand-in and synthetic router metrics (all from tests/support) and a real
`sluice operator` subprocess (cluster-wide), creates `count` backend-ray ModelDeployments from `threads` threads,
and measures from the first create: (1) until every one has its RayService and a status with a phase, (2) until
every one is Stable (KubeRay marked its Serve app healthy, the operator saw it and wrote status). Also the operator's
peak RSS (VmHWM from /proc) and the emulator's writes/s. `--profile` runs the operator under cProfile and prints
where its time went. Goal (issue #5): ≤ 60 s and ≤ 300 MB. Writes benchmarks/results/operator_scale.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import pstats
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import wait_for  # noqa: E402
from tests.support.kube import start_emulator  # noqa: E402
from tests.support.operator_process import (  # noqa: E402
    GROUP_VERSION,
    OPERATOR_AGENTS,
    TEST_AGENT,
    OperatorProcess,
    model_deployment,
)
from tests.support.router_metrics import SyntheticRouterMetrics  # noqa: E402
from tests.support.simulator import ClusterSimulator  # noqa: E402

from results_io import machine_text, rerun_command, write_results  # noqa: E402

GOAL_SECONDS, GOAL_RSS_MB = 60, 300

RESULT = ROOT / "benchmarks" / "results" / "operator_scale.json"
NAMESPACE = "scale"


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's resident-set high-water mark, kept by the kernel (no sampling gaps)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--profile", action="store_true", help="run the operator under cProfile and print the top")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON result")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sluice-scale-"))
    emulator = start_emulator(cel_rules=False)
    result: dict[str, Any] = {}
    try:
        kubeconfig = emulator.write_kubeconfig(tmp / "kubeconfig")
        with httpx.Client(base_url=emulator.url, headers={"User-Agent": TEST_AGENT}, timeout=60) as http:
            assert http.post("/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}}).status_code == 201
        with SyntheticRouterMetrics() as metrics, ClusterSimulator(emulator.url):
            env = {"SLUICE_ROUTER_METRICS_URL": metrics.url_format, "SLUICE_LOG_LEVEL": "warning"}
            operator = OperatorProcess(kubeconfig, tmp, env)
            profile = tmp / "operator.prof"
            if args.profile:
                operator.command = [
                    sys.executable,
                    "-m",
                    "cProfile",
                    "-o",
                    str(profile),
                    "-m",
                    "sluice.cli.main",
                    "operator",
                ]
            operator.start()
            try:
                em = emulator.emulator
                wait_for(  # Kopf up and watching: creates from now on are the operator's work
                    "the operator's ModelDeployment watch",
                    lambda: emulator.call(lambda: em.watching("modeldeployments", "sluice.dev", OPERATOR_AGENTS)),
                    60,
                )
                result = run(emulator, args.count, args.threads, args.timeout, operator)
            finally:
                code = operator.stop()
                if code not in (0, None):
                    print(operator.logs()[-3000:], file=sys.stderr)
            if args.profile and profile.exists():
                stats = pstats.Stats(str(profile))
                stats.sort_stats("cumulative").print_stats(40)
                stats.sort_stats("tottime").print_stats(25)
    finally:
        emulator.stop()
    result.update(count=args.count, create_threads=args.threads, profiled=args.profile)
    print(json.dumps(result, indent=2))
    if not args.no_write and not args.profile:
        machine = f"{platform.machine()}, {machine_text()}"
        write_results(
            RESULT, "operator_scale", rerun_command("operator_scale.py"), machine, summary_rows(result), result
        )
    return 0


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The one row of the benchmarks page, with the goal checks."""
    rendered, rss = result["all_rendered_with_phase_s"], result["operator_peak_rss_mb"]
    return [
        {
            "ModelDeployments": result["count"],
            "create all (s)": result["create_all_s"],
            "all rendered with a phase (s)": rendered,
            "all Stable (s)": result["all_stable_s"],
            "operator peak RSS (MB)": rss,
            "operator requests per MD": result["operator_requests_per_md"],
            "emulator writes/s": result["emulator_writes_per_s"],
            "time goal met": rendered is not None and rendered <= GOAL_SECONDS,
            "memory goal met": rss <= GOAL_RSS_MB,
        }
    ]


def run(emulator: Any, count: int, threads: int, timeout: float, operator: OperatorProcess) -> dict[str, Any]:
    em = emulator.emulator
    writes_before = emulator.call(lambda: em.writes)
    names = [f"md-{i:04d}" for i in range(count)]
    local = threading.local()

    def create(name: str) -> int:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=emulator.url, headers={"User-Agent": TEST_AGENT}, timeout=120)
        body = model_deployment(name, "v1", [20, 50], interval="30s")
        code: int = local.http.post(
            f"/apis/{GROUP_VERSION}/namespaces/{NAMESPACE}/modeldeployments", json=body
        ).status_code
        return code

    peak = 0.0
    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        codes = list(pool.map(create, names))
    created_s = time.monotonic() - start
    assert codes.count(201) == count, {c: codes.count(c) for c in set(codes)}

    def progress() -> tuple[int, int, int]:
        """(RayServices, MDs with a RayService and a phase, Stable MDs); runs in the emulator's loop, no copies."""
        rendered = {k[3] for k in em.store if k[:3] == ("ray.io", "rayservices", NAMESPACE)}
        phased = stable = 0
        for key, md in em.store.items():
            if key[:3] == ("sluice.dev", "modeldeployments", NAMESPACE):
                phase = (md.get("status") or {}).get("phase")
                phased += bool(phase) and key[3] in rendered
                stable += phase == "Stable"
        return len(rendered), phased, stable

    children_s = stable_s = None
    last = (0, 0, 0)
    while time.monotonic() - start < timeout:
        peak = max(peak, peak_rss_mb(operator.pid))
        last = emulator.call(progress)
        now = time.monotonic() - start
        if children_s is None and last[1] >= count:
            children_s = now
        if last[2] >= count:
            stable_s = now
            break
        if not operator.alive():
            raise RuntimeError("the operator died:\n" + operator.logs()[-3000:])
        time.sleep(0.5)
    elapsed = time.monotonic() - start
    writes = emulator.call(lambda: em.writes) - writes_before
    audit = emulator.call(lambda: em.audited(OPERATOR_AGENTS))
    peak = max(peak, peak_rss_mb(operator.pid))
    return {
        "create_all_s": round(created_s, 2),
        "all_rendered_with_phase_s": None if children_s is None else round(children_s, 1),
        "all_stable_s": None if stable_s is None else round(stable_s, 1),
        "progress_at_end": {"rayservices": last[0], "with_phase": last[1], "stable": last[2]},
        "operator_peak_rss_mb": round(peak, 1),
        "emulator_writes": writes,
        "emulator_writes_per_s": round(writes / elapsed, 1),
        "operator_requests": len(audit),
        "operator_requests_per_md": round(len(audit) / count, 1),
        "goal": f"all rendered with a phase within {GOAL_SECONDS} s, operator peak RSS <= {GOAL_RSS_MB} MB",
    }


if __name__ == "__main__":
    raise SystemExit(main())
