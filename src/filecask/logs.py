"""How `filecask serve` writes its log lines: plain text, or one JSON object per line.

Text (the default) is for a person reading a terminal or `journalctl`. JSON
(`--log-format json`) is for a log pipeline (Loki, Elasticsearch, CloudWatch...), which
would otherwise have to parse free text: every line, the access log's and the
application's alike, is one object with `timestamp` (UTC, RFC 3339), `level`, `logger` and
`message`, plus `exception` when a traceback goes with it. A record may carry structured
fields in `extra={FIELDS: {...}}`; JSON lines show them as keys of their own (the access
log's `client`, `user`, `method`, `path`, `status`, `bytes`, `duration`...), text lines
ignore them (the message already says it all).

A client that hangs up mid-response is not a server fault, but aiohttp's stock error
path logs it as an ERROR with a traceback ("Error handling request", on the
`aiohttp.server` logger). `quiet_client_disconnects` turns such records into one INFO
line without the traceback, wherever in aiohttp they come from, so a pager watching for
errors is not woken by a phone losing its signal.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

__all__ = [
    "FIELDS",
    "TEXT_FORMAT",
    "ClientDisconnectFilter",
    "JsonFormatter",
    "announce",
    "configure_logging",
    "quiet_client_disconnects",
]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
FIELDS = "fields"
"""Name of the record attribute (`extra={FIELDS: {...}}`) holding structured fields."""
DISCONNECT_LOGGERS = ("aiohttp.server", "aiohttp.web")
"""Where aiohttp logs a failed request; the filter sits on these loggers."""
CLIENT_GONE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
"""The exceptions a write raises when the peer has closed or reset the connection
(aiohttp's own ClientConnectionResetError is a ConnectionResetError)."""
_RESERVED = frozenset({"timestamp", "level", "logger", "message", "exception", "stack"})

log = logging.getLogger("filecask")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, Any] = {
            "timestamp": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                if key not in _RESERVED:
                    entry[str(key)] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class ClientDisconnectFilter(logging.Filter):
    """Rewrites a record about a client that went away into an INFO line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, CLIENT_GONE) and record.levelno > logging.INFO:
            record.msg = f"{record.getMessage()}: the client went away ({type(exc).__name__})"
            record.args = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_client_disconnects() -> ClientDisconnectFilter:
    """Install the filter on aiohttp's request loggers (once); returned so it can be
    removed again. On the loggers, not a handler, so every handler sees the quiet line."""
    for name in DISCONNECT_LOGGERS:
        for existing in logging.getLogger(name).filters:
            if isinstance(existing, ClientDisconnectFilter):
                return existing
    installed = ClientDisconnectFilter()
    for name in DISCONNECT_LOGGERS:
        logging.getLogger(name).addFilter(installed)
    return installed


_json_lines = False


def configure_logging(
    log_format: str, *, stream: IO[str] | None = None, level: int = logging.INFO
) -> None:
    """What `serve` calls first: every log line goes to `stream` (stderr) in the format
    asked for; Python warnings become log lines too, so a JSON stream stays JSON."""
    global _json_lines
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    _json_lines = log_format == "json"
    handler.setFormatter(JsonFormatter() if _json_lines else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(_json_lines)
    quiet_client_disconnects()
    # alembic logs its plugins' set-up at INFO when first imported (by the store, opened
    # after this): seven lines at every start, before any error. Its migrations still log.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def announce(banner: str) -> None:
    """A console banner ("======== Running on ... ========"): as it is on a text console,
    as one log line (its first line, undecorated) when every line must be JSON."""
    if _json_lines:
        log.info("%s", banner.splitlines()[0].strip("= "))
    else:
        print(banner, file=sys.stderr, flush=True)
