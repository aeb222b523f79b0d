"""The deployment files under deploy/: parse them, check them with the real tools where present.

- every YAML/JSON file parses;
- Prometheus: ``promtool check config``/``check rules`` and the rule unit tests
  (``promtool test rules``); the dashboard's queries parse as PromQL too;
- every metric an alert or a panel names exists in :class:`dicom_node.metrics.Metrics`
  (with the right suffix for its type, and only its own label names);
- alerts carry severity, summary, description and a runbook anchor;
- compose: ``docker compose config`` when Docker's compose plugin is there, else the
  parsed file (services, bind mounts, volumes, ports against the container config);
- the Orthanc configuration and Lua route run in a real Orthanc when Debian's is installed;
- the Dockerfiles pin torch, run as non-root, expose the ports and health-check /healthz;
- the Helm chart: ``helm lint``/``helm template`` when helm is installed, else a small
  renderer below for the Go-template subset the chart uses, then the manifests' kinds,
  probes, volume claims and the ConfigMap's config.yaml through ``parse_config``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from dicom_node.config import Config, parse_config
from dicom_node.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "dicom-node.json"
CHART = DEPLOY / "helm" / "dicom-node"
DOCKER = DEPLOY / "docker"
ORTHANC = Path("/usr/sbin/Orthanc")

EXPECTED_ALERTS = {
    "DicomNodePartialReports",
    "DicomNodeDown",
    "DicomNodeNotReady",
    "DicomNodeDeadLetters",
    "DicomNodeTimeToResultSlow",
    "DicomNodeSpoolDiskLow",
    "DicomNodeHighRiskRateChanged",
    "DicomNodeNoStudies",
    "DicomNodeJobFailures",
}
SEVERITIES = {"critical", "warning", "info"}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _run(
    args: list[str], cwd: Path = ROOT, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "promtool not installed (Debian's prometheus package; scripts/install-tools.sh)"
        )
    return path


# --- every file parses --------------------------------------------------------------------


def _data_files() -> list[Path]:
    templates = CHART / "templates"
    return sorted(
        p
        for p in DEPLOY.rglob("*")
        if p.suffix in {".yml", ".yaml", ".json"} and templates not in p.parents
    )


def test_every_yaml_and_json_file_under_deploy_parses() -> None:
    files = _data_files()
    assert len(files) >= 12, files
    for path in files:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            assert isinstance(json.loads(text), dict), path
        else:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
            assert docs and all(isinstance(d, dict) for d in docs), path


# --- Prometheus: real promtool ------------------------------------------------------------


def test_promtool_checks_the_config_and_its_rule_files() -> None:
    result = _run([_promtool(), "check", "config", str(PROM / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alerts.yml" in result.stdout  # rule_files resolved and checked too


def test_promtool_checks_the_rules() -> None:
    result = _run([_promtool(), "check", "rules", str(PROM / "alerts.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    """alerts.test.yml (minutes) and alerts.trends.test.yml (working hours, URGENT share)."""
    files = sorted(PROM.glob("*.test.yml"))
    assert {p.name for p in files} >= {"alerts.test.yml", "alerts.trends.test.yml"}
    result = _run([_promtool(), "test", "rules", *map(str, files)], cwd=PROM, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _panel_exprs() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]


def _grafana_to_promql(expr: str) -> str:
    """Grafana's variables replaced by what they stand for, so PromQL tools can read it."""
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    exprs = _panel_exprs()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel_query:{i}", "expr": _grafana_to_promql(e)}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = _run([_promtool(), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout


# --- metric names against dicom_node/metrics.py ---------------------------------------------

_METRIC = re.compile(r"\bdicom_node_[a-z0-9_]+")
_RECORDED = re.compile(r"\bdicom_node:[a-zA-Z0-9_:]+")
_SELECTOR = re.compile(r"\b(dicom_node_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _exposed() -> dict[str, set[str]]:
    """Every series name the node exposes, with the label names it may carry."""
    metrics = Metrics(CollectorRegistry())
    # The state collector is registered by the node at start; feed it one row of each.
    metrics.watch_state(lambda: ({"receiving": 1}, {("pending", "pacs"): 1}))
    families: dict[str, tuple[str, set[str]]] = {}
    for family in metrics.registry.collect():
        labels = {k for s in family.samples for k in s.labels}
        families[family.name] = (family.type, labels)
    for wrapper in vars(metrics).values():
        if isinstance(wrapper, MetricWrapperBase):
            kind, labels = families[wrapper._name]
            families[wrapper._name] = (kind, labels | set(wrapper._labelnames))
    exposed: dict[str, set[str]] = {}
    for name, (kind, labels) in families.items():
        for suffix in _SUFFIXES[kind]:
            extra = {"le"} if suffix == "_bucket" else set()
            exposed[name + suffix] = labels | extra | TARGET_LABELS
    return exposed


def _alert_rules() -> list[dict[str, Any]]:
    return [r for g in _load_yaml(PROM / "alerts.yml")["groups"] for r in g["rules"]]


def _queries() -> dict[str, str]:
    """Every PromQL expression shipped: rules, panel targets, dashboard variables."""
    queries = {f"alerts.yml {r.get('alert') or r['record']}": r["expr"] for r in _alert_rules()}
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            queries[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for var in _dashboard()["templating"]["list"]:
        if var["type"] == "query":
            queries[f"variable {var['name']}"] = var["definition"]
    return queries


def test_every_metric_in_alerts_and_dashboard_exists_in_metrics_py() -> None:
    exposed = _exposed()
    # The families the operations issue lists, to catch a metric renamed in metrics.py.
    for name in (
        "dicom_node_time_to_result_seconds_bucket",
        "dicom_node_study_priority_total",
        "dicom_node_jobs_total",
        "dicom_node_dead_letters",
        "dicom_node_spool_free_bytes",
        "dicom_node_outbox_items",
    ):
        assert name in exposed, name
    recorded = {r["record"] for r in _alert_rules() if "record" in r}
    used: set[str] = set()
    for where, expr in _queries().items():
        names = set(_METRIC.findall(expr))
        records = set(_RECORDED.findall(expr))
        assert records <= recorded, f"{where}: not recorded in alerts.yml: {records - recorded}"
        assert names or records or 'up{job="dicom-node"}' in expr, f"{where}: no node metric"
        for name in names:
            stem = re.sub(r"_(bucket|sum|count|total)$", "", name)
            assert name in exposed, (
                f"{where}: {name} is not exposed by dicom_node/metrics.py "
                f"(stem {stem}; exposed: {sorted(exposed)})"
            )
            used.add(name)
        for name, matchers in _SELECTOR.findall(expr):
            for label in _MATCHER.findall(matchers):
                assert label in exposed[name], f"{where}: {name} has no label {label!r}"
    # The panels the dashboard promises.
    for name in (
        "dicom_node_time_to_result_seconds_bucket",
        "dicom_node_inference_seconds_bucket",
        "dicom_node_store_seconds_bucket",
        "dicom_node_outbox_items",
        "dicom_node_dead_letters",
        "dicom_node_spool_free_bytes",
        "dicom_node_triage_total",
        "dicom_node_job_failures_total",
        "dicom_node_partial_reports_total",
        "dicom_node_associations_active",
    ):
        assert name in used, name


# --- alert rules --------------------------------------------------------------------------


def test_alerts_have_severity_summary_description_and_runbook() -> None:
    alerts = [r for r in _alert_rules() if "alert" in r]
    names = [r["alert"] for r in alerts]
    assert len(names) == len(set(names)), names
    assert set(names) >= EXPECTED_ALERTS, EXPECTED_ALERTS - set(names)
    for rule in alerts:
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        notes = rule["annotations"]
        assert notes["summary"].strip() and notes["description"].strip(), name
        assert notes["runbook"] == f"docs/operations.md#{name.lower()}", name


def test_runbook_anchors_are_headings_of_the_operations_guide() -> None:
    guide = ROOT / "docs" / "operations.md"
    if not guide.exists():
        pytest.skip("docs/operations.md is not written yet")
    # GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens.
    anchors = {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in guide.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }
    for rule in _alert_rules():
        if "alert" in rule:
            anchor = rule["annotations"]["runbook"].partition("#")[2]
            assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in {guide}"


def test_alert_rules_select_the_scrape_job() -> None:
    config = _load_yaml(PROM / "prometheus.yml")
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    node_job = jobs["dicom-node"]
    targets = [t for sc in node_job["static_configs"] for t in sc["targets"]]
    container = parse_config(_load_yaml(DOCKER / "config.yaml"))
    assert targets == [f"node:{container.metrics.port}"]
    assert config["rule_files"] == ["alerts.yml"]
    for rule in _alert_rules():
        for job in re.findall(r'job="([^"]*)"', rule["expr"]):
            assert job == "dicom-node", rule.get("alert")


def test_no_studies_alert_says_its_hours_are_utc() -> None:
    rule = next(r for r in _alert_rules() if r.get("alert") == "DicomNodeNoStudies")
    assert "hour()" in rule["expr"] and "day_of_week()" in rule["expr"]
    assert "UTC" in rule["annotations"]["description"]


# --- Grafana ------------------------------------------------------------------------------


def test_dashboard_is_provisioned_against_the_compose_prometheus() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "dicom-node"
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    titles = {p["title"] for p in panels}
    for title in (
        "Studies completed per hour",
        "Time to result",
        "Inference latency p95 by engine",
        "Dead letters",
        "Spool free",
        "Outbox depth",
        "Job failures and PARTIAL reports by reason",
        "Associations active",
    ):
        assert title in titles, title
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"

    compose = _compose()
    sources = _load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    providers = _load_yaml(DEPLOY / "grafana/provisioning/dashboards/dicom-node.yml")
    (provider,) = providers["providers"]
    mounts = dict(_bind_mounts(compose["services"]["grafana"]))
    assert mounts["/var/lib/grafana/dashboards"] == DEPLOY / "grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == DEPLOY / "grafana/provisioning"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


# --- compose ------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = _load_yaml(DEPLOY / "compose.yaml")
    return data


def _bind_mounts(service: dict[str, Any]) -> Iterator[tuple[str, Path]]:
    """(container path, host path) of each bind mount; host paths resolved against deploy/."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            yield target, (DEPLOY / source).resolve()


def test_compose_config_with_docker() -> None:
    docker = shutil.which("docker")
    if docker is None or _run([docker, "compose", "version"], timeout=30).returncode != 0:
        pytest.skip("docker compose is not installed (the parsed file is checked below)")
    result = _run([docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "-q"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_services_mounts_and_volumes() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"node", "orthanc", "prometheus", "grafana"} <= set(services)
    declared = set(compose["volumes"])
    assert {"spool", "engines", "orthanc-storage", "prometheus-data"} <= declared
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: undeclared volume {source}"
        for target, host in _bind_mounts(service):
            assert host.exists(), f"{name}: {host} (mounted at {target}) does not exist"
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert context == ROOT, name
            assert (context / service["build"]["dockerfile"]).is_file(), name

    node = services["node"]
    assert node["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    mounts = {t: s for s, t in (v.split(":")[:2] for v in node["volumes"])}
    container = parse_config(_load_yaml(DOCKER / "config.yaml"))
    assert mounts[str(container.storage.spool_dir)] == "spool"
    assert mounts[str(container.engines.cache_dir)] == "engines"
    assert dict(_bind_mounts(node))["/etc/dicom-node/config.yaml"] == DOCKER / "config.yaml"
    assert any(p.endswith(f":{container.node.port}") for p in node["ports"])
    grace = node["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > container.node.drain_seconds
    # The demo engines are built before the node starts (a missing engine stops the start).
    assert node["depends_on"]["engines"]["condition"] == "service_completed_successfully"
    assert "engines" in services["engines"]["command"] and "build" in services["engines"]["command"]

    prometheus = dict(_bind_mounts(services["prometheus"]))
    assert prometheus["/etc/prometheus/prometheus.yml"] == PROM / "prometheus.yml"
    assert prometheus["/etc/prometheus/alerts.yml"] == PROM / "alerts.yml"
    retention = next(a for a in services["prometheus"]["command"] if "retention.time" in a)
    assert int(retention.split("=")[1].rstrip("d")) > 7  # the 7-day URGENT-share window


def _orthanc_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "orthanc/orthanc.json").read_text("utf-8"))
    return data


def test_container_config_orthanc_and_lua_agree() -> None:
    raw = _load_yaml(DOCKER / "config.yaml")
    config = parse_config(raw)
    assert config.node.host == "0.0.0.0" and config.metrics.host == "0.0.0.0"
    assert config.storage.spool_dir == Path("/var/lib/dicom-node/spool")
    assert config.engines.cache_dir == Path("/var/lib/dicom-node/engines")
    assert config.engines.backend == "auto"

    orthanc = _orthanc_json()
    compose = _compose()
    (destination,) = config.destinations
    assert destination.host == "orthanc" and "orthanc" in compose["services"]
    assert (destination.ae_title, destination.port) == (orthanc["DicomAet"], orthanc["DicomPort"])
    assert orthanc["DicomAet"] in config.node.allowed_calling_aes
    node = orthanc["DicomModalities"]["node"]
    assert node == {"AET": config.node.ae_title, "Host": "node", "Port": config.node.port}

    mounts = dict(_bind_mounts(compose["services"]["orthanc"]))
    assert compose["services"]["orthanc"]["command"] == ["/etc/orthanc/orthanc.json"]
    assert mounts["/etc/orthanc/orthanc.json"] == DEPLOY / "orthanc/orthanc.json"
    (lua,) = orthanc["LuaScripts"]
    assert mounts[lua] == DEPLOY / "orthanc/route.lua"
    script = (DEPLOY / "orthanc/route.lua").read_text("utf-8")
    assert f'local SKIP = {{ ["{config.node.ae_title}"] = true }}' in script
    assert "RestApiPost('/modalities/node/store'," in script  # a job that can fail visibly
    assert (orthanc["SaveJobs"], orthanc["JobsHistorySize"]) == (True, 1000)


# --- the Orthanc configuration and Lua route in a real Orthanc -----------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_orthanc_runs_the_compose_config_and_routes_with_the_loop_guard(tmp_path: Path) -> None:
    if not ORTHANC.exists() or shutil.which("storescu") is None:
        pytest.skip("Debian's orthanc and dcmtk are not installed (scripts/install-tools.sh)")
    from dicom_node.synthetic import StudyIdentity, make_ct_series, make_dx, write

    # The compose file as it is; only what ties it to containers changes: ports, storage,
    # the Lua path and the node's host (nothing listens there: routing is read from the log).
    config = copy.deepcopy(_orthanc_json())
    http_port, dicom_port = _free_port(), _free_port()
    config.update(
        StorageDirectory=str(tmp_path / "db"),
        IndexDirectory=str(tmp_path / "db"),
        LuaScripts=[str(DEPLOY / "orthanc/route.lua")],
        HttpPort=http_port,
        DicomPort=dicom_port,
        RemoteAccessAllowed=False,
    )
    config["DicomModalities"]["node"].update(Host="127.0.0.1", Port=_free_port())
    (tmp_path / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    image = np.random.default_rng(0).random((32, 32))
    files = {}
    for n, caller in enumerate(("MODALITY", "TRIAGE"), start=1):
        ds = make_dx(image, identity=StudyIdentity.synthetic(n))
        files[caller] = (write(ds, tmp_path / f"{caller}.dcm"), str(ds.SOPInstanceUID))
    # A CT slice: the multimodal engine reads the study's hip CT, so CT is routed too.
    (ct,) = make_ct_series(np.zeros((1, 8, 8)), identity=StudyIdentity.synthetic(3))
    ct.BodyPartExamined = "PELVIS"
    files["CT"] = (write(ct, tmp_path / "CT.dcm"), str(ct.SOPInstanceUID))
    # Radiographs of another part, or of none: the node's default rules take an AP or PA
    # without a body part, so an AP chest without one was routed and read as a pelvis.
    for n, part in enumerate(("CHEST", ""), start=4):
        other = make_dx(image, identity=StudyIdentity.synthetic(n))
        if part:
            other.BodyPartExamined = part
        else:
            del other.BodyPartExamined
        files[part or "NONE"] = (write(other, tmp_path / f"{part or 'none'}.dcm"),
                                 str(other.SOPInstanceUID))  # fmt: skip

    log_path = tmp_path / "orthanc.log"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def answers() -> bool:
        try:
            with opener.open(f"http://127.0.0.1:{http_port}/system", timeout=1):
                return True
        except OSError:
            return proc.poll() is not None  # stop waiting; asserted below

    env = {**os.environ, "TCP_NODELAY": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(ORTHANC), str(tmp_path / "orthanc.json")],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait(answers, 20, "Orthanc's REST API")
        assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
        for name, (path, _) in files.items():
            caller = "TRIAGE" if name == "TRIAGE" else "MODALITY"
            sent = _run(
                ["storescu", "-aet", caller, "-aec", config["DicomAet"], "127.0.0.1",
                 str(dicom_port), str(path)],
                timeout=30,
            )  # fmt: skip
            assert sent.returncode == 0, sent.stdout + sent.stderr
        routed = re.compile(rf"route \S+ sop={re.escape(files['MODALITY'][1])} .*-> node")
        routed_ct = re.compile(rf"route \S+ sop={re.escape(files['CT'][1])} modality=CT .*-> node")
        skipped = re.compile(rf"skip \S+ sop={re.escape(files['TRIAGE'][1])} .*skip list")
        other_parts = [
            re.compile(
                rf"skip \S+ sop={re.escape(files[name][1])} modality=DX part={part} "
                r"from=MODALITY: body part not routed"
            )
            for name, part in (("CHEST", "CHEST"), ("NONE", ""))
        ]

        def logged() -> bool:
            text = log_path.read_text(errors="replace")
            return all(p.search(text) for p in (routed, routed_ct, skipped, *other_parts))

        try:
            _wait(logged, 10, "the Lua route's decisions in Orthanc's log")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_path.read_text(errors='replace')[-3000:]}") from None
    finally:
        proc.kill()  # a throwaway database: no clean shutdown needed
        proc.wait(timeout=10)


# --- Dockerfiles --------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    result = []
    for line in lines:
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def _extras() -> set[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return set(tomllib.load(f)["project"]["optional-dependencies"])


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_pins_torch_runs_as_non_root_and_checks_health(name: str) -> None:
    path = DOCKER / name
    steps = _instructions(path)
    runs = " ".join(args for word, args in steps if word == "RUN")
    torch_installs = re.findall(r"pip install[^&;]*\btorch\b[^&;]*", runs)
    assert torch_installs, name
    for install in torch_installs:
        assert '"torch==2.13.0"' in install, f"{name}: torch not pinned: {install}"
    for extras in re.findall(r'pip install "\.\[([^\]]*)\]"', runs):
        assert set(extras.split(",")) <= _extras(), f"{name}: unknown extra in {extras}"
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, name
    assert any(w == "RUN" and "useradd" in a and "10001" in a for w, a in steps), name
    assert ("EXPOSE", "11112 9108") in steps, name
    assert ("STOPSIGNAL", "SIGTERM") in steps, name
    assert steps[-1] == ("CMD", '["dicom-node","serve","--config","/etc/dicom-node/config.yaml"]')
    health = next(a for w, a in steps if w == "HEALTHCHECK")
    assert "/healthz" in health and "urllib" in health and "curl" not in health, name
    volumes = json.loads(next(a for w, a in steps if w == "VOLUME"))
    container = parse_config(_load_yaml(DOCKER / "config.yaml"))
    assert set(volumes) == {str(container.storage.spool_dir), str(container.engines.cache_dir)}
    # Everything copied from the build context exists, and the context filter lets it in.
    ignore = (DOCKER / f"{name}.dockerignore").read_text(encoding="utf-8")
    for word, args in steps:
        if word == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"{name}: COPY {source}"
                top = source.split("/")[0]
                assert f"!{top}" in ignore, f"{name}: {source} excluded by the .dockerignore"


def test_cpu_and_gpu_images_use_their_bases_and_extras() -> None:
    cpu = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    gpu = (DOCKER / "Dockerfile.gpu").read_text(encoding="utf-8")
    assert "python:3.11-slim-bookworm" in cpu
    assert 'pip install ".[ml]"' in cpu  # onnxruntime, the CPU runtime
    assert re.search(r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3", gpu)
    assert 'pip install ".[ml,gpu]"' in gpu
    assert not re.search(r"apt-get install[^&]*dcmtk", cpu)  # not needed at run time


# --- Helm ---------------------------------------------------------------------------------


class _Template:
    """Go text/template, the subset the chart uses: fields, if/else/end, define/include,
    pipelines with default, quote, toYaml, nindent, indent, trunc, trimSuffix, printf,
    sha256sum, and comments. Anything else raises, so the chart cannot drift past it."""

    _ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
    _WORD = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')

    def __init__(self) -> None:
        self.defines: dict[str, list[Any]] = {}
        self.funcs: dict[str, Callable[..., Any]] = {
            "include": self._include,
            "default": lambda fallback, value: value if self._truthy(value) else fallback,
            "quote": lambda value: json.dumps(self._show(value)),
            "toYaml": lambda value: yaml.safe_dump(
                value, default_flow_style=False, sort_keys=True, width=1000
            ).rstrip("\n"),
            "nindent": lambda n, text: "\n" + self._indent(n, text),
            "indent": self._indent,
            "trunc": lambda n, text: text[:n],
            "trimSuffix": lambda suffix, text: text.removesuffix(suffix),
            "printf": lambda fmt, *args: fmt % args,
            "sha256sum": lambda text: hashlib.sha256(text.encode()).hexdigest(),
        }

    @staticmethod
    def _indent(n: int, text: str) -> str:
        return " " * n + text.replace("\n", "\n" + " " * n)

    @staticmethod
    def _truthy(value: Any) -> bool:
        return value not in (None, False, 0, "") and not (
            isinstance(value, dict | list) and not value
        )

    @staticmethod
    def _show(value: Any) -> str:
        if value is None or isinstance(value, dict | list):
            raise ValueError(f"cannot print {value!r} in a template")
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def parse(self, source: str) -> list[Any]:
        tokens: list[list[Any]] = []
        pos = 0
        for m in self._ACTION.finditer(source):
            tokens.append(["text", source[pos : m.start()]])
            tokens.append(["action", m.group(2).strip(), bool(m.group(1)), bool(m.group(3))])
            pos = m.end()
        tokens.append(["text", source[pos:]])
        for i, token in enumerate(tokens):
            if token[0] == "action":
                if token[2]:
                    tokens[i - 1][1] = tokens[i - 1][1].rstrip()
                if token[3]:
                    tokens[i + 1][1] = tokens[i + 1][1].lstrip()
        nodes, end = self._block(tokens, 0)
        if end != len(tokens):
            raise ValueError(f"unexpected {{{{ {tokens[end][1]} }}}}")
        return nodes

    def _block(self, tokens: list[list[Any]], i: int) -> tuple[list[Any], int]:
        nodes: list[Any] = []
        while i < len(tokens):
            kind, body = tokens[i][0], tokens[i][1]
            if kind == "text":
                nodes.append(("text", body))
                i += 1
                continue
            if body.startswith("/*"):
                i += 1
                continue
            word = body.split()[0]
            if body in ("end", "else"):
                return nodes, i
            if word == "if":
                then, i = self._block(tokens, i + 1)
                other: list[Any] = []
                if tokens[i][1] == "else":
                    other, i = self._block(tokens, i + 1)
                if tokens[i][1] != "end":
                    raise ValueError(f"if without end: {body}")
                nodes.append(("if", body[2:].strip(), then, other))
                i += 1
            elif word == "define":
                name = json.loads(body.split(None, 1)[1])
                inner, i = self._block(tokens, i + 1)
                if tokens[i][1] != "end":
                    raise ValueError(f"define without end: {name}")
                self.defines[name] = inner
                i += 1
            elif word in {"range", "with", "template", "block", "else", "end"} or ":=" in body:
                raise ValueError(f"unsupported action {{{{ {body} }}}}: use helm or extend this")
            else:
                nodes.append(("expr", body))
                i += 1
        return nodes, i

    def render(self, nodes: list[Any], dot: Any) -> str:
        out = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "expr":
                out.append(self._show(self._pipeline(node[1], dot)))
            else:
                branch = node[2] if self._truthy(self._pipeline(node[1], dot)) else node[3]
                out.append(self.render(branch, dot))
        return "".join(out)

    def _include(self, name: str, dot: Any) -> str:
        return self.render(self.defines[name], dot)

    def _arg(self, word: str, dot: Any) -> Any:
        if word.startswith('"'):
            return json.loads(word)
        if re.fullmatch(r"-?\d+", word):
            return int(word)
        if word in ("true", "false"):
            return word == "true"
        if word == ".":
            return dot
        if word.startswith("."):
            value = dot
            for key in word[1:].split("."):
                value = value.get(key) if isinstance(value, dict) else None
            return value
        raise ValueError(f"unsupported template argument {word!r}")

    def _pipeline(self, expr: str, dot: Any) -> Any:
        value: Any = None
        commands = [c.strip() for c in re.split(r'\|(?=(?:[^"]*"[^"]*")*[^"]*$)', expr)]
        for n, command in enumerate(commands):
            words = self._WORD.findall(command)
            if words[0] in self.funcs:
                args = [self._arg(w, dot) for w in words[1:]]
                value = self.funcs[words[0]](*args, *([value] if n else []))
            elif words[0].startswith(("(", "$")) or words[0][0].isalpha():
                raise ValueError(f"unsupported template function or syntax in {expr!r}")
            else:
                if n or len(words) != 1:
                    raise ValueError(f"cannot pipe into {command!r}")
                value = self._arg(words[0], dot)
        return value


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        values = values.setdefault(key, {})
    values[keys[-1]] = value


def _render_chart(overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart's manifests as `helm template test CHART` gives them (helm when present)."""
    helm = shutil.which("helm")
    if helm is not None:
        sets = [
            f"--set={k}={json.dumps(v) if not isinstance(v, str) else v}"
            for k, v in overrides.items()
        ]
        result = _run([helm, "template", "test", str(CHART), *sets])
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.safe_load_all(result.stdout) if d]
    chart = _load_yaml(CHART / "Chart.yaml")
    values = _load_yaml(CHART / "values.yaml")
    for key, value in overrides.items():
        _set_dotted(values, key, value)
    dot = {
        "Values": values,
        "Release": {"Name": "test", "Namespace": "default", "Service": "Helm"},
        "Chart": {
            "Name": chart["name"],
            "Version": chart["version"],
            "AppVersion": chart["appVersion"],
        },
    }
    engine = _Template()
    templates = sorted((CHART / "templates").iterdir())
    for path in templates:
        if path.name.startswith("_"):
            engine.parse(path.read_text(encoding="utf-8"))
    docs: list[dict[str, Any]] = []
    for path in templates:
        if path.suffix == ".yaml":
            text = engine.render(engine.parse(path.read_text(encoding="utf-8")), dot)
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def _by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def test_helm_lint() -> None:
    helm = shutil.which("helm")
    if helm is None:
        pytest.skip("helm is not installed (the chart is rendered by the test's own renderer)")
    result = _run([helm, "lint", str(CHART)])
    assert result.returncode == 0, result.stdout + result.stderr


def _millicores(value: str | int) -> int:
    text = str(value)
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


def _bytes(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return int(value[:-2]) * units[value[-2:]] if value[-2:] in units else int(value)


def test_helm_chart_default_manifests() -> None:
    chart = _load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2" and chart["name"] == "dicom-node"
    kinds = _by_kind(_render_chart({}))
    assert sorted(kinds) == ["ConfigMap", "Service", "StatefulSet"]
    (configmap,) = kinds["ConfigMap"]
    (statefulset,) = kinds["StatefulSet"]
    services = {s["metadata"]["name"]: s for s in kinds["Service"]}
    assert set(services) == {
        "test-dicom-node",
        "test-dicom-node-metrics",
        "test-dicom-node-headless",
    }

    # The ConfigMap's config.yaml is a valid node configuration.
    config: Config = parse_config(yaml.safe_load(configmap["data"]["config.yaml"]))
    assert config.metrics.host == "0.0.0.0"

    spec = statefulset["spec"]
    assert spec["replicas"] == 1
    assert spec["serviceName"] == "test-dicom-node-headless"
    assert services["test-dicom-node-headless"]["spec"]["clusterIP"] == "None"
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert pod["terminationGracePeriodSeconds"] > config.node.drain_seconds
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    # args, not command: the image's entrypoint (NGC's, in the GPU image) still runs.
    assert "command" not in container and container["args"] == [
        "dicom-node", "serve", "--config", "/etc/dicom-node/config.yaml",
    ]  # fmt: skip
    assert container["image"] == f"dicom-node:{chart['appVersion']}"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"dicom": config.node.port, "metrics": config.metrics.port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["timeoutSeconds"] == 5
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["spool"] == str(config.storage.spool_dir)
    assert mounts["engines"] == str(config.engines.cache_dir)
    assert mounts["config"] == "/etc/dicom-node"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    (init,) = pod["initContainers"]  # demo engines, built before the node starts
    assert "command" not in init and init["args"][:4] == [
        "dicom-node",
        "engines",
        "build",
        "--demo",
    ]

    values = _load_yaml(CHART / "values.yaml")
    claims = {c["metadata"]["name"]: c["spec"] for c in spec["volumeClaimTemplates"]}
    assert set(claims) == {"spool", "engines"}
    for name, claim in claims.items():
        assert claim["resources"]["requests"]["storage"] == values["persistence"][name]["size"]
        assert claim["accessModes"] == ["ReadWriteOnce"]
        assert "storageClassName" not in claim  # "" would mean: no dynamic provisioning

    service = services["test-dicom-node"]
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    # The DICOM Service only: a LoadBalancer must not publish /metrics and /readyz.
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"dicom": 11112}
    metrics = services["test-dicom-node-metrics"]
    assert metrics["spec"]["type"] == "ClusterIP"
    assert metrics["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert [(p["port"], p["targetPort"]) for p in metrics["spec"]["ports"]] == [(9108, "metrics")]
    published = _by_kind(_render_chart({"service.type": "LoadBalancer"}))["Service"]
    types = {s["metadata"]["name"]: s["spec"].get("type") for s in published}
    assert types["test-dicom-node"] == "LoadBalancer"
    assert types["test-dicom-node-metrics"] == "ClusterIP"
    # Sized for a 2-core node (a request of 2 CPUs never schedules there), and the instances
    # pynetdicom may hold at once fit the memory limit beside the engines (~2.5 GiB).
    resources = container["resources"]
    assert _millicores(resources["requests"]["cpu"]) < 2000
    limit = _bytes(resources["limits"]["memory"])
    in_flight = config.node.max_associations * config.node.max_instance_bytes
    assert in_flight + int(2.5 * 2**30) <= limit


def test_helm_chart_mounts_a_tls_secret_when_named() -> None:
    # The pod mounted only the ConfigMap and the volumes, its root file system read-only:
    # node.tls.certificate and key could name no file, so the node could not start with TLS.
    def pod(overrides: dict[str, Any]) -> dict[str, Any]:
        (statefulset,) = _by_kind(_render_chart(overrides))["StatefulSet"]
        return dict(statefulset["spec"]["template"]["spec"])

    plain = pod({})
    assert "tls" not in {v["name"] for v in plain["volumes"]}
    secured = pod({"tls.secretName": "triage-tls"})
    # Every container that reads the config: each command checks the TLS files are there
    # (the demo engines' init container without them exited 2, the pod never started).
    containers = [*secured["containers"], *secured["initContainers"]]
    assert [c["name"] for c in containers] == ["dicom-node", "demo-engines"]
    for container in containers:
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        tls = {"name": "tls", "mountPath": "/etc/dicom-node-tls", "readOnly": True}
        assert mounts["tls"] == tls, container["name"]
    volumes = {v["name"]: v for v in secured["volumes"]}
    assert volumes["tls"]["secret"] == {"secretName": "triage-tls", "defaultMode": 0o440}
    assert secured["securityContext"]["fsGroup"] == secured["securityContext"]["runAsGroup"]


def test_helm_chart_with_service_monitor_triton_and_a_storage_class() -> None:
    docs = _render_chart(
        {
            "serviceMonitor.enabled": True,
            "triton.enabled": True,
            "persistence.spool.storageClass": "local-ssd",
            "demoEngines.build": False,
        }
    )
    kinds = _by_kind(docs)
    assert sorted(kinds) == ["ConfigMap", "Deployment", "Service", "ServiceMonitor", "StatefulSet"]
    (monitor,) = kinds["ServiceMonitor"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [s for s in kinds["Service"] if selector.items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in scraped] == ["test-dicom-node-metrics"]
    # The job label comes from this Service label: the alert rules select job="dicom-node".
    assert scraped[0]["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "dicom-node"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # A renamed release keeps job="dicom-node", or the alerts on a dead node never fire.
    renamed = _by_kind(_render_chart({"serviceMonitor.enabled": True, "nameOverride": "triage"}))
    (monitor,) = renamed["ServiceMonitor"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    (service,) = [
        s for s in renamed["Service"] if selector.items() <= s["metadata"]["labels"].items()
    ]
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "dicom-node"

    (triton,) = kinds["Deployment"]
    (server,) = triton["spec"]["template"]["spec"]["containers"]
    assert server["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    triton_labels = triton["spec"]["template"]["metadata"]["labels"]
    (statefulset,) = kinds["StatefulSet"]
    node_selector = statefulset["spec"]["selector"]["matchLabels"]
    assert not node_selector.items() <= triton_labels.items()  # the node never selects Triton
    triton_services = [s for s in kinds["Service"] if s["metadata"]["name"].endswith("-triton")]
    (triton_service,) = triton_services
    assert {p["port"] for p in triton_service["spec"]["ports"]} == {8000, 8001, 8002}
    assert triton_service["spec"]["selector"].items() <= triton_labels.items()

    claims = {c["metadata"]["name"]: c["spec"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    assert claims["spool"]["storageClassName"] == "local-ssd"
    assert "initContainers" not in statefulset["spec"]["template"]["spec"]


def test_template_renderer_follows_go_trim_markers() -> None:
    engine = _Template()
    nodes = engine.parse('a:\n  {{- if .x }}\n  b: {{ .y | default "z" | quote }}\n  {{- end }}\n')
    assert engine.render(nodes, {"x": True, "y": ""}) == 'a:\n  b: "z"\n'
    assert engine.render(nodes, {"x": False}) == "a:\n"
    assert engine.render(engine.parse("k:\n  {{- toYaml .m | nindent 2 }}"), {"m": {"p": 1}}) == (
        "k:\n  p: 1"
    )
    with pytest.raises(ValueError, match="unsupported"):
        engine.parse("{{ range .x }}{{ end }}")


def test_service_managers_wait_for_the_whole_stop() -> None:
    # drain_seconds, the aborts, the job in hand, and the echo thread's 5 s beyond its C-ECHO
    # timeout (which overlaps the job's wait): a SIGKILL before that counts as a crash.
    from dicom_node.node import ABORT_SECONDS, JOB_STOP_SECONDS

    container = yaml.safe_load((DEPLOY / "docker" / "config.yaml").read_text())
    values = yaml.safe_load((DEPLOY / "helm" / "dicom-node" / "values.yaml").read_text())
    drain = max(container["node"]["drain_seconds"], values["config"]["node"]["drain_seconds"])
    needed = drain + ABORT_SECONDS + JOB_STOP_SECONDS
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    unit = (DEPLOY / "systemd" / "dicom-node.service").read_text()
    [systemd] = re.findall(r"^TimeoutStopSec=(\d+)$", unit, re.M)
    graces = {
        "compose": float(compose["services"]["node"]["stop_grace_period"].rstrip("s")),
        "helm": float(values["terminationGracePeriodSeconds"]),
        "systemd": float(systemd),
    }
    assert all(grace >= needed + 5 for grace in graces.values()), (needed, graces)
    readme = (DEPLOY / "README.md").read_text()
    assert f"--stop-timeout {graces['compose']:.0f}" in readme
