"""Issue 14 §1, replayed against a real `filecask serve`: what a user keeps alive is what a
user pays for. Each test is an attack an ordinary account made (through
`bench.attacks.quota`, which prints the same attacks' figures) and fails on the code
before the fix:

- upload, bundle, delete, 20 times over with a 1 MiB quota: the store grew by 19.5 MiB
  and `/me` said `bytes: 0`;
- a bundle of a hash the caller does not hold was accepted, and kept someone else's
  deleted content downloadable through her old link;
- 30 partial tus uploads of 1 MiB each held 30 MiB of `tmp/` for a 1 MiB quota;
- an empty PATCH pushed `Upload-Expires` forward, so an upload never expired;
- removing the user left the partial files on disk (also on another instance), and
  `gc --dry-run` did not list them.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from bench.attacks.quota import (
    QUOTA,
    ROUND_SIZE,
    Api,
    basic,
    bundle_then_delete,
    partial_uploads,
    tmp_bytes,
    tree_bytes,
    upload_path,
)

from filecask.hashes import fanout
from tests.e2e.conftest import (
    ADMIN_CREDENTIALS,
    HOST,
    Server,
    ServerLauncher,
    StartServer,
    run_filecask,
)

FAST_ARGON2 = ("--argon2-memory", "1M", "--argon2-time-cost", "1", "--argon2-parallelism", "1")
MAX_OPEN = 4


@pytest.fixture(scope="module")
def server(module_launcher: ServerLauncher) -> Server:
    return module_launcher(*FAST_ARGON2, "--max-open-uploads", str(MAX_OPEN))


@pytest.fixture
def admin(server: Server) -> Api:
    return Api(server.port, ADMIN_CREDENTIALS)


def new_name(prefix: str) -> str:
    return f"{prefix}-{os.urandom(3).hex()}"


def eventually(check: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"not within {limit} s: {what}"
        time.sleep(0.05)


def tus_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "tmp").glob("tus-*"))


# ---------------------------------------------------------------- bundles and usage


def test_the_bundle_then_delete_loop_is_bounded_by_the_quota(server: Server, admin: Api) -> None:
    user = admin.new_user(new_name("looper"))
    before = tree_bytes(server.data_dir / "store")
    loop = bundle_then_delete(user)
    growth = tree_bytes(server.data_dir / "store") - before
    # Was: 20 of 20 stored, 19.5 MiB more in the store, /me bytes 0.
    assert growth <= QUOTA, f"the store grew by {growth} bytes for a {QUOTA}-byte quota"
    assert loop.stored == 1, loop.statuses
    assert loop.statuses[0] == (201, 201, 200)  # the DELETE says a bundle keeps it
    assert {s[0] for s in loop.statuses[1:]} == {413}
    # /me is honest: what the user keeps alive, by file or by bundle.
    assert (loop.me["bytes"], loop.me["files"], loop.me["bundles"]) == (ROUND_SIZE, 0, 1)
    assert loop.me["bytes"] == growth
    listed = {u["name"]: u for u in admin.request("GET", "/users").json()["users"]}
    assert listed[user.credentials.split(":")[0]]["bytes"] == ROUND_SIZE


def test_a_bundle_of_a_hash_the_caller_does_not_hold_is_refused(admin: Api) -> None:
    alice, mallory = admin.new_user(new_name("alice")), admin.new_user(new_name("mallory"))
    secret = os.urandom(5000)
    hex_hash = alice.upload(secret).json()["hash"]
    refused = mallory.bundle("stolen.zip", [("x.bin", hex_hash)])
    assert refused.status == 403, refused  # was 201
    problem = refused.json()
    assert problem["type"].endswith("/not-held")
    assert problem["hashes"] == [hex_hash]
    # A hash nobody stores gets the same answer: no oracle for what others store.
    nowhere = mallory.bundle("probe.zip", [("x.bin", hashlib.sha256(b"nobody").hexdigest())])
    assert (nowhere.status, nowhere.json()["type"]) == (403, problem["type"])
    assert mallory.me()["bytes"] == 0


def test_deleting_stops_the_shared_link(admin: Api) -> None:
    """The owner deletes her file and her bundle: her links stop, whatever another user
    tried (before, mallory's bundle of her hash kept her content downloadable)."""
    alice, mallory = admin.new_user(new_name("alice")), admin.new_user(new_name("mallory"))
    secret = os.urandom(5000)
    hex_hash = alice.upload(secret).json()["hash"]
    hers = alice.bundle("mine.zip", [("secret.bin", hex_hash)]).json()["id"]
    theirs = mallory.bundle("kept.zip", [("secret.bin", hex_hash)])
    assert theirs.status == 403
    deleted = alice.request("DELETE", f"/files/{hex_hash}")
    assert deleted.status == 200  # her own bundle still holds it, and the answer says so
    assert [b["id"] for b in deleted.json()["held_by_bundles"]] == [hers]
    assert admin.request("GET", f"/files/{hex_hash}").body == secret  # as she was told
    assert alice.request("DELETE", f"/archives/{hers}").status == 204
    assert admin.request("GET", f"/files/{hex_hash}").status == 404
    assert admin.request("GET", f"/archive/{hers}/").status == 404
    assert alice.me()["bytes"] == 0


# ---------------------------------------------------------------- resumable uploads


def test_thirty_partial_uploads_against_a_1_mib_quota(server: Server, admin: Api) -> None:
    user = admin.new_user(new_name("partial"))
    before = tmp_bytes(server.data_dir)
    partial = partial_uploads(user)
    held = tmp_bytes(server.data_dir) - before
    # Was: 30 created, 30 MiB in tmp/.
    assert held <= QUOTA, f"tmp/ holds {held} bytes for a {QUOTA}-byte quota"
    assert len(partial.created) == 1
    assert {a.status for a in partial.refusals} == {413}
    problem = partial.refusals[0].json()
    assert (problem["reserved"], problem["used"], problem["size"]) == (QUOTA, 0, QUOTA)
    assert user.me()["reserved"] == QUOTA
    # A plain upload counts the reservation too.
    assert user.upload(b"one byte too many"[:1]).status == 413
    # Deleting the upload gives its reservation back.
    assert user.request("DELETE", upload_path(partial.created[0]), headers=TUS).status == 204
    assert user.me()["reserved"] == 0
    assert user.upload(b"x").status == 201


TUS = {"Tus-Resumable": "1.0.0"}


def test_open_uploads_are_capped_per_user(admin: Api) -> None:
    """Without a quota too: each open upload is a file in tmp/ until it expires."""
    user = admin.new_user(new_name("opener"), quota=None)
    created = [user.tus_create(10) for _ in range(MAX_OPEN + 2)]
    assert [a.status for a in created] == [201] * MAX_OPEN + [429, 429]
    refused = created[-1]
    assert refused.json()["type"].endswith("/too-many-uploads")
    assert 1 <= int(refused.headers["Retry-After"]) <= 24 * 3600
    assert refused.headers["Tus-Resumable"] == "1.0.0"
    other = admin.new_user(new_name("other"), quota=None)
    assert other.tus_create(10).status == 201


def test_an_empty_patch_does_not_extend_the_expiry(start_server: StartServer) -> None:
    """A client sending empty PATCHes kept an upload (and its bytes) forever."""
    server = start_server(*FAST_ARGON2, "--upload-expiry", "2s")
    user = Api(server.port, ADMIN_CREDENTIALS)
    location = user.tus_create(1000).headers["Location"]
    first = user.tus_patch(location, 0, b"x" * 10)
    assert first.status == 204
    expires = parsedate_to_datetime(first.headers["Upload-Expires"])
    assert tus_files(server.data_dir)
    deadline = time.monotonic() + 15
    statuses = []
    while True:  # an empty PATCH now and then, as the attack did
        time.sleep(0.5)
        answer = user.tus_patch(location, 10, b"")
        statuses.append(answer.status)
        if answer.status != 204:
            break
        assert parsedate_to_datetime(answer.headers["Upload-Expires"]) == expires
        assert time.monotonic() < deadline, f"never expired: {statuses}"
    assert answer.status in (404, 410), statuses  # expired (410), or swept already (404)
    eventually(lambda: not tus_files(server.data_dir), 10, "the expired upload's file goes")


def test_a_patch_that_adds_bytes_extends_the_expiry(admin: Api) -> None:
    location = admin.tus_create(1000).headers["Location"]
    first = parsedate_to_datetime(admin.tus_patch(location, 0, b"x").headers["Upload-Expires"])
    time.sleep(1.1)  # Upload-Expires has a resolution of one second
    second = admin.tus_patch(location, 1, b"y")
    assert parsedate_to_datetime(second.headers["Upload-Expires"]) > first
    head = admin.request("HEAD", upload_path(location), headers=TUS)
    assert head.headers["Upload-Expires"] == second.headers["Upload-Expires"]


# ---------------------------------------------------------------- removing a user


def test_removing_a_user_removes_their_partial_files_at_once(server: Server, admin: Api) -> None:
    name = new_name("leaver")
    user = admin.new_user(name, quota=None)
    locations = []
    for _ in range(3):
        location = user.tus_create(100_000).headers["Location"]
        assert user.tus_patch(location, 0, os.urandom(50_000)).status == 204
        locations.append(location)
    ids = {upload_path(loc).rsplit("/", 1)[1] for loc in locations}
    assert ids <= {n.removeprefix("tus-") for n in tus_files(server.data_dir)}
    # One more upload is being written to while the user is removed.
    writing = user.tus_create(100_000).headers["Location"]
    its_file = f"tus-{upload_path(writing).rsplit('/', 1)[1]}"
    sock = open_patch(server, user, writing, 100_000)
    sock.sendall(b"z" * 1000)
    eventually(lambda: its_file in tus_files(server.data_dir), 10, "the PATCH starts writing")
    assert admin.request("DELETE", f"/users/{name}").status == 204
    left = {n.removeprefix("tus-") for n in tus_files(server.data_dir)}
    assert not ids & left, "removing the user left their partial files"  # was: all of them
    sock.close()  # the PATCH is cut: it finds its upload gone and removes its file
    eventually(lambda: its_file not in tus_files(server.data_dir), 10, "the cut PATCH's file goes")


def open_patch(server: Server, user: Api, location: str, length: int) -> socket.socket:
    head = (
        f"PATCH {upload_path(location)} HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n"
        f"Authorization: {basic(user.credentials)['Authorization']}\r\n"
        f"Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Upload-Offset: 0\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((HOST, server.port), timeout=10)
    sock.sendall(head)
    return sock


def test_gc_reports_and_removes_expired_partial_uploads(start_server: StartServer) -> None:
    """With the server gone (its sweeper would get there first): `gc --dry-run` lists an
    expired upload with its bytes (it said 0), `gc` removes it."""
    server = start_server(*FAST_ARGON2, "--upload-expiry", "1s")
    user = Api(server.port, ADMIN_CREDENTIALS)
    location = user.tus_create(100_000).headers["Location"]
    patched = user.tus_patch(location, 0, os.urandom(40_000))
    server.process.kill()  # at once: no sweep can run after this
    server.stop()
    expires = parsedate_to_datetime(patched.headers["Upload-Expires"]).timestamp()
    while time.time() < expires + 1.2:  # past the expiry, whichever way the header rounded
        time.sleep(0.1)
    found = gc(server, "--dry-run")
    assert [(f["kind"], f["size"], f["fixed"]) for f in found] == [("expired", 40_000, False)]
    assert tus_files(server.data_dir)
    assert [(f["kind"], f["fixed"]) for f in gc(server)] == [("expired", True)]
    assert not tus_files(server.data_dir)


def gc(server: Server, *flags: str, env: dict[str, str] | None = None) -> list[dict[str, object]]:
    done = run_filecask(
        ["gc", "--json", "--data-dir", str(server.data_dir), *flags], cwd=server.cwd, env=env
    )
    assert done.returncode == 0, done.stderr
    findings: list[dict[str, object]] = json.loads(done.stdout)["findings"]
    return [f for f in findings if f["kind"] in ("expired", "leftover")]


# ---------------------------------------------------------------- several instances


def test_removing_a_user_at_one_instance_clears_the_others(
    postgres_database: str, start_server: StartServer
) -> None:
    """Two instances (own data directories, one PostgreSQL): uploads left open at b are
    removed when the user is removed at a, within the change feed's bound; and when b was
    down meanwhile, `gc` on b's data directory lists and removes them."""
    env = {"FILECASK_DATABASE_URL": postgres_database, "FILECASK_CHANGE_POLL": "1"}
    a = start_server(*FAST_ARGON2, env=env)
    b = start_server(*FAST_ARGON2, env=env)
    admin_a, admin_b = Api(a.port, ADMIN_CREDENTIALS), Api(b.port, ADMIN_CREDENTIALS)

    def partial_at_b(name: str) -> None:
        user = admin_b.as_user(admin_a.new_user(name, quota=None).credentials)
        eventually(lambda: user.request("GET", "/me").status == 200, 5, "b knows the user")
        for _ in range(2):
            location = user.tus_create(10_000).headers["Location"]
            assert user.tus_patch(location, 0, os.urandom(4000)).status == 204
        assert len(tus_files(b.data_dir)) == 2

    partial_at_b("roamer")
    assert admin_a.request("DELETE", "/users/roamer").status == 204
    eventually(lambda: not tus_files(b.data_dir), 5, "b removes the removed user's files")

    partial_at_b("sleeper")
    b.stop()
    assert admin_a.request("DELETE", "/users/sleeper").status == 204
    dry = gc(b, "--dry-run", env=env)
    assert (
        sorted((f["kind"], f["size"], f["fixed"]) for f in dry) == [("leftover", 4000, False)] * 2
    )
    assert len(tus_files(b.data_dir)) == 2
    assert [f["fixed"] for f in gc(b, env=env)] == [True, True]
    assert not tus_files(b.data_dir)


# ---------------------------------------------------------------- sizes are ASCII (§5)

ARABIC_INDIC_ONE = "\u0661"


def test_a_quota_in_another_scripts_digits_is_refused_everywhere(
    server: Server, admin: Api
) -> None:
    """Issue 14 §5: ARABIC-INDIC DIGIT ONE then M was accepted as a 1 MiB quota (API, CLI)
    and as a size setting."""
    quota = f"{ARABIC_INDIC_ONE}M"
    created = admin.json("POST", "/users", {"name": new_name("digits"), "quota": quota})
    assert created.status == 400, created
    assert created.json()["field"] == "quota"
    name = new_name("digits")
    admin.new_user(name)
    assert admin.json("PATCH", f"/users/{name}", {"quota": quota}).status == 400
    assert admin.json("PATCH", f"/users/{name}", {"quota": "\uff11\uff10M"}).status == 400
    cli = run_filecask(
        ["user", "quota", name, quota, "--data-dir", str(server.data_dir)], cwd=server.cwd
    )
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert "quota" in cli.stderr.lower()
    listed = {u["name"]: u for u in admin.request("GET", "/users").json()["users"]}
    assert listed[name]["quota"] == QUOTA  # unchanged
    serve = run_filecask(
        ["serve", "--port", "0", "--data-dir", str(server.data_dir.parent / "unused")],
        cwd=server.cwd,
        env={"FILECASK_MAX_UPLOAD_SIZE": quota},
        timeout=20,
    )
    assert serve.returncode == 2, serve.stderr
    assert "FILECASK_MAX_UPLOAD_SIZE" in serve.stderr


# ---------------------------------------------------------------- red-team follow-ups

SEED_FILES = 150
"""Files (each in a bundle of its own) the removed user has: enough that removing them
took the old code a second or more, the window the racing uploads fell into."""


def holderless_and_unreferenced(server: Server, env: dict[str, str] | None) -> list[str]:
    done = run_filecask(
        ["gc", "--json", "--dry-run", "--grace", "0", "--data-dir", str(server.data_dir)],
        cwd=server.cwd,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    findings = json.loads(done.stdout)["findings"]
    return [f["kind"] for f in findings if f["kind"] in ("holderless", "unreferenced", "orphan")]


def anonymous_status(server: Server, path: str) -> int:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_user_removed_while_uploading_leaves_no_link_behind(
    request: pytest.FixtureRequest, start_server: StartServer, database: str
) -> None:
    """One thread loops (upload new content, bundle it) while the administrator removes
    the user: before, bundles made meanwhile stayed with no holder, their links answering
    anonymous GETs with the content forever, and the blobs uploaded meanwhile stayed with
    no reference; `gc` never removed the bundles."""
    env = None
    if database == "postgresql":
        env = {"FILECASK_DATABASE_URL": request.getfixturevalue("postgres_database")}
    server = start_server(*FAST_ARGON2, "--max-bundles-per-user", "10000", env=env)
    admin = Api(server.port, ADMIN_CREDENTIALS)
    name = new_name("leaving")
    user = admin.new_user(name, quota=None)

    def seed(first: int) -> None:
        for i in range(first, SEED_FILES, 4):
            hex_hash = user.upload(f"seed {name} {i}".encode()).json()["hash"]
            assert user.bundle(f"s{i}.zip", [("s.txt", hex_hash)]).status == 201

    seeders = [threading.Thread(target=seed, args=(i,)) for i in range(4)]
    for t in seeders:
        t.start()
    for t in seeders:
        t.join()

    made: list[tuple[str, str]] = []  # (hash, bundle id) the server accepted
    stored: list[str] = []
    stop = threading.Event()

    def race() -> None:
        while not stop.is_set():
            uploaded = user.upload(os.urandom(2000))
            if uploaded.status != 201:
                return  # the user is gone (401)
            hex_hash = uploaded.json()["hash"]
            stored.append(hex_hash)
            bundled = user.bundle(f"{hex_hash[:8]}.zip", [("x.bin", hex_hash)])
            if bundled.status == 201:
                made.append((hex_hash, bundled.json()["id"]))

    racer = threading.Thread(target=race)
    racer.start()
    try:
        eventually(lambda: len(made) >= 3, 20, "the racing loop bundles")
        assert admin.request("DELETE", f"/users/{name}").status == 204
        eventually(lambda: not racer.is_alive(), 20, "the racing loop sees the user gone")
    finally:
        stop.set()
        racer.join()
    served = [b for _, b in made if anonymous_status(server, f"/archive/{b}/") != 404]
    assert not served, f"{len(served)} of {len(made)} links of a removed user still answer"
    kept = [h for h in stored if (server.data_dir / "store" / fanout(h)).exists()]
    assert not kept, f"{len(kept)} of {len(stored)} blobs of a removed user stay on disk"
    assert holderless_and_unreferenced(server, env) == []


def test_a_patch_running_when_its_upload_expires_cannot_revive_it(
    start_server: StartServer,
) -> None:
    """A PATCH that kept sending past its upload's expiry ended 204 and revived it: with a
    second upload accepted meanwhile (the first no longer reserved), the user reserved
    2 MiB for a 1 MiB quota. Timing is the server's: the PATCH trickles until the server
    itself answers that the upload expired."""
    server = start_server(*FAST_ARGON2, "--upload-expiry", "2s")
    admin = Api(server.port, ADMIN_CREDENTIALS)
    user = admin.new_user(new_name("trickler"))
    first = user.tus_create(QUOTA).headers["Location"]
    first_file = f"tus-{upload_path(first).rsplit('/', 1)[1]}"
    body = QUOTA - 1  # the last byte never comes: the upload stays open
    sock = open_patch(server, user, first, body)
    sent = 0
    deadline = time.monotonic() + 30
    while user.request("HEAD", upload_path(first), headers=TUS).status != 410:
        assert time.monotonic() < deadline, "the upload never expired"
        sock.sendall(b"t" * 1000)
        sent += 1000
        time.sleep(0.1)
    second = user.tus_create(QUOTA)
    assert second.status == 201, second  # the expired upload reserves nothing any more
    sock.sendall(b"t" * (body - sent))
    answer = sock.recv(65536).decode("latin-1")
    sock.close()
    status = int(answer.split(" ", 2)[1])
    assert status == 410, answer  # was 204, with Upload-Expires moved forward
    assert user.me()["reserved"] == QUOTA  # was 2 MiB
    assert user.request("HEAD", upload_path(first), headers=TUS).status == 404
    eventually(lambda: first_file not in tus_files(server.data_dir), 10, "its bytes go")
