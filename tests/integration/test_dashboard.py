"""The live dashboard in headless Chromium, served by a real worker over real traffic.

A `refstream worker` subprocess runs on the session's Tansu with its own chdb directory
and an API token; generated traffic (a day, a few hundred visitors) goes through the whole
pipeline. Then the API is checked over HTTP (auth, figures consistent with /counts), and
Chromium, driven through the DevTools protocol (tests/support/browser.py), opens /dashboard:
the page records after every refresh how many non-zero points each chart drew in
`window.__refstreamRendered`. A screenshot goes to
.data/artifacts/dashboard.png. Skipped only when no Chromium is installed.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from streams.config import Settings
from streams.dev import generate
from streams.dev.demo import only
from streams.dev.traffic import TrafficSpec
from streams.topology import RAW_TOPICS, REFERENCE_TOPICS
from tests.support import browser
from tests.support.pipeline import ROOT, Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.skipif(browser.CHROMIUM is None, reason=browser.NO_CHROMIUM)]

ARTIFACT = ROOT / ".data" / "artifacts" / "dashboard.png"
TOKEN = "dashboard-test-token"
CHARTS = ("funnel", "money", "activity", "top", "rejections")


def fetch(port: int, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
    return browser.fetch(port, path, token)


# --- the pipeline ------------------------------------------------------------------------------


@pytest.fixture
def worker(stack: Any, topic_prefix: str, tmp_path: Path) -> Iterator[tuple[Pipeline, Any]]:
    """A worker that processed a day of generated traffic (promoters first)."""
    p = Pipeline.create(stack, topic_prefix, tmp_path, partitions=1, api_token=TOKEN)
    settings = Settings.from_env(p.env)
    traffic = generate.generate(TrafficSpec(seed=11, promoters=6, visitors=700, days=1,
                                            end_ms=int(time.time() * 1000) - 60_000,
                                            allowed_lateness_ms=settings.lateness_ms))
    p.start_worker()
    try:
        asyncio.run(generate.produce(settings, only(traffic, REFERENCE_TOPICS), progress=False))
        p.wait(lambda: (p.get("/health") or {}).get("promoters", 0) >= len(traffic.truth.promoters), 60, "promoters")
        asyncio.run(generate.produce(settings, only(traffic, RAW_TOPICS), progress=False))
        expected = {t: traffic.counts.messages.get(t, 0) - traffic.counts.malformed.get(t, 0)
                    for t in ("clicks", "signups", "orders")}
        last = {"conversions": -1, "since": time.monotonic()}

        def processed() -> bool:
            rows = ((p.get("/health") or {}).get("sink") or {}).get("rows_written", {})
            if any(rows.get(t, 0) < n for t, n in expected.items()):
                return False
            if rows.get("conversions", 0) != last["conversions"]:
                last.update(conversions=rows.get("conversions", 0), since=time.monotonic())
                return False
            return time.monotonic() - last["since"] >= 3

        p.wait(processed, 180, "the traffic to be processed")
        yield p, traffic
    finally:
        p.stop_workers()


def test_api_and_dashboard_on_a_real_worker(worker: tuple[Pipeline, Any]) -> None:
    p, traffic = worker
    span = f"from={min(t for t in traffic.ts if t is not None)}"  # some visitors clicked long before

    # the API on the worker: token required, figures agree with the sink's own counts
    assert fetch(p.port, f"/api/funnel?{span}", token=None)[0] == 401
    assert fetch(p.port, f"/api/funnel?{span}", token="wrong")[0] == 401
    assert fetch(p.port, "/api/funnel?from=soon")[0] == 400
    status, funnel = fetch(p.port, f"/api/funnel?{span}")
    assert status == 200, funnel
    counts = p.get("/counts")
    stages = {s["stage"]: s["count"] for s in funnel["stages"]}
    assert stages["clicks"] == counts["clicks"] > 0  # every click is in the range, each once
    assert 0 < stages["first_orders"] <= stages["signups"] <= counts["attributions_current"], (funnel, counts)
    status, top = fetch(p.port, f"/api/top?{span}&limit=100")
    status_ts, series = fetch(p.port, f"/api/timeseries?{span}&bucket=day")
    assert (status, status_ts) == (200, 200), (top, series)
    gmv = sum(Decimal(r["gmv"]) for r in top["rows"])
    assert gmv == Decimal(series["totals"]["gmv"]) > 0
    assert sum(r["conversions"] for r in top["rows"]) == series["totals"]["orders"]
    assert series["totals"]["clicks"] == counts["clicks"]

    # the page: every chart drawn with data, and refreshed by itself at least once
    def ready(points: dict[str, Any]) -> bool:
        return points.get("refreshes", 0) >= 2 and all(points.get(c, 0) > 0 for c in CHARTS)

    rendered = asyncio.run(browser.render_dashboard(f"http://127.0.0.1:{p.port}/dashboard?token={TOKEN}&range=7d",
                                                    ready, ARTIFACT))
    assert rendered.error is None, rendered.error
    assert ready(rendered.points), f"charts not drawn in time: {rendered.points}"
    assert rendered.points["funnel"] >= 3 and rendered.points["alerts"] == 0  # no alerts written yet
    assert rendered.points["activity"] >= 12  # hourly buckets with traffic over the day
    assert ARTIFACT.stat().st_size > 20_000
