"""The web page and Swagger UI in a real browser (Debian's Chromium driven by Playwright)
against a real `filecask serve`: what a person does, click by click.

Playwright's own browser builds are never downloaded: the tests launch /usr/bin/chromium
(`.ci/run` installs Debian's `chromium`) and are skipped, with the reason, without it.
Screenshots (desktop and phone) go to `test-artifacts/web/` at the repository root
(git-ignored, never committed); their paths are printed.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Page,
    Request,
    Route,
    expect,
    sync_playwright,
)

from tests.e2e.conftest import ADMIN_PASSWORD, HOST, Server, ServerLauncher

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
USER, PASSWORD = "walter", "walter's password"
QUOTA = 10 << 20
CHEAP_ARGON2 = ("--argon2-time-cost", "1", "--argon2-memory", "64K", "--argon2-parallelism", "1")
TIMEOUT_MS = 15_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is missing (Debian package `chromium`; .ci/run installs it)",
)


def _api(server: Server, method: str, path: str, body: object = None) -> tuple[int, bytes]:
    token = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def web_server(module_launcher: ServerLauncher) -> Server:
    server = module_launcher(*CHEAP_ARGON2)
    status, text = _api(
        server, "POST", "/users", {"name": USER, "password": PASSWORD, "quota": QUOTA}
    )
    assert status == 201, text
    return server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            launched.close()


class Watched:
    """Every URL a page requested, and the console's errors (CSP violations show there)."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        self.errors: list[str] = []
        page.on("request", self._request)
        page.on("console", self._console)

    def _request(self, request: Request) -> None:
        self.urls.append(request.url)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def assert_same_origin(self, server: Server) -> None:
        origin = urlsplit(server.base_url)
        foreign = [
            url
            for url in self.urls
            if not url.startswith(("data:", "blob:"))
            and urlsplit(url)[:2] != (origin.scheme, origin.netloc)
        ]
        assert self.urls
        assert foreign == [], f"requests to other hosts: {foreign}"
        csp = [error for error in self.errors if "Content Security Policy" in error]
        assert csp == [], csp


def _screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}-{os.getpid()}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def _sign_in(page: Page, server: Server) -> None:
    page.goto(server.url("/"))
    form = page.locator("#sign-in")
    expect(form).to_be_visible()
    form.locator("input[name=user]").fill(USER)
    form.locator("input[name=password]").fill(PASSWORD)
    form.locator("button[type=submit]").click()
    expect(page.locator("#app-view")).to_be_visible()
    expect(page.locator("#user-name")).to_have_text(USER)


def _assert_no_horizontal_overflow(page: Page) -> None:
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]"
    )
    assert max(widths[:2]) <= widths[2], f"scroll width {widths[:2]} > viewport {widths[2]}"


def test_sign_in_upload_list_download_bundle_delete(
    web_server: Server, browser: Browser, tmp_path: Path
) -> None:
    server = web_server
    first = tmp_path / "first report.bin"
    first.write_bytes(os.urandom(200_000))
    second = tmp_path / "zweite Datei ✓.txt"
    second.write_bytes(b"the second file\n" * 1000)
    dropped = b"dropped onto the page\n"

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    watched = Watched(page)

    # A wrong password is refused on the page itself (no browser prompt).
    page.goto(server.url("/"))
    page.fill("#sign-in input[name=user]", USER)
    page.fill("#sign-in input[name=password]", "not the password")
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#sign-in-error")).to_have_text("Wrong user name or password.")

    _sign_in(page, server)
    expect(page.locator("#no-files")).to_be_visible()
    expect(page.locator("#usage-text")).to_contain_text("0 files")

    # Two files through the file input, each with its progress bar, then one dropped.
    page.set_input_files("#file-input", [str(first), str(second)])
    expect(page.locator("#uploads li.done")).to_have_count(2)
    page.evaluate(
        """(text) => {
            const data = new DataTransfer();
            data.items.add(new File([text], "dropped.txt", { type: "text/plain" }));
            const zone = document.querySelector("#drop-zone");
            zone.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true,
                                                       cancelable: true }));
        }""",
        dropped.decode(),
    )
    expect(page.locator("#uploads li.done")).to_have_count(3)

    rows = page.locator("#file-list li")
    expect(rows).to_have_count(3)
    for name in (first.name, second.name, "dropped.txt"):
        expect(rows.filter(has_text=name)).to_have_count(1)
    total = first.stat().st_size + second.stat().st_size + len(dropped)
    usage = page.locator("#usage-text")
    expect(usage).to_contain_text("3 files")
    expect(usage).to_contain_text("of your 10 MiB quota")
    expect(page.locator("#usage-bar")).to_have_attribute("value", str(total))

    # Each link downloads exactly the bytes uploaded, under the file's name.
    for path in (first, second):
        href = rows.filter(has_text=path.name).locator("a.name").get_attribute("href")
        assert href is not None
        response = page.request.get(href)
        assert response.status == 200
        assert response.body() == path.read_bytes()
    with page.expect_popup() as popup:
        rows.filter(has_text="dropped.txt").locator("a.name").click()
    opened = popup.value
    opened.wait_for_load_state()
    assert opened.locator("body").inner_text().strip() == dropped.decode().strip()
    opened.close()

    # A ZIP link of the two: both members byte-exact.
    for path in (first, second):
        page.get_by_label(f"Select {path.name}").check()
    expect(page.locator("#selected-count")).to_have_text("2")
    page.fill("#bundle-name", "both.zip")
    page.click("#make-bundle")
    link = page.locator("#bundle-link")
    expect(link).to_be_visible()
    bundle_url = link.get_attribute("href")
    assert bundle_url is not None
    assert "/archive/" in bundle_url
    archive = page.request.get(bundle_url)
    assert archive.status == 200
    with zipfile.ZipFile(io.BytesIO(archive.body())) as bundle:
        assert sorted(bundle.namelist()) == sorted([first.name, second.name])
        for path in (first, second):
            assert bundle.read(path.name) == path.read_bytes()
    _screenshot(page, "desktop")

    # The ZIP link is listed, and counts: the usage says so.
    bundles = page.locator("#bundle-list li")
    expect(bundles).to_have_count(1)
    expect(bundles.first).to_contain_text("both.zip")
    expect(usage).to_contain_text("1 ZIP link")

    # Delete one, accepting the confirmation; it is gone, also after a reload. The ZIP link
    # still holds it, and the confirmation and the answer say so (issue 14: it claimed
    # links stop working, while the bundle kept the content stored and downloadable).
    asked: list[str] = []

    def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    rows.filter(has_text=second.name).get_by_role("button", name="Delete").click()
    expect(rows.filter(has_text=second.name)).to_have_count(0)
    assert 'Your ZIP link "both.zip" still includes it' in asked[0], asked
    expect(page.locator("#toast")).to_contain_text('while your ZIP link "both.zip" holds it')
    expect(usage).to_contain_text("2 files")
    expect(page.locator("#usage-bar")).to_have_attribute("value", str(total))  # still kept
    page.reload()
    expect(page.locator("#app-view")).to_be_visible()
    expect(page.locator("#file-list li")).to_have_count(2)
    expect(page.locator("#file-list li").filter(has_text=second.name)).to_have_count(0)

    # Declining the confirmation deletes nothing; for a file no ZIP link holds, it says the
    # link stops working.
    def dismiss(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    rows.filter(has_text="dropped.txt").get_by_role("button", name="Delete").click()
    for _ in range(200):
        if len(asked) == 2:
            break
        page.wait_for_timeout(25)
    assert asked[1].endswith("Its link stops working, unless someone else stored the same content.")
    expect(page.locator("#file-list li")).to_have_count(2)

    # Deleting the ZIP link lets go of what only it kept: the usage drops to the two files.
    page.once("dialog", accept)
    bundles.first.get_by_role("button", name="Delete").click()
    expect(bundles).to_have_count(0)
    expect(page.locator("#no-bundles")).to_be_visible()
    left = first.stat().st_size + len(dropped)
    expect(page.locator("#usage-bar")).to_have_attribute("value", str(left))

    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    watched.assert_same_origin(server)
    context.close()


def test_phone_sized_screen_has_no_horizontal_overflow(
    web_server: Server, browser: Browser, tmp_path: Path
) -> None:
    server = web_server
    context = browser.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    watched = Watched(page)
    page.goto(server.url("/"))
    expect(page.locator("#sign-in")).to_be_visible()
    _assert_no_horizontal_overflow(page)
    _sign_in(page, server)
    long_name = tmp_path / ("a rather long file name that must wrap on a phone " * 3 + ".txt")
    long_name.write_bytes(b"phone\n")
    page.set_input_files("#file-input", [str(long_name)])
    expect(page.locator("#file-list li").filter(has_text="must wrap")).to_have_count(1)
    expect(page.locator("#uploads li.done")).to_have_count(1)
    _assert_no_horizontal_overflow(page)
    _screenshot(page, "phone")
    watched.assert_same_origin(server)
    context.close()


def test_docs_show_every_operation_with_no_foreign_request(
    web_server: Server, browser: Browser
) -> None:
    server = web_server
    status, body = _api(server, "GET", "/openapi.json")
    assert status == 200
    document = json.loads(body)
    operations = sum(
        method in item
        for item in document["paths"].values()
        for method in ("get", "head", "post", "put", "patch", "delete", "options")
    )
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    watched = Watched(page)
    page.goto(server.url("/docs"))
    expect(page.locator(".opblock")).to_have_count(operations)
    expect(page.locator(".opblock-summary-path", has_text="/files/{hash}").first).to_be_visible()
    # Basic auth from the Authorize button: the dialog offers a user name and password.
    page.get_by_role("button", name="Authorize").first.click()
    dialog = page.locator(".dialog-ux")
    expect(dialog).to_contain_text("basicAuth")
    # The dialog also offers the /metrics bearer token: fill in the Basic form only.
    basic = dialog.locator("form").filter(has_text="basicAuth")
    basic.locator("input[type=text]").first.fill(USER)
    basic.locator("input[type=password]").fill(PASSWORD)
    basic.locator("button.authorize").click()
    expect(basic).to_contain_text("Authorized")
    basic.locator("button.btn-done").click()
    # ...and "Try it out" then signs in: GET /me answers the user, 200.
    me = page.locator("#operations-users-me")
    me.locator(".opblock-summary").click()
    me.get_by_role("button", name="Try it out").click()
    me.get_by_role("button", name="Execute").click()
    expect(me.locator(".live-responses-table td.response-col_status").nth(1)).to_have_text("200")
    expect(me.locator(".live-responses-table")).to_contain_text(f'"name": "{USER}"')
    _screenshot(page, "docs")
    assert watched.errors == [], "Swagger UI logged errors"
    watched.assert_same_origin(server)
    context.close()


def test_a_large_file_goes_through_tus_and_survives_a_cut_chunk(
    web_server: Server, browser: Browser, tmp_path: Path
) -> None:
    """Past the size threshold the page uploads through /uploads/ (tus) in chunks; when
    one chunk's connection fails it asks the server where it stands (HEAD) and goes on.
    The threshold and chunk are lowered for the test through the page's sessionStorage
    knobs (32 MiB and 8 MiB by default)."""
    server = web_server
    name, password = "tessa", "tessa's password"
    status, text = _api(server, "POST", "/users", {"name": name, "password": password})
    assert status == 201, text
    big = tmp_path / "large video.bin"
    big.write_bytes(os.urandom(3 << 20))

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    methods: list[str] = []
    page.on("request", lambda r: methods.append(r.method) if "/uploads/" in r.url else None)
    cut: list[str] = []

    def cut_the_third_chunk(route: Route) -> None:
        if route.request.method == "PATCH" and methods.count("PATCH") == 3 and not cut:
            cut.append(route.request.url)
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/uploads/**", cut_the_third_chunk)
    page.goto(server.url("/"))
    page.evaluate(
        """() => { sessionStorage.setItem("filecask.tusThreshold", String(1 << 20));
                   sessionStorage.setItem("filecask.tusChunk", String(512 << 10)); }"""
    )
    page.fill("#sign-in input[name=user]", name)
    page.fill("#sign-in input[name=password]", password)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#app-view")).to_be_visible()

    page.set_input_files("#file-input", [str(big)])
    expect(page.locator("#uploads li.done")).to_have_count(1)
    assert cut, "no chunk was cut: the test did not exercise resumption"
    assert methods[0] == "POST"
    assert "HEAD" in methods  # asked where the upload stood after the cut
    assert methods.count("PATCH") >= 7  # 6 chunks of 512 KiB, one of them sent twice
    row = page.locator("#file-list li").filter(has_text=big.name)
    expect(row).to_have_count(1)
    href = row.locator("a.name").get_attribute("href")
    assert href is not None
    response = page.request.get(href)
    assert response.body() == big.read_bytes()
    context.close()
