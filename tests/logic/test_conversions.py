"""Signup -> orders: conversions, refunds, revisions, binding period (pure logic)."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import msgspec
import pytest

from schemas.records import AttributionRec, ClickRef, DecisionRec, OrderRec, SignupIdent
from streams.logic import conversions as conv
from streams.logic.rules.checks import PromoterRef, Signals
from streams.logic.rules.ruleset import RuleBook, RuleSet

DAY = 86_400_000
RULES = conv.ConversionRules(binding_ms=180 * DAY, refund_window_ms=90 * DAY)
PROMOTERS = {"A": "p-alice", "B": "p-bob"}


def lookup(code: str, ts: int) -> PromoterRef | None:
    return PromoterRef(promoter_id=PROMOTERS[code]) if code in PROMOTERS else None


CTX = conv.Context(RULES, promoter=lookup)


def attribution(code: str | None, signup_ts: int = 0, final: bool = False, eid: str = "s1") -> AttributionRec:
    click = ClickRef("c-" + code, signup_ts - 3_600_000, code) if code else None
    return AttributionRec("acc", eid, signup_ts, "v", click, final)


def order(oid: str, ts: int, status: str = "paid", amount: str = "100.00", eid: str | None = None,
          cart: str | None = None, coupon: str | None = None) -> OrderRec:
    return OrderRec(eid or f"{oid}-{status}", ts, oid, "acc", "db-pro", Decimal(amount), "USD", status,
                    cart_id=cart, coupon_code=coupon)


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
    out = conv.decide_all(state, touched, CTX, now_ms)
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
    # an order's coupon code may still attribute it: kept through the binding period, its
    # orders only until the watermark passes them (a coupon order to come is later)
    ExpiryCase("final organic waits for a coupon order", [attribution(None, final=True)], 100 * DAY, False, 0),
    ExpiryCase("final organic: orders behind the watermark go", [attribution(None, final=True), order("o1", DAY)],
               DAY + 1, False, 0),
    ExpiryCase("final organic goes after binding", [attribution(None, final=True)], 180 * DAY + 1, True, 0),
    ExpiryCase("coupon-attributed kept for refunds", [attribution(None, final=True), order("o1", DAY, coupon="KA")],
               270 * DAY, False, 1),
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
SELF = PromoterRef(promoter_id="p-self", device_id="dev-buyer", ip_hash="ip-buyer")


@dataclass
class EvidenceCase:
    name: str
    expected: tuple  # status, reasons, flood_clicks, farm_signups, exclusion_owner, identity_match
    code: str = "A"  # A: p-alice, S: a promoter sharing the buyer's device and IP, Z: nobody
    signals: Signals | None = None  # None: not read yet
    exclusion: str | None = None


EVIDENCE = [
    EvidenceCase("clean: no evidence", ("approved", [], 0, 0, "", "")),
    EvidenceCase("counters under the thresholds are shown too",
                 ("approved", [], 7, 2, "", ""), signals=Signals(flood_ip=7, flood_visitor=1, farm_ip=2)),
    EvidenceCase("the IP's clicks when more than the visitor's",
                 ("rejected", ["click_flooding"], 21, 0, "", ""), signals=Signals(flood_ip=21, flood_visitor=3)),
    EvidenceCase("the visitor's clicks when more than the IP's",
                 ("rejected", ["click_flooding"], 30, 0, "", ""), signals=Signals(flood_ip=2, flood_visitor=30)),
    EvidenceCase("the device's signups when more than the IP's",
                 ("rejected", ["signup_farming"], 0, 4, "", ""), signals=Signals(farm_ip=2, farm_device=4)),
    EvidenceCase("the IP's signups when more than the device's",
                 ("rejected", ["signup_farming"], 0, 9, "", ""), signals=Signals(farm_ip=9, farm_device=1)),
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
                 code="S", signals=Signals(flood_visitor=25, farm_device=5), exclusion="channel_partner"),
]


def evidence_context(case: EvidenceCase) -> conv.Context:
    promoters = {"A": PromoterRef(promoter_id="p-alice"), "S": SELF}
    return conv.Context(RULES, promoter=lambda code, ts: promoters.get(code),
                        exclusion=lambda account, domain, ts: case.exclusion)


@pytest.mark.parametrize("case", EVIDENCE, ids=lambda c: c.name)
def test_the_evidence_lands_on_the_conversion(case: EvidenceCase) -> None:
    click = ClickRef("c1", -3_600_000, case.code)
    state = conv.AccountState(signup=AttributionRec("acc", "s1", 0, "v", click, True, BUYER), signals=case.signals)
    conv.add_order(state, order("o1", DAY))
    c = conv.decide(state.orders["o1"], state, evidence_context(case), True, 0)
    assert (c.status, c.reasons, c.flood_clicks, c.farm_signups, c.exclusion_owner, c.identity_match) == case.expected


def test_evidence_that_changes_is_a_new_revision() -> None:
    """The final counters (read when their windows close) replace the first ones: a change of
    the counts alone is new content, shown with a new revision; the same counts again are not."""
    case = EvidenceCase("counts", ())
    state = conv.AccountState(signup=AttributionRec("acc", "s1", 0, "v", ClickRef("c1", -3_600_000, "A"), True),
                              signals=Signals(flood_ip=3))
    conv.add_order(state, order("o1", DAY))
    decide = lambda: conv.decide(state.orders["o1"], state, evidence_context(case), True, 0)  # noqa: E731
    first = decide()
    state.signals = Signals(flood_ip=5)
    second = decide()
    third = decide()
    assert [(c.revision, c.flood_clicks, c.status) for c in (first, second, third)] == [
        (1, 3, "approved"), (2, 5, "approved"), (2, 5, "approved")]


# --- what pricing needs of the customer, on every decision --------------------------------------

CUSTOMER_CTX = conv.Context(RULES, promoter=lambda code, ts: {
    "A": PromoterRef(promoter_id="p-alice"), "L": PromoterRef(promoter_id="p-lou", level=3)}.get(code))
KEPT = 270 * DAY  # binding period + refund window after the signup


@dataclass
class CustomerCase:
    name: str
    steps: list
    #: order_id -> (base_level, customer_order, customer_first_ts, existing_customer, status_ts, expires)
    #: of its last decision
    expected: dict[str, tuple]


CUSTOMER = [
    CustomerCase("first order of a new customer", [attribution("A"), order("o1", DAY)],
                 {"o1": (1, 1, DAY, False, DAY, KEPT)}),
    CustomerCase("the promoter's reference level", [attribution("L"), order("o1", DAY)],
                 {"o1": (3, 1, DAY, False, DAY, KEPT)}),
    CustomerCase("no promoter: level 1", [attribution("Z"), order("o1", DAY)],
                 {"o1": (1, 1, DAY, False, DAY, KEPT)}),
    CustomerCase("a later order ranks second, from the first one's time",
                 [attribution("A"), order("o1", DAY), order("o2", 3 * DAY)],
                 {"o1": (1, 1, DAY, False, DAY, KEPT), "o2": (1, 2, DAY, False, 3 * DAY, KEPT)}),
    CustomerCase("an earlier order arriving later takes the first rank",
                 [attribution("A"), order("o2", 3 * DAY), order("o1", DAY)],
                 {"o1": (1, 1, DAY, False, DAY, KEPT), "o2": (1, 2, DAY, False, 3 * DAY, KEPT)}),
    CustomerCase("at equal times the order id ranks", [attribution("A"), order("ob", DAY), order("oa", DAY)],
                 {"oa": (1, 1, DAY, False, DAY, KEPT), "ob": (1, 2, DAY, False, DAY, KEPT)}),
    CustomerCase("an order never paid does not count",
                 [attribution("A"), order("o0", DAY, "cancelled"), order("o1", 2 * DAY)],
                 {"o1": (1, 1, 2 * DAY, False, 2 * DAY, KEPT)}),
    CustomerCase("a refunded order still counts, the refund's time is the status time",
                 [attribution("A"), order("o1", DAY), order("o1", 2 * DAY, "refunded"), order("o2", 3 * DAY)],
                 {"o1": (1, 1, DAY, False, 2 * DAY, KEPT), "o2": (1, 2, DAY, False, 3 * DAY, KEPT)}),
    CustomerCase("paid before the attributed click: an existing customer",
                 [attribution("A", signup_ts=10 * DAY), order("o0", DAY), order("o1", 11 * DAY)],
                 {"o1": (1, 2, DAY, True, 11 * DAY, 10 * DAY + KEPT)}),
    CustomerCase("paid after the click, before the signup: a new customer",
                 [attribution("A", signup_ts=10 * DAY), order("o0", 10 * DAY - 1_800_000), order("o1", 11 * DAY)],
                 {"o1": (1, 2, 10 * DAY - 1_800_000, False, 11 * DAY, 10 * DAY + KEPT)}),
]


@pytest.mark.parametrize("case", CUSTOMER, ids=lambda c: c.name)
def test_the_customer_lands_on_the_decision(case: CustomerCase) -> None:
    state, last = conv.AccountState(), dict[str, DecisionRec]()
    for step in case.steps:
        touched = conv.add_order(state, step) if isinstance(step, OrderRec) else conv.add_attribution(state, step)
        last.update((d.order_id, d) for d in conv.decide_all(state, touched, CUSTOMER_CTX, 0))
        conv.prune(state, RULES)
    assert {oid: (d.base_level, d.customer_order, d.customer_first_ts, d.existing_customer, d.status_ts, d.expires)
            for oid, d in last.items()} == case.expected
    assert all(d.first_order == (d.customer_order == 1) and not d.removed and d.commission == 0
               for d in last.values())


# --- an order that changes promoter is withdrawn from the old one first -------------------------


@dataclass
class MoveCase:
    name: str
    steps: list
    sent: list[tuple[str, str, bool]]  # (promoter_id, order_id, removed) the last step sends, in order
    remembered: dict[str, str]  # order_id -> OrderState.promoter_id afterwards


MOVES = [
    MoveCase("a first decision withdraws nothing", [attribution("A"), order("o1", DAY)],
             [("p-alice", "o1", False)], {"o1": "p-alice"}),
    MoveCase("re-attribution: withdrawn from the old promoter, then decided for the new one",
             [attribution("A"), order("o1", DAY), attribution("B")],
             [("p-alice", "o1", True), ("p-bob", "o1", False)], {"o1": "p-bob"}),
    MoveCase("the same promoter again withdraws nothing",
             [attribution("A"), order("o1", DAY), attribution("A", final=True)],
             [("p-alice", "o1", False)], {"o1": "p-alice"}),
    MoveCase("every order of the account moves, withdrawals first",
             [attribution("A"), order("o1", DAY), order("o2", 2 * DAY), attribution("B")],
             [("p-alice", "o1", True), ("p-alice", "o2", True), ("p-bob", "o1", False), ("p-bob", "o2", False)],
             {"o1": "p-bob", "o2": "p-bob"}),
    MoveCase("to an unknown code: withdrawn, then decided without a promoter",
             [attribution("A"), order("o1", DAY), attribution("Z")],
             [("p-alice", "o1", True), ("", "o1", False)], {"o1": ""}),
    MoveCase("from an unknown code: nothing to withdraw",
             [attribution("Z"), order("o1", DAY), attribution("A")], [("p-alice", "o1", False)], {"o1": "p-alice"}),
    MoveCase("a redelivered order of a moved account withdraws nothing more",
             [attribution("A"), order("o1", DAY), attribution("B"), order("o1", DAY)],
             [("p-bob", "o1", False)], {"o1": "p-bob"}),
]


@pytest.mark.parametrize("case", MOVES, ids=lambda c: c.name)
def test_a_promoter_change_withdraws_the_order_first(case: MoveCase) -> None:
    state, sent = conv.AccountState(), []
    for step in case.steps:
        touched = conv.add_order(state, step) if isinstance(step, OrderRec) else conv.add_attribution(state, step)
        decided = conv.decide_all(state, touched, CTX, 0)
        withdrawn = conv.reroute(state, decided)
        new = {d.order_id: d for d in decided}
        # a withdrawal is the new decision addressed to the old promoter
        assert all(w == msgspec.structs.replace(new[w.order_id], promoter_id=w.promoter_id, removed=True)
                   for w in withdrawn)
        sent = [(d.promoter_id, d.order_id, d.removed) for d in withdrawn + decided]
        conv.prune(state, RULES)
    assert sent == case.sent
    assert {oid: o.promoter_id for oid, o in state.orders.items()} == case.remembered


def test_an_order_state_stored_before_promoter_id_still_decodes() -> None:
    class Before(msgspec.Struct, array_like=True):  # OrderState without its trailing promoter_id
        order: OrderRec
        events: list[conv.StatusEvent]
        revision: int = 0
        digest: int = 0

    raw = msgspec.msgpack.encode(Before(order("o1", DAY), [conv.StatusEvent("e1", DAY, "paid")], 3, 7))
    o = msgspec.msgpack.decode(raw, type=conv.OrderState)
    assert (o.revision, o.digest, o.promoter_id) == (3, 7, "")


# --- coupon codes: click or code (attribution.order_source), the code's owner, the checks ------------------

#: coupon code -> (owner, from, until) as of the order's time: KA alice's, KB bob's, KS a promoter sharing the
#: buyer's device, KE an employee's; KL owned only from day 50 on, KX only until day 5
COUPONS = {"KA": ("p-alice", None, None), "KB": ("p-bob", None, None), "KS": ("p-self", None, None),
           "KE": ("p-staff", None, None), "KL": ("p-late", 50 * DAY, None), "KX": ("p-gone", None, 5 * DAY)}


def coupon_lookup(code: str, ts: int) -> PromoterRef | None:
    if code not in COUPONS:
        return None
    pid, since, until = COUPONS[code]
    if (since is not None and ts < since) or (until is not None and ts >= until):
        return None
    return PromoterRef(promoter_id=pid, device_id="dev-buyer" if code == "KS" else None,
                       is_employee=code == "KE")


def coupon_ctx(precedence: str) -> conv.Context:
    return conv.Context(RULES, RuleBook([RuleSet(attribution_precedence=precedence)]), lookup,
                        coupon=coupon_lookup)


def signup(code: str | None, coupon: str | None = None, click_ts: int = -3_600_000, bot: bool = False) -> AttributionRec:
    click = ClickRef("c-" + code, click_ts, code, bot=bot) if code else None
    return AttributionRec("acc", "s1", 0, "v", click, True, BUYER, coupon)


@dataclass
class CouponCase:
    name: str
    steps: list
    #: order_id -> (attributed_by, coupon_code, tracking_code, promoter, status, reasons); absent: no conversion
    expected: dict[str, tuple]
    precedence: str = "coupon"


def by_click(code: str, promoter: str, status: str = "approved", reasons: tuple = ()) -> tuple:
    return ("click", "", code, promoter, status, list(reasons))


def by_coupon(code: str, promoter: str, status: str = "approved", reasons: tuple = ()) -> tuple:
    return ("coupon", code, "", promoter, status, list(reasons))


COUPON_CASES = [
    CouponCase("signup code, no click", [signup(None, "KA"), order("o1", DAY)], {"o1": by_coupon("KA", "p-alice")}),
    CouponCase("order code, no click: that order and the later ones",
               [signup(None), order("o0", DAY), order("o1", 2 * DAY, coupon="KA"), order("o2", 3 * DAY)],
               {"o1": by_coupon("KA", "p-alice"), "o2": by_coupon("KA", "p-alice")}),
    CouponCase("coupon precedence: the signup code wins over the click", [signup("B", "KA"), order("o1", DAY)],
               {"o1": by_coupon("KA", "p-alice")}),
    CouponCase("coupon precedence: an order's code wins from that order on",
               [signup("B"), order("o0", DAY), order("o1", 2 * DAY, coupon="KA"), order("o2", 3 * DAY)],
               {"o0": by_click("B", "p-bob"), "o1": by_coupon("KA", "p-alice"), "o2": by_coupon("KA", "p-alice")}),
    CouponCase("the latest code used counts: the order's over the signup's",
               [signup(None, "KB"), order("o0", DAY), order("o1", 2 * DAY, coupon="KA")],
               {"o0": by_coupon("KB", "p-bob"), "o1": by_coupon("KA", "p-alice")}),
    CouponCase("click precedence: the click wins over the signup code", [signup("B", "KA"), order("o1", DAY)],
               {"o1": by_click("B", "p-bob")}, "click"),
    CouponCase("click precedence: the click wins over an order code",
               [signup("B"), order("o1", DAY, coupon="KA")], {"o1": by_click("B", "p-bob")}, "click"),
    CouponCase("click precedence: a code still attributes an account without a click",
               [signup(None), order("o1", DAY, coupon="KA")], {"o1": by_coupon("KA", "p-alice")}, "click"),
    CouponCase("order arrives before its coupon order: still a conversion",
               [signup(None), order("o2", 3 * DAY), order("o1", 2 * DAY, coupon="KA")],
               {"o1": by_coupon("KA", "p-alice"), "o2": by_coupon("KA", "p-alice")}),
    CouponCase("code nobody owns: unknown_promoter", [signup(None, "KZ"), order("o1", DAY)],
               {"o1": by_coupon("KZ", "", "rejected", ("unknown_promoter",))}),
    CouponCase("code owned only later: nobody's at the order", [signup(None, "KL"), order("o1", DAY)],
               {"o1": by_coupon("KL", "", "rejected", ("unknown_promoter",))}),
    CouponCase("code owned later: the owner at the order's time", [signup(None, "KL"), order("o1", 60 * DAY)],
               {"o1": by_coupon("KL", "p-late")}),
    CouponCase("code owned earlier, dropped before the order", [signup(None, "KX"), order("o1", 6 * DAY)],
               {"o1": by_coupon("KX", "", "rejected", ("unknown_promoter",))}),
    CouponCase("code of an ineligible promoter", [signup(None, "KE"), order("o1", DAY)],
               {"o1": by_coupon("KE", "p-staff", "rejected", ("promoter_ineligible",))}),
    CouponCase("self-referral through a coupon", [signup(None, "KS"), order("o1", DAY)],
               {"o1": by_coupon("KS", "p-self", "rejected", ("self_referral",))}),
    CouponCase("click checks skipped: an injected bot click loses to the code",
               [signup("B", "KA", click_ts=-1, bot=True), order("o1", DAY)], {"o1": by_coupon("KA", "p-alice")}),
    CouponCase("... but apply when the click wins",
               [signup("B", "KA", click_ts=-1, bot=True), order("o1", DAY)],
               {"o1": by_click("B", "p-bob", "rejected", ("click_injection", "bot_traffic"))}, "click"),
    CouponCase("order code after the binding period: nothing",
               [signup(None), order("o1", 181 * DAY, coupon="KA")], {}),
]


@pytest.mark.parametrize("case", COUPON_CASES, ids=lambda c: c.name)
def test_coupon_attribution(case: CouponCase) -> None:
    ctx, state, last = coupon_ctx(case.precedence), conv.AccountState(), {}
    for step in case.steps:
        touched = conv.add_order(state, step) if isinstance(step, OrderRec) else conv.add_attribution(state, step)
        for d in conv.decide_all(state, touched, ctx, 0):
            last[d.order_id] = (d.attributed_by, d.coupon_code, d.tracking_code, d.promoter_id, d.status, d.reasons)
            assert (d.click_event_id == "") is (d.attributed_by == "coupon")
        conv.prune(state, RULES)
    assert last == case.expected


def test_precedence_is_the_one_in_force_when_the_code_was_used() -> None:
    """A code used under "click" does not win over the click, a later one under "coupon" does."""
    book = RuleBook([RuleSet(attribution_precedence="click"),
                     RuleSet(version="v2", effective_from=10 * DAY, attribution_precedence="coupon")])
    ctx = conv.Context(RULES, book, lookup, coupon=coupon_lookup)
    state = conv.AccountState()
    conv.add_attribution(state, signup("B", "KA"))
    for o in (order("o1", DAY), order("o2", 11 * DAY, coupon="KB")):
        conv.add_order(state, o)
    got = {d.order_id: (d.attributed_by, d.promoter_id) for d in conv.decide_all(state, set(), ctx, 0)}
    assert got == {"o1": ("click", "p-bob"), "o2": ("coupon", "p-bob")}


def test_coupon_customer_who_paid_before_the_code_is_existing() -> None:
    state = conv.AccountState()
    conv.add_attribution(state, signup(None))
    conv.add_order(state, order("o0", DAY))
    conv.add_order(state, order("o1", 2 * DAY, coupon="KA"))
    [d] = conv.decide_all(state, set(), coupon_ctx("coupon"), 0)
    assert (d.order_id, d.existing_customer, d.customer_order, d.flood_clicks) == ("o1", True, 2, 0)


def test_an_organic_customers_history_outlives_expiry_for_a_later_coupon_order() -> None:
    """An organic account's paid order the watermark dropped still makes a later coupon
    order a repeat (no new-customer bonus, rank 2, an existing customer)."""
    from schemas.records import AttributionRec, OrderRec
    from streams.logic.rules.checks import PromoterRef

    day = 86_400_000
    t0 = 1_767_225_600_000
    kol = PromoterRef(promoter_id="P9")
    ctx = conv.Context(conv.ConversionRules(180 * day, 90 * day), coupon=lambda code, ts: kol if code == "KOL" else None)
    state = conv.AccountState()
    conv.add_attribution(state, AttributionRec("acc", "s1", t0, "v1", None, True))
    conv.add_order(state, OrderRec("e1", t0 + day, "o1", "acc", "pro", Decimal(10), "USD", "paid"))
    conv.advance(state, t0 + 5 * day, ctx.rules)  # o1 is behind the watermark: dropped
    assert "o1" not in state.orders
    conv.add_order(state, OrderRec("e2", t0 + 10 * day, "o2", "acc", "pro", Decimal(10), "USD", "paid",
                                   coupon_code="KOL"))
    [d] = conv.decide_all(state, {"o2"}, ctx, 0)
    assert (d.order_id, d.promoter_id, d.first_order, d.customer_order, d.customer_first_ts) == (
        "o2", "P9", False, 2, t0 + day)
    assert d.existing_customer
