"""OpenAPI 3.1 documents generated from an aiohttp route table and pydantic models.

Used by the hub (operator and device APIs) and the agent (its local API): a handler
says what it reads and answers with ``@described(...)`` — the same pydantic models the
handler validates with — and ``openapi_document`` walks the application's router, so
the document lists exactly the routes the code serves. A route whose handler is not
described is an error (``Undescribed``): nothing is served that the contract leaves out.

Every error answer of both services has one shape, ``ErrorBody`` (error code, message,
fields); it is declared for each error status a route lists.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from edge_agent.protocol import ErrorBody

F = TypeVar("F", bound=Callable[..., Any])
REF = "#/components/schemas/{model}"
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")
ERROR_TEXT = {
    400: "malformed request",
    401: "no or unknown credentials",
    403: "not allowed",
    404: "no such object",
    409: "conflicts with the current state",
    410: "gone (expired or used up)",
    413: "body over a bound",
    422: "a field failed validation (each named in fields)",
    429: "too many requests",
    503: "busy or shutting down (retry after Retry-After)",
}
COMMON_ERRORS = (400, 401, 403, 413, 429, 503)
INT64 = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
STRING = {"type": "string"}


def enum(values: Iterable[str]) -> dict[str, Any]:
    """Return the schema of a string that is one of ``values``."""
    return {"type": "string", "enum": list(values)}


class Undescribed(Exception):
    """A served route has no description: the contract would leave it out."""


@dataclass(frozen=True)
class Query:
    """One query parameter a route reads."""

    name: str
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class RouteDoc:
    """What one handler reads and answers."""

    summary: str
    body: type[BaseModel] | None = None
    body_media: str = "application/json"
    response: type[BaseModel] | None = None
    status: int = 200
    query: tuple[Query, ...] = ()
    errors: tuple[int, ...] = ()
    media: str = ""  # media type(s) of a non-JSON answer (PEM, NDJSON, SSE; "a, b"), else ""
    also: tuple[int, ...] = ()  # other success statuses (204: no content)
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def described(
    *,
    body: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    query: Iterable[Query] = (),
    errors: Iterable[int] = (),
    media: str = "",
    also: Iterable[int] = (),
    body_media: str = "application/json",
    tags: Iterable[str] = (),
    **extra: Any,
) -> Callable[[F], F]:
    """Attach a ``RouteDoc`` to a handler (its docstring's first line is the summary)."""

    def attach(handler: F) -> F:
        doc = (handler.__doc__ or handler.__name__).strip().splitlines()[0]
        handler.__route_doc__ = RouteDoc(  # type: ignore[attr-defined]
            summary=doc,
            body=body,
            body_media=body_media,
            response=response,
            status=status,
            query=tuple(query),
            errors=tuple(errors),
            media=media,
            also=tuple(also),
            tags=tuple(tags),
            extra=dict(extra),
        )
        return handler

    return attach


def route_doc(handler: Any) -> RouteDoc | None:
    """Return the handler's description, or None if it has none."""
    return getattr(handler, "__route_doc__", None)


def undeclared_query(handler: Any, names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Return (the query parameter names a described handler does not declare, those it
    does); ``([], [])`` for a handler without a description."""
    doc = route_doc(handler)
    if doc is None:
        return [], []
    known = {q.name for q in doc.query}
    return sorted({n for n in names if n not in known}), sorted(known)


def served_routes(app: web.Application) -> list[tuple[str, str, Any]]:
    """Return ``(METHOD, path template, handler)`` of every route (HEAD twins left out)."""
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        if path is None or route.method in ("HEAD", "*"):
            continue
        out.append((route.method, path, route.handler))
    return out


def openapi_document(
    app: web.Application,
    *,
    title: str,
    version: str,
    description: str = "",
    annotate: Callable[[str, str], dict[str, Any]] | None = None,
    security_schemes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of every route ``app`` serves.

    ``annotate(method, path)`` returns what to add to a route's operation (its
    ``security`` requirement, extensions).
    """
    schemas: dict[str, Any] = {}
    _ref(ErrorBody, schemas)
    paths: dict[str, dict[str, Any]] = {}
    for method, path, handler in served_routes(app):
        doc = route_doc(handler)
        if doc is None:
            raise Undescribed(f"{method} {path} ({handler.__qualname__}) has no @described")
        operation = _operation(method, path, handler, doc, schemas)
        if annotate is not None:
            operation.update(annotate(method, path))
        paths.setdefault(_plain(path), {})[method.lower()] = operation
    components: dict[str, Any] = {"schemas": dict(sorted(schemas.items()))}
    if security_schemes:
        components["securitySchemes"] = security_schemes
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": dict(sorted(paths.items())),
        "components": components,
    }


def _plain(path: str) -> str:
    """Return the template without aiohttp's regex parts: ``{name:.*}`` -> ``{name}``."""
    return _PARAM_RE.sub(lambda m: "{" + m.group(1) + "}", path)


def _operation(
    method: str, path: str, handler: Any, doc: RouteDoc, schemas: dict[str, Any]
) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM_RE.findall(path)
    ]
    params += [
        {"name": q.name, "in": "query", "required": q.required, "schema": q.schema}
        | ({"description": q.description} if q.description else {})
        for q in doc.query
    ]
    operation: dict[str, Any] = {
        "operationId": f"{handler.__module__.rpartition('.')[2]}.{handler.__name__}",
        "summary": doc.summary,
        "responses": _responses(doc, schemas),
    }
    if doc.tags:
        operation["tags"] = list(doc.tags)
    if params:
        operation["parameters"] = params
    if doc.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {doc.body_media: {"schema": _ref(doc.body, schemas)}},
        }
    operation.update({f"x-{k}": v for k, v in doc.extra.items()})
    return operation


def _responses(doc: RouteDoc, schemas: dict[str, Any]) -> dict[str, Any]:
    if doc.media:
        # several media types (the query picks one): comma-separated
        content = {m.strip(): {"schema": {"type": "string"}} for m in doc.media.split(",")}
    elif doc.response is not None:
        content = {"application/json": {"schema": _ref(doc.response, schemas, "serialization")}}
    else:
        content = {"application/json": {"schema": {}}}
    answers: dict[str, Any] = {}
    for status in (doc.status, *doc.also):
        answers[str(status)] = {"description": "success"}
        if status != 204:
            answers[str(status)]["content"] = content
    error = {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}}
    statuses = sorted({*COMMON_ERRORS, *doc.errors, *((422,) if doc.body else ())})
    for status in statuses:
        answers[str(status)] = {"description": ERROR_TEXT.get(status, "error"), "content": error}
    return answers


def _ref(
    model: type[BaseModel], schemas: dict[str, Any], mode: str = "validation"
) -> dict[str, str]:
    """Register the model's schema (and its nested ones) and return a reference to it.

    Two models of one name (``ActionRequest`` of devices and of rollouts) are told apart
    by their module; nested schemas of one name must be the same schema.
    """
    name = model.__name__
    nested: dict[str, Any] = {}
    schema = _schema(model, nested, mode)
    if schemas.get(name, schema) != schema:
        name = f"{model.__module__.rpartition('.')[2]}.{name}"
    schemas[name] = schema
    for sub, sub_schema in nested.items():
        if schemas.setdefault(sub, sub_schema) != sub_schema:
            raise Undescribed(f"two different schemas are both named {sub!r}")
    return {"$ref": REF.format(model=name)}


def _schema(model: type[BaseModel], nested: dict[str, Any], mode: str) -> dict[str, Any]:
    """Return the model's JSON schema (what it reads, or what it writes: ``mode``); its
    $defs go into ``nested``."""
    schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
    nested.update(schema.pop("$defs", {}))
    return schema
