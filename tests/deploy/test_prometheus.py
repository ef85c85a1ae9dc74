"""deploy/prometheus and deploy/alertmanager: promtool checks, rule conventions, and that
every metric the rules read is one the worker exports (a renamed metric fails here, not
silently in production). promtool comes from Debian's `prometheus` package."""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import Metrics
from tests import ROOT

PROM_DIR = ROOT / "deploy" / "prometheus"
RULES = PROM_DIR / "rules" / "refstream.yml"
RULE_TESTS = PROM_DIR / "tests" / "refstream_test.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: install Debian's prometheus package (apt-get install -y prometheus); "
    "`make test` does it when run as root",
)

METRIC_NAME = re.compile(r"\brefstream_[a-z0-9_]+\b")


@functools.cache
def exported_names() -> frozenset[str]:
    """Sample names a worker exports (with _total, _bucket, ... suffixes). Labelled metrics
    show no samples until a label set exists, so touch one on each."""
    m = Metrics()
    for metric in vars(m).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*["x"] * len(metric._labelnames))
    text = m.render().decode()
    return frozenset(s.name for family in text_string_to_metric_families(text) for s in family.samples)


@functools.cache
def family_names() -> frozenset[str]:
    """Metric family names as defined in streams.metrics (counters without _total)."""
    return frozenset(c._name for c in vars(Metrics()).values() if isinstance(c, MetricWrapperBase))


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for g in groups for rule in g["rules"] if "alert" in rule]


def run(*args: str, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@needs_promtool
@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus.yml"),  # offline: also loads rules/*.yml
        ("check", "rules", "rules/refstream.yml"),  # includes the duplicate-rule lint
        ("test", "rules", "tests/refstream_test.yml"),
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_promtool(args):
    result = run(*args)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


def rule_metric_names() -> list[tuple[str, str]]:
    """(metric, where) for every refstream_* name in an expression or an annotation."""
    found = set()
    for rule in alert_rules():
        found |= {(n, "expr") for n in METRIC_NAME.findall(rule["expr"])}
        found |= {(n, "text") for text in rule["annotations"].values() for n in METRIC_NAME.findall(text)}
    return sorted(found)


@pytest.mark.parametrize("name,where", rule_metric_names())
def test_rule_metric_is_exported(name, where):
    """Expressions need an exported series name; annotations may name a family (histograms)."""
    known = exported_names() | (family_names() if where == "text" else frozenset())
    assert name in known, f"{name} is used in {RULES.name} ({where}) but streams.metrics does not export it"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}")
def test_alert_has_severity_and_runbook(rule):
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert rule["annotations"]["summary"].strip()
    assert len(rule["annotations"]["description"].split()) >= 20, "description should say what to check"
    assert "job=\"refstream\"" in rule["expr"], "rules select the scrape job of prometheus.yml"


def test_every_alert_fires_and_stays_silent_in_unit_tests():
    """promtool only checks the cases written down: require both kinds for every alert."""
    fired, silent = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - fired == set(), "alerts without a firing test case"
    assert names - silent == set(), "alerts without a silent test case"


def test_scrape_job_matches_the_rules():
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    dns = jobs["refstream"]["dns_sd_configs"]  # every replica of the compose service
    assert [(d["names"], d["port"]) for d in dns] == [(["refstream-worker"], 6066)]
    assert jobs["refstream"].get("metrics_path", "/metrics") == "/metrics"
    am = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == ["alertmanager:9093"]
    assert config["rule_files"] == ["rules/*.yml"]


def test_alertmanager_routes_to_a_declared_receiver():
    config = yaml.safe_load(ALERTMANAGER.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    routes = [config["route"], *config["route"].get("routes", [])]
    assert {r["receiver"] for r in routes} <= receivers.keys()
    urls = [w["url"] for r in receivers.values() for w in r.get("webhook_configs", [])]
    assert "http://127.0.0.1:5001/" in urls


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not found (Debian: prometheus-alertmanager)")
def test_amtool_check_config():
    result = subprocess.run(["amtool", "check-config", str(ALERTMANAGER)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
