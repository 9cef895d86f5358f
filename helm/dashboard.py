"""Write helm/sluice/dashboards/sluice.json: the Grafana dashboard the chart ships (grafana-foundation-sdk, typed).

One dashboard for every ModelDeployment (variables: datasource, namespace, model): traffic split and request rate,
latency by version, errors, batch sizes, shadow agreement, rollout phase and rollbacks, drift scores. Every query
reads a series Sluice exports: the router's `sluice_*` (serving/sluice/serving/metric_names.py), the operator's
`sluice_operator_*` and the drift scores. Run from the repository root: `python helm/dashboard.py [--check]`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos, VariableRefresh

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "helm" / "sluice" / "dashboards" / "sluice.json"
UID = "sluice-overview"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every router series carries these; the variables narrow them.
SEL = 'namespace=~"$namespace", model=~"$model"'
RATE = "$__rate_interval"

PanelBuilder = Any  # the SDK's panel builders share no base class


def query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def series(title: str, unit: str, description: str, *queries: prometheus.Dataquery) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).description(description).datasource(DATASOURCE)
    panel = panel.legend(common.VizLegendOptions().show_legend(True).display_mode("table").placement("bottom"))
    for q in queries:
        panel = panel.with_target(q)
    return panel


def panels() -> list[tuple[str, list[PanelBuilder]]]:
    """(row title, its panels) in order."""
    traffic = [
        series(
            "Traffic split (weight %)",
            "percent",
            "Weight of each variant as the router applies it (sluice_variant_weight_percent).",
            query(
                f"max by (namespace, model, variant, version) (sluice_variant_weight_percent{{{SEL}}})",
                "{{model}} {{variant}} {{version}}",
            ),
        ),
        series(
            "Requests per second by version",
            "reqps",
            "Answered requests per second, by the version that served them.",
            query(f"sum by (model, version) (rate(sluice_requests_total{{{SEL}}}[{RATE}]))", "{{model}} {{version}}"),
        ),
    ]
    latency = [
        series(
            "Latency by version (p50, p99)",
            "s",
            "End-to-end router latency (sluice_request_duration_seconds).",
            query(
                "histogram_quantile(0.5, sum by (model, version, le) "
                f"(rate(sluice_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                "p50 {{model}} {{version}}",
            ),
            query(
                "histogram_quantile(0.99, sum by (model, version, le) "
                f"(rate(sluice_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                "p99 {{model}} {{version}}",
                "B",
            ),
        ),
    ]
    errors = [
        series(
            "Error ratio by version (5xx)",
            "percentunit",
            "Share of answers with a 5xx status (what rollout analysis and the error-rate SLO read).",
            query(
                f'sum by (model, version) (rate(sluice_requests_total{{{SEL}, code=~"5.."}}[{RATE}])) / '
                f"sum by (model, version) (rate(sluice_requests_total{{{SEL}}}[{RATE}]))",
                "{{model}} {{version}}",
            ),
        ),
        series(
            "Errors per second by status",
            "reqps",
            "4xx are the clients' (bad input, unknown model); 5xx the models'.",
            query(
                f'sum by (model, version, code) (rate(sluice_requests_total{{{SEL}, code=~"[45].."}}[{RATE}]))',
                "{{model}} {{version}} {{code}}",
            ),
        ),
    ]
    batching = [
        series(
            "Mean batch size by version",
            "short",
            "Rows per model call where the backend batches (sluice_batch_size).",
            query(
                f"sum by (model, version) (rate(sluice_batch_size_sum{{{SEL}}}[{RATE}])) / "
                f"sum by (model, version) (rate(sluice_batch_size_count{{{SEL}}}[{RATE}]))",
                "{{model}} {{version}}",
            ),
        ),
        series(
            "Shadow agreement",
            "percentunit",
            "Share of mirrored requests whose shadow answer agreed with the primary.",
            query(
                f'sum by (model, version) (rate(sluice_shadow_comparisons_total{{{SEL}, outcome="agree"}}[{RATE}]))'
                f" / sum by (model, version) (rate(sluice_shadow_comparisons_total{{{SEL}}}[{RATE}]))",
                "{{model}} {{version}}",
            ),
        ),
    ]
    rollout = [
        statetimeline.Panel()
        .title("Rollout phase")
        .description("Phase of each ModelDeployment (the operator's sluice_operator_model_deployment_phase).")
        .datasource(DATASOURCE)
        .with_target(
            query(
                'max by (namespace, name, phase) (sluice_operator_model_deployment_phase{namespace=~"$namespace"}) '
                "== 1",
                "{{namespace}}/{{name}} {{phase}}",
            )
        ),
        stat.Panel()
        .title("Rollbacks (24 h)")
        .description("Rollouts that ended RolledBack in the last day (sluice_operator_rollbacks_total).")
        .datasource(DATASOURCE)
        .with_target(
            query(
                'sum by (namespace, name) (increase(sluice_operator_rollbacks_total{namespace=~"$namespace"}[24h]))',
                "{{namespace}}/{{name}}",
            )
        ),
        series(
            "Drift score by feature",
            "short",
            "The drift score of each DriftPolicy's features (sluice_drift_score, the operator's /metrics).",
            query(
                'max by (namespace, policy, feature) (sluice_drift_score{namespace=~"$namespace"})',
                "{{policy}} {{feature}}",
            ),
        ),
    ]
    return [
        ("Traffic", traffic),
        ("Latency", latency),
        ("Errors", errors),
        ("Batching and shadow", batching),
        ("Rollouts and drift", rollout),
    ]


def build() -> dict[str, Any]:
    board = (
        dashboard.Dashboard("Sluice: model deployments")
        .uid(UID)
        .tags(["sluice", "mlops"])
        .description("Traffic split, latency, errors, batching and rollouts of Sluice ModelDeployments.")
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            dashboard.QueryVariable("namespace")
            .label("Namespace")
            .datasource(DATASOURCE)
            .query("label_values(sluice_requests_total, namespace)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .include_all(True)
            .all_value(".*")
            .multi(True)
        )
        .with_variable(
            dashboard.QueryVariable("model")
            .label("Model")
            .datasource(DATASOURCE)
            .query('label_values(sluice_requests_total{namespace=~"$namespace"}, model)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .include_all(True)
            .all_value(".*")
            .multi(True)
        )
    )
    panel_id = 1
    y = 0
    for title, row_panels in panels():
        board = board.with_row(dashboard.Row(title).id(panel_id).grid_pos(GridPos(h=1, w=24, x=0, y=y)))
        panel_id += 1
        y += 1
        width = 24 // len(row_panels)
        for i, panel in enumerate(row_panels):
            grid = GridPos(h=8, w=width, x=i * width, y=y)
            board = board.with_panel(panel.id(panel_id).grid_pos(grid))
            panel_id += 1
        y += 8
    encoded = JSONEncoder(sort_keys=True, indent=2).encode(board.build())
    result: dict[str, Any] = json.loads(encoded)
    return result


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed file differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run python helm/dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
