"""Authentication: Basic parsing, the client address, the failure limiter, the verified
credentials cache, and how all of it looks over HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
import sqlalchemy as sa
from aiohttp import ClientResponse, encode_basic_auth, web
from argon2 import PasswordHasher, extract_parameters
from hypothesis import given
from hypothesis import strategies as st

from filecask.app import create_app
from filecask.auth import (
    FAILURE_MEMORY,
    Authenticator,
    FailureLimiter,
    address_key,
    client_address,
    new_password_hasher,
    parse_basic,
    validate_password,
    validate_user_name,
)
from filecask.errors import BadRequest, RateLimited, Unauthorized
from filecask.names import user_name_key
from filecask.services import Services
from filecask.settings import IPNetwork, Settings
from filecask.storage.meta.schema import auth_failures
from tests.conftest import (
    ADMIN,
    CHEAP_ARGON2,
    AppClient,
    Auth,
    MakeSettings,
    MakeUser,
    assert_problem,
    basic,
)

AiohttpClient = Callable[[web.Application], Awaitable[AppClient]]

WWW_AUTHENTICATE = 'Basic realm="filecask", charset="UTF-8"'
PROBLEM_JSON = "application/problem+json"
TEN = (ipaddress.ip_network("10.0.0.0/8"),)
LOCALHOST = (ipaddress.ip_network("127.0.0.1/32"),)
PRODUCTION_ARGON2 = {name: getattr(Settings(), name) for name in CHEAP_ARGON2}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def from_address(auth: Auth, address: str) -> dict[str, str]:
    """Headers as a trusted proxy at 127.0.0.1 would forward them for `address`."""
    return {**auth, "X-Forwarded-For": address}


# --- parse_basic --------------------------------------------------------------------------


def test_parse_basic_valid() -> None:
    assert parse_basic("Basic " + b64(b"bob:secret")) == ("bob", "secret")


def test_parse_basic_password_may_contain_colons_and_be_empty() -> None:
    assert parse_basic("Basic " + b64(b"bob:a:b:c")) == ("bob", "a:b:c")
    assert parse_basic("Basic " + b64(b"bob:")) == ("bob", "")


def test_parse_basic_scheme_is_case_insensitive() -> None:
    assert parse_basic("basic " + b64(b"bob:pw")) == ("bob", "pw")
    assert parse_basic("BASIC " + b64(b"bob:pw")) == ("bob", "pw")


def test_parse_basic_utf8() -> None:
    assert parse_basic("Basic " + b64("zoë:pässwörd".encode())) == ("zoë", "pässwörd")


@pytest.mark.parametrize("header", [None, "", "Bearer abc.def.ghi", "Digest username=x", "Basicx"])
def test_parse_basic_absent_or_other_scheme_is_none(header: str | None) -> None:
    assert parse_basic(header) is None


@pytest.mark.parametrize(
    "header",
    [
        "Basic " + b64(b"no-colon-here"),
        "Basic ",
        "Basic !!!not-base64!!!",
        "Basic " + b64(b"bob:pw")[:-1],
        "Basic " + b64(b"bob:\xff\xfe"),
        "Basic " + b64("bob:pässwörd".encode("latin-1")),
    ],
    ids=["no-colon", "empty", "bad-base64", "bad-padding", "not-utf8", "latin1"],
)
def test_parse_basic_malformed_is_unauthorized(header: str) -> None:
    with pytest.raises(Unauthorized) as raised:
        parse_basic(header)
    assert raised.value.headers["WWW-Authenticate"] == WWW_AUTHENTICATE


@given(
    st.text(min_size=1, max_size=30).filter(lambda s: ":" not in s),
    st.text(max_size=60),
)
def test_parse_basic_round_trips_aiohttp_encoding(user: str, password: str) -> None:
    assert parse_basic(encode_basic_auth(user, password)) == (user, password)


# --- client_address -----------------------------------------------------------------------


def test_client_address_is_the_peer() -> None:
    assert client_address("203.0.113.9", None, ()) == "203.0.113.9"
    assert client_address("203.0.113.9", None, TEN) == "203.0.113.9"


def test_client_address_without_peer() -> None:
    assert client_address(None, "203.0.113.9", TEN) == "unknown"


def test_forwarded_for_from_untrusted_peer_is_ignored() -> None:
    assert client_address("203.0.113.9", "198.51.100.1", ()) == "203.0.113.9"
    assert client_address("203.0.113.9", "198.51.100.1", TEN) == "203.0.113.9"


def test_forwarded_for_from_trusted_proxy_is_believed() -> None:
    assert client_address("10.0.0.1", "198.51.100.1", TEN) == "198.51.100.1"


def test_forwarded_for_takes_the_rightmost_untrusted_hop() -> None:
    # The client forged the first entry; our proxies appended the rest.
    xff = "1.1.1.1, 198.51.100.1, 10.0.0.3, 10.0.0.2"
    assert client_address("10.0.0.1", xff, TEN) == "198.51.100.1"


def test_forwarded_for_all_trusted_falls_back_to_the_peer() -> None:
    assert client_address("10.0.0.1", "10.0.0.2, 10.0.0.3", TEN) == "10.0.0.1"


def test_forwarded_for_ipv6() -> None:
    trusted = (ipaddress.ip_network("fd00::/8"),)
    assert client_address("fd00::1", "2001:db8::7, fd00::2", trusted) == "2001:db8::7"


@pytest.mark.parametrize("xff", ["", " ", ",", " , ,, "])
def test_empty_forwarded_for_is_the_peer(xff: str) -> None:
    assert client_address("10.0.0.1", xff, TEN) == "10.0.0.1"


def test_garbage_left_of_the_real_client_is_ignored() -> None:
    xff = "garbage, <script>, 999.1.1.1, 198.51.100.1"
    assert client_address("10.0.0.1", xff, TEN) == "198.51.100.1"


@pytest.mark.parametrize(
    "xff",
    ["garbage", "198.51.100.1, not-an-ip", "198.51.100.1:4711", "x" * 300],
    ids=["word", "appended-garbage", "with-port", "long"],
)
def test_garbage_forwarded_for_never_becomes_the_client_address(xff: str) -> None:
    """The address keys the sign-in limiter: it must be an address (or the peer), never
    arbitrary header text a client chose."""
    address = client_address("10.0.0.1", xff, TEN)
    assert is_ip(address), f"client address {address!r}"


ip_text = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
hop = st.one_of(ip_text, st.sampled_from(["10.0.0.9", "10.1.2.3"]), st.text(max_size=12))


@given(peer=st.one_of(st.just("10.0.0.1"), ip_text), hops=st.lists(hop, max_size=6))
def test_client_address_is_the_peer_or_a_forwarded_ip(peer: str, hops: list[str]) -> None:
    trusted: tuple[IPNetwork, ...] = TEN
    xff = ", ".join(hops)
    address = client_address(peer, xff, trusted)
    if address == peer:
        return
    assert is_ip(address), f"client address {address!r}"
    assert address in [h.strip() for h in xff.split(",")]
    assert not any(ipaddress.ip_address(address) in net for net in trusted)
    assert any(ipaddress.ip_address(peer) in net for net in trusted)


# --- FailureLimiter -----------------------------------------------------------------------

KEYS = ("user:bob", "addr:203.0.113.9")


def wait_of(limiter: FailureLimiter, keys: tuple[str, ...], now: float) -> int:
    """The Retry-After the limiter demands at `now`, 0 if none."""
    limited: RateLimited | None = None
    try:
        limiter.check(keys, now)
    except RateLimited as exc:
        limited = exc
    if limited is None:
        return 0
    assert limited.status == 429
    assert limited.headers["Retry-After"] == str(limited.extensions["retry_after"])
    return int(limited.extensions["retry_after"])


def test_limiter_allows_failures_below_the_threshold() -> None:
    limiter = FailureLimiter(threshold=3, max_delay=60)
    for _ in range(2):
        limiter.fail(KEYS, 100.0)
    assert wait_of(limiter, KEYS, 100.0) == 0


def test_limiter_slows_down_at_the_threshold() -> None:
    limiter = FailureLimiter(threshold=3, max_delay=60)
    for _ in range(3):
        limiter.fail(KEYS, 100.0)
    assert wait_of(limiter, KEYS, 100.0) == 1
    assert wait_of(limiter, KEYS, 100.5) == 1
    assert wait_of(limiter, KEYS, 101.01) == 0


def test_limiter_delay_grows_exponentially_up_to_the_cap() -> None:
    limiter = FailureLimiter(threshold=3, max_delay=10)
    now = 0.0
    for _ in range(3):
        limiter.fail(KEYS, now)
    waits = []
    for _ in range(6):
        waits.append(wait_of(limiter, KEYS, now))
        now += waits[-1] + 0.001  # the client waits as told, then fails again
        assert wait_of(limiter, KEYS, now) == 0
        limiter.fail(KEYS, now)
    assert waits == [1, 2, 4, 8, 10, 10]


def test_limiter_retry_after_is_whole_seconds_and_at_least_one() -> None:
    limiter = FailureLimiter(threshold=1, max_delay=0.25)
    limiter.fail(KEYS, 0.0)
    assert wait_of(limiter, KEYS, 0.0) == 1
    assert wait_of(limiter, KEYS, 0.3) == 0


def test_limiter_success_resets() -> None:
    limiter = FailureLimiter(threshold=3, max_delay=60)
    for _ in range(5):
        limiter.fail(KEYS, 0.0)
    assert wait_of(limiter, KEYS, 0.0) > 0
    limiter.succeed(KEYS)
    assert wait_of(limiter, KEYS, 0.0) == 0
    # Counting starts afresh.
    limiter.fail(KEYS, 0.0)
    limiter.fail(KEYS, 0.0)
    assert wait_of(limiter, KEYS, 0.0) == 0


def test_limiter_any_limited_key_blocks() -> None:
    limiter = FailureLimiter(threshold=2, max_delay=60)
    for _ in range(2):
        limiter.fail(("user:bob", "addr:A"), 0.0)
    assert wait_of(limiter, ("user:bob", "addr:B"), 0.0) > 0
    assert wait_of(limiter, ("user:eve", "addr:A"), 0.0) > 0
    assert wait_of(limiter, ("user:eve", "addr:B"), 0.0) == 0


def test_limiter_counts_keys_separately() -> None:
    limiter = FailureLimiter(threshold=2, max_delay=60)
    limiter.fail(("user:bob", "addr:A"), 0.0)
    limiter.fail(("user:eve", "addr:B"), 0.0)
    for keys in [("user:bob", "addr:A"), ("user:eve", "addr:B"), ("user:bob", "addr:B")]:
        assert wait_of(limiter, keys, 0.0) == 0
    limiter.fail(("user:bob", "addr:C"), 0.0)
    assert wait_of(limiter, ("user:bob", "addr:D"), 0.0) > 0


def test_limiter_forgets_after_failure_memory() -> None:
    limiter = FailureLimiter(threshold=3, max_delay=1e9)
    for _ in range(20):  # a delay of 2**17 s, far beyond FAILURE_MEMORY
        limiter.fail(KEYS, 0.0)
    assert wait_of(limiter, KEYS, FAILURE_MEMORY - 1) > 0
    assert wait_of(limiter, KEYS, FAILURE_MEMORY + 1) == 0
    # Forgotten, not merely expired: one new failure does not slow anybody down.
    limiter.fail(KEYS, FAILURE_MEMORY + 1)
    assert wait_of(limiter, KEYS, FAILURE_MEMORY + 1) == 0


def test_limiter_memory_runs_from_the_last_failure() -> None:
    limiter = FailureLimiter(threshold=3, max_delay=1e9)
    for now in (0.0, FAILURE_MEMORY * 0.9, FAILURE_MEMORY * 1.8):
        limiter.fail(KEYS, now)
    # The first failure is long past FAILURE_MEMORY, but each later one kept the count.
    assert wait_of(limiter, KEYS, FAILURE_MEMORY * 1.8) == 1


# --- Authenticator and its credentials cache ----------------------------------------------


class CountingHasher(PasswordHasher):
    """argon2 (cheap parameters) that counts verifications; they run in executor threads."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)  # KiB
        self._lock = threading.Lock()
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # type: ignore[override]
        with self._lock:
            self.verifications += 1
        return super().verify(hash, password)


def authenticator(
    services: Services, hasher: PasswordHasher, *, max_failures: int
) -> Authenticator:
    settings = services.settings.replace(auth_max_failures=max_failures, auth_max_delay=60)
    return Authenticator(services.meta, settings, hasher=hasher)


async def test_cached_credentials_skip_argon2(services: Services) -> None:
    hasher = CountingHasher()
    auth = authenticator(services, hasher, max_failures=100)
    await services.meta.create_user("carol", auth.hash_password("carol-password"), is_admin=False)
    header = encode_basic_auth("carol", "carol-password")

    user = await auth.authenticate(header, "203.0.113.9")
    assert user.name == "carol"
    assert hasher.verifications == 1
    for _ in range(20):
        assert (await auth.authenticate(header, "203.0.113.9")).name == "carol"
    assert hasher.verifications == 1

    # A wrong password is not let through by the cache: it is verified, and refused.
    with pytest.raises(Unauthorized):
        await auth.authenticate(encode_basic_auth("carol", "carol-passwore"), "203.0.113.9")
    assert hasher.verifications == 2
    # ... and the right one is still cached.
    await auth.authenticate(header, "203.0.113.9")
    assert hasher.verifications == 2


async def test_concurrent_first_sign_ins_share_one_verification(services: Services) -> None:
    """64 connections arriving at once with the same new credentials cost one argon2 run."""
    hasher = CountingHasher()
    auth = authenticator(services, hasher, max_failures=100)
    await services.meta.create_user("carol", auth.hash_password("carol-password"), is_admin=False)
    header = encode_basic_auth("carol", "carol-password")
    users = await asyncio.gather(*(auth.authenticate(header, "a") for _ in range(64)))
    assert {u.name for u in users} == {"carol"}
    assert hasher.verifications == 1
    # A wrong password arriving alongside is verified on its own, and refused.
    results = await asyncio.gather(
        auth.authenticate(header, "a"),
        auth.authenticate(encode_basic_auth("carol", "carol-passwore"), "a"),
        return_exceptions=True,
    )
    assert isinstance(results[1], Unauthorized)
    assert hasher.verifications == 2


async def test_cache_follows_the_stored_hash(services: Services) -> None:
    hasher = CountingHasher()
    auth = authenticator(services, hasher, max_failures=100)
    await services.meta.create_user("carol", auth.hash_password("old-password"), is_admin=False)
    old = encode_basic_auth("carol", "old-password")
    new = encode_basic_auth("carol", "new-password")
    await auth.authenticate(old, "a")

    await services.meta.set_password("carol", auth.hash_password("new-password"))
    with pytest.raises(Unauthorized):
        await auth.authenticate(old, "a")
    assert (await auth.authenticate(new, "a")).name == "carol"
    before = hasher.verifications
    await auth.authenticate(new, "a")
    assert hasher.verifications == before

    await services.meta.delete_user("carol")
    with pytest.raises(Unauthorized):
        await auth.authenticate(new, "a")
    # Same name, same password, a new account: the old cache entry does not apply.
    await services.meta.create_user("carol", auth.hash_password("new-password"), is_admin=False)
    before = hasher.verifications
    assert (await auth.authenticate(new, "a")).name == "carol"
    assert hasher.verifications == before + 1


async def test_unknown_users_cost_a_verification_too(services: Services) -> None:
    hasher = CountingHasher()
    auth = authenticator(services, hasher, max_failures=100)
    with pytest.raises(Unauthorized) as raised:
        await auth.authenticate(encode_basic_auth("nobody", "whatever-pw"), "a")
    assert raised.value.detail == "Wrong user name or password."
    assert hasher.verifications == 1


async def test_authenticator_limits_before_verifying(services: Services) -> None:
    hasher = CountingHasher()
    auth = authenticator(services, hasher, max_failures=2)
    await services.meta.create_user("carol", auth.hash_password("carol-password"), is_admin=False)
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await auth.authenticate(encode_basic_auth("carol", "wrong-password"), "a")
    assert hasher.verifications == 2
    with pytest.raises(RateLimited):
        await auth.authenticate(encode_basic_auth("carol", "carol-password"), "a")
    assert hasher.verifications == 2  # refused without spending argon2 on it


# --- over HTTP ----------------------------------------------------------------------------


async def assert_401(response: ClientResponse, detail: str | None = None) -> None:
    assert response.status == 401, await response.text()
    assert response.headers["WWW-Authenticate"] == WWW_AUTHENTICATE
    assert response.content_type == PROBLEM_JSON
    body = await response.json(content_type=PROBLEM_JSON)
    assert_problem(body, 401, "unauthorized")
    if detail is not None:
        assert body["detail"] == detail


async def test_401_challenges_basic_utf8_with_a_problem(client: AppClient) -> None:
    for headers in [
        {},
        {"Authorization": "Bearer some-token"},
        {"Authorization": "Basic !!!"},
        {"Authorization": "Basic " + b64(b"admin")},
        {"Authorization": "Basic " + b64(b"admin:\xff")},
        basic("admin", "wrong-password"),
    ]:
        await assert_401(await client.get("/me", headers=headers))


async def test_unknown_user_and_wrong_password_look_the_same(client: AppClient) -> None:
    unknown = await client.get("/me", headers=basic("nobody", "admin-password"))
    wrong = await client.get("/me", headers=basic("admin", "not-the-password"))
    await assert_401(unknown)
    await assert_401(wrong)
    assert await unknown.json(content_type=PROBLEM_JSON) == await wrong.json(
        content_type=PROBLEM_JSON
    )
    assert unknown.headers["WWW-Authenticate"] == wrong.headers["WWW-Authenticate"]


async def test_utf8_credentials_sign_in(client: AppClient, make_user: MakeUser) -> None:
    auth = await make_user("zoë", password="pässwörd-ünïcödé")
    response = await client.get("/me", headers=auth)
    assert response.status == 200, await response.text()
    assert (await response.json())["name"] == "zoë"
    latin1 = {"Authorization": "Basic " + b64("zoë:pässwörd-ünïcödé".encode("latin-1"))}
    await assert_401(await client.get("/me", headers=latin1))


async def test_repeated_wrong_password_gets_429(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings
) -> None:
    client = await aiohttp_client(create_app(make_settings(auth_max_failures=3, auth_max_delay=2)))
    wrong = basic("admin", "wrong-password")
    for _ in range(3):
        await assert_401(await client.get("/me", headers=wrong))

    limited = await client.get("/me", headers=wrong)
    assert limited.status == 429
    assert limited.content_type == PROBLEM_JSON
    retry_after = int(limited.headers["Retry-After"])
    assert 1 <= retry_after <= 2
    body = await limited.json(content_type=PROBLEM_JSON)
    assert_problem(body, 429, "rate-limited")
    assert body["retry_after"] == retry_after
    assert body["instance"] == "/me"

    # While limited, even the right password is not tried.
    assert (await client.get("/me", headers=ADMIN)).status == 429

    # After waiting as told, the right password works and clears the count.
    await asyncio.sleep(retry_after + 0.05)
    assert (await client.get("/me", headers=ADMIN)).status == 200
    await assert_401(await client.get("/me", headers=wrong))
    assert (await client.get("/me", headers=ADMIN)).status == 200


async def test_limit_applies_per_address_and_per_pair_never_across_addresses(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings
) -> None:
    """Through a trusted proxy, each client has its own address key. Failures for a name
    from one address refuse nobody at another address: the right password works from
    anywhere else; a wrong guess from elsewhere is verified once, then that address waits
    the name's delay (issue 14: the per-name limit slows guesses, never the real user)."""
    client = await aiohttp_client(
        create_app(make_settings(auth_max_failures=3, auth_max_delay=60, trusted_proxies=LOCALHOST))
    )
    created = await client.post(
        "/users", json={"name": "bob", "password": "bob-password"}, headers=ADMIN
    )
    assert created.status == 201
    attacker, elsewhere, third, fourth = "203.0.113.66", "198.51.100.7", "192.0.2.1", "192.0.2.2"
    bob_wrong = basic("bob", "bad-guess-1")
    for _ in range(3):
        await assert_401(await client.get("/me", headers=from_address(bob_wrong, attacker)))

    # The attacker's address is throttled, for bob (even with the right password) and for
    # any other name ...
    bob = basic("bob", "bob-password")
    assert (await client.get("/me", headers=from_address(bob, attacker))).status == 429
    assert (await client.get("/me", headers=from_address(ADMIN, attacker))).status == 429
    # ... bob signs in from elsewhere, and so does anybody else.
    assert (await client.get("/me", headers=from_address(bob, elsewhere))).status == 200
    assert (await client.get("/me", headers=from_address(ADMIN, third))).status == 200
    # A guess at bob from a new address is verified (the right password would have worked),
    # then that address waits the name's delay: 4 failures for bob, 2 s.
    await assert_401(await client.get("/me", headers=from_address(bob_wrong, fourth)))
    limited = await client.get("/me", headers=from_address(bob, fourth))
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "2"
    # bob, already verified from `elsewhere`, is not slowed there.
    assert (await client.get("/me", headers=from_address(bob, elsewhere))).status == 200


async def test_forged_forwarded_for_does_not_escape_the_limit(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings
) -> None:
    """Without trusted proxies, X-Forwarded-For is ignored: changing it gets no new key."""
    client = await aiohttp_client(create_app(make_settings(auth_max_failures=3, auth_max_delay=60)))
    for i in range(3):
        headers = from_address(basic(f"guess{i}", "wrong-password"), f"198.51.100.{i}")
        await assert_401(await client.get("/me", headers=headers))
    headers = from_address(basic("guess9", "wrong-password"), "198.51.100.9")
    assert (await client.get("/me", headers=headers)).status == 429


async def test_changed_password_is_refused_at_once(
    client: AppClient, services: Services, make_user: MakeUser
) -> None:
    old = await make_user("bob", password="old-password")
    assert (await client.get("/me", headers=old)).status == 200  # now cached
    # The cache lets through only the password it saw.
    await assert_401(await client.get("/me", headers=basic("bob", "old-passwore")))
    await assert_401(await client.get("/me", headers=basic("bob", "")))
    assert (await client.get("/me", headers=old)).status == 200

    # As `filecask user passwd` would, from another process: straight to the store.
    await services.meta.set_password("bob", await services.auth.hash_password_async("new-pass"))
    await assert_401(await client.get("/me", headers=old))
    new = basic("bob", "new-pass")
    assert (await client.get("/me", headers=new)).status == 200
    assert (await client.get("/me", headers=new)).status == 200
    await assert_401(await client.get("/me", headers=old))


async def test_password_changed_by_another_process_is_refused_at_once(
    client: AppClient, other_process: Services, make_user: MakeUser
) -> None:
    old = await make_user("bob", password="old-password")
    assert (await client.get("/me", headers=old)).status == 200  # now cached
    new_hash = await other_process.auth.hash_password_async("new-password")
    await other_process.meta.set_password("bob", new_hash)
    await assert_401(await client.get("/me", headers=old))
    assert (await client.get("/me", headers=basic("bob", "new-password"))).status == 200


async def test_user_removed_by_another_process_is_refused_at_once(
    client: AppClient, other_process: Services, make_user: MakeUser
) -> None:
    bob = await make_user("bob")
    assert (await client.get("/me", headers=bob)).status == 200  # now cached
    await other_process.files.remove_user("bob")
    await assert_401(await client.get("/me", headers=bob))


async def test_removed_user_is_refused_at_once(
    client: AppClient, services: Services, make_user: MakeUser
) -> None:
    bob = await make_user("bob")
    assert (await client.get("/me", headers=bob)).status == 200  # now cached
    await services.files.remove_user("bob")
    await assert_401(await client.get("/me", headers=bob))


async def test_cached_requests_are_much_cheaper_than_argon2(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings
) -> None:
    """At the production argon2 cost, 20 signed-in requests after the first one take less
    time than 10 verifications would: the cache, not argon2, answers them."""
    settings = make_settings(**PRODUCTION_ARGON2)
    client = await aiohttp_client(create_app(settings))
    assert (await client.get("/me", headers=ADMIN)).status == 200
    hasher = new_password_hasher(settings)
    stored = hasher.hash("x-password")
    start = time.perf_counter()
    hasher.verify(stored, "x-password")
    one_verification = time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(20):
        assert (await client.get("/me", headers=ADMIN)).status == 200
    twenty_requests = time.perf_counter() - start
    assert twenty_requests < 10 * one_verification, (twenty_requests, one_verification)


async def test_a_cached_sign_in_does_not_reset_the_failure_count(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings
) -> None:
    """The real user's client, polling with its (cached) password, must not wipe the count
    a guesser builds up for the name; and a throttled key is refused even with the right
    password, so a right guess is not revealed before the delay is over."""
    client = await aiohttp_client(create_app(make_settings(auth_max_failures=3)))
    assert (await client.get("/me", headers=ADMIN)).status == 200  # verified, now cached
    wrong = basic("admin", "a-guessed-password")
    statuses = []
    for _ in range(3):
        await assert_401(await client.get("/me", headers=wrong))
        statuses.append((await client.get("/me", headers=ADMIN)).status)
    assert statuses == [200, 200, 429]  # the successes in between reset nothing
    assert (await client.get("/me", headers=wrong)).status == 429
    assert (await client.get("/me", headers=ADMIN)).status == 429


def test_limiter_mirrors_shared_counts_by_age() -> None:
    """With PostgreSQL the limiter mirrors the shared table: counts and ages (seconds since
    the last failure, by the database's clock) become local deadlines, so clock skew
    between machines does not matter."""
    limiter = FailureLimiter(threshold=3, max_delay=60)
    limiter.load([("user:bob", 3, 0.5)], now=100.0)  # throttled half a second ago: 1 s delay
    assert wait_of(limiter, ("user:bob",), 100.0) == 1
    assert wait_of(limiter, ("user:bob",), 100.6) == 0
    limiter.record({"addr:1.2.3.4": 5}, now=200.0)
    assert wait_of(limiter, ("addr:1.2.3.4",), 200.0) == 4
    limiter.clear()
    assert wait_of(limiter, ("addr:1.2.3.4",), 200.0) == 0


async def test_sqlite_keeps_failures_in_the_process(services: Services) -> None:
    assert services.meta.failure_store() is None


async def test_failures_are_shared_between_instances(
    postgres_database: str, make_settings: MakeSettings
) -> None:
    """Two authenticators on two stores (two machines) of one database: failures from an
    address at one throttle that address at the other; the user signed in from another
    address keeps working at both; a name's count carries over to a new address's pair at
    the other instance; a right password verified at one clears that pair for both."""
    from filecask.storage.changes import ChangeStamps
    from filecask.storage.meta.sql import SqlMetaStore

    settings = make_settings(auth_max_failures=2, auth_max_delay=1)
    stores = [SqlMetaStore(postgres_database, ChangeStamps(None), change_poll=0.5) for _ in "ab"]
    for store in stores:
        await store.open()
    try:
        one, two = (Authenticator(store, settings) for store in stores)
        await stores[0].create_user("bob", one.hash_password("right-password"), is_admin=False)
        right = encode_basic_auth("bob", "right-password")
        wrong = encode_basic_auth("bob", "wrong-password")
        assert (await two.authenticate(right, "10.0.0.2")).name == "bob"
        with pytest.raises(Unauthorized):
            await one.authenticate(wrong, "10.0.0.5")  # a typo, below every threshold
        # The name's second failure: it is now under attack, and this address takes on the
        # name's count at once (2, throttled).
        with pytest.raises(Unauthorized):
            await one.authenticate(wrong, "10.0.0.1")
        with pytest.raises(RateLimited):
            await one.authenticate(wrong, "10.0.0.1")
        deadline = time.monotonic() + 1.0
        while True:
            # The attacked name, signed in from elsewhere: never refused.
            assert (await two.authenticate(right, "10.0.0.2")).name == "bob"
            try:
                await two.authenticate(right, "10.0.0.1")  # known at two, still refused
            except RateLimited:
                break
            assert time.monotonic() < deadline, "not throttled at the other instance"
            await asyncio.sleep(0.005)
        # A guess from a new address at two takes the name's count (3 >= 2) to its pair.
        with pytest.raises(Unauthorized):
            await two.authenticate(wrong, "10.0.0.3")
        deadline = time.monotonic() + 1.0
        while True:
            try:
                await one.authenticate(right, "10.0.0.3")
            except RateLimited:
                break
            assert time.monotonic() < deadline, "the pair is not throttled at the other instance"
            await asyncio.sleep(0.005)
        # The typist signs in (verified at one): their pair's failure is forgotten, the
        # name's count and the others' pairs are not.
        assert (await one.authenticate(right, "10.0.0.5")).name == "bob"
        async with stores[0].engine.connect() as conn:
            rows = set((await conn.execute(sa.select(auth_failures.c.key))).scalars())
        assert "pair:bob@10.0.0.5" not in rows
        assert {"addr:10.0.0.5", "user:bob", "pair:bob@10.0.0.1", "pair:bob@10.0.0.3"} <= rows
    finally:
        for store in stores:
            await store.close()


# --- issue 14: nobody can lock a user out, nor learn who exists ---------------------------


def test_user_name_key_folds_case_and_width_not_accents() -> None:
    fullwidth = "\uff41\uff44\uff4d\uff49\uff4e"  # "admin" in fullwidth letters
    assert {user_name_key(n) for n in ("admin", "Admin", "ADMIN", fullwidth)} == {"admin"}
    assert user_name_key("ädmin") == "ädmin" != user_name_key("admin")
    assert user_name_key("Straße") == user_name_key("STRASSE") == "strasse"
    assert user_name_key("\udcff") == "\\udcff"  # a lone surrogate never raises


@given(st.text(max_size=40))
def test_user_name_key_is_stable(name: str) -> None:
    key = user_name_key(name)
    assert user_name_key(key) == key


@pytest.mark.parametrize(
    ("name", "valid"),
    [("admin", True), ("Admin", True), ("ädmin", True), ("\uff41dmin", True), ("a\udcff", False)],
)
def test_validate_user_name(name: str, valid: bool) -> None:
    if valid:
        assert validate_user_name(name) == name
    else:
        with pytest.raises(BadRequest):
            validate_user_name(name)


def test_validate_password_refuses_a_lone_surrogate() -> None:
    with pytest.raises(BadRequest) as refused:
        validate_password("abcdefgh\udcff")
    assert "surrogate" in refused.value.detail


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("unknown", "unknown"),
    ],
)
def test_address_key_counts_ipv6_by_its_64(address: str, key: str) -> None:
    assert address_key(address) == key


@pytest.mark.parametrize("token", ["\xff\xfe", "YWRtaW46\xe9", "\udcff\udcfe", "é"])
def test_parse_basic_non_ascii_is_unauthorized(token: str) -> None:
    """aiohttp hands header bytes beyond ASCII over as text (Latin-1 or surrogate
    escapes); base64 refuses them with ValueError, which was a 500."""
    with pytest.raises(Unauthorized):
        parse_basic("Basic " + token)


@given(st.text(max_size=40))
def test_parse_basic_raises_nothing_but_unauthorized(token: str) -> None:
    with contextlib.suppress(Unauthorized):
        parse_basic("Basic " + token)


def settings_for(services: Services, **overrides: object) -> Settings:
    return services.settings.replace(**{"auth_max_delay": 60, **overrides})


async def test_failures_elsewhere_never_refuse_the_right_password(services: Services) -> None:
    """The issue's lockout: one address keeps failing for a name; the real user, fresh or
    already verified, signs in from another address throughout."""
    hasher = CountingHasher()
    auth = Authenticator(services.meta, settings_for(services, auth_max_failures=3), hasher=hasher)
    await services.meta.create_user("carol", auth.hash_password("carol-password"), is_admin=True)
    right = encode_basic_auth("carol", "carol-password")
    wrong = encode_basic_auth("carol", "a-guess-at-it")
    outcomes = []
    for _ in range(20):
        try:
            await auth.authenticate(wrong, "203.0.113.66")
        except (Unauthorized, RateLimited) as exc:
            outcomes.append(exc.status)
        assert (await auth.authenticate(right, "198.51.100.7")).name == "carol"  # cached
    assert outcomes[:3] == [401, 401, 401]
    assert set(outcomes[3:]) == {429}
    # Fresh: first sign-ins from new addresses, and after the password changed.
    await services.meta.set_password("carol", auth.hash_password("new-password"))
    fresh = encode_basic_auth("carol", "new-password")
    for address in ("198.51.100.7", "198.51.100.8", "2001:db8::7"):
        assert (await auth.authenticate(fresh, address)).name == "carol"
    # The attacker's address stays refused, with the right password too.
    with pytest.raises(RateLimited):
        await auth.authenticate(fresh, "203.0.113.66")


async def test_a_name_guessed_from_many_addresses_is_still_slowed(services: Services) -> None:
    """Once the name has had its share of failures, each further address gets one guess
    before it waits the name's delay; the right password from an address that has not
    failed is let in."""
    hasher = CountingHasher()
    auth = Authenticator(services.meta, settings_for(services, auth_max_failures=3), hasher=hasher)
    await services.meta.create_user("carol", auth.hash_password("carol-password"), is_admin=False)
    statuses: list[int] = []
    addresses = [f"198.51.100.{i}" for i in range(1, 13)]
    for round_ in range(5):
        for address in addresses:
            try:
                await auth.authenticate(encode_basic_auth("carol", f"guess-{round_}"), address)
            except (Unauthorized, RateLimited) as exc:
                statuses.append(exc.status)
    verified = statuses.count(401)
    # Without a per-name limit: 3 guesses from each of 12 addresses, 36 (and more later).
    assert verified <= 3 + len(addresses), statuses
    assert statuses.count(429) >= 60 - verified
    assert hasher.verifications == verified
    assert (
        await auth.authenticate(encode_basic_auth("carol", "carol-password"), "192.0.2.1")
    ).name == "carol"


async def test_a_signed_in_client_passes_its_own_throttled_address(services: Services) -> None:
    """Behind one NAT (or a proxy not configured as trusted) the address is throttled by
    somebody else's failures: a client verified from it keeps working, others are slowed."""
    auth = Authenticator(
        services.meta, settings_for(services, auth_max_failures=3), hasher=CountingHasher()
    )
    await services.meta.create_user("carol", auth.hash_password("carol-password"), is_admin=False)
    await services.meta.create_user("dave", auth.hash_password("dave-password"), is_admin=False)
    nat = "192.0.2.50"
    carol = encode_basic_auth("carol", "carol-password")
    assert (await auth.authenticate(carol, nat)).name == "carol"
    for i in range(3):
        with pytest.raises(Unauthorized):
            await auth.authenticate(encode_basic_auth(f"nobody{i}", "whatever-pw"), nat)
    for _ in range(5):
        assert (await auth.authenticate(carol, nat)).name == "carol"
    with pytest.raises(RateLimited):  # dave has not signed in from here: slowed
        await auth.authenticate(encode_basic_auth("dave", "dave-password"), nat)


async def test_guessing_against_the_cache_at_a_throttled_address_stops(
    services: Services,
) -> None:
    """At a throttled address where carol is signed in, a guess at carol's password is
    refused without argon2, yet known to be wrong (it is not the verified one): it counts
    against the pair, so after the threshold even the right password is refused there,
    and the address is no oracle for right guesses."""
    auth = Authenticator(
        services.meta, settings_for(services, auth_max_failures=3), hasher=CountingHasher()
    )
    await services.meta.create_user("carol", auth.hash_password("carol-password"), is_admin=False)
    nat = "192.0.2.50"
    carol = encode_basic_auth("carol", "carol-password")
    assert (await auth.authenticate(carol, nat)).name == "carol"
    for i in range(3):
        with pytest.raises(Unauthorized):
            await auth.authenticate(encode_basic_auth(f"nobody{i}", "whatever-pw"), nat)
    for i in range(3):
        with pytest.raises(RateLimited):
            await auth.authenticate(encode_basic_auth("carol", f"guess-{i}"), nat)
    with pytest.raises(RateLimited):
        await auth.authenticate(carol, nat)
    # Elsewhere carol is not affected.
    assert (await auth.authenticate(carol, "198.51.100.7")).name == "carol"


async def test_unknown_names_are_never_merged(services: Services) -> None:
    """Concurrent failed sign-ins with one password share an argon2 run only for one name:
    two unknown names cost two runs, as a real and an unknown name do."""
    hasher = CountingHasher()
    auth = Authenticator(
        services.meta, settings_for(services, auth_max_failures=1000), hasher=hasher
    )
    await services.meta.create_user("carol", auth.hash_password("carol-password"), is_admin=False)

    async def probe(*names: str) -> int:
        for name in names:  # the lookups answered from memory: the requests truly overlap
            await services.meta.get_user(name)
        before = hasher.verifications
        headers = [encode_basic_auth(name, "same-password") for name in names]
        results = await asyncio.gather(
            *(auth.authenticate(h, f"203.0.113.{i}") for i, h in enumerate(headers)),
            return_exceptions=True,
        )
        assert all(isinstance(r, Unauthorized) for r in results), results
        return hasher.verifications - before

    assert await probe("carol", "zz-surely-unknown") == 2
    assert await probe("ghost", "zz-surely-unknown") == 2
    # One name (in any spelling) with one password is one run, real or not.
    assert await probe("carol", "Carol") == 1
    assert await probe("ghost", "GHOST") == 1


async def test_a_stand_in_hash_costs_what_a_real_one_costs(services: Services) -> None:
    auth = Authenticator(services.meta, services.settings)
    real = extract_parameters(auth.hash_password("some-password"))
    stand_ins = {auth._stand_in(user_name_key(n)) for n in ("ghost", "GHOST", "spectre")}
    assert len(stand_ins) == 2
    for stand_in in stand_ins:
        assert extract_parameters(stand_in) == real
        assert not auth._check(stand_in, "some-password")


class ConcurrencyHasher(CountingHasher):
    """Counts verifications running at once (each held a little, so they overlap)."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.peak = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # type: ignore[override]
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(0.05)
            return super().verify(hash, password)
        finally:
            with self._lock:
                self.running -= 1


async def test_verifications_in_flight_stay_within_the_memory_budget(
    services: Services,
) -> None:
    """Each verification holds its hash's memory cost (1 MiB here); a 2 MiB budget runs two
    at once, however many distinct sign-ins arrive together."""
    hasher = ConcurrencyHasher()
    settings = settings_for(services, auth_max_failures=1000, auth_memory_budget=2 << 20)
    auth = Authenticator(services.meta, settings, hasher=hasher)
    headers = [encode_basic_auth(f"user{i}", f"password-{i}") for i in range(12)]
    await asyncio.gather(
        *(auth.authenticate(h, f"203.0.113.{i}") for i, h in enumerate(headers)),
        return_exceptions=True,
    )
    assert hasher.verifications == 12
    assert hasher.peak == 2
    assert auth.budget.used == 0


class HeldHasher(CountingHasher):
    """Holds each verification until `release` is set: a test sees it running for sure."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # type: ignore[override]
        self.started.set()
        self.release.wait(60)
        return super().verify(hash, password)


async def test_a_queued_sign_in_whose_client_left_costs_no_argon2(services: Services) -> None:
    hasher = HeldHasher()
    settings = settings_for(services, auth_max_failures=1000, auth_memory_budget=1 << 20)
    auth = Authenticator(services.meta, settings, hasher=hasher)
    first = asyncio.ensure_future(auth.authenticate(encode_basic_auth("a", "pw-a"), "1.2.3.4"))
    while not hasher.started.is_set():  # running, holding the whole budget
        await asyncio.sleep(0.001)
    queued = asyncio.ensure_future(auth.authenticate(encode_basic_auth("b", "pw-b"), "1.2.3.5"))
    while not auth.budget.waiting:
        await asyncio.sleep(0.001)
    queued.cancel()
    hasher.release.set()
    await asyncio.gather(first, queued, return_exceptions=True)
    assert hasher.verifications == 1
    assert auth.budget.used == 0


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priorities are Linux's")
async def test_argon2_runs_at_a_lower_cpu_priority(services: Services) -> None:
    """With every core hashing a burst of sign-ins, the event loop must still get the CPU:
    argon2's threads (and the lane threads they start) run niced."""
    seen: list[int] = []

    class NiceHasher(CountingHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # type: ignore[override]
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return super().verify(hash, password)

    auth = Authenticator(services.meta, services.settings, hasher=NiceHasher())
    with pytest.raises(Unauthorized):
        await auth.authenticate(encode_basic_auth("nobody", "whatever-pw"), "203.0.113.9")
    loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen == [min(19, loop_nice + 10)]
