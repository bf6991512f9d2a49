"""The framework's ceiling for the small-files case: the least an aiohttp + uvloop server
can do per request (route `/files/{hash}`, return 4 KiB from memory, no middleware, no
headers of its own). filecask runs on the same stack, so its 4 KiB rate cannot exceed this
one; the bench prints it beside nginx to show how much of a gap is the framework's.

Run as `python -m bench.ceiling PORT`."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web

BODY = b"x" * 4096


async def _file(request: web.Request) -> web.Response:
    return web.Response(body=BODY)


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_get("/files/{hash}", _file)
    app.router.add_get("/healthz", _health)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        loop=uvloop.new_event_loop(),
        print=None,
    )


if __name__ == "__main__":
    main()
