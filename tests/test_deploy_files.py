"""The deployment files, checked statically with the tools that will read them.

docker-compose (Debian's) validates the compose files without a Docker engine, promtool the
Prometheus configuration and rules, and the Grafana dashboard is checked as JSON, its PromQL by
promtool and its metric names against what the gateway exports. Needs `scripts/ci-system-deps.sh`.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from crop_localizer.metrics import LocalizerMetrics
from crop_vllm.families import FAMILIES
from crop_vllm.options import CropSettings, setting_fields
from server.cli import build_parser
from server.flags import crop_settings
from server.metrics import GatewayMetrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
REPLICAS = DEPLOY / "docker-compose.replicas.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules" / "crop.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "crop-serving.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "crop.yml"
#: What Grafana substitutes for `$__rate_interval`, for checks outside Grafana.
RATE_INTERVAL = "1m"


def tool(name: str) -> str:
    """The path of a Debian tool the checks need; fails (never skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/ci-system-deps.sh")
    return path


def run(*command: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


@functools.cache
def compose_config(
    *files: Path, profiles: str = "remote", enable_ilp: str | None = None, env_file: bool = True
) -> dict[str, Any]:
    """The merged compose model as docker-compose resolves it (with deploy/.env unless
    `env_file` is False, and CROP_ENABLE_ILP when given); cached, so treat it as read-only."""
    args = [a for f in files for a in ("-f", str(f))]
    if not env_file:
        empty = Path(tempfile.mkdtemp()) / "empty.env"
        empty.write_text("")
        args += ["--env-file", str(empty)]
    env = {"PATH": "/usr/bin:/bin", "COMPOSE_PROFILES": profiles, "CROP_MODEL": "m"}
    if enable_ilp is not None:
        env["CROP_ENABLE_ILP"] = enable_ilp
    result = subprocess.run(
        [tool("docker-compose"), *args, "config"],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def flags(command: list[str]) -> dict[str, str]:
    """`--key=value` items of a command -> {key: value} (the last one wins)."""
    return dict(a[2:].partition("=")[::2] for a in command if a.startswith("--") and "=" in a)


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


# --------------------------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------------------------


def test_compose_file_is_valid():
    result = run(tool("docker-compose"), "-f", str(COMPOSE), "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_replicas_override_is_valid_on_top_of_the_compose_file():
    config = compose_config(COMPOSE, REPLICAS)
    gateway = flags(config["services"]["gateway"]["command"])
    assert "engine-2" in config["services"]
    assert config["services"]["gateway"]["command"].count("--backend=http://engine-2:8000") == 1
    assert gateway["engine"] == "remote"


def test_replicas_run_on_different_gpus():
    services = compose_config(COMPOSE, REPLICAS)["services"]

    def gpus(name: str) -> list[str]:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        return [i for d in devices for i in d["device_ids"]]

    assert gpus("engine") == ["0"]
    assert gpus("engine-2") == ["1"]


@pytest.mark.parametrize(
    ("profile", "services"),
    [
        ("remote", {"engine", "gateway", "prometheus", "grafana"}),
        ("embedded", {"embedded", "prometheus", "grafana"}),
    ],
)
def test_each_profile_starts_its_services(profile, services):
    config = compose_config(COMPOSE, profiles=profile)
    started = {n for n, s in config["services"].items() if profile in s.get("profiles", [])}
    assert started == services


def env_file() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (DEPLOY / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    )


def test_remote_profile_is_the_default_in_the_env_file():
    assert env_file()["COMPOSE_PROFILES"] == "remote"


def test_engine_is_vllm_serve_with_the_crop_architecture_and_request_kwargs():
    command = compose_config(COMPOSE)["services"]["engine"]["command"]
    overrides = json.loads(flags(command)["hf-overrides"])
    assert command[:2] == ["vllm", "serve"]
    assert "--trust-request-mm-kwargs" in command
    assert "--enable-prompt-tokens-details" in command  # the gateway's per-response check
    assert overrides["architectures"][0] in {f.crop_architecture for f in FAMILIES}


def deployed_settings(env_file: bool) -> dict[str, CropSettings]:
    """Each model service's CROP settings, as its engine or gateway reads them."""
    services = {
        **compose_config(COMPOSE, REPLICAS, env_file=env_file)["services"],
        **compose_config(COMPOSE, profiles="embedded", env_file=env_file)["services"],
    }
    found = {}
    for name in ("engine", "engine-2"):
        overrides = json.loads(flags(services[name]["command"])["hf-overrides"])
        assert set(overrides) == {"architectures"} | {s.key for s in setting_fields()}
        found[name] = CropSettings.from_hf_config(argparse.Namespace(**overrides))
    for name in ("gateway", "embedded"):
        command = services[name]["command"]
        assert {s.key.replace("_", "-") for s in setting_fields()} <= set(flags(command))
        found[name] = crop_settings(build_parser().parse_args(command[1:]))
    return found


@pytest.mark.parametrize("env_file", [True, False], ids=["deploy/.env", "compose fallbacks"])
def test_every_crop_setting_reaches_engines_and_gateways_with_the_plugins_default(env_file):
    """A default that differs between the plugin, the gateway CLI (which reads the plugin's)
    and the deployment files, or a setting missing from one of them, fails here."""
    assert deployed_settings(env_file) == dict.fromkeys(
        ("engine", "engine-2", "gateway", "embedded"), CropSettings()
    )


def test_the_env_file_sets_every_crop_setting_to_its_default():
    env = env_file()
    for spec in setting_fields():
        default = getattr(spec.default, "value", spec.default)
        expected = str(default).lower() if isinstance(default, bool) else str(default)
        assert env[spec.key.upper()] == expected, spec.key


def test_the_gateway_talks_to_the_engine_service():
    gateway = flags(compose_config(COMPOSE)["services"]["gateway"]["command"])
    assert gateway["backend"] == "http://engine:8000"


@pytest.mark.parametrize("enable_ilp", ["false", "true"])
def test_one_variable_turns_ilp_on_in_the_engine_and_the_gateways(enable_ilp):
    remote = compose_config(COMPOSE, REPLICAS, enable_ilp=enable_ilp)["services"]
    embedded = compose_config(COMPOSE, profiles="embedded", enable_ilp=enable_ilp)["services"]
    for engine in ("engine", "engine-2"):
        overrides = json.loads(flags(remote[engine]["command"])["hf-overrides"])
        assert overrides["crop_enable_ilp"] is (enable_ilp == "true")
    for gateway in (remote["gateway"], embedded["embedded"]):
        assert flags(gateway["command"])["crop-enable-ilp"] == enable_ilp


@pytest.mark.parametrize("enable_ilp", [False, True])
def test_the_engine_runs_as_ilp_requires(enable_ilp):
    """vLLM's own parser on the engine command, its --config file read from deploy/vllm/: what
    the plugin's settings require of the engine (`CropSettings.engine_requirements`), vLLM's
    defaults otherwise."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    config = compose_config(COMPOSE, enable_ilp=str(enable_ilp).lower())
    assert f"{DEPLOY / 'vllm'}:/etc/crop:ro" in config["services"]["engine"]["volumes"]
    vllm, serve, model, *rest = config["services"]["engine"]["command"]
    assert (vllm, serve) == ("vllm", "serve")
    local = [a.replace("/etc/crop", str(DEPLOY / "vllm")) for a in rest]
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", model, *local])
    required = CropSettings(enable_ilp=enable_ilp).engine_requirements()
    assert args.enforce_eager is required.get("enforce_eager", False)
    assert args.enable_prefix_caching is required.get("enable_prefix_caching", True)


@pytest.mark.parametrize("service", ["engine", "gateway", "embedded"])
def test_model_services_mount_weights_read_only_and_reserve_a_gpu(service):
    config = compose_config(COMPOSE, profiles="remote,embedded")["services"][service]
    devices = config["deploy"]["resources"]["reservations"]["devices"]
    assert any(v.endswith(":/models:ro") for v in config["volumes"])
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["capabilities"] == ["gpu"]


def test_embedded_container_answers_to_the_gateway_name_prometheus_scrapes():
    config = compose_config(COMPOSE, profiles="embedded")["services"]["embedded"]
    assert flags(config["command"])["engine"] == "embedded"
    assert "gateway" in config["networks"]["default"]["aliases"]


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_image_is_built_on_the_official_vllm_image():
    assert dockerfile_instructions()[0] == ("FROM", "vllm/vllm-openai:v0.32.0")


def test_image_runs_as_an_unprivileged_user():
    users = [args for op, args in dockerfile_instructions() if op == "USER"]
    assert users
    assert users[-1] not in ("root", "0")


def test_image_has_a_healthcheck_on_the_health_endpoint():
    checks = [args for op, args in dockerfile_instructions() if op == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/health" in checks[0]


def test_image_copies_only_code_no_weights():
    sources = {
        source
        for op, args in dockerfile_instructions()
        if op in ("COPY", "ADD")
        for source in args.split()[:-1]
    }
    assert sources == {"pyproject.toml", "README.md", "crop_vllm", "crop_localizer", "server"}


def test_build_context_excludes_everything_but_the_code():
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and r[0] != "#"]
    assert rules[0] == "*"  # an allowlist: weights or caches never reach the build
    assert {"**/*.pt", "**/*.safetensors"} <= set(rules)


# --------------------------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------------------------


def test_prometheus_config_passes_promtool():
    result = run(tool("promtool"), "check", "config", "--syntax-only", str(PROMETHEUS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_promtool():
    result = run(tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_gateway_and_each_engine():
    jobs = {j["job_name"]: j for j in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    targets = yaml.safe_load((DEPLOY / "prometheus" / "targets" / "vllm.yml").read_text())
    assert jobs["crop-gateway"]["static_configs"][0]["targets"] == ["gateway:8000"]
    assert jobs["vllm"]["file_sd_configs"][0]["files"] == ["/etc/prometheus/targets/*.yml"]
    assert targets[0]["targets"] == ["engine:8000"]


# --------------------------------------------------------------------------------------------
# Grafana
# --------------------------------------------------------------------------------------------


def test_dashboard_is_valid_json_with_unique_panel_ids():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert dashboard["uid"] == "crop-serving"
    assert len(ids) == len(set(ids))


def test_dashboard_panels_fit_the_grid():
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_queries_the_provisioned_datasource():
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]
    assert datasource["url"] == "http://prometheus:9090"
    assert {p["datasource"]["uid"] for p in panels} == {datasource["uid"]}


def test_dashboard_provider_reads_the_mounted_dashboards_folder():
    compose = yaml.safe_load(COMPOSE.read_text())
    provider = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"][0]
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_dashboard_promql_parses(tmp_path):
    """Every panel query, as a recording rule, through promtool's PromQL parser."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr{i}", "expr": e.replace("$__rate_interval", "1m")}
                    for i, e in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "metric",
    [
        "crop_visual_tokens_total",  # token savings by stage
        "crop_time_to_first_token_seconds_bucket",  # TTFT quantiles
        "crop_request_duration_seconds_bucket",  # latency quantiles
        "crop_completion_tokens_total",  # throughput
        "crop_localizer_batch_size_bucket",  # localizer batch size
        "crop_localization_seconds_bucket",  # localizer latency
        "vllm:kv_cache_usage_perc",  # KV-cache usage
        "crop_kv_bytes_total",  # KV bytes with and without ILP's saving
        "crop_kv_saved_fraction_bucket",  # KV saved per request
        'status=~"[45].."',  # errors
    ],
)
def test_dashboard_shows(metric):
    assert any(metric in e for e in dashboard_exprs())


def test_dashboard_uses_only_metrics_the_gateway_exports():
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    LocalizerMetrics(registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {m.name + s for m in registry.collect() for s in suffixes[m.type]}
    used = {name for e in dashboard_exprs() for name in re.findall(r"\bcrop_[a-z_]+\b", e)}
    assert used <= exported, used - exported
