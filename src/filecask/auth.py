"""HTTP Basic authentication: argon2id passwords, a verified-credentials cache, slow-down.

Argon2id costs tens of milliseconds of CPU on purpose, which a signed-in client must not
pay on every request. After one successful verification we remember an HMAC of the password
(under a per-process random key, so no password is kept in memory) together with the stored
argon2 hash it was checked against. Each request still looks up the user's row (from the
metadata store's cache, which follows writes made by any process: see `filecask.changes`);
if the stored hash changed (`user passwd`) or the row is gone, the cache entry no longer
applies, so a changed or removed password stops working at once.

Where the failure counts live:
- SQLite: in each process. With `--workers N` an attacker gets up to N times the attempts
  before the slow-down, still bounded.
- PostgreSQL (several instances on several machines): in the `auth_failures` table, so
  failures made at one instance count at every other. Each failure is recorded there (by
  the database's clock) and the answer (the key's count) kept locally; the keys currently
  throttled are mirrored in each process, which refreshes the mirror whenever the AUTH
  stamp moves (a key became throttled, or a throttled one was reset, at any instance: see
  `filecask.changes`). So a signed-in request whose password is in the verified-credentials
  cache still costs no database round trip, and a key throttled at instance A is throttled
  at instance B within `change_poll` (usually milliseconds). In that window B may still
  verify an attempt against the key: the throttle lags by at most `change_poll`, it never
  lets anything through once it has arrived. Ages rather than timestamps cross machines
  (seconds since the last failure, by the database's clock), so clock skew between
  instances does not shorten or lengthen a delay.

Failed attempts are counted per user name and per client address; past a threshold each
further attempt for that key must wait an exponentially growing delay (capped, so the real
user is never locked out for long), answered with 429 and Retry-After without even checking
the password. Unknown users cost the same argon2 verification as known ones, so timing does
not reveal which names exist.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from filecask.errors import BadRequest, RateLimited, Unauthorized
from filecask.metastore import FailureStore, MetaStore, User
from filecask.settings import IPNetwork, Settings

CACHE_SIZE = 10_000
LIMITER_SIZE = 100_000
FAILURE_MEMORY = 900.0
"""Seconds after the last failure when a key's failure count is forgotten."""

USER_NAME_MAX = 64
SHARED_KEY_MAX = 200
"""Longer limiter keys (a user name the client made up) are stored as a digest."""
FULL_RELOAD = 60.0
"""Seconds between full refreshes of the mirror of shared failures (incremental between)."""
RELOAD_OVERLAP = 10.0
"""An incremental refresh also reads failures this much older than the previous refresh
began: a failure is stamped as its statement runs, and committed a moment later."""


def new_password_hasher(settings: Settings) -> PasswordHasher:
    """argon2id with the configured cost (defaults: RFC 9106's second recommendation).
    Hashes carry their parameters, so changing the cost never invalidates stored ones."""
    return PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory // 1024,
        parallelism=settings.argon2_parallelism,
    )


def validate_user_name(name: str) -> str:
    """User names become URL path segments and Basic user-ids (no ':', RFC 7617): keep
    them plain."""
    if (
        not name
        or len(name) > USER_NAME_MAX
        or not name[0].isalnum()
        or not all(c.isalnum() or c in "._-" for c in name)
    ):
        raise BadRequest(
            "A user name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter"
            " or digit.",
            user=name[:100],
        )
    return name


def validate_password(password: str) -> str:
    if len(password) < 8:
        raise BadRequest("A password has at least 8 characters.")
    if len(password.encode()) > 1024:
        raise BadRequest("A password has at most 1024 bytes.")
    return password


def generate_password() -> str:
    return secrets.token_urlsafe(18)


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic` header (RFC 7617 §2), or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("Malformed Basic credentials.") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise Unauthorized("Malformed Basic credentials.")
    return user, password


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]
) -> str:
    """The client's address: the socket peer, unless that peer is a trusted proxy, in which
    case the right-most X-Forwarded-For entry that is not itself a trusted proxy."""
    if peer is None:
        return "unknown"
    if not forwarded_for or not _is_trusted(peer, trusted):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not _is_ip(hop):
            return peer  # a forged or mangled chain: trust nothing beyond the proxy
        if not _is_trusted(hop, trusted):
            return hop
    return peer


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


@dataclass(slots=True)
class _Failures:
    count: int
    last: float


class FailureLimiter:
    """Per-key failure counts with a capped exponential delay; bounded memory (LRU). With
    PostgreSQL it is the local mirror of the shared table (`record`, `load`)."""

    def __init__(self, *, threshold: int, max_delay: float) -> None:
        self._threshold = threshold
        self._max_delay = max_delay
        self._entries: OrderedDict[str, _Failures] = OrderedDict()

    def check(self, keys: Sequence[str], now: float) -> None:
        """RateLimited if any key must still wait."""
        wait = max((self._wait(key, now) for key in keys), default=0.0)
        if wait > 0:
            raise RateLimited(max(1, math.ceil(wait)))

    def fail(self, keys: Sequence[str], now: float) -> None:
        for key in keys:
            entry = self._live(key, now)
            if entry is None:
                entry = _Failures(0, now)
            entry.count += 1
            entry.last = now
            self._entries[key] = entry
            self._entries.move_to_end(key)
        while len(self._entries) > LIMITER_SIZE:
            self._entries.popitem(last=False)

    def record(self, counts: dict[str, int], now: float) -> None:
        """Take the counts the shared table returned for failures just recorded."""
        self.load(((key, count, 0.0) for key, count in counts.items()), now)

    def load(self, rows: Iterable[tuple[str, int, float]], now: float) -> None:
        """Mirror shared rows: (key, count, seconds since the last failure)."""
        for key, count, age in rows:
            self._entries[key] = _Failures(count, now - age)
            self._entries.move_to_end(key)
        while len(self._entries) > LIMITER_SIZE:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def succeed(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._entries.pop(key, None)

    def _wait(self, key: str, now: float) -> float:
        entry = self._live(key, now)
        if entry is None or entry.count < self._threshold:
            return 0.0
        delay = min(2.0 ** (entry.count - self._threshold), self._max_delay)
        return entry.last + delay - now

    def _live(self, key: str, now: float) -> _Failures | None:
        entry = self._entries.get(key)
        if entry is not None and now - entry.last > FAILURE_MEMORY:
            del self._entries[key]
            return None
        return entry


class Authenticator:
    def __init__(
        self,
        meta: MetaStore,
        settings: Settings,
        *,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self._meta = meta
        self._hasher = hasher or new_password_hasher(settings)
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._verifying: dict[tuple[str, bytes], asyncio.Future[bool]] = {}
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        self.limiter = FailureLimiter(
            threshold=settings.auth_max_failures, max_delay=settings.auth_max_delay
        )
        self._threshold = settings.auth_max_failures
        self._shared: FailureStore | None = meta.failure_store()
        self._mirrored: int | None = None
        """The AUTH stamp the mirror of shared failures was refreshed under."""
        self._mirror_since: float | None = None
        self._full_reload_at = 0.0
        self._refreshing: asyncio.Future[None] | None = None

    def hash_password(self, password: str) -> str:
        return self._hasher.hash(password)

    async def hash_password_async(self, password: str) -> str:
        """argon2 is deliberately slow: keep it off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._hasher.hash, password)

    async def authenticate(self, header: str | None, address: str) -> User:
        """The signed-in user, or Unauthorized / RateLimited."""
        credentials = parse_basic(header)
        if credentials is None:
            raise Unauthorized("Sign in with HTTP Basic authentication.")
        name, password = credentials
        keys = (_limiter_key("user", name), _limiter_key("addr", address))
        if self._shared is not None and self._shared.failures_stamp() != self._mirrored:
            await self._refresh_mirror()
        # Before the cache: were a cached password let through a throttled key, a guesser
        # would learn a right guess at once while every wrong one got 429.
        self.limiter.check(keys, time.monotonic())
        user = await self._meta.get_user(name)
        if user is not None and self._cached(user, password):
            # Not a reset either: the real user's client polling with a cached password
            # would otherwise wipe the failures a guesser has built up for this name.
            return user
        if await self._verify(user, password):
            assert user is not None
            self.limiter.succeed(keys)
            if self._shared is not None:
                await self._shared.clear_failures(keys, threshold=self._threshold)
            self._remember(user, password)
            return user
        self.limiter.fail(keys, time.monotonic())
        if self._shared is not None:
            counts = await self._shared.record_failures(
                keys, threshold=self._threshold, memory=FAILURE_MEMORY
            )
            self.limiter.record(counts, time.monotonic())
        raise Unauthorized("Wrong user name or password.")

    async def _refresh_mirror(self) -> None:
        """Bring the mirror of throttled keys up to the shared table, once for all the
        requests that noticed the stamp move at the same time."""
        while self._shared is not None and self._shared.failures_stamp() != self._mirrored:
            if self._refreshing is None:
                self._refreshing = asyncio.ensure_future(self._reload())
                self._refreshing.add_done_callback(lambda _: setattr(self, "_refreshing", None))
            await asyncio.shield(self._refreshing)

    async def _reload(self) -> None:
        assert self._shared is not None
        stamp = self._shared.failures_stamp()  # before reading: a later move reloads again
        now = time.monotonic()
        since = self._mirror_since
        if since is None or now - self._full_reload_at > FULL_RELOAD:
            since = None
        started, rows = await self._shared.throttled_failures(
            threshold=self._threshold,
            memory=FAILURE_MEMORY,
            since=None if since is None else since - RELOAD_OVERLAP,
        )
        if since is None:
            # A key reset elsewhere is simply absent from a full read: start afresh.
            self.limiter.clear()
            self._full_reload_at = now
        self.limiter.load(rows, time.monotonic())
        self._mirror_since = started
        self._mirrored = stamp

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode(), hashlib.sha256).digest()

    def _cached(self, user: User, password: str) -> bool:
        entry = self._cache.get(user.name)
        if entry is None or entry[0] != user.password_hash:
            return False
        return hmac.compare_digest(entry[1], self._digest(password))

    def _remember(self, user: User, password: str) -> None:
        self._cache[user.name] = (user.password_hash, self._digest(password))
        self._cache.move_to_end(user.name)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    async def _verify(self, user: User | None, password: str) -> bool:
        """One argon2 run per distinct (stored hash, password) at a time: a client that opens
        many connections at once with the same new credentials (a browser, a parallel upload,
        a benchmark) waits for a single verification instead of queueing one per connection."""
        stored = user.password_hash if user is not None else self._dummy_hash
        key = (stored, self._digest(password))
        pending = self._verifying.get(key)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = asyncio.ensure_future(
                loop.run_in_executor(None, self._check, stored, password)
            )
            self._verifying[key] = pending
            pending.add_done_callback(lambda _: self._verifying.pop(key, None))
        ok = await asyncio.shield(pending)
        return ok and user is not None

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False


def _limiter_key(kind: str, value: str) -> str:
    """`kind:value`; a long value (a made-up user name) as its digest, so that the shared
    table's key column holds every key."""
    key = f"{kind}:{value}"
    if len(key) <= SHARED_KEY_MAX:
        return key
    return f"{kind}#sha256:{hashlib.sha256(value.encode()).hexdigest()}"
