"""deploy/grafana: dashboards are valid, reference provisioned datasources, and their
queries work. Prometheus expressions must parse (promtool) and read exported metrics;
ClickHouse SQL is executed, with Grafana's macros expanded, against a real chdb schema
built by sinks.migrations.migrate.

chdb allows one data directory per process and other test modules open their own, so
the SQL runs in a subprocess: this file, run as a script (see the bottom).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import ROOT

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PROVISIONING = GRAFANA / "provisioning"

# The contract of the business dashboards: the deduplicated view and raw event tables.
CH_SOURCES = {"conversions_current", "clicks", "signups", "orders"}

T_FROM, T_TO = 1767139200, 1767398400  # 2025-12-31 .. 2026-01-03 UTC, around the seed rows
PROMOTERS = ["P1", "P2"]  # value of $promoter when not All


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def provisioned_datasources() -> dict[str, str]:
    """uid -> type of every provisioned datasource."""
    out = {}
    for f in sorted((PROVISIONING / "datasources").glob("*.yml")):
        for ds in yaml.safe_load(f.read_text())["datasources"]:
            out[ds["uid"]] = ds["type"]
    return out


def panels(dash: dict) -> list[dict]:
    """All panels, including those nested in collapsed rows."""
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def datasource_refs(node) -> list[dict]:
    """Every {"type", "uid"} datasource reference anywhere in the dashboard."""
    if isinstance(node, dict):
        found = [node["datasource"]] if isinstance(node.get("datasource"), dict) else []
        return found + [r for v in node.values() for r in datasource_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in datasource_refs(v)]
    return []


def queries(kind: str) -> list[tuple[str, str]]:
    """(id, query text) of every target and template variable of datasource type `kind`."""
    out = []
    for path in DASHBOARDS:
        dash = load(path)
        for p in panels(dash):
            for t in p.get("targets", []):
                if t.get("datasource", p.get("datasource", {})).get("type") == kind:
                    out.append((f"{dash['uid']}/{p['id']}{t['refId']}", t.get("rawSql") or t.get("expr")))
        for v in dash.get("templating", {}).get("list", []):
            if v.get("datasource", {}).get("type") == kind:
                q = v["query"]
                q = q.get("rawSql") or q.get("query") if isinstance(q, dict) else q
                # Grafana's label_values(selector, label): the selector is PromQL.
                q = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", q)
                out.append((f"{dash['uid']}/${v['name']}", q))
    return out


SQL = queries("grafana-clickhouse-datasource")
PROMQL = queries("prometheus")


# --- dashboards and provisioning ----------------------------------------------------

@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path):
    dash = load(path)
    assert dash["uid"] == path.stem and dash["title"]
    assert 36 <= dash["schemaVersion"] <= 41
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    cells: set[tuple[int, int]] = set()
    for p in panels(dash):
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} <= g.keys() and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"]["uid"] and p["targets"], p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_datasources_are_provisioned(path):
    known = provisioned_datasources()
    for ref in datasource_refs(load(path)):
        if ref.get("type") in ("grafana", "datasource"):  # Grafana's built-in annotations
            continue
        assert known.get(ref["uid"]) == ref["type"], f"{ref} is not in {PROVISIONING / 'datasources'}"


def test_provisioning_files():
    assert provisioned_datasources() == {
        "refstream-prometheus": "prometheus", "refstream-clickhouse": "grafana-clickhouse-datasource",
    }
    ch = yaml.safe_load((PROVISIONING / "datasources" / "clickhouse.yml").read_text())["datasources"][0]
    assert ch["jsonData"]["port"] == 8123 and ch["jsonData"]["protocol"] == "http"
    assert ch["jsonData"]["username"].startswith("$")  # from the environment, never inline
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "refstream.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


# --- Prometheus panels --------------------------------------------------------------

PROM_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}


@pytest.mark.parametrize("qid,expr", PROMQL, ids=[q for q, _ in PROMQL])
def test_promql_reads_exported_metrics(qid, expr):
    from tests.deploy.test_prometheus import exported_names  # one definition of "exported"

    names = set(re.findall(r"\brefstream_[a-z0-9_]+\b", expr))
    assert names or "/$" in qid, f"{qid} reads no refstream metric"  # variables may read `up`
    assert names <= exported_names(), f"{qid}: not exported: {names - exported_names()}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not found: apt-get install -y prometheus")
def test_promql_parses(tmp_path):
    """promtool has no offline expression check: parse every panel as a recording rule."""
    rules = []
    for i, (qid, expr) in enumerate(PROMQL):
        for var, value in PROM_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"{qid}: unexpanded variable in {expr}"
        rules.append({"record": f"dashboard_query_{i}", "expr": expr, "labels": {"query": qid}})
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- ClickHouse panels --------------------------------------------------------------

def _args(text: str, start: int) -> tuple[list[str], int]:
    """Comma-separated arguments of the call whose '(' is at `start`; returns the end too."""
    depth, args, cur, i = 0, [], "", start
    while True:
        c = text[i]
        if c == "(":
            depth += 1
            if depth == 1:
                i += 1
                continue
        elif c == ")":
            depth -= 1
            if depth == 0:
                return [*args, cur.strip()], i + 1
        elif c == "," and depth == 1:
            args, cur = [*args, cur.strip()], ""
            i += 1
            continue
        cur += c
        i += 1


def expand(sql: str, promoters: list[str] | None) -> str:
    """Grafana's and the ClickHouse plugin's expansion (README of grafana-clickhouse-datasource)
    for a fixed time range and `$promoter` = All (None) or the given values."""
    macros = {
        "timeFilter": lambda c: f"{c} >= toDateTime({T_FROM}) AND {c} <= toDateTime({T_TO})",
        "timeFilter_ms": lambda c: (f"{c} >= fromUnixTimestamp64Milli({T_FROM * 1000}) "
                                    f"AND {c} <= fromUnixTimestamp64Milli({T_TO * 1000})"),
        "timeInterval": lambda c: f"toStartOfInterval(toDateTime({c}), INTERVAL 3600 second)",
        "timeInterval_ms": lambda c: f"toStartOfInterval(toDateTime64({c}, 3), INTERVAL 3600000 millisecond)",
        "conditionalAll": lambda *a: "1=1" if promoters is None else ", ".join(a[:-1]),
    }
    while m := re.search(r"\$__(\w+)\(", sql):
        args, end = _args(sql, m.end() - 1)
        assert m.group(1) in macros, f"unknown macro $__{m.group(1)}"
        sql = sql[: m.start()] + macros[m.group(1)](*args) + sql[end:]
    values = PROMOTERS if promoters is None else promoters
    sql = sql.replace("${promoter:singlequote}", ",".join(f"'{v}'" for v in values))
    sql = re.sub(r"\$\{promoter\}|\$promoter\b", ",".join(values), sql)
    for name, value in {"__interval_s": "3600", "__fromTime": f"toDateTime({T_FROM})",
                        "__toTime": f"toDateTime({T_TO})"}.items():
        sql = sql.replace("$" + name, value)
    assert "$" not in sql, f"unexpanded macro or variable in:\n{sql}"
    return sql


@pytest.fixture(scope="module")
def chdb_results(tmp_path_factory):
    """Runs every expanded query once, in a subprocess with its own chdb directory."""
    base = tmp_path_factory.mktemp("grafana_chdb")
    spec = {"dir": str(base / "data"), "queries": {}}
    for qid, sql in SQL:
        spec["queries"][qid + "@all"] = expand(sql, None)
        spec["queries"][qid + "@some"] = expand(sql, PROMOTERS[:1])
    (base / "in.json").write_text(json.dumps(spec))
    result = subprocess.run(
        [sys.executable, __file__, str(base / "in.json"), str(base / "out.json")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((base / "out.json").read_text())


@pytest.mark.parametrize("qid,sql", SQL, ids=[q for q, _ in SQL])
def test_sql_reads_only_the_contract(qid, sql):
    sources = set(re.findall(r"\b(?:FROM|JOIN)\s+([A-Za-z_][\w.]*)", sql, re.IGNORECASE))
    assert sources and sources <= CH_SOURCES, f"{qid} reads {sources - CH_SOURCES}"


@pytest.mark.parametrize("qid,sql", SQL, ids=[q for q, _ in SQL])
def test_sql_runs_on_the_schema(qid, sql, chdb_results):
    for variant in ("all", "some"):
        outcome = chdb_results["results"][f"{qid}@{variant}"]
        assert "error" not in outcome, f"{qid} ($promoter={variant}) failed:\n{outcome.get('error')}"
    assert chdb_results["results"][f"{qid}@all"]["rows"] > 0, f"{qid} returns nothing on the seed data"


# --- subprocess: migrate a fresh chdb, seed it, run the queries ----------------------

SEED = [
    "INSERT INTO clicks (event_id, ts, visitor_id, tracking_code, campaign) VALUES "
    "('c1', '2026-01-01 00:00:00', 'v1', 'T1', 'spring'), ('c2', '2026-01-01 00:05:00', 'v2', 'T2', 'spring')",
    "INSERT INTO signups (event_id, ts, account_id, visitor_id) VALUES "
    "('s1', '2026-01-01 00:10:00', 'a1', 'v1'), ('s2', '2026-01-01 00:15:00', 'a2', 'v2')",
    "INSERT INTO orders (event_id, ts, order_id, account_id, amount, currency, status) VALUES "
    "('e1', '2026-01-01 01:00:00', 'o1', 'a1', 100, 'USD', 'paid'), "
    "('e2', '2026-01-01 02:00:00', 'o2', 'a2', 50, 'EUR', 'paid')",
    "INSERT INTO conversions (order_id, revision, status, reasons, promoter_id, tracking_code, campaign, "
    "account_id, order_ts, product, category, amount, currency) VALUES "
    "('o1', 1, 'approved', [], 'P1', 'T1', 'spring', 'a1', '2026-01-01 01:00:00', 'pro', 'saas', 100, 'USD'), "
    "('o2', 1, 'rejected', ['self_referral', 'ip_velocity'], 'P2', 'T2', 'spring', 'a2', "
    "'2026-01-01 02:00:00', 'team', 'saas', 50, 'EUR')",
]


def _run(spec_path: str, out_path: str) -> None:
    from sinks.clickhouse import connect
    from sinks.migrations import migrate

    spec = json.loads(Path(spec_path).read_text())
    client = connect(f"chdb://{spec['dir']}")
    try:
        migrate(client)
        for statement in SEED:
            client.command(statement)
        columns = [r[0] for r in client.query(
            "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 'conversions_current'"
        ).result_rows]
        results = {}
        for qid, sql in spec["queries"].items():
            try:
                results[qid] = {"rows": len(client.query(sql).result_rows)}
            except Exception as exc:  # reported per query by the test
                results[qid] = {"error": f"{type(exc).__name__}: {exc}"[:3000]}
    finally:
        client.close()
    Path(out_path).write_text(json.dumps({"columns": columns, "results": results}))


if __name__ == "__main__":
    _run(sys.argv[1], sys.argv[2])
