"""Writes the docs pages that are read off the code and the measurements, so they cannot drift from them.

    .venv/bin/python scripts/docs_gen.py           # rewrite docs/reference/api.md and docs/benchmarks.md
    .venv/bin/python scripts/docs_gen.py --check   # exit 1 naming each stale page (what tests/docs runs)

Why a script and not a module of the `sluice` package: both pages are docs tooling. The benchmarks page reads
`benchmarks/results/`, which is not part of the installed package, and nothing at run time needs either page.

- **API reference** (`docs/reference/api.md`): walks the structural OpenAPI schema that `sluice.api.crd` builds
  from the pydantic models, i.e. exactly what the API server enforces and `kubectl explain` shows: every field with
  its type, default, description and validation, each object's cross-field rules (the CEL the server runs and the
  message both sides print), and the printer columns.
- **Benchmarks** (`docs/benchmarks.md`): one section per `benchmarks/results/*.json`. A file whose `summary` is a
  list of flat dicts is rendered as that table, with its `benchmark`, `command`, `measured_at`, `machine` and `goal`
  keys, and its `notes` (a list of strings) as paragraphs under it. Files written before that convention get a
  small extractor each (`LEGACY`), keyed by benchmark. `benchmarks/results_io.py` writes the convention.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
API_PAGE = Path("docs/reference/api.md")
BENCHMARKS_PAGE = Path("docs/benchmarks.md")
RESULTS_DIR = Path("benchmarks/results")
REGENERATE = ".venv/bin/python scripts/docs_gen.py"
TIMES, DASH = "\u00d7", "\u2013"  # written as escapes: ruff flags the literal characters as look-alikes


# ---------------------------------------------------------------------------------------------------- API reference


# Characters Markdown would still read inside inline HTML (links, emphasis, escapes, table cells): as entities.
_MARKDOWN_ENTITIES = str.maketrans({c: f"&#{ord(c)};" for c in "|[]()*_`\\"})


def _code(text: str) -> str:
    """Inline code that Markdown leaves alone, even inside a table cell (a regex pattern is full of `[`, `|`, `*`)."""
    return "<code>" + html.escape(text, quote=False).translate(_MARKDOWN_ENTITIES) + "</code>"


def span(text: str) -> str:
    """A Markdown code span outside tables, where `|` and brackets are harmless (readable in the raw file too)."""
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "&#124;")


def _type_name(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    kind = node.get("type")
    if kind == "array":
        return "[]" + _type_name(node.get("items", {}))
    if kind == "object" or "properties" in node:
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and "properties" not in node:
            return "map[string]" + _type_name(extra)
        if node.get("x-kubernetes-preserve-unknown-fields") and "properties" not in node:
            return "object (any fields)"
        return "object"
    if kind == "string" and node.get("format"):
        return f"string ({node['format']})"
    return str(kind or "any")


def _validation(node: dict[str, Any], required: bool) -> list[str]:
    out = ["**required**"] if required else []
    if "enum" in node:
        out.append("one of " + ", ".join(_code(json.dumps(v)) for v in node["enum"]))
    for key, word in (("minimum", "≥"), ("maximum", "≤")):
        if key in node:
            strict = node.get("exclusive" + key[0].upper() + key[1:]) is True
            out.append(f"{'>' if strict and key == 'minimum' else '<' if strict else word} {node[key]}")
    for key, word in (
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("minProperties", "min entries"),
        ("maxProperties", "max entries"),
    ):
        if key in node:
            out.append(f"{word} {node[key]}")
    if "pattern" in node:
        out.append("pattern " + _code(node["pattern"]))
    if node.get("uniqueItems"):
        out.append("unique items")
    if "x-kubernetes-list-type" in node:
        out.append(f"list type {node['x-kubernetes-list-type']}")
    items = node.get("items")
    if isinstance(items, dict) and "properties" not in items:
        inner = _validation(items, required=False)
        if inner:
            out.append("each item: " + "; ".join(inner))
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and "properties" not in extra:
        inner = _validation(extra, required=False)
        if inner:
            out.append("each value: " + "; ".join(inner))
    return out


def _anchor(kind: str, path: str) -> str:
    return (kind + "-" + path).lower().replace(".", "-").replace("[]", "").replace("[*]", "").replace("_", "-")


def _object_sections(kind: str, path: str, node: dict[str, Any]) -> Iterable[str]:
    """One section per object in the schema (depth first, in field order), like `kubectl explain --recursive`."""
    props: dict[str, Any] = node.get("properties", {})
    required = set(node.get("required", []))
    lines = []
    if path:  # the kind's own fields go straight under its heading
        lines += [f"### {kind.lower()}.{path} {{ #{_anchor(kind, path)} }}", ""]
        if node.get("description"):
            lines += [node["description"], ""]
    children: list[tuple[str, dict[str, Any]]] = []
    if props:
        lines += ["| Field | Type | Default | Description | Validation |", "|---|---|---|---|---|"]
        for name, child in props.items():
            sub, target = _object_child(path, name, child)
            type_text = _code(_type_name(child))
            if target is not None:
                type_text = f"[{type_text}](#{_anchor(kind, sub)})"
                children.append((sub, target))
            default = _code(json.dumps(child["default"], ensure_ascii=False)) if "default" in child else ""
            checks = "<br>".join(_validation(child, name in required))
            lines.append(
                f"| `{name}` | {type_text} | {default} | {cell(child.get('description', ''))} | {cell(checks)} |"
            )
        lines.append("")
    rules = node.get("x-kubernetes-validations", [])
    if rules:
        lines += ["Rules (the API server runs the CEL; `sluice validate` and `sluice run` run its Python twin):", ""]
        for rule in rules:
            where = (path + rule.get("fieldPath", "")).lstrip(".") or "(the object)"
            lines += [f"- `{where}`: {rule['message']}", f"    <br>CEL: {span(rule['rule'])}"]
        lines.append("")
    yield "\n".join(lines)
    for sub, target in children:
        yield from _object_sections(kind, sub, target)


def _object_child(path: str, name: str, child: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """The path and schema of a field that gets its own section (an object, or a list or map of objects)."""
    sub = f"{path}.{name}" if path else name
    if "properties" in child:
        return sub, child
    items = child.get("items")
    if isinstance(items, dict) and "properties" in items:
        return sub + "[]", items
    extra = child.get("additionalProperties")
    if isinstance(extra, dict) and "properties" in extra:
        return sub + "[*]", extra
    return sub, None


def _examples(kind: str) -> list[str]:
    """The numbered examples of one kind: named, and the first one shown (included by pymdownx.snippets at build)."""
    files = sorted(
        p.relative_to(REPO).as_posix()
        for p in (REPO / "manifests" / "examples").glob("[0-9]*.yaml")
        if re.search(rf"^kind: {kind}$", p.read_text(), flags=re.M)
    )
    if not files:
        return []
    return [
        "Examples: " + ", ".join(f"`{f}`" for f in files) + ".",
        "",
        f'??? example "{files[0]}"',
        "",
        "    ```yaml",
        f'    --8<-- "{files[0]}"',
        "    ```",
        "",
    ]


def api_reference() -> str:
    """docs/reference/api.md from the CRD schemas that `sluice.api.crd` builds from the pydantic models."""
    from sluice.api.base import GROUP, VERSION
    from sluice.api.crd import CRDS, openapi_schema

    out = [
        "# API reference",
        "",
        f"<!-- Generated by `{REGENERATE}` from operator/sluice/api. Do not edit: change the models. -->",
        "",
        f"Group `{GROUP}`, version `{VERSION}`. Generated from the pydantic models in `operator/sluice/api/`, "
        "through the same schema `sluice crds` writes into `crds/`: what is listed here is what the API server "
        "enforces, what `sluice validate` and `sluice run` enforce, and what `kubectl explain` shows. "
        "Field names are the wire names (camelCase). A default of `{}` on an object means its own defaults apply "
        "when it is left out.",
        "",
        "What each kind does today is in [Concepts](../concepts/index.md); this page only describes the schema.",
        "",
        "| Kind | Plural | Short names | Printer columns |",
        "|---|---|---|---|",
    ]
    for info in CRDS:
        columns = ", ".join(c["name"] for c in info.columns)
        out.append(
            f"| [{info.kind}](#{info.kind.lower()}) | {info.plural} | {', '.join(info.short_names)} | {columns} |"
        )
    out.append("")
    for info in CRDS:
        schema = openapi_schema(info.model)
        out += [
            f"## {info.kind} {{ #{info.kind.lower()} }}",
            "",
            schema.get("description", ""),
            "",
            f"`apiVersion: {GROUP}/{VERSION}`, `kind: {info.kind}`; plural `{info.plural}`, singular "
            f"`{info.singular}`, short names {', '.join(f'`{s}`' for s in info.short_names)}, category `sluice` "
            f"(`kubectl get sluice`). Namespaced, with a `status` subresource.",
            "",
            *_examples(info.kind),
            f"Printer columns (`kubectl get {info.short_names[0]}`):",
            "",
            "| Column | Type | JSONPath | Description |",
            "|---|---|---|---|",
        ]
        for c in info.columns:
            out.append(f"| {c['name']} | {c['type']} | `{c['jsonPath']}` | {cell(c.get('description', ''))} |")
        out.append("")
        out += ["Top-level fields:", ""]
        out += _object_sections(info.kind, "", schema)
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------------- benchmarks


@dataclass
class Section:
    """What the page shows for one results file."""

    title: str
    command: str
    measured_at: str
    machine: str
    rows: list[dict[str, Any]]
    goal: str = ""
    notes: list[str] = field(default_factory=list)


def _fmt(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _machine(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return _fmt(value) if value is not None else "not recorded in the file"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(_fmt(row.get(c))) for c in columns) + " |" for row in rows]
    return lines


def _pct(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:.1f}%"


def _batching(d: dict[str, Any]) -> Section:
    rows = []
    for name, m in d["models"].items():
        for plane, label in (("onnx", "in-process (onnx)"), ("ray", "Sluice on Ray")):
            p = m[plane]
            rows.append(
                {
                    "model": f"MLP {name}",
                    "data plane": label,
                    "batched req/s": p["batched"]["rps"],
                    "unbatched req/s": p["unbatched"]["rps"],
                    "ratio": f"{p['ratio_rps']}{TIMES}",
                    "mean batch": p["batched"]["mean_batch_size_reported"],
                    "p99 batched / unbatched (ms)": f"{p['batched']['p99_ms']} / {p['unbatched']['p99_ms']}",
                }
            )
    return Section(
        title="Dynamic batching on vs off (`benchmarks/batching.py`)",
        command=".venv/bin/python benchmarks/batching.py",
        measured_at="not recorded in the file (committed 2026-11-23 18:47 UTC)",
        machine=f"{d.get('machine', '?')}, load average {d['load_avg_1m_at_start']:.2f} at start",
        goal=f"batched ≥ 2{TIMES} unbatched throughput",
        rows=rows,
        notes=[
            f"Closed loop, {d['concurrency']} clients, {d['seconds_per_point']} s per point, max batch "
            f"{d['max_batch_size']}, max wait {d['max_wait_ms']} ms, one run."
        ],
    )


def _e2e_ray(d: dict[str, Any]) -> Section:
    rows = []
    for model, r in d["results"].items():
        for path in ("sluice-ray", "plain-ray-serve", "fastapi-uvicorn"):
            rows.append(
                {
                    "model": d["models"].get(model, model),
                    "path": path,
                    "req/s": r[path]["rps"],
                    "p50 ms": r[path]["p50_ms"],
                    "p99 ms": r[path]["p99_ms"],
                    "Sluice / plain Ray": f"{r['ratio_sluice_vs_plain_ray']}{TIMES}" if path == "sluice-ray" else "",
                }
            )
    return Section(
        title="Sluice on Ray vs plain Ray Serve (`benchmarks/e2e_ray.py`)",
        command=".venv/bin/python benchmarks/e2e_ray.py",
        measured_at=d["when"],
        machine=f"2 shared CPUs, load average {d['load_avg_1m_at_start']} at start",
        goal=f"Sluice on Ray ≥ 1.5{TIMES} plain Ray Serve at equal p99",
        rows=rows,
        notes=[
            f"Closed loop, {d['concurrency']} clients, {d['seconds_per_point']} s per point, {d['rounds']} "
            "interleaved rounds, best round of each (all rounds are in the JSON)."
        ],
    )


def _e2e_triton(d: dict[str, Any]) -> Section:
    labels = {
        "direct_http": "v2 REST → tritonserver (shared cores)",
        "router_http": "v2 REST → Sluice router → gRPC → tritonserver (shared cores)",
        "direct_http_router_own_core": "v2 REST → tritonserver (Triton + client on one core)",
        "router_http_router_own_core": "v2 REST → Sluice router (own core) → tritonserver",
        "direct_grpc": "tritonclient.grpc.aio → tritonserver",
        "backend_inproc": "TritonBackend in-process (coalescing) → tritonserver",
    }
    rows = [
        {
            "path": labels.get(name, name),
            "req/s": r["rps"],
            "p50 ms": r["p50_ms"],
            "p99 ms": r["p99_ms"],
            "CPU ms/req triton · router · client": f"{r['cpu_ms_per_req_triton']} · "
            f"{r['cpu_ms_per_req_router']} · {r['cpu_ms_per_req_client']}",
        }
        for name, r in d["best"].items()
    ]
    s = d["setup"]
    conc = s["concurrency"]
    out = "" if conc == 16 else f" --concurrency {conc} --out benchmarks/results/e2e_triton_c{conc}.json"
    return Section(
        title=f"Sluice on Triton vs direct, {conc} clients (`benchmarks/e2e_triton.py`)",
        command=f".venv/bin/python benchmarks/e2e_triton.py --rounds {s['rounds']}{out}",
        measured_at=d["when"],
        machine=_machine(d["machine"]),
        goal=d.get("goal", ""),
        rows=rows,
        notes=[
            "Ratios: " + ", ".join(f"{k} {v}{TIMES}" for k, v in d["ratios"].items()) + ".",
            f"{s['model']}; {s['server']}; max batch {s['max_batch_size']}, queue delay {s['max_queue_delay_us']} µs; "
            f"{s['rounds']} interleaved rounds of {s['seconds_per_round']} s, best round of each; {s['client']}.",
        ],
    )


def _kube_emulator(d: dict[str, Any]) -> Section:
    emulator = d["sluice_emulator"]
    rows: list[dict[str, Any]] = [{"server": "Sluice emulator", "what": k, "value": v} for k, v in emulator.items()]
    rows += [{"server": "plain kmock 0.8", "what": k, "value": v} for k, v in d["plain_kmock"].items()]
    rows += [{"server": "ratio", "what": k, "value": v} for k, v in d["ratios"].items()]
    return Section(
        title=f"Kubernetes API emulator, {d['count']:,} objects (`benchmarks/kube_emulator.py`)",
        command=".venv/bin/python benchmarks/kube_emulator.py",
        measured_at="not recorded in the file (committed 2026-11-23 14:36 UTC)",
        machine=_machine(d["machine"]),
        rows=rows,
        notes=["One keep-alive connection unless stated; load average ~10 during the run, so expect ±30 %."],
    )


def _operator_scale(d: dict[str, Any]) -> Section:
    rows = [
        {
            "ModelDeployments": d["count"],
            "create all (s)": d["create_all_s"],
            "all rendered with a phase (s)": d["all_rendered_with_phase_s"],
            "all Stable (s)": d["all_stable_s"],
            "operator peak RSS (MB)": d["operator_peak_rss_mb"],
            "operator requests per MD": d["operator_requests_per_md"],
            "emulator writes/s": d["emulator_writes_per_s"],
        }
    ]
    goal = d.get("goal", {})
    return Section(
        title="Operator at scale (`benchmarks/operator_scale.py`)",
        command=f".venv/bin/python benchmarks/operator_scale.py --count {d['count']} --timeout 240",
        measured_at="not recorded in the file (committed 2026-11-23 17:21 UTC)",
        machine=_machine(d["machine"]),
        goal=f"all rendered within {goal.get('seconds')} s, operator ≤ {goal.get('rss_mb')} MB",
        rows=rows,
        notes=[d["note"]] if d.get("note") else [],
    )


def _router_overhead(d: dict[str, Any]) -> Section:
    s = d["summary"]
    rows: list[dict[str, Any]] = []
    for name, t in d["targets"].items():
        fixed = t["fixed_rate"]
        row: dict[str, Any] = {"target": name}
        for rate, r in fixed.items():
            row[f"p50 / p99 ms at {rate}/s (pooled)"] = f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}"
        row["saturation req/s"] = t["saturation"]["req_per_s"]
        row["server CPU ms/req"] = ", ".join(f"{k} {v:.2f}" for k, v in t["server_cpu_ms_per_request"].items())
        rows.append(row)
    added = [
        f"{rate}/s: +{s[key]['p50']:.2f} ms p50, +{s[key]['p99']:.2f} ms p99"
        for rate, key in (
            ("100", "added_ms_at_100_per_s"),
            ("200", "added_ms_at_200_per_s"),
        )
    ]
    shadow = ", ".join(f"{k}: {TIMES}{v:.2f}" for k, v in s["shadow_on_vs_off_primary_p99_ratio"].items())
    p = d["params"]
    return Section(
        title="Router overhead (`benchmarks/router_overhead.py`)",
        command=f".venv/bin/python benchmarks/router_overhead.py --seconds {p['seconds']:g} --rounds {p['rounds']}",
        measured_at=d["when"],
        machine=_machine(d["machine"]),
        goal=s.get("goal", ""),
        rows=rows,
        notes=[
            "Added by the router (median over rounds of each round's paired difference): " + "; ".join(added) + ".",
            f"Throughput at saturation, router vs straight: {s['throughput_ratio_router_vs_straight']:.2f}{TIMES}. "
            f"Primary p99 with 100 % shadow vs without: {shadow}.",
            f"{p['rounds']} interleaved rounds of {p['seconds']:g} s at {', '.join(f'{r:g}' for r in p['rates'])} "
            f"req/s open loop, saturation with {p['concurrency']} clients.",
        ],
    )


# Files written before `summary` became the convention: benchmark (or file stem) -> extractor.
LEGACY: dict[str, Callable[[dict[str, Any]], Section]] = {
    "batching": _batching,
    "e2e_ray": _e2e_ray,
    "e2e_triton": _e2e_triton,
    "kube_emulator": _kube_emulator,
    "operator_scale": _operator_scale,
    "router_overhead": _router_overhead,
}


def section_for(stem: str, data: dict[str, Any]) -> Section:
    """The page section of one results file: its `summary` rows when it has them, else its extractor."""
    summary = data.get("summary")
    if isinstance(summary, list) and all(isinstance(r, dict) for r in summary):
        return Section(
            title=f"{data.get('benchmark', stem)} (`benchmarks/results/{stem}.json`)",
            command=str(data.get("command", "not recorded in the file")),
            measured_at=str(data.get("measured_at", "not recorded in the file")),
            machine=_machine(data.get("machine")),
            goal=_fmt(data["goal"]) if data.get("goal") else "",
            rows=summary,
            notes=[str(n) for n in data.get("notes", [])],
        )
    key = data.get("benchmark") if data.get("benchmark") in LEGACY else stem
    if key not in LEGACY:
        raise ValueError(
            f"benchmarks/results/{stem}.json has no `summary` list of rows and no extractor in scripts/docs_gen.py: "
            "write `summary` (see the contributor guide)"
        )
    return LEGACY[key](data)


def benchmarks_page(results_dir: Path | None = None) -> str:
    """docs/benchmarks.md from every results file."""
    results_dir = results_dir or REPO / RESULTS_DIR
    out = [
        "# Benchmarks",
        "",
        f"<!-- Generated by `{REGENERATE}` from benchmarks/results/*.json. Do not edit: rerun the benchmark. -->",
        "",
        "Every table below is generated from a file in `benchmarks/results/`; each section names the command that "
        "wrote it, when, and on what. Unless a section says otherwise the machine was a shared 2-core VM with other "
        "work running, so absolute numbers are noisy: the ratios measured side by side within one run are the "
        "meaningful part. What the numbers mean, and the goals met and not met, is discussed in "
        "[the data plane](concepts/data-plane.md), [serving](serving/index.md) and "
        "[decision quality](concepts/decision-quality.md).",
        "",
    ]
    for path in sorted(results_dir.glob("*.json")):
        data = json.loads(path.read_text())
        sec = section_for(path.stem, data)
        out += [f"## {sec.title} {{ #{path.stem.replace('_', '-')} }}", ""]
        out += [
            f"- File: `{RESULTS_DIR / path.name}`",
            f"- Command: `{sec.command}`",
            f"- Measured: {sec.measured_at}",
            f"- Machine: {sec.machine}",
        ]
        if sec.goal:
            out.append(f"- Goal: {sec.goal}")
        out.append("")
        if sec.rows:
            out += [*_table(sec.rows), ""]
        for note in sec.notes:
            out += [cell(note), ""]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------------- entry


PAGES: dict[Path, Callable[[], str]] = {API_PAGE: api_reference, BENCHMARKS_PAGE: benchmarks_page}


def stale_pages(root: Path = REPO) -> list[Path]:
    """Generated pages whose text on disk differs from what the generator writes now."""
    stale = []
    for page, render in PAGES.items():
        target = root / page
        if not target.exists() or target.read_text() != render():
            stale.append(page)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page is out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages()
        for page in stale:
            print(f"{page} is out of date: run `{REGENERATE}`", file=sys.stderr)
        return 1 if stale else 0
    for page, render in PAGES.items():
        target = REPO / page
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render())
        print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
