"""`GET /metrics`: the Prometheus exposition, for a scraper's bearer token or an admin."""

from __future__ import annotations

import asyncio
import hmac

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from filecask.api.common import require_admin
from filecask.api.spec import operation
from filecask.errors import Unauthorized
from filecask.http.metrics import METRICS, forget_dead_workers
from filecask.services import SERVICES, SETTINGS
from filecask.settings import Settings, read_metrics_token_file

METRICS_TOKENS = web.AppKey("metrics_tokens", tuple[bytes, ...])
"""The bearer tokens that may read /metrics (from the settings, read at start)."""
METRICS_CHALLENGE = 'Bearer realm="filecask metrics", Basic realm="filecask", charset="UTF-8"'


routes = web.RouteTableDef()


def install(app: web.Application) -> None:
    """The start-up step that reads the tokens of the `/metrics` route (`routes`)."""
    app.on_startup.append(_read_metrics_tokens)


async def _read_metrics_tokens(app: web.Application) -> None:
    """The token file is read once, at start (off the event loop)."""
    loop = asyncio.get_running_loop()
    app[METRICS_TOKENS] = await loop.run_in_executor(None, metrics_tokens, app[SETTINGS])


def metrics_tokens(settings: Settings) -> tuple[bytes, ...]:
    """Every configured token (both, when a token and a file are given: a scraper can be
    moved to a new token before the old one is removed)."""
    tokens = [settings.metrics_token] if settings.metrics_token else []
    if settings.metrics_token_file is not None:
        tokens.append(read_metrics_token_file(settings.metrics_token_file))
    return tuple(token.encode() for token in tokens)


async def check_metrics_access(request: web.Request) -> None:
    """Public if so configured; else a configured bearer token (compared in constant
    time) or an administrator's Basic credentials (throttled like every sign-in).
    401 with both challenges when neither is sent, 403 for a signed-in non-administrator."""
    if request.app[SETTINGS].metrics_public:
        return
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "basic":
        await require_admin(request)
        return
    if scheme.lower() == "bearer":
        # The header's bytes as sent (aiohttp keeps undecodable bytes as surrogates).
        sent = credentials.strip().encode("utf-8", "surrogateescape")
        if any(hmac.compare_digest(sent, token) for token in request.app[METRICS_TOKENS]):
            return
        error = Unauthorized("This bearer token may not read the metrics.")
        error.headers["WWW-Authenticate"] = 'Bearer realm="filecask metrics", error="invalid_token"'
        raise error
    error = Unauthorized(
        "The metrics need `Authorization: Bearer <metrics token>` or an administrator's"
        " Basic credentials."
    )
    error.headers["WWW-Authenticate"] = METRICS_CHALLENGE
    raise error


@routes.get("/metrics")
@operation(
    "metrics",
    {
        200: (
            "The Prometheus text format (OpenMetrics if the Accept header asks for it), totals"
            " over every worker.",
            {media: {"type": "string"} for media in ("text/plain", "application/openmetrics-text")},
        ),
        401: (
            "No credentials, a wrong bearer token, or wrong Basic credentials.",
            None,
            {
                "WWW-Authenticate": f"Without credentials `{METRICS_CHALLENGE}`; with a wrong"
                ' token `Bearer realm="filecask metrics", error="invalid_token"`; with wrong'
                ' Basic credentials `Basic realm="filecask", charset="UTF-8"`.'
            },
        ),
    },
    (403, 429),
    security=[{"metricsToken": []}, {"basicAuth": []}],
)
async def metrics_handler(request: web.Request) -> web.Response:
    """Prometheus metrics: requests, latency, bytes, work in flight, store size.

    For the metrics bearer token (`FILECASK_METRICS_TOKEN`, `--metrics-token-file`) or an
    administrator's Basic credentials; for anyone with `--metrics-public true`."""
    await check_metrics_access(request)
    metrics = request.app[METRICS]
    await metrics.store.refresh(request.app[SERVICES].meta.blob_totals)
    metrics.flush()
    encoder, content_type = choose_encoder(",".join(request.headers.getall("Accept", [])))
    registry = metrics.exposition_registry()
    if metrics.multiprocess_dir is None:
        body = encoder(registry)
    else:  # reads every worker's files: off the event loop
        directory = metrics.multiprocess_dir

        def read_files() -> bytes:
            forget_dead_workers(directory)
            return encoder(registry)

        body = await asyncio.get_running_loop().run_in_executor(None, read_files)
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = "no-store"
    return response
