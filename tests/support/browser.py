"""Headless Chromium driven through the DevTools protocol (aiohttp's websocket client, no
extra package), and plain HTTP calls to a worker: shared by the dashboard's browser tests.

The page records after every refresh what it drew in `window.__refstreamRendered` (or an
error in `window.__refstreamError`); `wait_rendered` polls that.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
NO_CHROMIUM = "no Chromium found: install it with 'apt-get install -y chromium chromium-driver'"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1400,1750", "--remote-debugging-port=0",
]


def fetch(port: int, path: str, token: str | None, method: str = "GET",
          body: Any = None) -> tuple[int, Any]:
    """(status, JSON body) of a request to the worker on `port`; `body` is sent as JSON."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers, method=method)
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
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def open(self, url: str) -> None:
        await self.send("Page.enable")
        await self.send("Page.navigate", url=url)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


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


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium on a fresh profile, stopped on exit."""
    assert CHROMIUM is not None, NO_CHROMIUM
    # Chromium's helper processes outlive its main one for a moment and keep writing to the
    # profile: stop the whole process group, and let a straggler's file not fail the test
    with tempfile.TemporaryDirectory(prefix="refstream-chromium-", ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            ws_url = await devtools_page(Path(profile), proc)
            async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
                yield Browser(proc, ws)
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue


@dataclass
class Rendered:
    points: dict[str, Any]
    error: str | None


async def wait_rendered(browser: Browser, ready: Callable[[dict[str, Any]], bool], timeout: float = 90) -> Rendered:
    """Poll the page's `__refstreamRendered` until `ready(points)` holds or the page reports an
    error; the last state either way."""
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
    return state


async def render_dashboard(url: str, ready: Callable[[dict[str, Any]], bool], artifact: Path,
                           timeout: float = 90) -> Rendered:
    """Open `url`, wait until `ready(points)` holds, save the screenshot, return the points."""
    async with chromium() as browser:
        await browser.open(url)
        state = await wait_rendered(browser, ready, timeout)
        await browser.screenshot(artifact)
        return state
