"""Zero-copy file ranges onto aiohttp responses, under uvloop as well as asyncio.

uvloop does not implement ``loop.sendfile`` (MagicStack/uvloop#228), so aiohttp's
``FileResponse`` silently degrades to read()+write() copies there. This module does
what asyncio's native ``loop.sendfile`` does, by hand, so it works on either loop:
flush everything aiohttp has queued on the transport, then ``os.sendfile`` straight
into the connection's socket, waiting for writability instead of ever blocking.

The same manual path is used on both loops on purpose: one code path to test, and
(unlike asyncio's ``loop.sendfile``) it keeps the transport reading, so aiohttp
still notices a client that goes away mid-transfer.

A client that stays connected but reads nothing would otherwise pin the response, its
fds and its buffers forever. Whoever prepares a response may set ``SEND_TIMEOUT`` on the
request; a send that makes no progress for that long drops the client (the transport is
aborted, so buffered bytes are freed at once) and raises ``SendTimeout``. ``write_within``
applies the same limit to ordinary ``response.write()`` calls.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

__all__ = ["SEND_TIMEOUT", "SendTimeout", "send_file_range", "write_within"]

log = logging.getLogger("filecask.connections")

SEND_TIMEOUT = web.RequestKey("send_timeout", float)
"""Seconds a response may go without the client taking any of it; absent or 0: no limit."""

# Per os.sendfile() call: bounds how long one call can sit on a cold page cache.
_SENDFILE_CHUNK = 1 << 20
# Per read in the copying fallback (TLS, no socket, compression, chunking).
_COPY_CHUNK = 256 << 10
# While stalled on a non-reading peer, recheck this often whether aiohttp has
# closed the transport meanwhile; the kernel would not tell us via our dup.
_STALL_RECHECK = 1.0
# The file (or its filesystem) cannot be sendfile()d; copying still works.
_NO_SENDFILE_ERRNOS = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})
_PEER_GONE_ERRNOS = frozenset(
    {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED}
)


class SendTimeout(ConnectionResetError):
    """The client took nothing of the response for ``SEND_TIMEOUT`` seconds and was dropped.

    A ConnectionResetError, so aiohttp and the problem middleware treat it as the
    disconnect it now is: no error body, the handler's cleanup runs, nothing is logged
    as a server fault."""


def _send_timeout(request: web.BaseRequest) -> float | None:
    timeout = request.get(SEND_TIMEOUT)
    return timeout if timeout else None


def _drop(request: web.BaseRequest, timeout: float) -> SendTimeout:
    """Abort the connection (close() would wait forever to flush to a non-reader) and
    return the exception to raise."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    log.info("dropped %s: read nothing of the response for %s s", request.remote, timeout)
    return SendTimeout(f"the client read nothing for {timeout} s")


async def write_within(
    request: web.BaseRequest, response: web.StreamResponse, data: bytes | memoryview
) -> None:
    """``response.write(data)``, but a client that takes nothing of it for ``SEND_TIMEOUT``
    seconds is dropped (SendTimeout) instead of being waited for for ever.

    As nginx's send_timeout, the limit is on progress, not on the whole write: while the
    transport's buffer keeps shrinking the clock restarts, so a slow reader that keeps
    taking bytes is never cut, however big the piece."""
    timeout = _send_timeout(request)
    if timeout is None:
        await response.write(data)
        return
    loop = asyncio.get_running_loop()
    writing = asyncio.ensure_future(response.write(data))
    deadline = loop.time() + timeout
    buffered: int | None = None  # the write has not queued its bytes yet
    try:
        while True:
            done, _ = await asyncio.wait({writing}, timeout=min(_STALL_RECHECK, timeout))
            if done:
                writing.result()  # its exception, if any
                return
            now_buffered = _buffered(request)
            if buffered is None or now_buffered < buffered:
                deadline = loop.time() + timeout
            buffered = now_buffered
            if loop.time() >= deadline:
                writing.cancel()
                raise _drop(request, timeout)
    except asyncio.CancelledError:
        writing.cancel()
        raise


def _buffered(request: web.BaseRequest) -> int:
    transport = request.transport
    return transport.get_write_buffer_size() if transport is not None else 0


async def send_file_range(
    request: web.BaseRequest,
    response: web.StreamResponse,
    fd: int,
    offset: int,
    count: int,
) -> None:
    """Send exactly ``count`` bytes of ``fd`` from ``offset`` as (part of) the body.

    The caller has already run ``await response.prepare(request)`` and calls
    ``await response.write_eof()`` afterwards. The fd's file position is untouched.
    Bytes are counted into the payload writer exactly as ``response.write()`` would
    (``output_size`` up, remaining ``length`` down), so ``write_eof()``,
    ``response.body_length`` and keep-alive behave as for a written body.

    Raises ConnectionResetError if the client goes away, EOFError if the file ends
    before the range does (the response is then unfinishable; aiohttp drops it).
    """
    if offset < 0 or count < 0:
        raise ValueError(f"negative offset or count: {offset=} {count=}")
    if not response.prepared:
        raise RuntimeError("send_file_range() needs a prepared response")
    writer = request.writer
    if writer.length is not None and count > writer.length:
        raise ValueError(f"{count} bytes exceed the {writer.length} left of Content-Length")
    if count == 0:
        return
    transport = _ensure_open(request.transport)
    sock = transport.get_extra_info("socket")
    if (
        sock is None
        or transport.get_extra_info("ssl_object") is not None
        or response.chunked
        or response.compression
    ):
        await _copy_range(request, response, fd, offset, count)
        return
    sent = await _sendfile_range(request, transport, writer, sock.fileno(), fd, offset, count)
    if sent < count:
        await _copy_range(request, response, fd, offset + sent, count - sent)


def _ensure_open(transport: asyncio.Transport | None) -> asyncio.Transport:
    """Turn a closed connection into the exception aiohttp treats as a disconnect."""
    if transport is None or transport.is_closing():
        raise ConnectionResetError("Connection lost")
    return transport


def _account(writer: AbstractStreamWriter, n: int) -> None:
    """Book ``n`` body bytes the way StreamWriter.write() does for written chunks."""
    writer.output_size += n
    if writer.length is not None:
        writer.length -= n


async def _flush_transport(request: web.BaseRequest, transport: asyncio.Transport) -> None:
    """Wait until everything queued on the transport (the headers) is in the kernel.

    Writing to the socket fd behind the transport's back would otherwise put body
    bytes ahead of the headers. A zero high-water mark makes the transport pause
    the protocol while anything is buffered, so ``writer.drain()`` really waits.
    The wait is bounded by ``SEND_TIMEOUT`` like any other write.
    """
    writer = request.writer
    writer.send_headers()  # no-op unless the response buffered its headers
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0, low=0)
    timeout = _send_timeout(request)
    try:
        async with asyncio.timeout(timeout):
            while transport.get_write_buffer_size():
                _ensure_open(transport)
                try:
                    await writer.drain()
                except ConnectionResetError:
                    raise
                except ConnectionError as exc:  # drain's "lost while paused" flavour
                    raise ConnectionResetError("Connection lost") from exc
                await asyncio.sleep(0)  # never spin, even if drain() returned early
    except TimeoutError:
        assert timeout is not None
        raise _drop(request, timeout) from None
    finally:
        if not transport.is_closing():
            transport.set_write_buffer_limits(high=high, low=low)


async def _sendfile_range(
    request: web.BaseRequest,
    transport: asyncio.Transport,
    writer: AbstractStreamWriter,
    sockfd: int,
    fd: int,
    offset: int,
    count: int,
) -> int:
    """os.sendfile() loop on a dup of the socket; returns the bytes sent.

    The dup exists because libuv allows one poll handle per fd and uvloop's
    transport already owns the original; the dup shares its non-blocking flag.
    Returns short (possibly 0) only if the fd cannot be sendfile()d at all.
    Every byte the kernel takes is progress; ``SEND_TIMEOUT`` seconds without any
    drop the client (SendTimeout).
    """
    loop = asyncio.get_running_loop()
    await _flush_transport(request, transport)
    timeout = _send_timeout(request)
    out = os.dup(sockfd)
    sent = 0
    progress_at = loop.time()
    try:
        while sent < count:
            _ensure_open(transport)
            size = min(count - sent, _SENDFILE_CHUNK)
            try:
                n = os.sendfile(out, fd, offset + sent, size)
            except BlockingIOError:
                if timeout is not None and loop.time() - progress_at >= timeout:
                    raise _drop(request, timeout) from None
                await _wait_writable(loop, out, _recheck_in(loop, progress_at, timeout))
                continue
            except OSError as exc:
                if exc.errno in _PEER_GONE_ERRNOS:
                    raise ConnectionResetError(exc.errno, "Connection lost") from exc
                if sent == 0 and exc.errno in _NO_SENDFILE_ERRNOS:
                    return 0
                raise
            if n == 0:
                raise EOFError(f"fd {fd} ended {count - sent} bytes before the range did")
            sent += n
            _account(writer, n)
            progress_at = loop.time()
            if n < size:  # socket buffer full: skip the EAGAIN round trip
                await _wait_writable(loop, out, _recheck_in(loop, progress_at, timeout))
            else:
                await asyncio.sleep(0)  # let other connections run between chunks
    finally:
        os.close(out)
    return sent


def _recheck_in(
    loop: asyncio.AbstractEventLoop, progress_at: float, timeout: float | None
) -> float:
    """How long to wait for writability: ``_STALL_RECHECK``, or less if the send deadline
    comes first (so a stalled client is dropped on time, not up to a recheck late)."""
    if timeout is None:
        return _STALL_RECHECK
    return max(0.0, min(_STALL_RECHECK, progress_at + timeout - loop.time()))


async def _wait_writable(loop: asyncio.AbstractEventLoop, fd: int, delay: float) -> None:
    """Wait until ``fd`` is writable, or ``delay`` passes; always unregisters."""
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    loop.add_writer(fd, wake)
    timer = loop.call_later(delay, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        loop.remove_writer(fd)


async def _copy_range(
    request: web.BaseRequest, response: web.StreamResponse, fd: int, offset: int, count: int
) -> None:
    """Copying fallback: pread() in a worker thread, response.write() each chunk.

    response.write() does its own accounting, chunking, compression and drain.
    """
    loop = asyncio.get_running_loop()
    end = offset + count
    while offset < end:
        chunk = await loop.run_in_executor(
            None, os.pread, fd, min(end - offset, _COPY_CHUNK), offset
        )
        if not chunk:
            raise EOFError(f"fd {fd} ended {end - offset} bytes before the range did")
        await write_within(request, response, chunk)
        offset += len(chunk)
