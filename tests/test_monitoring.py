"""The monitoring stack in ``deploy/``: Prometheus config and alert rules, Grafana dashboard.

Real tools: ``promtool check config`` and ``promtool test rules`` (Debian's prometheus package,
installed by ``deploy/install.sh --test-tools``), and a real Prometheus started here with the
shipped config and rules, scraping a live babelgate API server (the real app under uvicorn, on
a fake engine: no model), queried through its HTTP API. Every metric name the dashboard and the
alerts use must be one the server exports: babelgate's (from ``ServerMetrics``'s registry),
vLLM's (from its metrics sources), a recording rule of ``alerts.yaml``, or Prometheus's ``up``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from conftest import fitted_gate, wait_until
from pgcluster import free_port
from prometheus_client import CollectorRegistry
from test_server_stream import FakeEngine

from babelgate.server.admin_store import ThresholdStore
from babelgate.server.app import create_app, ops
from babelgate.server.metrics import ServerMetrics
from babelgate.server.settings import ServeSettings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "babelgate.json"
INSTALL_HINT = "run `bash deploy/install.sh --test-tools` (installs Debian's prometheus)"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
            "_created"), "gauge": ("",)}  # fmt: skip
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "inf", "nan"}  # fmt: skip


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {INSTALL_HINT}")
    return found


# ----------------------------------------------------------------------------- metric names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, label lists, label
    matchers, ranges, strings and Grafana variables taken out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)
    expr = re.sub(r"\boffset\s+\w+", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def babelgate_series() -> set[str]:
    """Every sample name ``ServerMetrics`` exports, from its registry's families and types."""
    registry = CollectorRegistry()
    ServerMetrics(registry)
    return {family.name + suffix for family in registry.collect()
            for suffix in SUFFIXES[family.type]}  # fmt: skip


def vllm_series() -> set[str]:
    """Sample names vLLM's engine metrics can export, read from its metrics sources."""
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.submodule_search_locations, "vLLM is not installed"
    folder = Path(spec.submodule_search_locations[0]) / "v1" / "metrics"
    bases = {name for path in folder.glob("*.py")
             for name in re.findall(r'"(vllm:[a-z_:]+)"', path.read_text())}  # fmt: skip
    assert "vllm:num_requests_running" in bases, f"no vLLM metric names found in {folder}"
    return {base + suffix for base in bases for kinds in SUFFIXES.values() for suffix in kinds}


def rule_groups() -> list[dict]:
    return yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())["groups"]


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            metric = re.fullmatch(r"label_values\(\s*([\w:]+)\s*,\s*\w+\s*\)", var["definition"])
            assert metric, f"unexpected variable query {var['definition']!r}"
            exprs.append(metric.group(1))
    return exprs


def test_metric_names_are_read_from_promql() -> None:
    expr = ('sum by (language) (rate(babelgate_requests_total{decision="harmful"}[15m] offset 1h))'
            ' / on (language) group_left max(vllm:num_requests_running) > $weak_floor and up')
    assert metric_names(expr) == {"babelgate_requests_total", "vllm:num_requests_running", "up"}


def test_dashboard_and_alerts_use_only_exported_metrics() -> None:
    recorded = {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}
    exported = babelgate_series() | vllm_series() | recorded | {"up"}
    used_by = {"dashboard": set().union(*map(metric_names, dashboard_exprs())),
               "alerts": set().union(*(metric_names(r["expr"]) for g in rule_groups()
                                       for r in g["rules"]))}  # fmt: skip
    for where, used in used_by.items():
        unknown = sorted(used - exported)
        assert not unknown, f"the {where} reads metrics the server does not export: {unknown}"
    # What the dashboard must show (the list), by the series that carry it.
    assert {
        "babelgate_requests_total", "babelgate_gate_score_bucket", "babelgate_threshold",
        "babelgate_output_refusals_total", "babelgate_unprotected_requests_total",
        "babelgate_language_family_auroc", "babelgate_time_to_first_token_seconds_bucket",
        "babelgate_e2e_request_latency_seconds_bucket", "babelgate_gate_failures_total",
        "babelgate_requests_in_flight", "babelgate_threshold_store_up",
    } <= used_by["dashboard"]  # fmt: skip


def test_dashboard_panels_have_unique_ids_and_use_the_datasource_variable() -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


# ----------------------------------------------------------------------------- promtool


def test_promtool_checks_the_prometheus_config() -> None:
    done = subprocess.run([tool("promtool"), "check", "config", "prometheus.yml"],
                          cwd=PROMETHEUS, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    done = subprocess.run([tool("promtool"), "test", "rules", "alerts_test.yaml"],
                          cwd=PROMETHEUS, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "alerts_test.yaml").read_text()))
    alerts = {r["alert"] for g in rule_groups() for r in g["rules"] if "alert" in r}
    assert tested == alerts, f"alerts without a unit test: {sorted(alerts - tested)}"


def test_compose_mounts_what_exists_and_prometheus_scrapes_its_replicas() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"compose mounts missing {source}"
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for s in job["static_configs"]
               for t in s["targets"]]  # fmt: skip
    replicas = sorted(name for name, s in services.items() if "BABELGATE_STATE_URL" in
                      s.get("environment", {}))  # fmt: skip
    assert sorted(t.split(":")[0] for t in targets) == replicas == ["babelgate-a", "babelgate-b"]


# ----------------------------------------------------------------------------- live


@pytest.fixture
def live_babelgate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The real app served by uvicorn on a loopback port, on a fake engine and a real gate."""
    registry = CollectorRegistry()
    monkeypatch.setattr(ops, "REGISTRY", registry)  # /metrics shows this test's registry
    app = create_app(ServeSettings(), ServerMetrics(registry))
    svc = app.state.service
    svc.engine, svc._gate = FakeEngine(score=0.0), fitted_gate()
    svc.use_store(ThresholdStore(tmp_path, "abc"))
    svc.publish_threshold("yo")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "uvicorn serves the app")
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_prometheus_scrapes_a_live_babelgate_with_the_shipped_config(
    tmp_path: Path, live_babelgate: str
) -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS / f) for f in config["rule_files"]]
    config["scrape_configs"][0]["static_configs"][0]["targets"] = [live_babelgate]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(promql: str) -> list[dict]:
        try:
            r = httpx.get(f"{api}/query", params={"query": promql}, timeout=5)
        except httpx.HTTPError:
            return []
        return r.json()["data"]["result"] if r.status_code == 200 else []

    try:
        wait_until(lambda: prom.poll() is None and query('babelgate_threshold{language="yo"}'),
                   "Prometheus has scraped babelgate's threshold series", 60)  # fmt: skip
        (series,) = query('babelgate_threshold{language="yo"}')
        assert series["metric"]["job"] == "babelgate" and series["metric"]["fleet"] == "babelgate"
        assert float(series["value"][1]) == fitted_gate().threshold("yo").value
        assert [float(s["value"][1]) for s in query('up{job="babelgate"}')] == [1.0]
        groups = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        loaded = {r["name"] for g in groups for r in g["rules"]}
        assert loaded == {r.get("alert") or r["record"] for g in rule_groups() for r in g["rules"]}
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        log.close()
