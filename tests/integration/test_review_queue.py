"""The review queue end to end: a real worker holds a big order (`high_value_review`), the
dashboard in headless Chromium shows it with its evidence, a click on Approve publishes the
decision to the `reviews` topic, and `conversions_current` then shows the order approved
with `manual_approved`. A decision retried with the same request_id is one decision.

The worker's API is the only way in: chdb allows one process per data directory, and the
worker holds it. A screenshot goes to .data/artifacts/review-queue.png.
"""
from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from typing import Any

import pytest

from tests.support import browser
from tests.support.pipeline import ROOT, Pipeline, event

pytestmark = [pytest.mark.integration, pytest.mark.skipif(browser.CHROMIUM is None, reason=browser.NO_CHROMIUM)]

ARTIFACT = ROOT / ".data" / "artifacts" / "review-queue.png"
TOKEN = "review-queue-test-token"
H, MIN, DAY = 3_600_000, 60_000, 86_400_000
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
BIG, HONEST = "o-big", "o-ok"


def messages(t0: int) -> list[tuple[str, bytes | None, bytes]]:
    """Two promoters, an honest order of 100 and a big one of 60,000, then a later order that
    moves the watermarks past both."""
    out: list[tuple[str, dict[str, Any]]] = [
        ("promoters", dict(event_id="p-ok", ts=t0 - 200 * H, promoter_id="p-ok", tracking_code="T-OK")),
        ("promoters", dict(event_id="p-big", ts=t0 - 200 * H, promoter_id="p-big", tracking_code="T-BIG")),
    ]
    for i, (order, code, amount) in enumerate([(HONEST, "T-OK", 100), (BIG, "T-BIG", 60000)]):
        ts = t0 + 5 * MIN + i * 1000
        out += [("clicks", dict(event_id=f"c-{i}", ts=ts, tracking_code=code, visitor_id=f"v-{i}",
                                ip=f"203.0.113.{i}", user_agent=CHROME)),
                ("signups", dict(event_id=f"s-{i}", ts=ts + 20 * MIN, account_id=f"acc-{i}", visitor_id=f"v-{i}",
                                 ip=f"198.18.0.{i}")),
                ("orders", dict(event_id=f"e-{i}", ts=ts + 20 * MIN + H, order_id=order, account_id=f"acc-{i}",
                                product="db-pro", amount=amount, currency="USD", status="paid"))]
    out += [("clicks", dict(event_id="tick-c", ts=t0 + 29 * H, tracking_code="T-X", visitor_id="v-tick")),
            ("signups", dict(event_id="tick-s", ts=t0 + 30 * H, account_id="acc-tick", visitor_id="v-tick")),
            ("orders", dict(event_id="tick-o", ts=t0 + 30 * H, order_id="o-tick", account_id="acc-tick",
                            product="db-pro", amount=1, currency="USD", status="paid"))]
    return [(topic, None, event(**fields)) for topic, fields in out]


def queue(p: Pipeline, **params: str) -> dict[str, Any]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    status, body = browser.fetch(p.port, f"/api/reviews?{query}", TOKEN)
    assert status == 200, body
    return body


def row_of(p: Pipeline, order: str, status: str) -> dict[str, Any] | None:
    return next((r for r in queue(p, status=status)["rows"] if r["order_id"] == order), None)


def held_usd(p: Pipeline) -> Decimal:
    status, summary = browser.fetch(p.port, "/api/payouts/summary", TOKEN)
    assert status == 200 and summary["available"], summary
    return sum((Decimal(c["held"]) for c in summary["currencies"] if c["currency"] == "USD"), Decimal(0))


async def approve_in_the_page(p: Pipeline) -> list[str]:
    """Open the dashboard, wait for the big order's row, click Approve; the row's state labels
    seen until a refresh no longer shows it held."""
    async with browser.chromium() as page:
        await page.open(f"http://127.0.0.1:{p.port}/dashboard?token={TOKEN}&range=7d")
        rendered = await browser.wait_rendered(page, lambda points: points.get("reviews", 0) >= 1)
        assert rendered.error is None and rendered.points.get("reviews", 0) >= 1, rendered
        row = f'document.querySelector(\'#reviews tr[data-order="{BIG}"]\')'
        assert await page.evaluate(f"{row} !== null"), "the held order is not in the queue"
        assert "high_value_review" in await page.evaluate(f"{row}.textContent")
        await page.evaluate("document.getElementById('review-actor').value = 'tester'")
        await page.evaluate("document.getElementById('review-queue').scrollIntoView()")
        await page.evaluate(f"{row}.querySelector('button[data-decision=approve]').click()")
        labels: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            label = await page.evaluate(f"(() => {{ const r = {row}; return r ? r.querySelector('.state').textContent"
                                        " : null; })()")
            if label is None:  # a refresh showed the order no longer held
                break
            if not labels or labels[-1] != label:
                labels.append(label)
                if label == "approved — pending":
                    await page.screenshot(ARTIFACT)
            await asyncio.sleep(0.1)
        assert await page.evaluate("localStorage.getItem('refstream.reviewActor')") == "tester"
        return labels


def test_approve_a_held_conversion_from_the_dashboard(stack: Any, topic_prefix: str, tmp_path: Any) -> None:
    p = Pipeline.create(stack, topic_prefix, tmp_path, partitions=1, api_token=TOKEN)
    t0 = (int(time.time() * 1000) - 10 * DAY) // DAY * DAY + H
    p.start_worker()
    try:
        p.produce(messages(t0))
        p.wait_counts({"conversions_current": 3}, timeout=240)

        # the queue over HTTP: the big order held, with its evidence; the honest one approved
        held = row_of(p, BIG, "held")
        assert held is not None and held["reasons"] == ["high_value_review"], queue(p)
        assert held["evidence"]["click_to_signup_ms"] == 20 * MIN and held["last_review"]["decisions"] == 0
        assert row_of(p, HONEST, "approved") is not None
        assert held_usd(p) == Decimal(held["earning"]) > 0
        assert browser.fetch(p.port, "/api/reviews", None, "POST", {"order_id": BIG})[0] == 401

        labels = asyncio.run(approve_in_the_page(p))
        assert "approved — pending" in labels, labels

        # conversions_current applied the decision (docs/payouts.md, "Review decisions")
        p.wait(lambda: row_of(p, BIG, "approved") is not None, 90, "the approve decision applied")
        approved = row_of(p, BIG, "approved")
        assert approved is not None
        assert ("manual_approved" in approved["reasons"], approved["auto_status"]) == (True, "held"), approved
        assert (approved["last_review"]["decision"], approved["last_review"]["actor"]) == ("approve", "tester")
        assert approved["revision"] > held["revision"] and approved["payable_at"] is not None
        assert row_of(p, BIG, "held") is None and held_usd(p) == 0

        # a retried click publishes the same event: one decision, not two
        decision = {"order_id": HONEST, "decision": "hold", "reason": "second look", "actor": "tester",
                    "request_id": "retry-1"}
        replies = [browser.fetch(p.port, "/api/reviews", TOKEN, "POST", decision) for _ in range(2)]
        assert [status for status, _ in replies] == [202, 202], replies
        assert replies[0][1]["event"]["event_id"] == replies[1][1]["event"]["event_id"]
        p.wait(lambda: row_of(p, HONEST, "held") is not None, 90, "the hold decision applied")
        honest = row_of(p, HONEST, "held")
        assert honest is not None and "manual_hold" in honest["reasons"], honest
        assert honest["last_review"]["decisions"] == 1, json.dumps(honest)
    finally:
        p.stop_workers()
