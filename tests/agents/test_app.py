"""The app of each role registers only its agents and pages (building it connects to nothing)."""
from __future__ import annotations

from pathlib import Path

import pytest

RAW_PARTITIONS = {"clicks": 4, "signups": 4, "orders": 4}


RAW = {"clicks", "signups", "orders"}


@pytest.mark.parametrize("role, agents, bulk, pages, tables", [
    ("all", {"join_visitors", "join_accounts", "join_promoters", "reference", "sink_to_clickhouse"}, RAW,
     {"/counts", "/api"}, 3),
    ("stream", {"join_visitors", "join_accounts", "join_promoters"}, RAW, set(), 3),
    ("sink", {"reference", "sink_to_clickhouse"}, set(), {"/counts", "/api"}, 0),
])
def test_a_role_registers_only_its_agents_and_pages(role: str, agents: set, bulk: set, pages: set, tables: int,
                                                    tmp_path: Path) -> None:
    from streams.agents.app import create_app
    from streams.config import Settings

    app = create_app(Settings(role=role, data_dir=str(tmp_path)), RAW_PARTITIONS)
    assert {name.rsplit(".", 1)[1] for name in app.agents} == agents
    assert (app.bulk.topics if app.bulk else set()) == bulk  # the router reads the raw topics in bulk
    assert set(app.ledger.readers) >= bulk
    assert len(app.tables) == tables
    urls = {route.resource.canonical for route in app.web.web_app.router.routes()}
    assert {"/health", "/ready", "/metrics"} <= urls
    assert {"/counts", "/api", "/dashboard"} & urls == (pages | {"/dashboard"} if pages else set())
    assert app.conf.id == ("refstream-sink" if role == "sink" else "refstream")


def test_role_setting_and_flag() -> None:
    from streams.cli import build_parser
    from streams.config import ConfigError, Settings

    assert Settings.from_env({}).role == "all"
    assert Settings.from_env({"REFSTREAM_ROLE": "sink"}).group_id == "refstream-sink"
    with pytest.raises(ConfigError, match="REFSTREAM_ROLE"):
        Settings.from_env({"REFSTREAM_ROLE": "joins"})
    assert build_parser().parse_args(["worker", "--role", "stream"]).role == "stream"
    assert build_parser().parse_args(["worker"]).role is None
