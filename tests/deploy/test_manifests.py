"""Offline checks of deploy/: every file parses, matches its schema (compose-spec, Kubernetes)
and keeps the invariants the worker relies on. Needs no Docker engine and no cluster."""
from __future__ import annotations

import json
import re
import subprocess
import tomllib
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from schemas.units import DAY_MS
from streams.config import PREFIX, Settings
from streams.topology import INPUT_TOPICS, JOIN_TOPICS, OUTPUT_TOPICS
from tests import ROOT

COMPOSE_DIR = ROOT / "deploy" / "compose"
K8S_DIR = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
SCHEMAS = Path(__file__).parent / "schemas"

SETTINGS_VARS = {PREFIX + f.name.upper() for f in fields(Settings)}
SETTINGS_VARS |= {name + "_FILE" for name in SETTINGS_VARS}  # a setting's value read from a file
DEFAULTS = Settings()
# The oldest Kubernetes minor we support, and the newest the installed schemas know.
K8S_VERSIONS = ["1.29", kubernetes_validate.latest_version()]
# Written by the monitoring work: compose mounts them, and they may not exist yet.
MONITORING_PATHS = {
    ROOT / "deploy/prometheus/prometheus.yml",
    ROOT / "deploy/prometheus/rules",
    ROOT / "deploy/alertmanager/alertmanager.yml",
    ROOT / "deploy/grafana/provisioning",
    ROOT / "deploy/grafana/dashboards",
}
YAML_FILES = sorted(p for d in (COMPOSE_DIR, K8S_DIR) for p in d.rglob("*") if p.suffix in (".yaml", ".yml"))
K8S_MANIFESTS = sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@cache
def compose() -> dict:
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())


@cache
def k8s(kind: str, name: str | None = None) -> dict:
    """The one object of `kind` (and `name`) in the manifests."""
    found = [d for p in K8S_MANIFESTS for d in load_all(p)
             if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def worker_container() -> dict:
    return k8s("StatefulSet")["spec"]["template"]["spec"]["containers"][0]


def interpolate(value: Any) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, with a placeholder for secrets."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*)|:?\?[^}]*)?\}", lambda m: m.group(2) or "secret", str(value))


def worker_env(source: str) -> dict[str, str]:
    if source == "compose":
        env = compose()["services"]["refstream-worker"]["environment"]
        return {k: interpolate(v) for k, v in env.items()}
    return {**k8s("ConfigMap")["data"], **k8s("Secret")["stringData"]}


def core_dependencies() -> dict[str, str]:
    """Name -> version pin of the project's core dependencies (what the image's `pip install .` gets)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = (re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*(.*?)\s*(?:;.*)?$", d) for d in deps)
    return {m.group(1).lower(): m.group(2) for m in pins if m}


def quantity(value: str) -> float:
    """A Kubernetes quantity (`512Mi`, `4Gi`, `20G`) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", value)
    assert m, f"not a quantity: {value}"
    return float(m.group(1)) * units.get(m.group(2), 1)


def worker_replicas(source: str) -> int:
    if source == "compose":
        return compose()["services"]["refstream-worker"]["deploy"]["replicas"]
    return k8s("StatefulSet")["spec"]["replicas"]


# --- Every file parses and matches its schema --------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses_into_mappings(path: Path) -> None:
    docs = load_all(path)
    assert docs and all(isinstance(d, dict) for d in docs)


@cache
def compose_validator() -> jsonschema.Validator:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def schema_errors(validator: jsonschema.Validator, doc: Any) -> list[str]:
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc))


def test_compose_file_matches_compose_spec() -> None:
    assert schema_errors(compose_validator(), compose()) == []


# The schema must reject real mistakes, or the test above proves nothing.
@pytest.mark.parametrize("service", [
    {"imag": "redis:7"},
    {"image": "redis:7", "deploy": {"replica": 2}},
    {"image": "redis:7", "healthcheck": {"tests": ["CMD", "true"]}},
    {"image": "redis:7", "depends_on": {"kafka": {"condition": "started"}}},
    {"image": "redis:7", "ports": [{"target": 80, "host": "127.0.0.1"}]},
])
def test_compose_spec_rejects(service: dict) -> None:
    assert schema_errors(compose_validator(), {"services": {"s": service}})


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", K8S_MANIFESTS, ids=lambda p: p.name)
def test_k8s_manifest_matches_schema(path: Path, version: str) -> None:
    for doc in load_all(path):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}")


@pytest.mark.parametrize("mistake", [
    {"replica": 2},  # strict mode: unknown field
    {"replicas": "2"},
    {"template": {"spec": {"containers": [{"name": "w", "ports": [{"containerPort": "web"}]}]}}},
])
def test_k8s_schema_rejects(mistake: dict) -> None:
    spec = {"serviceName": "x", "selector": {}, "template": {"spec": {"containers": [{"name": "w"}]}}}
    doc = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "x"}, "spec": spec}
    kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**doc, "spec": {**spec, **mistake}}, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    resources = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["resources"]
    assert sorted(resources) == sorted(p.name for p in K8S_MANIFESTS if p.name != "secret.example.yaml")


# --- Settings: the names exist, the values load ------------------------------------------

ENV_FILES = [DOCKERFILE, COMPOSE_DIR / "compose.yaml", COMPOSE_DIR / "create-topics.sh",
             COMPOSE_DIR / ".env.example", *K8S_MANIFESTS, ROOT / "docs" / "operations.md"]


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_refstream_variables_are_settings(path: Path) -> None:
    names = set(re.findall(r"\bREFSTREAM_[A-Z0-9_]+", path.read_text()))
    assert sorted(names - SETTINGS_VARS) == []


@pytest.mark.parametrize("source", ["compose", "k8s"])
def test_worker_settings_load_and_fit_a_container(source: str) -> None:
    env = worker_env(source)
    settings = Settings.from_env(env)  # raises ConfigError on a bad value
    assert settings.web_bind == "0.0.0.0"  # the code default, 127.0.0.1, is unreachable from outside
    assert settings.clickhouse_dsn.startswith(("http://", "https://"))  # chdb is not in the image
    assert settings.pii_salt != DEFAULTS.pii_salt
    if settings.table_store.startswith("rocksdb://"):  # the image installs the core dependencies
        assert "rocksdict" in core_dependencies(), "rocksdb:// needs rocksdict in the image"
    # Workers beyond the join partitions idle: more replicas than partitions is a mistake.
    assert 1 <= worker_replicas(source) <= settings.partitions


# --- Kubernetes invariants ---------------------------------------------------------------


def web_port() -> int:
    return int(k8s("ConfigMap")["data"].get(PREFIX + "WEB_PORT") or DEFAULTS.web_port)


def resolve_port(port: int | str) -> int:
    named = {p["name"]: p["containerPort"] for p in worker_container()["ports"]}
    return named[port] if isinstance(port, str) else port


@pytest.mark.parametrize("probe, path", [
    ("startupProbe", "/health"),
    ("livenessProbe", "/health"),
    ("readinessProbe", "/ready"),
])
def test_probes_hit_the_worker_web_server(probe: str, path: str) -> None:
    get = worker_container()[probe]["httpGet"]
    assert (get["path"], resolve_port(get["port"])) == (path, web_port())


@pytest.mark.parametrize("service", ["refstream", "refstream-metrics"])
def test_services_reach_the_workers(service: str) -> None:
    spec = k8s("Service", service)["spec"]
    pod_labels = k8s("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"].items() <= pod_labels.items()
    assert [resolve_port(p["targetPort"]) for p in spec["ports"]] == [web_port()]


def test_metrics_service_is_annotated_for_prometheus() -> None:
    annotations = k8s("Service", "refstream-metrics")["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(web_port()),
                           "prometheus.io/path": "/metrics"}


def test_statefulset_is_governed_by_the_headless_service() -> None:
    assert k8s("Service", k8s("StatefulSet")["spec"]["serviceName"])["spec"]["clusterIP"] == "None"


def test_pdb_selects_the_workers() -> None:
    selector = k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert selector == k8s("StatefulSet")["spec"]["selector"]["matchLabels"]


def test_env_comes_from_the_shipped_configmap_and_secret() -> None:
    refs = {(k, v["name"]) for ref in worker_container()["envFrom"] for k, v in ref.items()}
    assert refs == {("configMapRef", k8s("ConfigMap")["metadata"]["name"]),
                    ("secretRef", k8s("Secret")["metadata"]["name"])}


def test_data_dir_is_on_the_pod_volume_claim() -> None:
    sts = k8s("StatefulSet")["spec"]
    claims = {t["metadata"]["name"] for t in sts["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in worker_container()["volumeMounts"]}
    assert mounts.get(k8s("ConfigMap")["data"][PREFIX + "DATA_DIR"]) in claims


def test_rocksdict_is_pinned() -> None:
    """Faust's RocksDB store calls rocksdict's API (faust/stores/rocksdb.py): a new release may change it."""
    assert re.fullmatch(r"==\d+(\.\d+)+", core_dependencies()["rocksdict"])


def test_rocksdb_state_is_on_a_volume_sized_for_it() -> None:
    """With rocksdb:// the join state lives on the pod's claim: the claim and the memory limit
    follow docs/operations.md ("Sizing"), with room above the worked example (2,000 events/s)."""
    assert k8s("ConfigMap")["data"][PREFIX + "TABLE_STORE"] == "rocksdb://"
    [claim] = [t for t in k8s("StatefulSet")["spec"]["volumeClaimTemplates"] if t["metadata"]["name"] == "data"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]  # one pod's RocksDB: never shared
    assert quantity(claim["spec"]["resources"]["requests"]["storage"]) >= 20 * 2**30
    resources = worker_container()["resources"]
    assert quantity(resources["limits"]["memory"]) >= quantity(resources["requests"]["memory"]) >= 2**30


def test_kafka_files_come_from_an_optional_read_only_secret() -> None:
    """TLS and SASL files of a secured Kafka (docs/operations.md): mounted when Secret refstream-kafka exists."""
    [mount] = [m for m in worker_container()["volumeMounts"] if m["mountPath"].rstrip("/") == "/etc/refstream/kafka"]
    assert mount.get("readOnly") is True
    [volume] = [v for v in k8s("StatefulSet")["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "refstream-kafka" and volume["secret"]["optional"] is True


def dig(obj: Any, path: str) -> Any:
    for key in path.split("."):
        obj = obj[int(key)] if isinstance(obj, list) else obj.get(key)
    return obj


POD = "spec.template.spec"
CONTAINER = POD + ".containers.0"


@pytest.mark.parametrize("path, check", [
    # Service links would inject REFSTREAM_-prefixed variables named after Services.
    (POD + ".enableServiceLinks", lambda v: v is False),
    (POD + ".terminationGracePeriodSeconds", lambda v: v >= 60),  # SIGTERM drains and commits
    (POD + ".securityContext.runAsNonRoot", lambda v: v is True),
    (POD + ".hostNetwork", lambda v: not v),
    (CONTAINER + ".securityContext.readOnlyRootFilesystem", lambda v: v is True),
    (CONTAINER + ".securityContext.allowPrivilegeEscalation", lambda v: v is False),
    (CONTAINER + ".securityContext.capabilities.drop", lambda v: v == ["ALL"]),
    (CONTAINER + ".resources.requests", lambda v: {"cpu", "memory"} <= set(v)),
    (CONTAINER + ".resources.limits", lambda v: {"cpu", "memory"} <= set(v)),
])
def test_worker_pod_spec(path: str, check: Any) -> None:
    value = dig(k8s("StatefulSet"), path)
    assert check(value), f"{path} = {value!r}"


def walk(obj: Any) -> Any:
    """Every (key, value) pair of a parsed YAML document."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield key, value
            yield from walk(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from walk(item)


@pytest.mark.parametrize("path", K8S_MANIFESTS, ids=lambda p: p.name)
def test_k8s_exposes_nothing_on_nodes(path: Path) -> None:
    for doc in load_all(path):
        pairs = list(walk(doc))
        assert not [k for k, v in pairs if k in ("hostPort", "hostNetwork", "nodePort") and v]
        assert ("type", "NodePort") not in pairs and ("type", "LoadBalancer") not in pairs


# --- Compose invariants ------------------------------------------------------------------


def host_ip(port: str | dict) -> str | None:
    """The host address a compose `ports` entry publishes on; None means every address."""
    if isinstance(port, dict):
        return port.get("host_ip")
    parts = str(port).rsplit(":", 2)
    return parts[0] if len(parts) == 3 else None


@pytest.mark.parametrize("port, expected", [
    ("127.0.0.1:8123:8123", "127.0.0.1"),
    ("127.0.0.1:9000-9001:9000-9001/tcp", "127.0.0.1"),
    ("[::1]:80:80", "[::1]"),
    ("0.0.0.0:80:80", "0.0.0.0"),
    ("8123:8123", None),
    ("8123", None),
    ({"target": 80, "published": 8080, "host_ip": "127.0.0.1"}, "127.0.0.1"),
    ({"target": 80, "published": 8080}, None),
])
def test_host_ip(port: str | dict, expected: str | None) -> None:
    assert host_ip(port) == expected


def test_compose_publishes_on_loopback_only() -> None:
    services = compose()["services"]
    published = {(name, str(p)): host_ip(p) for name, s in services.items() for p in s.get("ports", [])}
    assert published and {k: v for k, v in published.items() if v != "127.0.0.1"} == {}
    assert [n for n, s in services.items() if s.get("network_mode") == "host"] == []


def bind_sources(service: dict) -> list[Path]:
    sources = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source = volume.get("source", "") if volume.get("type") == "bind" else ""
        else:
            source = volume.split(":", 1)[0]
        if source.startswith((".", "/")):
            sources.append((COMPOSE_DIR / source).resolve())
    return sources


def test_compose_bind_mounts_exist() -> None:
    sources = [p for s in compose()["services"].values() for p in bind_sources(s)]
    missing = [p for p in sources if not p.exists() and p not in MONITORING_PATHS]
    assert sources and missing == []


def test_compose_builds_the_worker_image_from_the_repository() -> None:
    build = compose()["services"]["refstream-worker"]["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    assert context == ROOT and (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_gives_workers_time_to_drain() -> None:
    assert compose()["services"]["refstream-worker"]["stop_grace_period"] == "60s"


def flag_values(words: list[str], flag: str) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words) if w == flag]


@pytest.fixture(scope="module")
def created_topics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, dict[str, str]]]:
    """Run create-topics.sh with the compose settings against a fake kafka-topics.sh."""
    tmp_path = tmp_path_factory.mktemp("topics")
    log = tmp_path / "calls"
    fake = tmp_path / "kafka-topics.sh"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    env = {k: interpolate(v) for k, v in compose()["services"]["kafka-init"]["environment"].items()}
    subprocess.run(["sh", str(COMPOSE_DIR / "create-topics.sh")], check=True,
                   env={**env, "KAFKA_TOPICS": str(fake), "PATH": "/usr/bin:/bin"})
    topics = {}
    for line in log.read_text().splitlines():
        words = line.split()
        configs = dict(c.split("=", 1) for c in flag_values(words, "--config"))
        topics[flag_values(words, "--topic")[0]] = (int(flag_values(words, "--partitions")[0]), configs)
    return topics


@pytest.mark.parametrize("topic, policy, min_retention_ms, join_partitions", [
    # Inputs are replayed for backfills: keep them far beyond the allowed lateness.
    ("clicks", "delete", 7 * DAY_MS, False),
    ("signups", "delete", 7 * DAY_MS, False),
    ("orders", "delete", 7 * DAY_MS, False),
    ("promoters", "compact", None, False),
    ("exclusions", "compact", None, False),
    # Review decisions are the audit trail of human decisions: kept for good (-1).
    ("reviews", "delete", -1, False),
    # Join keys are placed over REFSTREAM_PARTITIONS: the topics must have exactly that many.
    ("visitor-join", "delete", DAY_MS, True),
    ("account-join", "delete", DAY_MS, True),
    ("conversions", "delete", DAY_MS, False),
    ("late-events", "delete", DAY_MS, False),
    ("dead-letters", "delete", DAY_MS, False),
])
def test_compose_creates_topics(created_topics: dict, topic: str, policy: str,
                                min_retention_ms: int | None, join_partitions: bool) -> None:
    count, configs = created_topics[topic]
    assert configs["cleanup.policy"] == policy
    if min_retention_ms == -1:
        assert configs["retention.ms"] == "-1"
    elif min_retention_ms:
        assert int(configs["retention.ms"]) >= max(min_retention_ms, DEFAULTS.allowed_lateness_s * 1000)
    if join_partitions:
        assert count == Settings.from_env(worker_env("compose")).partitions


def test_compose_creates_every_pipeline_topic(created_topics: dict) -> None:
    assert set(created_topics) == {*INPUT_TOPICS, *OUTPUT_TOPICS, *JOIN_TOPICS}


# --- Image -------------------------------------------------------------------------------


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    excluded = False
    candidates = [str(Path(*Path(path).parts[:i])) for i in range(1, len(Path(path).parts) + 1)]
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negated
    return excluded


@pytest.mark.parametrize("path, excluded", [
    (".venv/bin/python", True),
    (".data/clickhouse/x", True),
    (".git/HEAD", True),
    ("tests/test_pipeline.py", True),
    ("tests/deploy/test_manifests.py", True),
    ("bench/e2e.py", True),
    ("deploy/k8s/statefulset.yaml", True),
    ("refstream.egg-info/PKG-INFO", True),
    ("streams/__pycache__/app.cpython-311.pyc", True),
    ("pyproject.toml", False),
    ("README.md", False),
    ("streams/agents/app.py", False),
    ("streams/logic/clock.py", False),
    ("schemas/events.py", False),
    ("sinks/migrations.py", False),
])
def test_dockerignore(path: str, excluded: bool) -> None:
    assert dockerignore_excludes(path) is excluded


def dockerfile_lines() -> list[str]:
    """Instructions, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("what, pattern", [
    ("a build stage", r"FROM \S+ AS build"),
    ("a runtime stage copying the build's result", r"COPY --from=build .*"),
    ("pip install of the project without extras", r"RUN .*pip install \."),
    ("a non-root numeric user", r"USER [1-9][0-9]*(:[1-9][0-9]*)?"),
    ("the entrypoint", re.escape('ENTRYPOINT ["refstream"]')),
    ("the default command", re.escape('CMD ["worker"]')),
])
def test_dockerfile_has(what: str, pattern: str) -> None:
    assert [line for line in dockerfile_lines() if re.fullmatch(pattern, line)], f"no {what}"


def test_dockerfile_healthcheck_targets_the_web_port() -> None:
    [check] = [line for line in dockerfile_lines() if line.startswith("HEALTHCHECK")]
    assert re.search(r"/health\b", check) and "REFSTREAM_WEB_PORT" in check and str(DEFAULTS.web_port) in check


def test_dockerfile_copies_only_what_the_context_holds() -> None:
    copies = [line.split()[1:-1] for line in dockerfile_lines()
              if line.startswith("COPY") and "--from=" not in line]
    sources = [s for c in copies for s in c]
    assert sources and [s for s in sources if dockerignore_excludes(s.rstrip("/"))] == []


def test_dockerfile_installs_no_extras() -> None:
    assert [line for line in dockerfile_lines() if re.search(r"pip install .*\[", line)] == []
