"""HTTP routes of the stats API and the dashboard, on the worker's Faust web server.

chdb allows one process per data directory, so the API runs inside the worker and reads
through the sink's own ClickHouse client: in a thread (the client is synchronous) and
holding the writer's lock (the client is not shared concurrently). Against a ClickHouse
server the same code works unchanged.

Routes (GET unless said):

- `/api` (index), `/api/funnel`, `/api/timeseries`, `/api/top`, `/api/rejections`,
  `/api/alerts`, `/api/reviews` (the review queue), `/api/payouts/summary`: JSON, see docs/api.md;
- `POST /api/reviews`: a review decision, published to the `reviews` topic. It moves money,
  so it always needs the token: 403 while no token is configured;
- `/dashboard`: the live dashboard page; `/dashboard/static/...`: its script, style and
  the vendored Chart.js (public code, no data: served without a token).

With `settings.api_token` set, `/api*` needs `Authorization: Bearer <token>`; `/dashboard`
takes the header or `?token=<token>` (a browser cannot send a header when opening a
page); the page then sends the header on its API calls.
"""
from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web as aioweb

from streams.config import TOKEN_CHARS
from streams.web.api import Args, BadRequest, StatsApi
from streams.web.review_api import Publish, PublishFailed, ReviewApi
from streams.web.reviews import MAX_BODY_BYTES

log = logging.getLogger(__name__)
T = TypeVar("T")

STATIC_DIR = Path(__file__).parent / "static"
#: URL name -> (file under static/, content type); nothing else is served
STATIC_FILES: dict[str, tuple[str, str]] = {
    "app.js": ("app.js", "text/javascript"),
    "app.css": ("app.css", "text/css"),
    "chart.umd.min.js": ("vendor/chart.umd.min.js", "text/javascript"),
}
JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
PAGE_HEADERS = {
    **JSON_HEADERS,
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",  # the page URL may carry ?token=
}


# aiohttp hands undecodable header bytes over as surrogate escapes, which `str.encode()`
# refuses: a token outside TOKEN_CHARS must be refused (401), not raise (500).


def well_formed(token: str | None) -> str | None:
    return token if token is not None and TOKEN_CHARS.fullmatch(token) else None


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None for a missing or
    malformed header (another scheme, no token, control or non-ASCII characters, too long)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return well_formed(token.strip()) if scheme.lower() == "bearer" else None


def authorized(expected: str, header: str | None, query_token: str | None = None) -> bool:
    """True when no token is configured, or the bearer header (else `query_token`) matches.
    Never raises: anything malformed is simply not a match."""
    if not expected:
        return True
    supplied = bearer(header) or well_formed(query_token)
    if supplied is None:
        return False
    # surrogatepass: a configured token read from undecodable environment bytes must not raise either
    return hmac.compare_digest(supplied.encode(), expected.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str]


def json_reply(status: int, value: Any, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(value, separators=(",", ":")).encode(), "application/json",
                 {**JSON_HEADERS, **(headers or {})})


UNAUTHORIZED = json_reply(401, {"error": "missing or wrong bearer token: send 'Authorization: Bearer <token>'"},
                          {"WWW-Authenticate": 'Bearer realm="refstream"'})
NO_TOKEN_CONFIGURED = json_reply(403, {"error": "review decisions move money and need auth: set "
                                                "REFSTREAM_API_TOKEN on the worker and send it as a bearer token"})


def query_args(request: Any) -> dict[str, list[str]]:
    """aiohttp's query MultiDict as name -> every value."""
    query = request.query
    return {name: query.getall(name) for name in set(query.keys())}


async def api_reply(handler: Callable[[Args], Awaitable[dict[str, Any]]], args: Args,
                    token: str, auth_header: str | None) -> Reply:
    """Auth, then the handler; BadRequest -> 400, any other failure -> 503 (logged)."""
    if not authorized(token, auth_header):
        return UNAUTHORIZED
    try:
        return json_reply(200, await handler(args))
    except BadRequest as exc:
        return json_reply(400, {"error": str(exc)})
    except Exception as exc:  # ClickHouse unavailable, query timeout, ...
        log.warning("stats query failed", extra={"error": repr(exc)})
        return json_reply(503, {"error": f"stats query failed ({type(exc).__name__}); see the worker log"})


async def decision_reply(decide: Callable[[bytes], Awaitable[dict[str, Any]]], body: Callable[[], Awaitable[bytes]],
                         token: str, auth_header: str | None) -> Reply:
    """`POST /api/reviews`: a token must be configured (403) and sent (401); then the body is
    read and decided: 202 with the event, 400 for a bad body, 503 when publishing failed."""
    if not token:
        return NO_TOKEN_CONFIGURED
    if not authorized(token, auth_header):
        return UNAUTHORIZED
    try:
        return json_reply(202, await decide(await body()))
    except BadRequest as exc:
        return json_reply(400, {"error": str(exc)})
    except PublishFailed as exc:
        log.warning("review not published", extra={"error": repr(exc.__cause__ or exc)})
        return json_reply(503, {"error": f"{exc}; retry with the same request_id"})


async def bounded_body(request: Any) -> bytes:
    """The request body, refused (BadRequest) above MAX_BODY_BYTES before it is read."""
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise BadRequest(f"the body has {length:,} bytes; at most {MAX_BODY_BYTES:,}")
    try:
        body: bytes = await request.read()
    except aioweb.HTTPRequestEntityTooLarge:  # chunked and above aiohttp's client_max_size
        raise BadRequest(f"the body is too large; at most {MAX_BODY_BYTES:,} bytes") from None
    return body


def register(app: Any, sink: Any, settings: Any, publish: Publish | None = None) -> StatsApi:
    """Add the API, dashboard and static routes to the Faust `app`; returns the API.
    `publish(key, value)` sends a review decision to the `reviews` topic."""
    api = StatsApi(sink.read)  # the sink's ClickHouse client: chdb allows one process per directory
    review_api = ReviewApi(sink.read, publish, lateness_ms=settings.lateness_ms,
                           max_future_ms=int(settings.max_future_s * 1000))
    token = settings.api_token

    def send(web: Any, reply: Reply) -> Any:
        return web.bytes(reply.body, content_type=reply.content_type, status=reply.status,
                         headers=dict(reply.headers))

    def add_api(name: str, handler: Callable[[Args], Awaitable[dict[str, Any]]]) -> None:
        async def view(web: Any, request: Any) -> Any:
            return send(web, await api_reply(handler, query_args(request), token,
                                             request.headers.get("Authorization")))
        app.page(f"/api/{name}", name=f"refstream_api_{name}")(view)

    endpoints = {**api.endpoints(), **review_api.endpoints()}
    for name, handler in endpoints.items():
        add_api(name, handler)

    async def post_review(request: aioweb.Request) -> aioweb.Response:
        # on aiohttp's router directly: a Faust page built from a function answers GET only
        reply = await decision_reply(review_api.decide, lambda: bounded_body(request), token,
                                     request.headers.get("Authorization"))
        return aioweb.Response(body=reply.body, status=reply.status,
                               headers={**reply.headers, "Content-Type": reply.content_type})

    app.web.web_app.router.add_route("POST", "/api/reviews", post_review)

    async def index(args: Args) -> dict[str, Any]:
        return {"endpoints": [f"/api/{name}" for name in endpoints], "docs": "docs/api.md"}

    @app.page("/api", name="refstream_api_index")
    async def api_index(web: Any, request: Any) -> Any:
        return send(web, await api_reply(index, {}, token, request.headers.get("Authorization")))

    page = (STATIC_DIR / "index.html").read_bytes()

    @app.page("/dashboard", name="refstream_dashboard")
    async def dashboard(web: Any, request: Any) -> Any:
        supplied = request.query.get("token")
        if not authorized(token, request.headers.get("Authorization"), supplied):
            return send(web, UNAUTHORIZED)
        return web.bytes(page, content_type="text/html", headers=dict(PAGE_HEADERS))

    for url_name, (path, content_type) in STATIC_FILES.items():
        body = (STATIC_DIR / path).read_bytes()

        def static(body: bytes = body, content_type: str = content_type) -> Callable[..., Awaitable[Any]]:
            async def view(web: Any, request: Any) -> Any:
                return web.bytes(body, content_type=content_type,
                                 headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
            return view

        app.page(f"/dashboard/static/{url_name}", name=f"refstream_static_{url_name}")(static())
    return api
