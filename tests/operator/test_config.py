"""The operator reads the Helm chart's env; every bad value is refused with the variable's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.operator.config import DEFAULT_ROUTER_IMAGE, OperatorConfig

REPO = Path(__file__).resolve().parents[2]


def test_defaults_without_env() -> None:
    config = OperatorConfig.from_env({})
    assert config.router_image == DEFAULT_ROUTER_IMAGE
    assert config.watch_namespaces == ()
    assert (config.metrics_port, config.health_port) == (8080, 8081)
    assert dict(config.gpu_node_selector) == {}
    assert config.gpu_tolerations == ()


def test_chart_values_round_trip() -> None:
    env = {
        "SLUICE_LOG_LEVEL": "debug",
        "SLUICE_WATCH_NAMESPACES": "team-a, team-b,",
        "SLUICE_ROUTER_IMAGE": "registry.example/sluice-serving:1.2.3",
        "SLUICE_TRITON_IMAGE": "registry.example/tritonserver:24.08-py3",
        "SLUICE_GPU_NODE_SELECTOR": '{"sluice.dev/gpu": "true"}',
        "SLUICE_GPU_TOLERATIONS": '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
        "SLUICE_METRICS_PORT": "9090",
        "SLUICE_HEALTH_PORT": "9091",
        "POD_NAMESPACE": "sluice-system",
        "POD_NAME": "sluice-abc",
    }
    config = OperatorConfig.from_env(env)
    assert config.log_level == "DEBUG"
    assert config.watch_namespaces == ("team-a", "team-b")
    assert config.router_image.endswith(":1.2.3")
    assert config.triton_image.endswith("24.08-py3")
    assert dict(config.gpu_node_selector) == {"sluice.dev/gpu": "true"}
    assert config.gpu_tolerations[0]["key"] == "nvidia.com/gpu"
    assert (config.metrics_port, config.health_port, config.namespace, config.pod_name) == (
        9090,
        9091,
        "sluice-system",
        "sluice-abc",
    )


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("SLUICE_GPU_NODE_SELECTOR", "{not json", "not valid JSON"),
        ("SLUICE_GPU_NODE_SELECTOR", '["a"]', "JSON object"),
        ("SLUICE_GPU_NODE_SELECTOR", '{"a": 1}', "JSON object of strings"),
        ("SLUICE_GPU_TOLERATIONS", '{"key": "x"}', "JSON list"),
        ("SLUICE_METRICS_PORT", "eighty", "port number"),
        ("SLUICE_HEALTH_PORT", "70000", "port number"),
        ("SLUICE_LOG_LEVEL", "loud", "DEBUG, INFO"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, words: str) -> None:
    with pytest.raises(ValueError, match=name) as err:
        OperatorConfig.from_env({name: value})
    assert words in str(err.value)


def test_every_chart_env_variable_is_read() -> None:
    """The chart's operator Deployment sets only variables the operator reads (and the operator reads them all)."""
    template = (REPO / "helm" / "sluice" / "templates" / "deployment.yaml").read_text()
    chart_vars = {
        line.split("name:", 1)[1].strip()
        for line in template.splitlines()
        if line.strip().startswith("- name: ") and line.split("name:", 1)[1].strip().isupper()
    }
    source = (REPO / "operator" / "sluice" / "operator" / "config.py").read_text()
    assert chart_vars, "no env variables found in the chart's Deployment"
    assert {v for v in chart_vars if f'"{v}"' not in source} == set()


def test_leader_election_is_off_by_default_and_reads_its_timings() -> None:
    assert OperatorConfig.from_env({}).leader_election is None
    env = {
        "SLUICE_LEADER_ELECTION": "true",
        "POD_NAMESPACE": "sluice-system",
        "SLUICE_LEASE_NAME": "sluice",
        "SLUICE_LEASE_DURATION_SECONDS": "20",
        "SLUICE_RENEW_DEADLINE_SECONDS": "12.5",
        "SLUICE_RETRY_PERIOD_SECONDS": "3",
    }
    lease = OperatorConfig.from_env(env).leader_election
    assert lease is not None
    assert (lease.namespace, lease.name) == ("sluice-system", "sluice")
    assert (lease.lease_duration_s, lease.renew_deadline_s, lease.retry_period_s) == (20.0, 12.5, 3.0)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"SLUICE_LEADER_ELECTION": "yes"}, "SLUICE_LEADER_ELECTION must be true or false"),
        ({"SLUICE_LEADER_ELECTION": "true"}, "needs POD_NAMESPACE"),
        (
            {"SLUICE_LEADER_ELECTION": "true", "POD_NAMESPACE": "x", "SLUICE_RETRY_PERIOD_SECONDS": "soon"},
            "SLUICE_RETRY_PERIOD_SECONDS must be a number",
        ),
        (
            {"SLUICE_LEADER_ELECTION": "true", "POD_NAMESPACE": "x", "SLUICE_RENEW_DEADLINE_SECONDS": "20"},
            "SLUICE_RENEW_DEADLINE_SECONDS < SLUICE_LEASE_DURATION_SECONDS",
        ),
    ],
)
def test_bad_leader_election_settings_name_the_variable(env: dict[str, str], words: str) -> None:
    with pytest.raises(ValueError) as err:
        OperatorConfig.from_env(env)
    assert words in str(err.value)
