"""schemathesis fuzzes a real `filecask serve` from the document it serves at /openapi.json.

Each documented operation is one test: schemathesis generates valid requests (positive
mode) and requests that break the schema (negative mode) from the document, sends them with
the Basic credentials of a real user (an administrator's for the admin routes), and checks
that nothing answers 5xx and that every status, media type, body and documented header is
what the document says. The run is bounded and reproducible: few examples per operation,
no deadline (the machine is shared), derandomized generation and no example database.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from filecask.api.openapi import openapi_document
from tests.e2e.conftest import ADMIN_PASSWORD, HOST, Server, ServerLauncher

# tus PATCH bodies are raw bytes under their own media type (tus 1.0 §PATCH).
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")

MAX_EXAMPLES = 25
"""Per operation and generation mode: ~47 runs x 25 examples takes about 20 s."""
CHEAP_ARGON2 = ("--argon2-time-cost", "1", "--argon2-memory", "64K", "--argon2-parallelism", "1")
"""POST /users hashes a password per example; the default cost would dominate the run."""
USER = ("fuzzer", "fuzzer-password")
ADMIN = ("fuzzadmin", "fuzzadmin-password")
ADMIN_ONLY = {("GET", "/users"), ("HEAD", "/users"), ("POST", "/users")}
ADMIN_ONLY_PATHS = {"/users/{name}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def _cases() -> list[Any]:
    """Every operation in positive mode; in negative mode too where it has something to
    break (parameters or a body): an operation with no inputs has no invalid request."""
    document = openapi_document()
    cases = []
    for path, item in document["paths"].items():
        for method in ("get", "head", "post", "put", "patch", "delete"):
            if method not in item:
                continue
            operation = item[method]
            modes = [GenerationMode.POSITIVE]
            parameters = [*item.get("parameters", []), *operation.get("parameters", [])]
            constrained = any(_constrains(document, p) for p in parameters)
            if constrained or "requestBody" in operation:
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                key = (method.upper(), path, mode.value)
                cases.append(pytest.param(*key, id=" ".join(key)))
    return cases


def _constrains(document: dict[str, Any], parameter: dict[str, Any]) -> bool:
    """A parameter some sendable value can break: not a free-form string (a folder name in
    /archive/{id}, a Range header, which the server judges itself). An empty path segment
    cannot be sent, so `minLength` does not count there."""
    if "$ref" in parameter:
        parameter = document["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
    schema = parameter.get("schema", {})
    unbreakable = {"type", "description", "examples", "example"}
    if parameter.get("in") == "path":
        unbreakable.add("minLength")
    return bool(set(schema) - unbreakable) or schema.get("type") not in (None, "string")


def _authorization(credentials: tuple[str, str]) -> dict[str, str]:
    token = base64.b64encode(":".join(credentials).encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _request(
    server: Server,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def fuzzed(module_launcher: ServerLauncher, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """A server with a user, a second administrator, a stored file, a bundle and a folder,
    so generated requests can meet real data as well as missing ids."""
    root: Path = tmp_path_factory.mktemp("fuzz-archives")
    (root / "photos").mkdir()
    (root / "photos" / "1.jpg").write_bytes(b"\xff\xd8\xff" + b"x" * 1000)
    server = module_launcher("--archive-root", str(root), *CHEAP_ARGON2)
    admin = _authorization(("admin", ADMIN_PASSWORD))
    for (name, password), is_admin in ((USER, False), (ADMIN, True)):
        body = json.dumps({"name": name, "password": password, "is_admin": is_admin})
        status, text = _request(
            server, "POST", "/users", body.encode(), {**admin, "Content-Type": "application/json"}
        )
        assert status == 201, text
    content = b"fuzz me\n" * 64
    status, text = _request(server, "POST", "/files?name=f.txt", content, _authorization(USER))
    assert status == 201, text
    digest = hashlib.sha256(content).hexdigest()
    manifest = json.dumps({"name": "b.zip", "files": [{"hash": digest, "path": "a/f.txt"}]})
    status, text = _request(
        server,
        "POST",
        "/archives",
        manifest.encode(),
        {**_authorization(USER), "Content-Type": "application/json"},
    )
    assert status == 201, text
    return server


@pytest.fixture(scope="module")
def schema(fuzzed: Server) -> schemathesis.BaseSchema:
    """Loaded from the running server, so the document under test is the one it serves."""
    loaded = schemathesis.openapi.from_url(fuzzed.url("/openapi.json"))
    assert loaded.raw_schema == openapi_document()
    return loaded


def _credentials(method: str, path: str) -> tuple[str, str]:
    if (method, path) in ADMIN_ONLY or path in ADMIN_ONLY_PATHS:
        return ADMIN
    return USER


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path", "mode"), _cases())
def test_operation_conforms(
    fuzzed: Server, schema: schemathesis.BaseSchema, method: str, path: str, mode: str
) -> None:
    api_operation = schema[path][method]
    headers = _authorization(_credentials(method, path))

    strategy = api_operation.as_strategy(generation_mode=GenerationMode(mode))

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis.given(case=strategy)
    def fuzz(case: Case[Any]) -> None:
        # Reproducibility: a request schemathesis made up is printed on failure with curl.
        case.call_and_validate(base_url=fuzzed.base_url, headers=headers, checks=CHECKS, timeout=30)

    # Unsatisfiable here means `_cases` asked for invalid requests where none exist.
    run: Callable[[], Any] = fuzz
    run()


@pytest.mark.parametrize(
    ("method", "target", "headers", "body"),
    [
        pytest.param(
            "GET",
            "/files?cursor=9223372036854775808",
            {},
            None,
            id="cursor-overflow",
        ),
        pytest.param(
            "GET",
            "/files?limit=%C2%B2",
            {},
            None,
            id="unicode-digit-limit",
        ),
        pytest.param(
            "POST",
            "/files",
            {"Content-Type": "multipart/form-data; boundary=XX"},
            b'--XX\r\nContent-Disposition: form-data; name="a\x0eb"\r\n\r\nv\r\n'
            b'--XX\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
            b"hello\r\n--XX--\r\n",
            id="multipart-control-char-in-part-header",
        ),
    ],
)
def test_found_bug_stays_fixed(
    fuzzed: Server, method: str, target: str, headers: dict[str, str], body: bytes | None
) -> None:
    """Requests the fuzzer found (or that its findings led to) answer 400, not 500."""
    status, text = _request(fuzzed, method, target, body, {**_authorization(USER), **headers})
    assert status == 400, text
