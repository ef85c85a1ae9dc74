"""Every fraud pattern and program rule through the real stack: statuses, reasons and
commission in `conversions_current`, then a statement and a replay on the stored events."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from tests.support.pipeline import Pipeline, event

pytestmark = pytest.mark.integration
H = 3_600_000
MIN = 60_000
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


@dataclass
class Case:
    """One referred customer: a click on `code`, a signup, one order; plus extra events."""

    name: str
    code: str
    reasons: list[str]
    status: str
    click: dict = field(default_factory=dict)  # overrides of the attributed click
    signup: dict = field(default_factory=dict)
    order: dict = field(default_factory=dict)
    delay_ms: int = 20 * MIN  # click -> signup
    extra: list = field(default_factory=list)  # (topic, fields) produced before the case


def promoter(eid: str, code: str, ts: int, **fields) -> tuple[str, dict]:
    return ("promoters", dict(event_id=eid, ts=ts, promoter_id=code.lower(), tracking_code=code, **fields))


def cases(t0: int) -> list[Case]:
    flood = [("clicks", dict(event_id=f"fl{i}", ts=t0 + i * MIN, tracking_code="T-FLOOD", visitor_id=f"vf{i}",
                             ip="198.51.100.77", user_agent=CHROME)) for i in range(22)]
    farm = [x for i in range(4) for x in (
        ("clicks", dict(event_id=f"fa-c{i}", ts=t0, tracking_code="T-FARM", visitor_id=f"vfa{i}", ip=f"10.1.0.{i}",
                        user_agent=CHROME)),
        ("signups", dict(event_id=f"fa-s{i}", ts=t0 + 30 * MIN, account_id=f"fa-a{i}", visitor_id=f"vfa{i}",
                         ip="192.0.2.50")))]
    spam = [x for i in range(20) for x in (
        ("clicks", dict(event_id=f"sp-c{i}", ts=t0 - 72 * H, tracking_code="T-SPAM", visitor_id=f"vsp{i}",
                        ip=f"10.2.0.{i}", user_agent=CHROME)),
        ("signups", dict(event_id=f"sp-s{i}", ts=t0 - 72 * H + 48 * H, account_id=f"sp-a{i}",
                         visitor_id=f"vsp{i}", ip=f"10.3.0.{i}")))]
    return [
        Case("honest", "T-OK", [], "approved"),
        Case("click injection", "T-INJ", ["click_injection"], "rejected", delay_ms=4_000),
        Case("bot user agent", "T-BOT", ["bot_traffic"], "rejected", click={"user_agent": "Googlebot/2.1"}),
        Case("HEAD request", "T-HEAD", ["bot_traffic"], "rejected", click={"method": "HEAD"}),
        Case("click flooding", "T-FLOOD", ["click_flooding"], "rejected", click={"ip": "198.51.100.77"},
             extra=flood),
        Case("signup farming", "T-FARM", ["signup_farming"], "rejected", signup={"ip": "192.0.2.50"}, extra=farm),
        Case("click spamming", "T-SPAM", ["click_spamming"], "held", delay_ms=30 * H, extra=spam),
        Case("self-referral by device", "T-SELF", ["self_referral"], "rejected", signup={"device_id": "dev-self"}),
        Case("employee promoter", "T-EMP", ["promoter_ineligible"], "rejected"),
        Case("channel-owned customer", "T-CH", ["customer_owned_by_channel"], "rejected",
             extra=[("exclusions", dict(event_id="x1", ts=t0 - 100 * H, account_id="acc-channel-owned-customer",
                                        owner="channel_partner"))]),
        Case("promoter turns enterprise", "T-ENT", ["promoter_became_enterprise"], "reversed"),
        Case("ineligible product", "T-PROD", ["product_ineligible"], "rejected", order={"category": "marketplace"}),
        Case("big order", "T-BIG", ["high_value_review"], "held", order={"amount": 60000}),
        Case("unknown tracking code", "T-NOBODY", ["unknown_promoter"], "rejected"),
    ]


def reference(t0: int) -> list[tuple[str, dict]]:
    codes = ["T-OK", "T-INJ", "T-BOT", "T-HEAD", "T-FLOOD", "T-FARM", "T-SPAM", "T-CH", "T-ENT", "T-PROD", "T-BIG"]
    return ([promoter(f"p-{c}", c, t0 - 200 * H) for c in codes]
            + [promoter("p-T-SELF", "T-SELF", t0 - 200 * H, device_id="dev-self"),
               promoter("p-T-EMP", "T-EMP", t0 - 200 * H, is_employee=True),
               promoter("p-T-ENT-2", "T-ENT", t0 + 10 * H, account_type="enterprise")])


def account(case: Case) -> str:
    return "acc-" + case.name.replace(" ", "-").replace("-by-device", "")


def traffic(t0: int) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    for i, c in enumerate(cases(t0)):
        out += c.extra
        ts = t0 + 5 * MIN + i * 1000
        visitor, acc = f"v-{i}", account(c)
        click_ts = ts if c.delay_ms < 24 * H else ts - c.delay_ms
        out.append(("clicks", {**dict(event_id=f"c-{i}", ts=click_ts, tracking_code=c.code, visitor_id=visitor,
                                      ip=f"203.0.113.{i}", user_agent=CHROME), **c.click}))
        out.append(("signups", {**dict(event_id=f"s-{i}", ts=click_ts + c.delay_ms, account_id=acc,
                                       visitor_id=visitor, ip=f"198.18.0.{i}"), **c.signup}))
        out.append(("orders", {**dict(event_id=f"o-{i}", ts=click_ts + c.delay_ms + H, order_id=f"o-{i}",
                                      account_id=acc, product="db-pro", amount=100, currency="USD",
                                      status="paid"), **c.order}))
    out.sort(key=lambda item: item[1]["ts"])  # in event time: nothing here is late
    # an order far later moves the watermarks past everything above
    out += [("clicks", dict(event_id="tick-c", ts=t0 + 29 * H, tracking_code="T-X", visitor_id="v-tick")),
            ("signups", dict(event_id="tick-s", ts=t0 + 30 * H, account_id="acc-tick", visitor_id="v-tick")),
            ("orders", dict(event_id="tick-o", ts=t0 + 30 * H, order_id="o-tick", account_id="acc-tick",
                            product="db-pro", amount=1, currency="USD", status="paid"))]
    return out


def encode(items: list[tuple[str, dict]]) -> list[tuple[str, bytes | None, bytes]]:
    return [(topic, None, event(**fields)) for topic, fields in items]


def test_every_rule_through_the_stack(stack, topic_prefix, tmp_path) -> None:
    p = Pipeline.create(stack, topic_prefix, tmp_path, partitions=2, allowed_lateness_s=2 * 3600)
    t0 = (int(time.time() * 1000) - 10 * 24 * H) // (24 * H) * (24 * H) + H  # hour and day windows hold
    all_cases = cases(t0)
    p.start_worker()
    try:
        p.produce(encode(reference(t0)))
        p.wait(lambda: (p.get("/health") or {}).get("promoters") == 13, 60, "promoters")
        p.produce(encode(traffic(t0)))
        p.wait_counts({"conversions_current": len(all_cases) + 1}, timeout=240)  # + the tick
    finally:
        p.stop_workers()

    rows = {r["order_id"]: r for r in p.query("SELECT * FROM conversions_current")}
    got = {c.name: (rows[f"o-{i}"]["status"], rows[f"o-{i}"]["reasons"]) for i, c in enumerate(all_cases)}
    assert got == {c.name: (c.status, c.reasons) for c in all_cases}

    honest = rows["o-0"]  # level 1: 15 % of 100, first order: +50 bonus, 100 points per unit
    assert (Decimal(honest["rate"]), Decimal(honest["commission"]), Decimal(honest["bonus"]), honest["points"],
            honest["rule_version"], honest["first_order"]) == (
        Decimal("0.15"), Decimal(15), Decimal(50), 6500, "default", True)
    held = rows["o-12"]  # held orders keep their price; rejected and reversed ones pay nothing
    assert Decimal(held["commission"]) == Decimal(9000)
    assert all(Decimal(r["commission"]) == 0 for r in rows.values() if r["status"] in ("rejected", "reversed"))
    # the evidence behind the reasons, for the review queue
    assert (rows["o-4"]["flood_clicks"], rows["o-5"]["farm_signups"], rows["o-7"]["identity_match"],
            rows["o-9"]["exclusion_owner"]) == (23, 5, "device", "channel_partner")

    statement = p.cli("statement", "--promoter", "t-ok", "--month", time.strftime("%Y-%m", time.gmtime(
        (t0 + 6 * MIN) / 1000)), "--orders")
    assert "approved" in statement and "o-0" in statement and "65.00" in statement

    # the live pipeline's conversions are the replay's (p.cli asserts exit status 0: none differ)
    assert p.cli("replay", "--against-stored").startswith("0 of ")
    same = p.cli("replay", "--rules", str(write_rules(tmp_path / "same.toml", "")))
    assert same.startswith("0 of ")
    looser = p.cli("replay", "--rules", str(write_rules(tmp_path / "loose.toml", "injection_max_s = 1")))
    assert looser.startswith("1 of ")
    reason_lines = [line.split() for line in looser.splitlines() if line.startswith("click_injection")]
    assert reason_lines == [["click_injection", "1", "0", "-1"]]


def write_rules(path, body: str):
    path.write_text(f'[[rule_set]]\nversion = "candidate"\n{body}\n')
    return path
