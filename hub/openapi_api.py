"""GET /api/v1/openapi.json: the hub's API contract, generated from its route table.

The document is built from the routes the application serves and the pydantic models
their handlers validate with (``edge_agent.openapi``), once per process, at
startup. It is public: it describes the API, it grants nothing.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

import hub
from edge_agent.openapi import described, openapi_document, undeclared_query
from hub.errors import InvalidRequest
from hub.route_access import ROUTES, Kind

routes = web.RouteTableDef()
DOCUMENT = web.AppKey("openapi_document", dict)
SCHEMES = {
    "operatorToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "an operator API token (Authorization: Bearer <token>)",
    },
    "deviceCertificate": {
        "type": "mutualTLS",
        "description": "the client certificate the hub issued to the device at enrollment",
    },
}
DESCRIPTION = (
    "The edgefleet hub: the operator API under /api/v1 (Bearer tokens) and the device "
    "API under /v1 (mutual TLS with the certificate issued at enrollment). Every error "
    "answer is an ErrorBody."
)


def annotate(method: str, path: str) -> dict[str, Any]:
    """Return how a route authenticates its caller and what it needs (the access table)."""
    access = ROUTES[(method, path)]
    if access.kind is Kind.PUBLIC:
        return {"security": []}
    if access.kind is Kind.DEVICE_CERT:
        return {"security": [{"deviceCertificate": []}]}
    assert access.permission is not None
    return {
        "security": [{"operatorToken": []}],
        "x-permission": access.permission.value,
        "x-scope": access.kind.value,
    }


@web.middleware
async def query_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Refuse query parameters the route does not declare (400 naming them).

    A mistyped filter (``?devcie=x``) used to be ignored: the caller got everything back
    and took it for the filtered answer. The declaration the document shows is the check.
    """
    unknown, known = undeclared_query(request.match_info.handler, request.query)
    if unknown:
        shown = ", ".join(repr(name[:64]) for name in unknown[:10])
        allowed = ", ".join(known) or "none"
        raise InvalidRequest(
            f"unknown query parameter(s) {shown}; this route takes: {allowed}",
            fields=[{"field": name[:64], "message": "unknown"} for name in unknown[:10]],
            status=400,
        )
    response: web.StreamResponse = await handler(request)
    return response


def install(app: web.Application) -> None:
    """Serve the document, built at startup: a route without a description stops the hub."""
    app[DOCUMENT] = {}
    app.add_routes(routes)
    app.on_startup.append(_build)


async def _build(app: web.Application) -> None:
    app[DOCUMENT].update(
        openapi_document(
            app,
            title="edgefleet hub",
            version=hub.__version__,
            description=DESCRIPTION,
            annotate=annotate,
            security_schemes=SCHEMES,
        )
    )


@routes.get("/api/v1/openapi.json")
@described(tags=("meta",))
async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of this hub's API."""
    return web.json_response(request.app[DOCUMENT])
