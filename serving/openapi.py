"""The OpenAPI document the service publishes at ``/docs.json``: BentoML's, made true.

BentoML generates the document from the endpoints' Pydantic models, but its error responses
describe bodies the service never sends (``{"error", "detail": string}`` for 400, 404 and 500;
BentoML issue 4232), it leaves out every status the middleware answers (401, 413, 415, 429,
503, ...), and its inline copy of a response model loses the ``null`` of optional fields.
:func:`published_document` corrects a copy of it, so that every response the service gives,
error responses included, matches what it publishes. :mod:`serving.guard` serves the result
and answers 405 to any method a documented path does not list.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

ERROR_SCHEMA_NAME = "Error"
ERROR_SCHEMA = {
    "type": "object",
    "title": "Error",
    "description": "Every error response has this body: a stable machine-readable code and "
    "a sentence for people. Messages never name a file or directory of the server.",
    "required": ["error", "message"],
    "properties": {
        "error": {
            "type": "string",
            "pattern": "^[a-z][a-z0-9_]*$",
            "description": "What went wrong, as a snake_case code (bad_request, unauthorized, "
            "not_found, method_not_allowed, payload_too_large, unsupported_media_type, "
            "too_many_requests, not_ready, online_store_unavailable, timeout, internal_error, "
            "...).",
            "examples": ["bad_request"],
        },
        "message": {
            "type": "string",
            "description": "What is wrong and how to fix it; for an invalid body, each "
            "offending field with its problem.",
            "examples": ["customer_ids.1: Input should be a valid string"],
        },
    },
    "additionalProperties": False,
}
READINESS_SCHEMA = {
    "type": "object",
    "title": "Readiness",
    "description": "Whether the service can score: models loaded and the online store answering.",
    "required": ["ready"],
    "properties": {
        "ready": {"type": "boolean", "description": "True when requests can be scored."},
        "reason": {
            "type": "string",
            "description": "Why the service is not ready (absent when it is).",
        },
        "model_versions": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "Registered versions being served, once loaded.",
        },
        "online_read": {
            "type": "string",
            "description": "How features are read from the online store (direct or feast).",
        },
    },
}
ERROR_DESCRIPTIONS = {
    400: "The request is malformed or its body breaks the request schema; the message names "
    "each offending field.",
    401: "Missing or wrong API key (send 'Authorization: Bearer <key>').",
    403: "The operation is refused in this configuration.",
    404: "Not found.",
    405: "The method is not allowed on this path (the Allow header lists those that are).",
    413: "The request body exceeds the configured limit.",
    415: "The body is not JSON (send Content-Type: application/json).",
    429: "Too many requests in flight; retry shortly.",
    500: "The server failed; details are in its log, never in the response.",
    503: "Not ready: models not loaded, or the online store cannot be read.",
    504: "The request was not answered within the deadline.",
}
REPLACED_ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError")
"""BentoML's error components, which describe bodies the service does not send."""
HEALTH_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
ADMIN_PATHS = frozenset({"/admin/forget"})
"""Paths that need the admin key (``OMNISCORE_ADMIN_KEY``), never the scoring key."""
UNLIMITED_PATHS = frozenset({*HEALTH_PATHS, "/metrics"})
"""Paths outside the concurrency limit and the request deadline (probes and scrapes)."""
SECURITY_SCHEME = "apiKey"
ADMIN_SECURITY_SCHEME = "adminKey"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_REF = "#/components/schemas/{}"


def _bearer(description: str) -> dict:
    return {"type": "http", "scheme": "bearer", "description": description}


def _error_response(status: int, description: str | None = None) -> dict:
    return {
        "description": description or ERROR_DESCRIPTIONS.get(status, "Error."),
        "content": {"application/json": {"schema": {"$ref": _REF.format(ERROR_SCHEMA_NAME)}}},
    }


def published_document(
    spec: Mapping,
    *,
    secured: bool,
    extra_responses: Mapping[tuple[str, str], Mapping[int, str]] | None = None,
) -> dict:
    """A corrected copy of BentoML's OpenAPI ``spec`` (a dict as served at ``/docs.json``).

    - every error response of every operation refers to :data:`ERROR_SCHEMA`, and each lists
      the statuses the service can answer there: 500 everywhere; 400 where a parameter or a
      body is read, 413 and 415 where a body is; 401 (and the bearer security requirement)
      when ``secured``, and always on :data:`ADMIN_PATHS` (their own admin key); 429, 503
      and 504 outside the probes;
    - ``/readyz`` documents its 503 and its JSON body;
    - a response body given inline as a copy of a component refers to the component, which
      keeps ``null`` for optional fields;
    - ``extra_responses`` maps ``(path, method)`` to further statuses with their descriptions
      (``("/admin/reload", "post"): {403: "..."}``).
    """
    doc = copy.deepcopy(dict(spec))
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in REPLACED_ERROR_SCHEMAS:
        schemas.pop(name, None)
    schemas[ERROR_SCHEMA_NAME] = ERROR_SCHEMA
    schemas["Readiness"] = READINESS_SCHEMA
    extra_responses = extra_responses or {}
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            # BentoML's keys are ints where the JSON document has strings.
            responses = {str(k): v for k, v in operation.get("responses", {}).items()}
            if "{" not in path:
                responses.pop("404", None)  # BentoML lists it; a path without parameters exists
            for status in list(responses):
                if int(status) >= 400:
                    responses[status] = _error_response(int(status))
                else:
                    _refer_to_component(responses[status], schemas)
            statuses = {500}
            if operation.get("parameters"):
                statuses.add(400)
            if "requestBody" in operation:
                statuses |= {400, 413, 415}
                _require_body_with_required_fields(operation["requestBody"], schemas)
            if path not in UNLIMITED_PATHS:
                statuses |= {429, 503, 504}
            if path in ADMIN_PATHS:
                statuses.add(401)
                operation["security"] = [{ADMIN_SECURITY_SCHEME: []}]
            elif secured and path not in HEALTH_PATHS:
                statuses.add(401)
                operation["security"] = [{SECURITY_SCHEME: []}]
            for status in sorted(statuses):
                responses.setdefault(str(status), _error_response(status))
            for status, description in extra_responses.get((path, method), {}).items():
                responses[str(status)] = _error_response(status, description)
            operation["responses"] = dict(sorted(responses.items()))
    schemes = {}
    if secured:
        schemes[SECURITY_SCHEME] = _bearer("The API key (OMNISCORE_API_KEY) as a bearer token.")
    if ADMIN_PATHS & set(doc.get("paths", {})):
        schemes[ADMIN_SECURITY_SCHEME] = _bearer(
            "The admin key (OMNISCORE_ADMIN_KEY) as a bearer token; the API key is refused."
        )
    if schemes:
        components.setdefault("securitySchemes", {}).update(schemes)
    readyz = doc.get("paths", {}).get("/readyz", {}).get("get")
    if readyz is not None:
        body = {"application/json": {"schema": {"$ref": _REF.format("Readiness")}}}
        readyz["responses"]["200"] = {"description": "Ready.", "content": body}
        readyz["responses"]["503"] = {"description": "Not ready; reason says why.", "content": body}
    return doc


def _refer_to_component(response: dict, schemas: Mapping) -> None:
    """Replace an inline body schema that copies a component (same title) by a reference.

    BentoML inlines each endpoint's output model; its inline copy renders an optional nested
    model as ``$ref`` alone, without the ``null`` the component keeps.
    """
    for media in (response.get("content") or {}).values():
        schema = media.get("schema") or {}
        title = schema.get("title")
        if "$ref" not in schema and title in schemas and schemas[title] is not schema:
            media["schema"] = {"$ref": _REF.format(title)}


def _require_body_with_required_fields(body: dict, schemas: Mapping) -> None:
    """Mark a request body required when its schema has required fields.

    OpenAPI's default is an optional body; BentoML leaves the default, yet a request without
    a body then lacks the required fields and is refused with 400.
    """
    for media in (body.get("content") or {}).values():
        schema = media.get("schema") or {}
        ref = schema.get("$ref", "")
        if ref.startswith(_REF.format("")):
            schema = schemas.get(ref.rsplit("/", 1)[-1], {})
        if schema.get("required"):
            body["required"] = True


def allowed_methods(doc: Mapping) -> list[tuple[re.Pattern, frozenset[str]]]:
    """``(path pattern, methods)`` of every documented path; GET implies HEAD.

    Path templates (``/customers/{customer_id}``) match one non-empty segment per parameter.
    """
    table = []
    for path, item in doc.get("paths", {}).items():
        methods = {m.upper() for m in item if m in HTTP_METHODS}
        if "GET" in methods:
            methods.add("HEAD")
        parts = re.split(r"(\{[^}/]+\})", path)
        pattern = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts if p)
        table.append((re.compile(f"^{pattern}$"), frozenset(methods)))
    return table
