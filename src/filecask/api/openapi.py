"""The OpenAPI 3.1 document of filecask's HTTP API, assembled from each handler's
`@operation` (`filecask.api.spec`) and the JSON Schemas of the types the handlers encode
and validate with (`filecask.api.models`), and `GET /openapi.json`, which serves it. The
routes are the tables the app serves (`route_tables`), which depend on `--file-api`; a
route without a declaration fails here.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode

import filecask
from filecask.api import archives, files, metrics, ops, pages, users
from filecask.api.models import Problem as ProblemBody
from filecask.api.models import adapter
from filecask.api.spec import OPERATION, PROBLEM_HEADERS, PROBLEMS, Headers, Json, Operation, Reply
from filecask.api.spec import operation as declare
from filecask.services import SETTINGS
from filecask.tus import handlers as uploads

OPENAPI_VERSION = "3.1.0"
BASIC: list[Json] = [{"basicAuth": []}]
DOCUMENT = {"application/json": {"type": "object", "required": ["openapi", "paths"]}}
routes = web.RouteTableDef()


def route_tables(*, file_api: bool) -> list[tuple[str, web.RouteTableDef]]:
    """Every route table the app serves with `--file-api` as given, in the order it adds
    them, each with the tag of its operations."""
    tables = [("operations", metrics.routes), ("operations", ops.routes), ("operations", routes)]
    tables += [("pages", pages.docs_routes), ("archives", archives.archive_routes)]
    if file_api:
        tables += [("files", files.routes), ("users", users.routes)]
        tables += [("archives", archives.bundle_routes), ("files", uploads.routes)]
        tables.append(("pages", pages.page_routes))
    return tables


@functools.cache
def _encoded(file_api: bool) -> bytes:
    return json.dumps(openapi_document(file_api=file_api), ensure_ascii=False).encode()


@routes.get("/openapi.json")
@declare("openapi", {200: ("The OpenAPI 3.1 description of this server's API.", DOCUMENT)})
async def openapi_json(request: web.Request) -> web.Response:
    """This document."""
    # Anyone may read it: it describes the API and holds no data. It depends on
    # `--file-api` alone, so its JSON is encoded once per process and reused.
    body = _encoded(request.app[SETTINGS].file_api)
    return web.Response(body=body, content_type="application/json", charset="utf-8")


def _ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def _headers(headers: Headers) -> Json:
    out: Json = {}
    for name, value in headers.items():
        text, pattern = (value, None) if isinstance(value, str) else value
        schema = {"type": "string"} | ({"pattern": pattern} if pattern else {})
        out[name.rstrip("?")] = {"required": name[-1] != "?", "description": text, "schema": schema}
    return out


def _problem_response(status: int, description: str, headers: Headers) -> Json:
    status_is = {"type": "object", "properties": {"status": {"const": status}}}
    described = {"allOf": [_ref("schemas", "Problem"), status_is]}
    html = " A client whose Accept names text/html gets a short HTML page instead."
    content = {"application/problem+json": described, "text/html": {"type": "string"}}
    return _answer(description + html, content, headers)


def _answer(description: str, content: Json | None, headers: Headers) -> Json:
    out: Json = {"description": description}
    if headers:
        out["headers"] = _headers(headers)
    if content:
        out["content"] = {media: {"schema": schema} for media, schema in content.items()}
    return out


class _Assembler:
    def __init__(self) -> None:
        self.types: dict[tuple[object, JsonSchemaMode], None] = {
            (ProblemBody, "serialization"): None
        }
        self.shared = {error.status: name for name, (error, _) in PROBLEMS.items()}

    def _schema(self, kind: object, mode: JsonSchemaMode) -> Json:
        self.types[(kind, mode)] = None
        return _ref("schemas", getattr(kind, "__name__", str(kind)))

    def _response(self, status: int, reply: Reply) -> Json:
        description, body, *rest = (reply, None) if isinstance(reply, str) else reply
        headers: Headers = rest[0] if rest else {}
        if status >= 400:
            return _problem_response(status, description, headers)
        if body is not None and not isinstance(body, dict):
            body = {"application/json": self._schema(body, "serialization")}
        return _answer(description, body, headers)

    def operation(self, declared: Operation, tag: str, method: str, path: str) -> Json:
        variant = declared.variants.get(f"{method.upper()} {path}", declared.operation_id)
        operation_id, summary = (variant, declared.summary) if isinstance(variant, str) else variant
        out: Json = {"operationId": operation_id, "summary": summary}
        if declared.description:
            out["description"] = declared.description
        security = declared.security
        if security is None:
            security = BASIC if 401 in {*declared.replies, *declared.errors} else []
        out |= {"tags": [tag], "security": security}
        if declared.parameters:
            out["parameters"] = list(declared.parameters)
        body = declared.body
        if body is not None and not isinstance(body, dict):
            schema = {"schema": self._schema(body, "validation")}
            body = {"required": True, "content": {"application/json": schema}}
        out |= {"requestBody": body} if body is not None else {}
        responses = {status: self._response(status, r) for status, r in declared.replies.items()}
        for status in declared.errors:
            responses[status] = _ref("responses", self.shared[status])
        out["responses"] = {str(status): responses[status] for status in sorted(responses)}
        return out

    def schemas(self) -> Json:
        found = [(kind, mode, adapter(kind)) for kind, mode in self.types]
        _, top = TypeAdapter.json_schemas(
            found, ref_template="#/components/schemas/{model}", schema_generator=_Untitled
        )
        defs: Json = top["$defs"]
        return defs


class _Untitled(GenerateJsonSchema):
    """No `title` on every property: the member's name says it."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _head_of(get: Json) -> Json:
    """HEAD answers what GET would, headers only: aiohttp adds it to every GET route."""
    head = copy.deepcopy(get)
    head["operationId"] = get["operationId"] + "Head"
    head["summary"] = "Headers of: " + get["summary"][0].lower() + get["summary"][1:]
    head.pop("description", None)
    for response in head["responses"].values():
        response.pop("content", None)
    return head


def openapi_document(*, file_api: bool = True) -> Json:
    """The OpenAPI 3.1 document of a server started with `--file-api` as given.

    A fresh dict each call, so a caller may change it (e.g. add `servers`) freely."""
    assembler = _Assembler()
    paths: Json = {}
    for tag, table in route_tables(file_api=file_api):
        for route in table:
            assert isinstance(route, web.RouteDef)
            declared = getattr(route.handler, OPERATION, None)
            if declared is None:
                raise LookupError(f"{route.method} {route.path} declares no operation")
            method = route.method.lower()
            item = paths.setdefault(route.path, {})
            item[method] = assembler.operation(declared, tag, method, route.path)
            if method == "get" and route.kwargs.get("allow_head", True):
                item["head"] = _head_of(item["get"])
    responses = {
        name: _problem_response(error.status, description, PROBLEM_HEADERS.get(name, {}))
        for name, (error, description) in PROBLEMS.items()
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "filecask",
            "version": filecask.__version__,
            "summary": "A self-hosted, content-addressed HTTP file store with streaming ZIPs.",
            "description": "Files are stored once under the SHA-256 of their content. Downloads "
            "are public to anyone with the hash; uploads and listings need HTTP Basic "
            "credentials of a user an administrator created. Every error is an RFC 9457 "
            "`application/problem+json` body.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "tags": [
            {"name": "files", "description": "Upload, download, list and delete files."},
            {"name": "archives", "description": "Folders and bundles as streamed ZIPs."},
            {"name": "users", "description": "The caller, and user administration."},
            {"name": "operations", "description": "Health, readiness, this document."},
            {"name": "pages", "description": "The web page and Swagger UI, for people."},
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "basicAuth": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "UTF-8 user:password (RFC 7617); the user name in any "
                    "case or width (`Admin` signs in as `admin`). Repeated failures from one "
                    "client address are slowed down there and answered 429 with Retry-After; "
                    "they never refuse the right password from another address.",
                },
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The metrics token (`FILECASK_METRICS_TOKEN` or "
                    "`--metrics-token-file`), for /metrics only (RFC 6750).",
                },
            },
            "schemas": assembler.schemas(),
            "responses": responses,
        },
    }
