"""The OpenAPI document stays true: it names exactly the routes the app serves, it is valid
OpenAPI 3.1, and real responses of the in-process app conform to it (status, media type,
body schema, required headers). A handler change that the document misses fails here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, FormData
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from openapi_spec_validator import validate as validate_spec
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from referencing.exceptions import Unresolvable

from filecask.api.openapi import openapi_document
from filecask.app import create_app
from filecask.settings import Settings
from tests.conftest import ADMIN, AppClient, MakeSettings, MakeUser

Json = dict[str, Any]
METHODS = ("get", "head", "post", "put", "patch", "delete", "options")


def router_operations(settings: Settings) -> set[tuple[str, str]]:
    return {
        (route.method.lower(), route.resource.canonical)
        for route in create_app(settings).router.routes()
        if route.resource is not None
    }


def document_operations(document: Json) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in document["paths"].items()
        for method in METHODS
        if method in item
    }


@pytest.mark.parametrize("file_api", [True, False], ids=["file-api", "archives-only"])
def test_every_route_is_documented_and_every_operation_is_routed(
    make_settings: MakeSettings, file_api: bool
) -> None:
    routed = router_operations(make_settings(file_api=file_api))
    documented = document_operations(openapi_document(file_api=file_api))
    assert routed - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routed == set(), "documented operations the app does not serve"


@pytest.mark.parametrize("file_api", [True, False], ids=["file-api", "archives-only"])
def test_document_is_valid_openapi_3_1(file_api: bool) -> None:
    document = openapi_document(file_api=file_api)
    assert document["openapi"].startswith("3.1.")
    validate_spec(document)


def test_spec_validation_can_fail() -> None:
    """The validator really looks: a dangling $ref and a wrong type are refused."""
    document = openapi_document()
    document["paths"]["/me"]["get"]["responses"]["200"] = _ref_to("schemas/Nope")
    with pytest.raises((OpenAPIValidationError, Unresolvable)):
        validate_spec(document)
    document = openapi_document()
    document["paths"]["/me"]["get"]["responses"] = "none"
    with pytest.raises(OpenAPIValidationError):
        validate_spec(document)


def test_operation_ids_are_unique() -> None:
    document = openapi_document()
    ids = [
        item[method]["operationId"]
        for item in document["paths"].values()
        for method in METHODS
        if method in item
    ]
    assert len(ids) == len(set(ids))


async def test_served_document_is_the_function_s(client: AppClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == openapi_document()


async def test_archives_only_server_serves_its_own_document(
    aiohttp_client: Any, make_settings: MakeSettings
) -> None:
    client = await aiohttp_client(create_app(make_settings(file_api=False)))
    served = await (await client.get("/openapi.json")).json()
    assert served == openapi_document(file_api=False)
    assert "/files" not in served["paths"]


# --------------------------------------------------------------------------- conformance


def _ref_to(pointer: str) -> Json:
    return {"$ref": f"#/components/{pointer}"}


class Contract:
    """Checks one response against the document: documented status, documented media
    type, body valid against that media type's schema, documented required headers
    present and matching their schemas."""

    def __init__(self, document: Json) -> None:
        self.document = document
        self.checked: set[tuple[str, str, int]] = set()

    def _resolve(self, node: Json) -> Json:
        while "$ref" in node:
            target: Any = self.document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def validate(self, schema: Json, instance: Any) -> None:
        # The document is the root resource, so its `#/components/...` refs resolve.
        root = {**self.document, **schema}
        Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(
            instance
        )

    async def check(self, response: ClientResponse, path: str) -> bytes:
        method = response.method.lower()
        operation = self.document["paths"][path][method]
        status = str(response.status)
        assert status in operation["responses"], (
            f"{method.upper()} {path} answered {status}, documented: "
            f"{sorted(operation['responses'])}"
        )
        documented = self._resolve(operation["responses"][status])
        body = await response.read()
        for name, header in documented.get("headers", {}).items():
            header = self._resolve(header)
            value = response.headers.get(name)
            if value is None:
                assert not header.get("required"), f"{status} lacks required header {name}"
                continue
            self.validate(header["schema"], value)
        content = documented.get("content")
        if not content or method == "head" or response.status == 304:
            assert method == "head" or not body or not content, f"undocumented body: {body!r}"
            self.checked.add((method, path, response.status))
            return body
        media = response.headers.get("Content-Type", "").split(";")[0].strip()
        matching = [m for m in content if _media_matches(m, media)]
        assert matching, f"{method.upper()} {path} {status}: {media} not in {list(content)}"
        if media.endswith("json"):
            self.validate(content[matching[0]]["schema"], json.loads(body))
        self.checked.add((method, path, response.status))
        return body


def _media_matches(documented: str, actual: str) -> bool:
    main, _, sub = documented.partition("/")
    got_main, _, got_sub = actual.partition("/")
    return main in ("*", got_main) and sub in ("*", got_sub)


def test_contract_check_can_fail() -> None:
    """The schema validation behind the conformance tests rejects a wrong body."""
    contract = Contract(openapi_document())
    me = _ref_to("schemas/Me")
    good = {
        "name": "a",
        "is_admin": False,
        "files": 0,
        "bytes": 0,
        "bundles": 0,
        "reserved": 0,
        "quota": None,
    }
    contract.validate(me, good)
    contract.validate(me, {**good, "quota": 1 << 30})
    for bad in ({**good, "is_admin": "no"}, {**good, "quota": -1}, {**good, "extra": 1}):
        with pytest.raises(ValidationError):
            contract.validate(me, bad)
    with pytest.raises(ValidationError):
        contract.validate(_ref_to("schemas/Hash"), "AB" * 32)


async def test_real_responses_conform(
    client: AppClient, make_user: MakeUser, settings: Settings
) -> None:
    contract = Contract(openapi_document())
    bob = await make_user("bob")
    content = b"hello, openapi\n" * 100
    digest = hashlib.sha256(content).hexdigest()
    check = contract.check

    # Operations.
    await check(await client.get("/healthz"), "/healthz")
    await check(await client.get("/readyz"), "/readyz")
    await check(await client.head("/healthz"), "/healthz")
    await check(await client.get("/openapi.json"), "/openapi.json")
    await check(await client.get("/metrics"), "/metrics")  # 401: not public
    await check(await client.get("/metrics", headers=ADMIN), "/metrics")

    # Uploads: raw (201), again (200), multipart, with the hash, a mismatch, no auth.
    await check(await client.post("/files?name=a.txt", data=content, headers=bob), "/files")
    await check(await client.put("/files?name=b.txt", data=content, headers=bob), "/files")
    form = FormData()
    form.add_field("file", b"multipart body", filename="m.bin")
    await check(await client.post("/files", data=form, headers=bob), "/files")
    await check(await client.put(f"/files/{digest}", data=content, headers=bob), "/files/{hash}")
    await check(await client.put(f"/files/{'0' * 64}", data=b"x", headers=bob), "/files/{hash}")
    await check(await client.post("/files", data=b"x"), "/files")
    await check(await client.post("/files?name=a%2Fb", data=b"x", headers=bob), "/files")

    # Downloads: whole, HEAD, one range, several, 304, 416, 404, bad hash, bad name.
    path = f"/files/{digest}"
    await check(await client.get(path), "/files/{hash}")
    await check(await client.get(path + "?name=n%C3%A4me.txt"), "/files/{hash}")
    await check(await client.head(path), "/files/{hash}")
    await check(await client.get(path, headers={"Range": "bytes=0-9"}), "/files/{hash}")
    multi = await client.get(path, headers={"Range": "bytes=0-1,10-20"})
    assert multi.content_type == "multipart/byteranges"
    await check(multi, "/files/{hash}")
    await check(await client.get(path, headers={"If-None-Match": f'"{digest}"'}), "/files/{hash}")
    await check(await client.get(path, headers={"Range": "bytes=99999-"}), "/files/{hash}")
    await check(await client.get(f"/files/{'1' * 64}"), "/files/{hash}")
    await check(await client.get("/files/nothex"), "/files/{hash}")
    await check(await client.get(path + "?name=%00"), "/files/{hash}")

    # Listing, paging, bad parameters.
    await check(await client.get("/files?limit=1", headers=bob), "/files")
    await check(await client.get("/files?limit=0", headers=bob), "/files")
    await check(await client.head("/files", headers=bob), "/files")

    # Users.
    await check(await client.get("/me", headers=bob), "/me")
    await check(await client.get("/me", headers={"Authorization": "Basic !!"}), "/me")
    await check(await client.get("/users", headers=ADMIN), "/users")
    await check(await client.get("/users", headers=bob), "/users")
    await check(await client.post("/users", json={"name": "carol"}, headers=ADMIN), "/users")
    await check(await client.post("/users", json={"name": "carol"}, headers=ADMIN), "/users")
    await check(await client.post("/users", json={"name": ""}, headers=ADMIN), "/users")
    await check(await client.post("/users", data=b"[", headers=ADMIN), "/users")
    quota = {"name": "dave", "quota": "10M"}
    await check(await client.post("/users", json=quota, headers=ADMIN), "/users")
    patched = await client.patch("/users/bob", json={"quota": 1 << 20}, headers=ADMIN)
    assert json.loads(await check(patched, "/users/{name}"))["quota"] == 1 << 20
    await check(
        await client.patch("/users/bob", json={"quota": None}, headers=ADMIN), "/users/{name}"
    )
    await check(
        await client.patch("/users/bob", json={"admin": True}, headers=ADMIN), "/users/{name}"
    )
    await check(
        await client.patch("/users/nobody", json={"quota": 1}, headers=ADMIN), "/users/{name}"
    )
    await check(await client.patch("/users/bob", json={"quota": 1}, headers=bob), "/users/{name}")
    await check(await client.delete("/users/nobody", headers=ADMIN), "/users/{name}")
    await check(await client.delete("/users/admin", headers=ADMIN), "/users/{name}")
    await check(await client.delete("/users/carol", headers=ADMIN), "/users/{name}")

    # Bundles and archives.
    manifest = {"name": "b.zip", "files": [{"hash": digest, "path": "d/a.txt"}]}
    created = await client.post("/archives", json=manifest, headers=bob)
    bundle_id = json.loads(await check(created, "/archives"))["id"]
    await check(await client.post("/archives", json=manifest, headers=bob), "/archives")
    await check(await client.post("/archives", json={"files": []}, headers=bob), "/archives")
    await check(await client.get("/archives", headers=bob), "/archives")
    await check(await client.get(f"/archives?hash={digest}", headers=bob), "/archives")
    await check(await client.get("/archives?hash=zz", headers=bob), "/archives")
    unheld = {"name": "u.zip", "files": [{"hash": "2" * 64, "path": "u"}]}
    await check(await client.post("/archives", json=unheld, headers=bob), "/archives")
    await check(await client.get(f"/archive/{bundle_id}/"), "/archive/{id}/")
    await check(await client.head(f"/archive/{bundle_id}"), "/archive/{id}")
    ranged = await client.get(f"/archive/{bundle_id}/", headers={"Range": "bytes=0-3"})
    assert await check(ranged, "/archive/{id}/") == b"PK\x03\x04"
    folder = Path(settings.archives_dir) / "f0lder"
    folder.mkdir(parents=True)
    (folder / "x.txt").write_bytes(b"x")
    await check(await client.get("/archive/f0lder/"), "/archive/{id}/")
    await check(await client.get("/archive/missing/"), "/archive/{id}/")
    await check(await client.get("/archive/.hidden/"), "/archive/{id}/")
    html = await client.get("/archive/missing/", headers={"Accept": "text/html"})
    assert html.content_type == "text/html"
    await check(html, "/archive/{id}/")
    # bob's bundle keeps the content he deletes: 200 with the bundle, then his plain 204.
    kept = await client.delete(path, headers=bob)
    assert kept.status == 200
    await check(kept, "/files/{hash}")
    await client.put(f"/files/{digest}", data=content, headers=bob)
    await check(await client.delete(f"/archives/{bundle_id}", headers=ADMIN), "/archives/{id}")
    await check(await client.delete(f"/archives/{bundle_id}", headers=bob), "/archives/{id}")
    await check(await client.delete("/archives/zz", headers=bob), "/archives/{id}")
    await check(await client.delete(path, headers=ADMIN), "/files/{hash}")
    await check(await client.delete(path, headers=bob), "/files/{hash}")

    statuses = {status for _, _, status in contract.checked}
    assert {200, 201, 204, 206, 304, 400, 401, 403, 404, 409, 416} <= statuses
