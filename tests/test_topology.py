"""The topology (`streams.topology`): which role reads and writes which topic, in which
consumer group, and that the app's agents read exactly that."""
from __future__ import annotations

from pathlib import Path

import pytest

from streams.config import Settings
from streams.topology import ROLES, Topology

STORED = {"visitor-join", "account-join"}  # carry the raw events the sink stores
JOINS = STORED | {"promoter-join"}  # decisions to the promoter stage: not stored
RESULTS = {"conversions", "late-events", "dead-letters"}
REFERENCE = {"promoters", "exclusions", "fx_rates"}  # followed by every stream worker, stored by the sink


@pytest.mark.parametrize("role, reads, follows, writes", [
    ("stream", {"clicks", "signups", "orders"} | JOINS, REFERENCE, JOINS | RESULTS),
    # reviews are stored as they come: read by the sink, never followed by the joins' directories
    # ... and written by the sink's review queue (approve / reject on the dashboard)
    ("sink", REFERENCE | {"reviews"} | STORED | RESULTS, set(), {"dead-letters", "alerts", "reviews"}),
    ("all", {"clicks", "signups", "orders", "reviews"} | REFERENCE | JOINS | RESULTS,
     REFERENCE, JOINS | RESULTS | {"alerts", "reviews"}),
])
def test_roles(role: str, reads: set[str], follows: set[str], writes: set[str]) -> None:
    r = ROLES[role]
    assert (set(r.reads), set(r.follows), set(r.writes)) == (reads, follows, writes)
    assert len(r.reads) == len(reads)  # no topic twice


@pytest.mark.parametrize("roles, groups", [
    ({"all"}, {"app": ROLES["all"].reads}),
    ({"stream"}, {"app": ROLES["stream"].reads}),
    ({"stream", "sink"}, {"app": ROLES["stream"].reads, "app-sink": ROLES["sink"].reads}),
    ({"all", "stream"}, {"app": ROLES["all"].reads}),  # one group: the union, once each
    ({"all", "sink"}, {"app": ROLES["all"].reads, "app-sink": ROLES["sink"].reads}),
    (set(), {}),
])
def test_consumer_groups(roles: set[str], groups: dict[str, tuple[str, ...]]) -> None:
    got = Topology(Settings(app_id="app", topic_prefix="p-")).groups(sorted(roles))
    assert {g: set(t) for g, t in got.items()} == {g: set(t) for g, t in groups.items()}


def test_names_carry_the_prefix() -> None:
    t = Topology(Settings(topic_prefix="demo1-", role="sink", app_id="x"))
    assert t.topics(["clicks", "alerts"]) == ("demo1-clicks", "demo1-alerts")
    assert t.name_of("demo1-visitor-join") == "visitor-join"
    assert t.group() == "x-sink" and t.group("stream") == "x" and t.role().name == "sink"


@pytest.mark.parametrize("role", sorted(ROLES))
def test_the_app_reads_what_the_topology_says(role: str, tmp_path: Path) -> None:
    from streams.agents.app import create_app

    s = Settings(role=role, data_dir=str(tmp_path), topic_prefix="p-")
    app = create_app(s, {"clicks": 2, "signups": 2, "orders": 2})
    assert set(app.ledger.readers) == set(Topology(s).topics(ROLES[role].reads))
    assert app.conf.id == Topology(s).group()


def test_every_input_topic_is_read_by_the_sink_or_the_router() -> None:
    """An input nobody reads would be accepted by the topic creation and silently ignored."""
    from streams.topology import INPUT_TOPICS, RAW_TOPICS

    assert set(INPUT_TOPICS) == set(RAW_TOPICS) | REFERENCE | {"reviews"}
    assert set(INPUT_TOPICS) <= set(ROLES["stream"].reads) | set(ROLES["sink"].reads)


@pytest.mark.parametrize("partitions, raw, visitor, account, promoter", [
    (1, {"clicks": 1, "signups": 2, "orders": 1},
     ("p-clicks/0", "p-signups/0", "p-signups/1"), ("p-orders/0", "visitor/0"), ("account/0",)),
    # each join waits for every partition of the join before it, whatever the raw counts
    (3, {"clicks": 1, "signups": 1, "orders": 2}, ("p-clicks/0", "p-signups/0"),
     ("p-orders/0", "p-orders/1", "visitor/0", "visitor/1", "visitor/2"), ("account/0", "account/1", "account/2")),
])
def test_join_sources(partitions: int, raw: dict[str, int], visitor: tuple[str, ...], account: tuple[str, ...],
                      promoter: tuple[str, ...]) -> None:
    t = Topology(Settings(topic_prefix="p-", partitions=partitions))
    assert t.join_sources(raw) == (visitor, account, promoter)
