"""GET /api/v1/openapi.json: a valid OpenAPI 3.1 document that covers every API route."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from tests.app_fixtures import MakeClient

from .helpers import Client, api_client, jwt_client

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


async def document(client: Client) -> dict[str, Any]:
    resp = await client.get("/api/v1/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    doc: dict[str, Any] = json.loads(await resp.read())
    return doc


def api_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route the app registers under /api/v1."""
    found = set()
    for resource in app.router.resources():
        path = resource.canonical
        if not path.startswith("/api/v1/") or path == "/api/v1/openapi.json":
            continue
        for route in resource:
            method = route.method.lower()
            if method == "head" and any(r.method == "GET" for r in resource):
                continue  # aiohttp's automatic HEAD of a GET route
            found.add((method, path))
    return found


async def test_document_is_openapi_3_1_and_valid(make_client: MakeClient) -> None:
    from openapi_spec_validator import validate

    client = await api_client(make_client)
    doc = await document(client)
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    validate(doc)  # raises on any schema violation, unresolvable $ref or path parameter


async def test_every_api_route_is_documented(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    doc = await document(client)
    routes = api_routes(client.app)
    assert ("get", "/api/v1/files") in routes and ("post", "/api/v1/upload") in routes
    documented = {
        (method, path)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }
    missing = sorted(routes - documented)
    assert not missing, f"routes missing from the OpenAPI document: {missing}"
    # And nothing documented under /api/v1 that the app does not serve.
    phantom = sorted((m, p) for m, p in documented - routes if p.startswith("/api/v1/"))
    assert not phantom, f"documented but not served: {phantom}"


async def test_documented_operations_are_well_formed(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    doc = await document(client)
    schemas = doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        params_in_path = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            if method not in METHODS:
                continue
            assert op.get("summary"), (method, path)
            assert op.get("responses"), (method, path)
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == params_in_path, (method, path)
            for status in op["responses"]:
                assert re.fullmatch(r"[1-5]\d\d|default", status), (method, path, status)
    # Every $ref points at a schema that exists.
    for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(doc)):
        assert ref in schemas
    # The file schema names every field the API returns.
    file_props = set(schemas["File"]["properties"])
    assert {"id", "name", "folder", "size", "status", "tags", "sha256", "content_url"} <= file_props


async def test_document_is_public_with_auth_on(make_client: MakeClient) -> None:
    client = await jwt_client(make_client)
    assert (await client.get("/api/v1/files")).status == 401
    doc = await document(client)
    assert doc["openapi"] == "3.1.0"
