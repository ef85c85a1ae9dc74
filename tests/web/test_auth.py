"""The token check never fails open and never raises (issue 11, defect 10), and Faust's own
web pages, which know nothing of the token, are off (defect 13)."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import faust
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from streams.config import Settings
from streams.web.routes import authorized, bearer, register

TOKEN = "s3cret"


@dataclass
class HeaderCase:
    name: str
    header: str | None
    ok: bool = False


HEADER_CASES = [
    HeaderCase("matches", f"Bearer {TOKEN}", True),
    HeaderCase("lower-case scheme", f"bearer {TOKEN}", True),
    HeaderCase("surrounding spaces", f"  Bearer   {TOKEN}  ", True),
    HeaderCase("missing", None),
    HeaderCase("empty", ""),
    HeaderCase("blank", "   "),
    HeaderCase("scheme only", "Bearer"),
    HeaderCase("scheme and space", "Bearer "),
    HeaderCase("other scheme", f"Basic {TOKEN}"),
    HeaderCase("basic with garbage", "Basic x"),
    HeaderCase("token only", TOKEN),
    HeaderCase("non-ASCII (UTF-8 decoded)", "Bearer sécret"),
    HeaderCase("non-ASCII digit", "Bearer s３cret"),
    HeaderCase("surrogate escape of a Latin-1 byte", "Bearer s\udce9cret"),
    HeaderCase("surrogate escapes only", "Bearer \udcff\udcfe"),
    HeaderCase("lone surrogate", "Bearer \ud800"),
    HeaderCase("surrogate in the scheme", "B\udce9arer s3cret"),
    HeaderCase("NUL in the token", f"Bearer {TOKEN}\x00"),
    HeaderCase("NUL only", "\x00"),
    HeaderCase("tab separator", f"Bearer\t{TOKEN}"),
    HeaderCase("tab in the token", "Bearer s3\tcret"),
    HeaderCase("two tokens", f"Bearer {TOKEN} {TOKEN}"),
    HeaderCase("newline", f"Bearer {TOKEN}\nX: y"),
    HeaderCase("very long", "Bearer " + "x" * 1_000_000),
    HeaderCase("very long non-ASCII", "Bearer " + "é" * 100_000),
    HeaderCase("prefix of the token", "Bearer s3cre"),
    HeaderCase("token with a suffix", f"Bearer {TOKEN}x"),
]


@pytest.mark.parametrize("case", HEADER_CASES, ids=lambda c: c.name)
def test_authorized_headers(case: HeaderCase) -> None:
    assert authorized(TOKEN, case.header) is case.ok
    assert authorized(TOKEN, None, case.header) is (case.header == TOKEN)  # the same text as ?token=
    assert authorized("", case.header) is True  # no token configured: open


@given(st.text(), st.one_of(st.none(), st.text()), st.text(min_size=1))
def test_authorized_never_raises(header: str, query: str | None, expected: str) -> None:
    ok = authorized(expected, header, query)
    assert ok is False or expected in (bearer(header), query)


def test_a_configured_token_with_surrogate_escapes_does_not_raise() -> None:
    assert authorized("s\udce9cret", "Bearer s3cret") is False


RAW_HEADERS = [  # bytes on the wire: aiohttp decodes what is not UTF-8 as surrogate escapes
    (b"Bearer s\xc3\xa9cret", 401),
    (b"Bearer s\xe9cret", 401),
    (b"Bearer \xff\xfe", 401),
    (b"\xe9", 401),
    (b"Bearer", 401),
    (b"Basic x", 401),
    (b"Bearer s3cret", 200),
]


def test_malformed_headers_over_http_are_401_never_500() -> None:
    """Raw header bytes (a client cannot send these through aiohttp's client) on /api."""
    async def go() -> list[int]:
        app = faust.App("auth-test", broker="kafka://127.0.0.1:1", web_enabled=True)
        register(app, SimpleNamespace(read=None), Settings(api_token=TOKEN))  # /api runs no query
        statuses = []
        async with TestServer(app.web.web_app) as server:
            for raw, _ in RAW_HEADERS:
                reader, writer = await asyncio.open_connection(server.host, server.port)
                writer.write(b"GET /api HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                             b"Authorization: " + raw + b"\r\n\r\n")
                await writer.drain()
                statuses.append(int((await reader.read()).split(b" ", 2)[1]))
                writer.close()
        return statuses

    assert asyncio.run(go()) == [status for _, status in RAW_HEADERS]


# --- Faust's own pages -------------------------------------------------------------------------

FAUST_PAGES = ["/router/", "/table/", "/graph/", "/assignment/", "/performance/"]


@pytest.mark.parametrize("role", ["all", "stream", "sink"])
def test_faust_pages_are_off(role: str, tmp_path: Path) -> None:
    """/router, /table, the stats and /graph answer without the token: create_app turns them
    off; `/` is then Faust's production index, which shows nothing but a status."""
    from streams.agents.app import create_app

    app = create_app(Settings(role=role, data_dir=str(tmp_path)), {"clicks": 1, "signups": 1, "orders": 1})
    conf = app.conf
    assert not (conf.web_router_enabled or conf.web_tables_enabled or conf.web_stats_enabled
                or conf.web_graph_enabled or conf.web_metrics_enabled)
    assert [bp for _, bp in app.web.blueprints._enabled] == ["faust.web.apps.production_index:blueprint"]

    async def go() -> list[tuple[int, str]]:
        app.web.blueprints.apply(app.web)  # what the web server does when it starts
        async with TestClient(TestServer(app.web.web_app)) as client:
            return [(r.status, await r.text()) for r in [await client.get(p) for p in ["/", *FAUST_PAGES]]]

    [(index_status, index), *pages] = asyncio.run(go())
    assert index_status == 200 and json.loads(index) == {"status": "OK"}
    assert [status for status, _ in pages] == [404] * len(FAUST_PAGES)
