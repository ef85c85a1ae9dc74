"""Signup -> orders: conversions, refunds, revisions, binding period (pure logic)."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest

from schemas.records import AttributionRec, ClickRef, OrderRec, SignupIdent
from streams.logic import conversions as conv

DAY = 86_400_000
RULES = conv.ConversionRules(binding_ms=180 * DAY, refund_window_ms=90 * DAY)
PROMOTERS = {"A": "p-alice", "B": "p-bob"}


def lookup(code: str, ts: int) -> conv.PromoterRef | None:
    return conv.PromoterRef(promoter_id=PROMOTERS[code]) if code in PROMOTERS else None


CTX = conv.Context(RULES, promoter=lookup)


def attribution(code: str | None, signup_ts: int = 0, final: bool = False, eid: str = "s1") -> AttributionRec:
    click = ClickRef("c-" + code, signup_ts - 3_600_000, code) if code else None
    return AttributionRec("acc", eid, signup_ts, "v", click, final)


def order(oid: str, ts: int, status: str = "paid", amount: str = "100.00", eid: str | None = None,
          cart: str | None = None) -> OrderRec:
    return OrderRec(eid or f"{oid}-{status}", ts, oid, "acc", "db-pro", Decimal(amount), "USD", status,
                    cart_id=cart)


@dataclass
class Case:
    name: str
    steps: list  # AttributionRec | OrderRec, in arrival order
    expected: dict[str, tuple]  # order_id -> (status, promoter, revision, reasons) of the last emission


CASES = [
    Case("paid order of a referred customer", [attribution("A"), order("o1", DAY)],
         {"o1": ("approved", "p-alice", 1, [])}),
    Case("order before its attribution", [order("o1", DAY), attribution("A")],
         {"o1": ("approved", "p-alice", 1, [])}),
    Case("organic customer earns nothing", [attribution(None, final=True), order("o1", DAY)], {}),
    Case("order after the binding period", [attribution("A"), order("o1", 181 * DAY)], {}),
    Case("binding period end is inclusive", [attribution("A"), order("o1", 180 * DAY)],
         {"o1": ("approved", "p-alice", 1, [])}),
    Case("order before signup", [attribution("A", signup_ts=DAY), order("o1", DAY - 1)], {}),
    Case("refund reverses", [attribution("A"), order("o1", DAY), order("o1", 2 * DAY, "refunded")],
         {"o1": ("reversed", "p-alice", 2, ["refunded"])}),
    Case("refund delivered before the payment", [attribution("A"), order("o1", 2 * DAY, "refunded"),
                                                 order("o1", DAY)],
         {"o1": ("reversed", "p-alice", 1, ["refunded"])}),
    Case("chargeback reverses", [attribution("A"), order("o1", DAY), order("o1", 3 * DAY, "chargeback")],
         {"o1": ("reversed", "p-alice", 2, ["chargeback"])}),
    Case("cancelled without payment is no conversion", [attribution("A"), order("o1", DAY, "cancelled")], {}),
    Case("multi-order cart: one conversion per order",
         [attribution("A"), order("o1", DAY, cart="k"), order("o2", DAY, cart="k", amount="5.50")],
         {"o1": ("approved", "p-alice", 1, []), "o2": ("approved", "p-alice", 1, [])}),
    Case("duplicate order event keeps the revision", [attribution("A"), order("o1", DAY), order("o1", DAY)],
         {"o1": ("approved", "p-alice", 1, [])}),
    Case("unknown tracking code is rejected", [attribution("Z"), order("o1", DAY)],
         {"o1": ("rejected", "", 1, ["unknown_promoter"])}),
    Case("re-attribution moves the conversion", [attribution("A"), order("o1", DAY), attribution("B")],
         {"o1": ("approved", "p-bob", 2, [])}),
    Case("finalisation is a new revision", [attribution("A"), order("o1", DAY), attribution("A", final=True)],
         {"o1": ("approved", "p-alice", 2, [])}),
    Case("a provisional redelivery does not undo a final attribution",
         [attribution("A", final=True), attribution("B"), order("o1", DAY)],
         {"o1": ("approved", "p-alice", 1, [])}),
    Case("the earliest signup of an account counts",
         [attribution("B", signup_ts=5, eid="s2"), attribution("A", signup_ts=0, eid="s1"), order("o1", DAY)],
         {"o1": ("approved", "p-alice", 1, [])}),
]


def apply(state: conv.AccountState, step, now_ms: int = 0) -> list:
    """What the account join does with one record: update, decide, prune."""
    touched = conv.add_order(state, step) if isinstance(step, OrderRec) else conv.add_attribution(state, step)
    out = conv.decide_all(state, touched, CTX, lambda oid: conv.Live(), now_ms)
    conv.prune(state, RULES)
    return out


def run(steps: list) -> tuple[conv.AccountState, dict[str, tuple]]:
    state = conv.AccountState()
    last = {}
    for step in steps:
        for c in apply(state, step):
            last[c.order_id] = (c.status, c.promoter_id, c.revision, c.reasons)
    return state, last


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_conversions(case: Case) -> None:
    assert run(case.steps)[1] == case.expected


def test_conversion_carries_the_explanation() -> None:
    state = conv.AccountState()
    apply(state, attribution("A", signup_ts=DAY), now_ms=7)
    [c] = apply(state, order("o1", 2 * DAY, amount="19.99"), now_ms=7)
    assert (c.tracking_code, c.click_event_id, c.signup_event_id, c.order_ts, c.amount) == (
        "A", "c-A", "s1", 2 * DAY, Decimal("19.99"))


@dataclass
class ExpiryCase:
    name: str
    steps: list
    watermark: int
    deletable: bool
    orders_left: int


EXPIRY = [
    ExpiryCase("order waiting for a signup, watermark before it", [order("o1", DAY)], DAY, False, 1),
    ExpiryCase("order waiting for a signup, watermark passed", [order("o1", DAY)], DAY + 1, True, 0),
    ExpiryCase("provisional organic waits", [attribution(None), order("o1", DAY)], 100 * DAY, False, 1),
    ExpiryCase("provisional organic gives up after binding", [attribution(None), order("o1", DAY)],
               180 * DAY + 1, True, 1),
    ExpiryCase("final organic goes", [attribution(None, final=True)], 1, True, 0),
    ExpiryCase("attributed kept for refunds", [attribution("A"), order("o1", DAY)], 270 * DAY, False, 1),
    ExpiryCase("attributed expires after binding + refund window", [attribution("A"), order("o1", DAY)],
               270 * DAY + 1, True, 1),
]


@pytest.mark.parametrize("case", EXPIRY, ids=lambda c: c.name)
def test_expiry(case: ExpiryCase) -> None:
    state, _ = run(case.steps)
    assert conv.advance(state, case.watermark, RULES) is case.deletable
    assert len(state.orders) == case.orders_left


def test_events_of_a_known_order_are_never_late() -> None:
    """A refund behind the watermark still claws back: it updates an order already in state."""
    state, _ = run([attribution("A"), order("o1", DAY)])
    assert conv.knows(state, order("o1", DAY - 10, "refunded"))
    assert not conv.knows(state, order("o2", DAY))


@pytest.mark.parametrize("case", EXPIRY, ids=lambda c: c.name)
def test_due_says_when_expiry_can_happen(case: ExpiryCase) -> None:
    state, _ = run(case.steps)
    due = conv.due(state, RULES)
    if case.deletable or case.orders_left < len(state.orders):
        assert due is not None and due < case.watermark
    elif due is not None:
        assert not conv.advance(state, due, RULES)


# --- the evidence behind the reasons, on every conversion ----------------------------------------

BUYER = SignupIdent(ip_hash="ip-buyer", device_id="dev-buyer", email_hash="em-buyer", email_domain="buyer.example")
SELF = conv.PromoterRef(promoter_id="p-self", device_id="dev-buyer", ip_hash="ip-buyer")


@dataclass
class EvidenceCase:
    name: str
    expected: tuple  # status, reasons, flood_clicks, farm_signups, exclusion_owner, identity_match
    code: str = "A"  # A: p-alice, S: a promoter sharing the buyer's device and IP, Z: nobody
    signals: conv.Signals | None = None  # None: not read yet
    exclusion: str | None = None


EVIDENCE = [
    EvidenceCase("clean: no evidence", ("approved", [], 0, 0, "", "")),
    EvidenceCase("counters under the thresholds are shown too",
                 ("approved", [], 7, 2, "", ""), signals=conv.Signals(flood_ip=7, flood_visitor=1, farm_ip=2)),
    EvidenceCase("the IP's clicks when more than the visitor's",
                 ("rejected", ["click_flooding"], 21, 0, "", ""), signals=conv.Signals(flood_ip=21, flood_visitor=3)),
    EvidenceCase("the visitor's clicks when more than the IP's",
                 ("rejected", ["click_flooding"], 30, 0, "", ""), signals=conv.Signals(flood_ip=2, flood_visitor=30)),
    EvidenceCase("the device's signups when more than the IP's",
                 ("rejected", ["signup_farming"], 0, 4, "", ""), signals=conv.Signals(farm_ip=2, farm_device=4)),
    EvidenceCase("the IP's signups when more than the device's",
                 ("rejected", ["signup_farming"], 0, 9, "", ""), signals=conv.Signals(farm_ip=9, farm_device=1)),
    EvidenceCase("customer of direct sales",
                 ("rejected", ["customer_owned_by_direct_sales"], 0, 0, "direct_sales", ""), exclusion="direct_sales"),
    EvidenceCase("customer of a channel partner",
                 ("rejected", ["customer_owned_by_channel"], 0, 0, "channel_partner", ""), exclusion="channel_partner"),
    EvidenceCase("self-referral: the first identity shared", ("rejected", ["self_referral"], 0, 0, "", "device"),
                 code="S"),
    EvidenceCase("no promoter: no identity to match", ("rejected", ["unknown_promoter"], 0, 0, "", ""), code="Z"),
    EvidenceCase("everything at once",
                 ("rejected", ["customer_owned_by_channel", "self_referral", "click_flooding", "signup_farming"],
                  25, 5, "channel_partner", "device"),
                 code="S", signals=conv.Signals(flood_visitor=25, farm_device=5), exclusion="channel_partner"),
]


def evidence_context(case: EvidenceCase) -> conv.Context:
    promoters = {"A": conv.PromoterRef(promoter_id="p-alice"), "S": SELF}
    return conv.Context(RULES, promoter=lambda code, ts: promoters.get(code),
                        exclusion=lambda account, domain, ts: case.exclusion)


@pytest.mark.parametrize("case", EVIDENCE, ids=lambda c: c.name)
def test_the_evidence_lands_on_the_conversion(case: EvidenceCase) -> None:
    click = ClickRef("c1", -3_600_000, case.code)
    state = conv.AccountState(signup=AttributionRec("acc", "s1", 0, "v", click, True, BUYER), signals=case.signals)
    conv.add_order(state, order("o1", DAY))
    c = conv.decide(state.orders["o1"], state, evidence_context(case), conv.Live(), True, 0)
    assert (c.status, c.reasons, c.flood_clicks, c.farm_signups, c.exclusion_owner, c.identity_match) == case.expected


def test_evidence_that_changes_is_a_new_revision() -> None:
    """The final counters (read when their windows close) replace the first ones: a change of
    the counts alone is new content, shown with a new revision; the same counts again are not."""
    case = EvidenceCase("counts", ())
    state = conv.AccountState(signup=AttributionRec("acc", "s1", 0, "v", ClickRef("c1", -3_600_000, "A"), True),
                              signals=conv.Signals(flood_ip=3))
    conv.add_order(state, order("o1", DAY))
    decide = lambda: conv.decide(state.orders["o1"], state, evidence_context(case), conv.Live(), True, 0)  # noqa: E731
    first = decide()
    state.signals = conv.Signals(flood_ip=5)
    second = decide()
    third = decide()
    assert [(c.revision, c.flood_clicks, c.status) for c in (first, second, third)] == [
        (1, 3, "approved"), (2, 5, "approved"), (2, 5, "approved")]
