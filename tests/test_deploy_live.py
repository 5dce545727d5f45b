"""The monitored deployment, live: the compose topology on loopback, under a locust load.

`vllm serve` with the plugin (the session's `vllm_serve`), the gateway in remote mode in front
of it with a YOLO-World localizer (random weights, real forward passes), and Debian's
Prometheus scraping both with the shipped configuration (targets moved to loopback). One
bounded headless locust run drives the gateway; then the locust results, the CROP accounting and
every query of the Grafana dashboard are checked against what really happened.
Needs `scripts/ci-system-deps.sh` (prometheus).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml

from crop_localizer import LocalizerConfig
from crop_vllm.testing.servers import free_port, start_server, stop_server, wait_until_healthy
from server.app import create_app
from server.config import CropDefaults
from tests.engine_fixtures import SERVING_SETTINGS
from tests.gateway_fixtures import API_KEY, gateway_config
from tests.localizer_fixtures import TEST_IMGSZ

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "crop-serving.json"
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
#: The bounded load: one user per class, short, few tokens, images within the test limits.
USER_CLASSES = ("AutoUser", "PlcUser", "OffUser")
LOAD_SECONDS = 20
IMAGE_SIZES = "224x224,448x336,560x420"
#: The scrape jobs, and how long to wait for the scrapes a check needs (1 s interval).
JOBS = ("crop-gateway", "vllm")
JOB_PATTERN = "|".join(JOBS)
SCRAPE_WAIT_S = 60


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(server_loop, vllm_serve, world_model, vocabulary, tmp_path_factory):
    """The gateway as compose runs it: remote engine, YOLO-World localizer built from files."""
    files = tmp_path_factory.mktemp("localizer")
    torch.save({"model": world_model}, files / "yolov8n-worldv2.pt")
    vocabulary.save(files / "vocab.npz")
    config = gateway_config(
        vllm_serve.model,
        engine="remote",
        remote_urls=(vllm_serve.url,),
        crop=CropDefaults(SERVING_SETTINGS),
        localizer=LocalizerConfig(
            weights=files / "yolov8n-worldv2.pt",
            vocab_embeddings=files / "vocab.npz",
            imgsz=TEST_IMGSZ,
        ),
    )
    live = server_loop.serve(create_app(config))
    yield live
    server_loop.stop(live)


@dataclass
class Prometheus:
    url: str
    started: float

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.url}/api/v1/query", params={"query": expr, "time": at}, timeout=30
        )
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for_scrapes(self, predicate: Callable[[dict[str, float]], bool], expr: str) -> None:
        """Poll until `predicate` holds for {job: value of `expr`} (both jobs scraped)."""
        deadline = time.monotonic() + SCRAPE_WAIT_S
        while True:
            values = {
                r["metric"]["job"]: float(r["value"][1]) for r in self.query(expr, time.time())
            }
            if set(values) == set(JOBS) and predicate(values):
                return
            assert time.monotonic() < deadline, f"{expr} -> {values} after {SCRAPE_WAIT_S} s"
            time.sleep(0.2)


def loopback_config(gateway: str, engine: str, targets: Path) -> dict[str, Any]:
    """The shipped prometheus.yml with compose's service names replaced by loopback targets, a
    1 s scrape interval for a short test, and the shipped rules loaded from the checkout."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["rule_files"] = [str(PROMETHEUS_DIR / "rules" / "*.yml")]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["crop-gateway"]["static_configs"] = [{"targets": [gateway]}]
    jobs["vllm"]["file_sd_configs"] = [{"files": [str(targets / "*.yml")]}]
    shipped = yaml.safe_load((PROMETHEUS_DIR / "targets" / "vllm.yml").read_text())
    (targets / "vllm.yml").write_text(yaml.safe_dump([{**shipped[0], "targets": [engine]}]))
    return config


@pytest.fixture(scope="module")
def prometheus(gateway, vllm_serve, tmp_path_factory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run scripts/ci-system-deps.sh")
    folder = tmp_path_factory.mktemp("prometheus")
    (folder / "targets").mkdir()
    config = loopback_config(
        gateway.url.removeprefix("http://"),
        vllm_serve.url.removeprefix("http://"),
        folder / "targets",
    )
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = folder / "prometheus.log"
    process = start_server(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, log, timeout=60, path="/-/ready")
        yield Prometheus(url, time.time())
    finally:
        stop_server(process)


@dataclass
class LocustRun:
    returncode: int
    output: str
    stats: list[dict[str, str]]  # locust's PREFIX_stats.csv rows
    crop: dict[str, dict[str, float]]  # the locustfile's PREFIX_crop.json, by user class
    ended: float


@pytest.fixture(scope="module")
def load(gateway, prometheus, tmp_path_factory) -> LocustRun:
    """One bounded headless locust run against the gateway while Prometheus scrapes."""
    prefix = tmp_path_factory.mktemp("locust") / "run"
    # A few scrapes of each job before the load, so every counter's increase is seen.
    prometheus.wait_for_scrapes(
        lambda counts: min(counts.values()) >= 2, f'count_over_time(up{{job=~"{JOB_PATTERN}"}}[1h])'
    )
    result = subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "--host", gateway.url, "-u", str(len(USER_CLASSES)), "-r", "10",
            "-t", f"{LOAD_SECONDS}s", "--stop-timeout", "60", "--only-summary",
            "--csv", str(prefix), "--crop-api-key", API_KEY, "--crop-max-tokens", "8",
            "--crop-image-sizes", IMAGE_SIZES, *USER_CLASSES,
        ],
        capture_output=True,
        text=True,
        timeout=LOAD_SECONDS + 180,
    )  # fmt: skip
    # A scrape of each job that began after every response had arrived: the final counts.
    finished = time.time()
    prometheus.wait_for_scrapes(
        lambda stamps: min(stamps.values()) > finished + 1, f'timestamp(up{{job=~"{JOB_PATTERN}"}})'
    )
    with open(f"{prefix}_stats.csv") as stats:
        rows = list(csv.DictReader(stats))
    crop = json.loads(Path(f"{prefix}_crop.json").read_text())
    return LocustRun(result.returncode, result.stdout + result.stderr, rows, crop, time.time())


def aggregated(run: LocustRun) -> dict[str, str]:
    return next(row for row in run.stats if row["Name"] == "Aggregated")


# --------------------------------------------------------------------------------------------
# Locust
# --------------------------------------------------------------------------------------------


def test_locust_run_completes_without_failed_requests(load):
    assert load.returncode == 0, load.output[-3000:]
    assert int(aggregated(load)["Request Count"]) > 0
    assert int(aggregated(load)["Failure Count"]) == 0


def test_workload_mixes_streaming_whole_and_text_only_requests(load):
    names = {row["Name"] for row in load.stats}
    assert any(name.endswith("(stream)") for name in names)
    assert any(name.endswith("(whole)") for name in names)
    assert any(name.startswith("text only") for name in names)


@pytest.mark.parametrize("user_class", ["AutoUser", "PlcUser"])
def test_crop_modes_report_tokens_saved(load, user_class):
    assert load.crop[user_class]["visual_tokens_saved"] > 0


def test_crop_off_saves_no_tokens(load):
    assert load.crop["OffUser"]["visual_tokens_full"] > 0
    assert load.crop["OffUser"]["visual_tokens_saved"] == 0


def test_locust_and_prometheus_count_the_same_tokens_saved(load, prometheus):
    total = prometheus.query("sum(crop_visual_tokens_saved_total)", load.ended)
    assert float(total[0]["value"][1]) == sum(c["visual_tokens_saved"] for c in load.crop.values())


# --------------------------------------------------------------------------------------------
# Prometheus and the dashboard
# --------------------------------------------------------------------------------------------


def test_prometheus_scrapes_the_gateway_and_the_engine(load, prometheus):
    up = prometheus.query(f'up{{job=~"{JOB_PATTERN}"}}', load.ended)
    assert {r["metric"]["job"]: r["value"][1] for r in up} == dict.fromkeys(JOBS, "1")


def dashboard_queries() -> list[Any]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [
        pytest.param(target["expr"], id=f"{panel['title']} {target['refId']}")
        for panel in panels
        for target in panel.get("targets", [])
    ]


@pytest.mark.parametrize("expr", dashboard_queries())
def test_dashboard_query_returns_data(load, prometheus, expr):
    """Grafana's `$__rate_interval` becomes the whole scrape history, so rates see the load."""
    window = f"{math.ceil(load.ended - prometheus.started) + 1}s"
    result = prometheus.query(expr.replace("$__rate_interval", window), load.ended)
    values = [float(r["value"][1]) for r in result]
    assert any(math.isfinite(v) for v in values), f"{expr} -> {result}"
