"""The live dashboard in headless Chromium, served by a real worker over real traffic.

A `refstream worker` subprocess runs on the session's Tansu with its own chdb directory
and an API token; generated traffic (a day, a few hundred visitors) goes through the whole
pipeline. Then the API is checked over HTTP (auth, figures consistent with /counts), and
Chromium, driven through the DevTools protocol (aiohttp's websocket client, no extra
package), opens /dashboard: the page records after every refresh how many non-zero points
each chart drew in `window.__refstreamRendered`. A screenshot goes to
.data/artifacts/dashboard.png. Skipped only when no Chromium is installed.
"""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streams.config import Settings
from streams.dev import generate
from streams.dev.demo import only
from streams.dev.traffic import TrafficSpec
from streams.topology import RAW_TOPICS, REFERENCE_TOPICS
from tests.support.pipeline import ROOT, Pipeline

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found: install it with "
                       "'apt-get install -y chromium chromium-driver'"),
]

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1400,1750", "--remote-debugging-port=0",
]
ARTIFACT = ROOT / ".data" / "artifacts" / "dashboard.png"
TOKEN = "dashboard-test-token"
CHARTS = ("funnel", "money", "activity", "top", "rejections")


# --- HTTP and the DevTools protocol -------------------------------------------------------------


def fetch(port: int, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


class Browser:
    """One headless Chromium with one page, driven over the DevTools websocket."""

    def __init__(self, proc: subprocess.Popen, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.proc, self.ws, self._id = proc, ws, 0

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        await self.ws.send_json({"id": self._id, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.ws.receive_json(), 60)
            if message.get("id") == self._id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


async def devtools_page(profile: Path, proc: subprocess.Popen) -> str:
    """The websocket URL of Chromium's first page (its port is in DevToolsActivePort)."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"chromium did not start (exit code {proc.poll()})")
        await asyncio.sleep(0.2)
    port = int(port_file.read_text().split()[0])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
    return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")


@dataclass
class Rendered:
    points: dict[str, Any]
    error: str | None


async def render_dashboard(url: str, ready: Any, timeout: float = 90) -> Rendered:
    """Open `url`, wait until `ready(points)` holds, save the screenshot, return the points."""
    with tempfile.TemporaryDirectory(prefix="refstream-chromium-") as profile:
        proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ws_url = await devtools_page(Path(profile), proc)
            async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
                browser = Browser(proc, ws)
                await browser.send("Page.enable")
                await browser.send("Page.navigate", url=url)
                state = Rendered({}, None)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    value = await browser.evaluate(
                        "JSON.stringify({r: window.__refstreamRendered || {}, e: window.__refstreamError || null})")
                    got = json.loads(value or "{}")
                    state = Rendered(got.get("r", {}), got.get("e"))
                    if ready(state.points) or state.error:
                        break
                    await asyncio.sleep(0.5)
                shot = await browser.send("Page.captureScreenshot", format="png")
                ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
                ARTIFACT.write_bytes(base64.b64decode(shot["data"]))
                return state
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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

    rendered = asyncio.run(render_dashboard(f"http://127.0.0.1:{p.port}/dashboard?token={TOKEN}&range=7d", ready))
    assert rendered.error is None, rendered.error
    assert ready(rendered.points), f"charts not drawn in time: {rendered.points}"
    assert rendered.points["funnel"] >= 3 and rendered.points["alerts"] == 0  # no alerts written yet
    assert rendered.points["activity"] >= 12  # hourly buckets with traffic over the day
    assert ARTIFACT.stat().st_size > 20_000
