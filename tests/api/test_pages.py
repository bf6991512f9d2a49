"""The web page at / and Swagger UI at /docs, in process: what is served, with which
headers (CSP, nosniff, caching), 304s, gzip, the closed list of assets (no traversal), and
conformance to the OpenAPI document. The browser tests are in tests/e2e/test_web_e2e.py."""

from __future__ import annotations

import gzip
import re
from html.parser import HTMLParser
from typing import Any

import pytest

from filecask.api.openapi import openapi_document
from filecask.api.pages import DOCS_ASSETS, PAGE_ASSETS
from filecask.app import create_app
from tests.api.test_openapi import Contract
from tests.conftest import AppClient, MakeSettings

PAGES = {"/": "/", "/docs": "/docs"}
ASSET_ROUTES = {"/web/": PAGE_ASSETS, "/docs/": DOCS_ASSETS}


class Refs(HTMLParser):
    """The scripts, style sheets, icons and images a page loads, and any inline code."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.inline += [name for name, _ in attrs if name.startswith("on")]
        if tag == "script":
            assert named.get("src"), "a script without src is inline"
            self.urls.append(str(named["src"]))
            self._in_script = True
        elif tag == "link" and named.get("href"):
            self.urls.append(str(named["href"]))
        elif tag == "img" and named.get("src"):
            self.urls.append(str(named["src"]))
        elif tag == "style":
            self.inline.append("<style>")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(data)


@pytest.mark.parametrize("path", ["/", "/docs"])
async def test_pages_are_strict_html_with_every_asset_served(client: AppClient, path: str) -> None:
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-cache"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert "default-src 'none'" in csp
    refs = Refs()
    refs.feed(await response.text())
    assert refs.inline == [], "inline script or handlers would break the CSP"
    assert refs.urls
    for url in refs.urls:
        assert url.startswith("/"), f"{url} is not served by filecask"
        asset = await client.get(url)
        assert asset.status == 200, url
        assert asset.headers["X-Content-Type-Options"] == "nosniff"


async def test_assets_have_their_content_types_and_caching(client: AppClient) -> None:
    for prefix, table in ASSET_ROUTES.items():
        for name, source in table.items():
            response = await client.get(prefix + name)
            assert response.status == 200, name
            assert response.content_type == source.content_type
            assert response.headers["Cache-Control"] == source.cache_control
            assert re.fullmatch(r'"[0-9a-f]{32}(-gzip)?"', response.headers["ETag"])
            assert await response.read()
    vendor = await client.get("/docs/swagger-ui-bundle.js")
    assert vendor.headers["Cache-Control"] == "public, max-age=86400"


async def test_etag_answers_304(client: AppClient) -> None:
    first = await client.get("/web/app.js")
    etag = first.headers["ETag"]
    again = await client.get("/web/app.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    assert again.headers["ETag"] == etag
    other = await client.get("/web/app.js", headers={"If-None-Match": '"0000"'})
    assert other.status == 200


async def test_text_is_gzipped_when_the_client_accepts_it(client: AppClient) -> None:
    plain = await client.get("/docs/swagger-ui-bundle.js", headers={"Accept-Encoding": "br"})
    assert "Content-Encoding" not in plain.headers
    body = await plain.read()
    assert plain.headers["Vary"] == "Accept-Encoding"
    packed = await client.get(
        "/docs/swagger-ui-bundle.js",
        headers={"Accept-Encoding": "gzip, deflate"},
        auto_decompress=False,
    )
    assert packed.headers["Content-Encoding"] == "gzip"
    assert packed.headers["ETag"] != plain.headers["ETag"]
    raw = await packed.read()
    assert len(raw) < len(body) // 2
    assert gzip.decompress(raw) == body
    refused = await client.get(
        "/docs/swagger-ui-bundle.js", headers={"Accept-Encoding": "gzip;q=0"}
    )
    assert "Content-Encoding" not in refused.headers


@pytest.mark.parametrize(
    "path",
    [
        "/web/nope.js",
        "/web/index.html",
        "/web/..%2F..%2Fapp.py",
        "/docs/index.html",
        "/docs/swagger-ui-bundle.js.map",
        "/docs/..%2F__init__.py",
        "/docs/oauth2-redirect.html",
        "/web/../handlers/pages.py",
    ],
)
async def test_only_listed_assets_are_served(client: AppClient, path: str) -> None:
    response = await client.get(path)
    assert response.status == 404, path


async def test_archives_only_server_has_docs_but_no_page(
    aiohttp_client: Any, make_settings: MakeSettings
) -> None:
    client = await aiohttp_client(create_app(make_settings(file_api=False)))
    assert (await client.get("/docs")).status == 200
    assert (await client.get("/docs/docs.js")).status == 200
    assert (await client.get("/")).status == 404
    assert (await client.get("/web/app.js")).status == 404


async def test_docs_script_points_swagger_ui_at_this_server(client: AppClient) -> None:
    script = await (await client.get("/docs/docs.js")).text()
    assert 'url: "/openapi.json"' in script
    assert "validatorUrl: null" in script, "the public validator would be a foreign request"


def test_document_lists_exactly_the_assets() -> None:
    paths = openapi_document()["paths"]
    for prefix, table in ASSET_ROUTES.items():
        (parameter,) = [
            p for p in paths[prefix + "{asset}"]["get"]["parameters"] if p.get("name") == "asset"
        ]
        assert parameter["schema"]["enum"] == sorted(table)


async def test_responses_conform_to_the_document(client: AppClient) -> None:
    contract = Contract(openapi_document())
    for path in PAGES:
        await contract.check(await client.get(path), path)
        await contract.check(await client.head(path), path)
        etag = (await client.get(path)).headers["ETag"]
        await contract.check(await client.get(path, headers={"If-None-Match": etag}), path)
    for prefix, table in ASSET_ROUTES.items():
        for name in table:
            await contract.check(await client.get(prefix + name), prefix + "{asset}")
        await contract.check(await client.get(prefix + "missing"), prefix + "{asset}")
    statuses = {status for _, _, status in contract.checked}
    assert statuses == {200, 304, 404}


def test_every_shipped_file_is_served() -> None:
    """A file added to filecask/web/ but not to a table would never reach a browser."""
    from importlib.resources import files

    from filecask.api.pages import DOCS_INDEX, INDEX

    shipped = {entry.name for entry in files("filecask").joinpath("web").iterdir()}
    own = {INDEX, DOCS_INDEX, *PAGE_ASSETS.values(), *DOCS_ASSETS.values()}
    assert shipped == {source.file for source in own if source.root == "own"}
