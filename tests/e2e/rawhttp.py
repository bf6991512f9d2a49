"""One HTTP/1.1 exchange over a raw socket, with the server log lines it caused.

For requests no client library would send (bytes that are not ASCII in a header, a body
whose `Content-Encoding` lies): the request is written byte for byte, with
`Connection: close`, the answer is parsed by `http.client`, and the connection is read to
its end, so every log line the server writes about this request (even one written after
the answer, while it reads the rest of an unread body) is in the server's stderr before
the exchange returns.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tests.e2e.conftest import HOST, Server

LOG_ALARMS = ("ERROR", "CRITICAL", "Traceback", "Unhandled exception")
"""What must never appear in the server's log because of a client's request."""


@dataclass(frozen=True)
class Answer:
    status: int
    """0 when the server closed the connection without an answer."""
    headers: dict[str, str]
    """Names in lower case."""
    body: bytes
    log: str
    """What the server wrote to its stderr meanwhile."""

    def alarms(self) -> list[str]:
        """The log lines that must not be there (errors, tracebacks)."""
        return [line for line in self.log.splitlines() if any(a in line for a in LOG_ALARMS)]


def build(
    method: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes = b"",
    *,
    chunks: Sequence[bytes] | None = None,
) -> bytes:
    """A request with `Connection: close`; the body framed by Content-Length, or sent
    chunked (`chunks`, each one a chunk) when given."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + HOST.encode()]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"Connection: close")
    if chunks is not None:
        lines.append(b"Transfer-Encoding: chunked")
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    elif body or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def exchange(server: Server, request: bytes, *, method: str = "GET", timeout: float = 30) -> Answer:
    """Send `request`, read the answer and the connection to its end."""
    offset = server.stderr_path.stat().st_size
    sock = socket.create_connection((HOST, server.port), timeout=timeout)
    try:
        # Answered (and closed) before the whole body was sent: read the answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        status, headers, body = 0, {}, b""
        response = http.client.HTTPResponse(sock, method=method)
        try:
            response.begin()
            body = response.read()
            status = response.status
            headers = {k.lower(): v for k, v in response.getheaders()}
        except (http.client.RemoteDisconnected, ConnectionResetError):
            pass
        finally:
            response.close()
        # The server closes after the answer (Connection: close), once it has read or
        # dropped the rest of the body: the log lines of this request are written by then.
        try:
            while sock.recv(65536):
                pass
        except (ConnectionResetError, TimeoutError):
            pass
    finally:
        sock.close()
    with server.stderr_path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode("utf-8", errors="replace")
    return Answer(status, headers, body, text)
