"""HTTP Basic authentication: argon2id passwords, a verified-credentials cache, slow-down.

Argon2id costs tens of milliseconds of CPU and `argon2_memory` of memory on purpose, which a
signed-in client must not pay on every request. After one successful verification we
remember an HMAC of the password (under a per-process random key, so no password is kept in
memory) together with the stored argon2 hash it was checked against, and the client
addresses it came from. Each request still looks up the user's row (from the metadata
store's cache, which follows writes made by any process: see `filecask.storage.changes`); if the
stored hash changed (`user passwd`) or the row is gone, the cache entry no longer applies,
so a changed or removed password stops working at once.

The slow-down (issue 14: nobody can lock a user out, nor learn who exists). Failed attempts
are counted under three keys, each with a capped exponential delay past `auth_max_failures`
(429 with an honest Retry-After, without checking the password):

- `addr:<address>`: failures from one client address, whatever the name (an IPv6 client
  counts by its /64, which one subscriber usually holds whole);
- `pair:<name>@<address>`: failures for one name from one address;
- `user:<name>`: failures for one name from every address.

Only the first two ever refuse an attempt, so failures made from one address never refuse
anybody at another address. The per-name count spans addresses and so must never refuse (an
attacker anywhere could keep the real user out): it only makes *unverified guesses* slower.
Once a name has `auth_max_failures` failures, a failure for it from an address the user has
not signed in from takes the name's count to its pair, so that address waits the name's
delay (up to `auth_max_delay`) before its next guess at this name. A guessing run spread
over many addresses gets one guess per address per delay, while any address that has not
itself failed on the name, the real user's included, is still let in with the right
password at once. (No limit can refuse the first guess of a new address without refusing
the real user's first sign-in from it too: that is the trade a bank makes as well.)

Credentials already verified from an address pass from that address without any throttle
check but their own pair's: even while the address is throttled (a shared NAT, a proxy not
configured as trusted), a signed-in client keeps working. A pair that failed
`auth_max_failures` times is refused even with the right password, as is an address whose
throttle is on for a client it has not signed in from: otherwise a guesser at that address
would learn a right guess from a 200 among 429s answered without any argon2 cost. A known
wrong password (it does not match the one verified) refused at an address where the user is
signed in counts against the pair, so that guessing there stops after the same
`auth_max_failures`.

A success clears only its own pair: signing in to one's own account does not reset an
address's failures at other names, and the real user's sign-in does not reset a name a
guessing run has built up.

Nothing here tells whether a name exists. User names are looked up, and counted, by their
normalised form (`user_name_key`: NFKC + case-fold, so `Admin` signs in as `admin`). An
unknown name is verified against a stand-in hash derived from the name under a secret of
this process, with the configured argon2 cost, so it costs what a real user's hash costs;
concurrent verifications are shared only between requests for one name (one stored or
stand-in hash) and the same password, never across names, so timing and merging look the
same for real and unknown names.

Every argon2 run (verifications and new hashes) holds its memory cost of
`auth_memory_budget` while it runs: a burst of distinct sign-ins queues instead of
multiplying the process's memory. The runs use threads of their own at a lower CPU priority
(nice +10 on Linux), so with every core hashing the event loop still answers at once.

Where the failure counts live:
- SQLite: in each process. With `--workers N` an attacker gets up to N times the attempts
  before the slow-down, still bounded.
- PostgreSQL (several instances on several machines): in the `auth_failures` table, so
  failures made at one instance count at every other. Each failure is recorded there (by
  the database's clock) and the answer (the key's count) kept locally; the keys currently
  throttled are mirrored in each process, which refreshes the mirror whenever the AUTH
  stamp moves (a key became throttled, or a throttled one was reset, at any instance: see
  `filecask.storage.changes`). So a signed-in request whose password is in the verified-credentials
  cache still costs no database round trip, and a key throttled at instance A is throttled
  at instance B within `change_poll` (usually milliseconds). In that window B may still
  verify an attempt against the key: the throttle lags by at most `change_poll`, it never
  lets anything through once it has arrived. Ages rather than timestamps cross machines
  (seconds since the last failure, by the database's clock), so clock skew between
  instances does not shorten or lengthen a delay.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import math
import os
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

from filecask.errors import BadRequest, RateLimited, Unauthorized
from filecask.names import has_surrogate, user_name_key
from filecask.settings import IPNetwork, Settings
from filecask.storage.locks import MemoryBudget
from filecask.storage.meta import FailureStore, MetaStore, User

CACHE_SIZE = 10_000
LIMITER_SIZE = 100_000
FAILURE_MEMORY = 900.0
"""Seconds after the last failure when a key's failure count is forgotten."""
FAMILIAR_ADDRESSES = 16
"""Client addresses remembered per verified password (the most recent ones)."""

USER_NAME_MAX = 64
USER_NAME_KEY_MAX = 255
"""The normalised form may be longer than the name (NFKC expands a few letters)."""
SHARED_KEY_MAX = 200
"""Longer limiter keys (a user name the client made up) are stored as a digest."""
FULL_RELOAD = 60.0
"""Seconds between full refreshes of the mirror of shared failures (incremental between)."""
RELOAD_OVERLAP = 10.0
"""An incremental refresh also reads failures this much older than the previous refresh
began: a failure is stamped as its statement runs, and committed a moment later."""
IPV6_PREFIX = 64
"""IPv6 clients are counted by network: one subscriber usually holds a whole /64."""
ARGON2_NICE = 10
"""How much lower the CPU priority of argon2's threads is than the event loop's (Linux)."""
ARGON2_THREADS_MAX = 32


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
    them plain. Their normalised form must be plain too (it is what makes them unique)."""
    if has_surrogate(name):
        raise BadRequest(
            "A user name must be valid Unicode text (it has a lone surrogate).",
            user=name[:100].encode("utf-8", "backslashreplace").decode("utf-8"),
        )
    key = user_name_key(name)
    if (
        not name
        or len(name) > USER_NAME_MAX
        or not name[0].isalnum()
        or not all(c.isalnum() or c in "._-" for c in name)
        or len(key) > USER_NAME_KEY_MAX
        or not all(c.isalnum() or c in "._-" for c in key)
    ):
        raise BadRequest(
            "A user name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter"
            " or digit.",
            user=name[:100],
        )
    return name


def validate_password(password: str) -> str:
    if has_surrogate(password):
        raise BadRequest("A password must be valid Unicode text (it has a lone surrogate).")
    if len(password) < 8:
        raise BadRequest("A password has at least 8 characters.")
    if len(password.encode()) > 1024:
        raise BadRequest("A password has at most 1024 bytes.")
    return password


def generate_password() -> str:
    return secrets.token_urlsafe(18)


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic` header (RFC 7617 §2), or None.
    Anything else after `Basic ` (not base64, not UTF-8, non-ASCII bytes in the header
    itself) is Unauthorized, like wrong credentials."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text, UnicodeDecodeError
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


def address_key(address: str) -> str:
    """What the throttle counts a client address as: an IPv4 address as itself (also when
    written IPv4-mapped), an IPv6 address by its /64; anything else as given."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


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
        """RateLimited if any key must still wait; Retry-After is the longest wait, rounded
        up, so a client that waits as told is not refused for the same failures again."""
        wait = max((self._wait(key, now) for key in keys), default=0.0)
        if wait > 0:
            raise RateLimited(max(1, math.ceil(wait)))

    def count(self, key: str, now: float) -> int:
        """The key's failures still remembered at `now`."""
        entry = self._live(key, now)
        return 0 if entry is None else entry.count

    def fail(self, keys: Sequence[str], now: float, *, floor: int = 0) -> None:
        """One more failure for each key; a key's count becomes at least `floor` (a pair
        taking on its name's count)."""
        for key in keys:
            entry = self._live(key, now)
            if entry is None:
                entry = _Failures(0, now)
            entry.count = max(entry.count + 1, floor)
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


@dataclass(slots=True)
class _Verified:
    """A password verified for a user: under which stored hash, and from where."""

    password_hash: str
    digest: bytes
    addresses: OrderedDict[str, None] = field(default_factory=OrderedDict)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One sign-in attempt's limiter keys."""

    origin: str
    """The client address as the throttle counts it (`address_key`)."""
    addr: str
    pair: str
    user: str


def _lower_priority() -> None:
    """Run this thread (and the lane threads argon2 starts from it, which inherit it) at a
    lower CPU priority: with every core busy hashing a burst of sign-ins, the event loop
    still gets the CPU at once and answers everybody else. Linux only, where a priority
    is per thread (elsewhere setpriority would lower the whole process)."""
    if sys.platform == "linux":
        thread = threading.get_native_id()
        with contextlib.suppress(OSError):  # not allowed here: run at the normal priority
            nice = os.getpriority(os.PRIO_PROCESS, thread)
            os.setpriority(os.PRIO_PROCESS, thread, min(19, nice + ARGON2_NICE))


class _Argon2Run:
    """One argon2 run in a worker thread, holding its memory cost of the budget from before
    the thread starts until it has ended (a cancelled request never frees memory a thread
    still uses). A run nobody waits for any more is dropped if it has not started."""

    def __init__(
        self,
        budget: MemoryBudget,
        threads: ThreadPoolExecutor,
        cost: int,
        func: Callable[..., Any],
        *args: Any,
    ) -> None:
        self.waiters = 0
        self.started = False
        self.task: asyncio.Task[Any] = asyncio.ensure_future(
            self._run(budget, threads, cost, func, args)
        )

    async def _run(
        self,
        budget: MemoryBudget,
        threads: ThreadPoolExecutor,
        cost: int,
        func: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> Any:
        async with budget.hold(cost):
            self.started = True
            # Shielded: were this task cancelled now, the budget would be given back while
            # the thread still holds the memory.
            work = asyncio.get_running_loop().run_in_executor(threads, func, *args)
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                await asyncio.wait([work])
                raise

    async def result(self) -> Any:
        """The run's result; a caller cancelled meanwhile leaves it to the others, and the
        last one to leave cancels it if it is still queued for memory."""
        self.waiters += 1
        try:
            return await asyncio.shield(self.task)
        finally:
            self.waiters -= 1
            if self.waiters == 0 and not self.started and not self.task.done():
                self.task.cancel()


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
        self._cache: OrderedDict[str, _Verified] = OrderedDict()
        self._verifying: dict[tuple[str, bytes], _Argon2Run] = {}
        self.budget = MemoryBudget(settings.auth_memory_budget)
        """Memory the argon2 runs in flight may take (`auth_memory_budget`)."""
        self._memory_cost = self._hasher.memory_cost * 1024
        # argon2's own threads, at a lower priority, as many as the budget lets run at once
        # (and one more: a stored hash may cost less than the configured one).
        self._threads = ThreadPoolExecutor(
            max_workers=min(ARGON2_THREADS_MAX, self.budget.total // self._memory_cost + 1),
            thread_name_prefix="argon2",
            initializer=_lower_priority,
        )
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
        self._background: set[asyncio.Task[None]] = set()

    def hash_password(self, password: str) -> str:
        return self._hasher.hash(password)

    async def hash_password_async(self, password: str) -> str:
        """argon2 is deliberately slow and memory-hungry: off the event loop, and within
        the memory budget."""
        run = _Argon2Run(self.budget, self._threads, self._memory_cost, self._hasher.hash, password)
        result: str = await run.result()
        return result

    async def authenticate(self, header: str | None, address: str) -> User:
        """The signed-in user, or Unauthorized / RateLimited."""
        credentials = parse_basic(header)
        if credentials is None:
            raise Unauthorized("Sign in with HTTP Basic authentication.")
        name, password = credentials
        key = user_name_key(name)
        origin = address_key(address)
        attempt = _Attempt(
            origin,
            _limiter_key("addr", origin),
            _limiter_key("pair", f"{key}@{origin}"),
            _limiter_key("user", key),
        )
        user = await self._meta.get_user(name)
        verified = self._cached(user, password)
        if self._shared is not None and self._shared.failures_stamp() != self._mirrored:
            await self._refresh_mirror()
        now = time.monotonic()
        # This name's failures from this very address refuse even the right password: a
        # guesser sharing the address with the signed-in user must not learn a right guess
        # from a 200 among 429s.
        self.limiter.check((attempt.pair,), now)
        if verified is not None and origin in verified.addresses:
            # Verified from here before: no throttle but the pair's, and no reset either
            # (the real user's client polling must not wipe what a guesser built up).
            assert user is not None
            verified.addresses.move_to_end(origin)
            return user
        try:
            self.limiter.check((attempt.addr,), now)
        except RateLimited:
            if user is not None and self._familiar(user, origin):
                # A known wrong password where the user is signed in: count it, or this
                # address could keep guessing against the cache while every miss is a 429.
                self._fail_soon(attempt, floor=0)
            raise
        if verified is not None:
            # The right password (the cache knows it), from an address not throttled.
            assert user is not None
            self._remember(user, password, origin)
            return user
        if await self._verify(key, user, password):
            assert user is not None
            self.limiter.succeed((attempt.pair,))
            if self._shared is not None:
                await self._shared.clear_failures((attempt.pair,), threshold=self._threshold)
            self._remember(user, password, origin)
            return user
        familiar = user is not None and self._familiar(user, origin)
        await self._fail(attempt, familiar=familiar)
        raise Unauthorized("Wrong user name or password.")

    async def _fail(self, attempt: _Attempt, *, familiar: bool) -> None:
        """Count a failure under the address, the name and the pair; past the threshold the
        name's count carries over to the pair, unless the user has signed in from here."""
        now = time.monotonic()
        self.limiter.fail((attempt.addr, attempt.user), now)
        named = self.limiter.count(attempt.user, now)
        if self._shared is not None:
            counts = await self._shared.record_failures(
                (attempt.addr, attempt.user), threshold=self._threshold, memory=FAILURE_MEMORY
            )
            self.limiter.record(counts, time.monotonic())
            named = counts.get(attempt.user, named)
        floor = named if named >= self._threshold and not familiar else 0
        await self._fail_pair(attempt, floor=floor)

    async def _fail_pair(self, attempt: _Attempt, *, floor: int) -> None:
        self.limiter.fail((attempt.pair,), time.monotonic(), floor=floor)
        if self._shared is not None:
            counts = await self._shared.record_failures(
                (attempt.pair,), threshold=self._threshold, memory=FAILURE_MEMORY, floor=floor
            )
            self.limiter.record(counts, time.monotonic())

    def _fail_soon(self, attempt: _Attempt, *, floor: int) -> None:
        """`_fail_pair` without making the answer wait for the shared table: a 429 takes the
        same time whether or not the name is a signed-in user's."""
        if self._shared is None:
            self.limiter.fail((attempt.pair,), time.monotonic(), floor=floor)
            return
        task = asyncio.ensure_future(self._fail_pair(attempt, floor=floor))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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

    def _cached(self, user: User | None, password: str) -> _Verified | None:
        """The cache entry if `password` is the one verified for `user`'s stored hash."""
        if user is None:
            return None
        entry = self._cache.get(user.name)
        if entry is None or entry.password_hash != user.password_hash:
            return None
        if not hmac.compare_digest(entry.digest, self._digest(password)):
            return None
        return entry

    def _familiar(self, user: User, origin: str) -> bool:
        """Whether `user`'s current password was verified from `origin` (recently)."""
        entry = self._cache.get(user.name)
        return (
            entry is not None
            and entry.password_hash == user.password_hash
            and origin in entry.addresses
        )

    def _remember(self, user: User, password: str, origin: str) -> None:
        digest = self._digest(password)
        entry = self._cache.get(user.name)
        if entry is None or entry.password_hash != user.password_hash or entry.digest != digest:
            entry = _Verified(user.password_hash, digest)
            self._cache[user.name] = entry
        entry.addresses[origin] = None
        entry.addresses.move_to_end(origin)
        while len(entry.addresses) > FAMILIAR_ADDRESSES:
            entry.addresses.popitem(last=False)
        self._cache.move_to_end(user.name)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    async def _verify(self, key: str, user: User | None, password: str) -> bool:
        """One argon2 run per distinct (stored hash, password) at a time: a client that opens
        many connections at once with the same new credentials (a browser, a parallel upload,
        a benchmark) waits for a single verification instead of queueing one per connection.
        An unknown name has a stand-in hash of its own, so requests for different names are
        never merged, whether the names exist or not."""
        stored = user.password_hash if user is not None else self._stand_in(key)
        merge = (stored, self._digest(password))
        run = self._verifying.get(merge)
        if run is None:
            run = _Argon2Run(
                self.budget, self._threads, self._cost(stored), self._check, stored, password
            )
            self._verifying[merge] = run
            run.task.add_done_callback(lambda _: self._verifying.pop(merge, None))
        ok = await run.result()
        return bool(ok) and user is not None

    def _stand_in(self, key: str) -> str:
        """An argon2id hash, with the configured cost, that no password matches, distinct for
        each (normalised) name and stable in this process: derived from the name under this
        process's secret, so building it costs no argon2 run, and nobody can tell it from a
        real user's hash by the time a verification against it takes."""
        material = hmac.new(
            self._key, b"stand-in\0" + key.encode("utf-8", "surrogatepass"), hashlib.sha512
        ).digest()
        salt, digest = material[:16], material[16 : 16 + self._hasher.hash_len]
        hasher = self._hasher
        return (
            f"$argon2id$v=19$m={hasher.memory_cost},t={hasher.time_cost},"
            f"p={hasher.parallelism}${_b64(salt)}${_b64(digest)}"
        )

    def _cost(self, stored: str) -> int:
        """The memory one verification against `stored` takes (its own `m=` parameter)."""
        try:
            return extract_parameters(stored).memory_cost * 1024
        except (InvalidHashError, ValueError):
            return self._memory_cost

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False


def _b64(raw: bytes) -> str:
    """argon2's encoding: standard base64 without padding."""
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _limiter_key(kind: str, value: str) -> str:
    """`kind:value`; a long value (a made-up user name) as its digest, so that the shared
    table's key column holds every key."""
    key = f"{kind}:{value}"
    if len(key) <= SHARED_KEY_MAX:
        return key
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{kind}#sha256:{digest}"
