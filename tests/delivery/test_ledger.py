"""The commit ledger: a commit never passes a message an agent did not finish."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from streams.delivery import CommitLedger, commit_run

TP = ("orders", 0)


@dataclass(eq=False)
class Msg:
    offset: int
    topic: str = "orders"
    tp: tuple = TP
    acked: bool = False  # set by Faust when it is done with the message, processed or not
    generation_id: int = 1


@dataclass
class Case:
    name: str
    acked: list[int]
    committed: int | None
    limit: int | None
    takes: int


RUNS = [
    Case("empty", [], 10, None, 0),
    Case("run from the committed offset", [10, 11, 12], 10, None, 3),
    Case("run stops at a gap", [10, 11, 13], 10, None, 2),
    Case("head two behind the committed offset: wait", [12, 13], 10, None, 0),
    Case("one missing offset at the head is a hole (Faust's tolerance)", [11, 12], 10, None, 2),
    Case("...unless that offset is pending", [11, 12], 10, 10, 0),
    Case("cut before a pending offset", [10, 11, 12, 13], 10, 12, 2),
    Case("pending offset above the run", [10, 11], 10, 20, 2),
    Case("no committed offset yet (new group)", [0, 1, 2], None, None, 3),
    Case("new group, first message pending", [1, 2], None, 0, 0),
]


@pytest.mark.parametrize("case", RUNS, ids=lambda c: c.name)
def test_commit_run(case: Case) -> None:
    assert commit_run(case.acked, case.committed, case.limit) == case.takes


@dataclass
class Flow:
    """Steps on one ledger: ("deliver"|"finish"|"ack", message index)."""
    name: str
    readers: int
    steps: list[tuple[str, int]]
    limit: int | None
    abandoned: int | None = None
    offsets: list[int] = field(default_factory=lambda: [10, 11, 12])


FLOWS = [
    Flow("finished: nothing pending", 1, [("deliver", 0), ("finish", 0), ("ack", 0)], None),
    Flow("acked by Faust without an agent finishing it (skipped): pending, abandoned", 1,
         [("deliver", 0), ("ack", 0)], 10, abandoned=10),
    Flow("two readers, one finished: pending", 2, [("deliver", 0), ("finish", 0)], 10),
    Flow("two readers, one finished, the other skipped it: abandoned", 2,
         [("deliver", 0), ("finish", 0), ("ack", 0)], 10, abandoned=10),
    Flow("two readers, both finished", 2, [("deliver", 0), ("finish", 0), ("finish", 0)], None),
    Flow("delivered, still in an agent's queue: pending, not abandoned", 1,
         [("deliver", 0), ("deliver", 1), ("finish", 0)], 11),
    Flow("a lower pending offset bounds the commit", 1,
         [("deliver", 0), ("deliver", 1), ("finish", 1)], 10),
]


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_ledger_flow(flow: Flow) -> None:
    ledger = CommitLedger(readers={"orders": flow.readers})
    msgs = [Msg(o) for o in flow.offsets]
    for action, i in flow.steps:
        if action == "deliver":
            ledger.delivered(msgs[i])
        elif action == "finish":
            ledger.finish(msgs[i])
        else:
            msgs[i].acked = True
    assert ledger.limit(TP) == flow.limit
    lost = ledger.abandoned(TP)
    assert (lost[0] if lost else None) == flow.abandoned


def test_a_redelivered_copy_is_counted_apart_from_the_first() -> None:
    """After a seek the same offset arrives again as a new message object: the new copy
    needs its own finishes (two readers), and finishing it settles the offset."""
    ledger = CommitLedger(readers={"orders": 2})
    old, new = Msg(10), Msg(10)
    ledger.delivered(old)
    ledger.finish(old)  # one reader finished the old copy, the other skipped it
    old.acked = True
    ledger.delivered(new)
    ledger.finish(new)
    assert ledger.limit(TP) == 10 and ledger.abandoned(TP) is None  # the new copy is in flight
    ledger.finish(new)
    assert ledger.limit(TP) is None


def test_a_message_faust_dropped_unprocessed_is_abandoned() -> None:
    """A queue cleared on stop or rebalance drops messages; the ledger holds them weakly
    (Faust's shutdown waits for delivered messages to be acked or garbage)."""
    ledger = CommitLedger(readers={"orders": 1})
    ledger.delivered(Msg(10, generation_id=3))
    assert ledger.limit(TP) == 10 and ledger.abandoned(TP) == (10, 3)


def test_unguarded_topics_pass_and_stale_or_forgotten_offsets_do_not_bound() -> None:
    ledger = CommitLedger(readers={"orders": 1})
    ledger.delivered(Msg(3, topic="app-visitors-changelog", tp=("app-visitors-changelog", 0)))
    assert ledger.pending(("app-visitors-changelog", 0)) == 0
    ledger.delivered(Msg(5))
    assert ledger.limit(TP, committed=8) is None  # below the committed offset: stale
    ledger.delivered(Msg(9))
    ledger.keep_only([("orders", 1)])  # the partition moved to another worker
    assert ledger.limit(TP) is None and ledger.pending(TP) == 0
