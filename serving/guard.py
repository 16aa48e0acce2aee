"""ASGI middleware in front of the scoring service: the HTTP contract, auth, limits, errors.

BentoML lets a service add ASGI middleware (``Service.add_asgi_middleware``); this one

- answers 405, with an ``Allow`` header, to a method that a path of the published OpenAPI
  document does not list (``TRACE /readyz``, ``PUT /score``, ...);
- serves that document at ``/docs.json`` (:func:`serving.openapi.published_document`) and
  redirects ``/docs`` to BentoML's page;
- answers ``/healthz``, ``/livez`` and ``/readyz`` without auth (``/readyz`` asks the service
  instance whether its models are loaded and its online store answers, and says why not in
  JSON);
- when an API key is configured, requires ``Authorization: Bearer <key>`` on every other
  path, compared in constant time (:func:`hmac.compare_digest`), else 401;
- requires the separate admin key on ``ADMIN_PATHS`` (``POST /admin/forget``) instead: 401
  without credentials or with another key (the scoring key included), 403 to credentials
  when no admin key is configured;
- refuses a body over the cap with 413 (from ``Content-Length`` before reading, or while
  streaming a chunked body) and a non-JSON ``POST`` with 415;
- answers 429 at once over ``max_concurrency`` requests in flight, and 504 to a request not
  answered within ``deadline`` seconds (BentoML has both limits, but its middleware runs
  outside this one, so its error bodies would escape the documented shape);
- turns every error response into the documented JSON body ``{"error", "message"}``
  (BentoML's validation errors are summarised field by field), any exception that escapes
  into a generic 500, and takes server paths out of every message (:func:`redact_paths`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable
from http import HTTPStatus

from serving.openapi import ADMIN_PATHS, HEALTH_PATHS, UNLIMITED_PATHS, allowed_methods

logger = logging.getLogger("omniscore.serving")
PAGE_PATHS = frozenset({"/ui", "/ui/"})
"""The customer page's HTML (serving.ui): served without the key, which the page asks for
and sends on each of its data calls (``/customers``, ``/score``, ``/ui/api/...``)."""
OPEN_PATHS = HEALTH_PATHS | PAGE_PATHS
JSON_TYPES = ("application/json",)
SERVER_FAILED = "the server failed to handle the request; see its log"
GUARD_PATHS = {"/docs": frozenset({"GET", "HEAD"}), "/docs.json": frozenset({"GET", "HEAD"})}
"""Paths this middleware answers itself that the OpenAPI document does not list."""
_ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]*$")
_SERVER_PATH = re.compile(
    r"""(?:file:|[A-Za-z]:\\|~/)[^\s'"]*"""  # file: URIs, Windows and home-relative paths
    r"""|(?:/[^\s/'"()\[\]{}<>,;:=]+){2,}/?"""  # absolute paths of two or more segments
)


class _BodyTooLarge(Exception):
    pass


def redact_paths(text: str) -> str:
    """``text`` with every file-system path in it replaced by ``<path>``.

    Messages are written without paths; this catches the ones that come from a library's
    exception (``ImportError: ... (/srv/app/x.py)``, ``sqlite3``, MLflow).
    """
    return _SERVER_PATH.sub("<path>", text)


def json_body(error: str, message: str) -> bytes:
    """The JSON body of every error response: ``{"error": code, "message": text}``."""
    return json.dumps({"error": error, "message": redact_paths(message)}).encode("utf-8")


def summarise_validation(detail) -> str | None:
    """``customer_ids.3: Input should be a valid string; ...`` from pydantic error dicts."""
    if not isinstance(detail, list) or not detail:
        return None
    parts = []
    for item in detail[:10]:
        if not isinstance(item, dict):
            return None
        loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {item.get('msg', 'invalid')}")
    if len(detail) > 10:
        parts.append(f"... and {len(detail) - 10} more")
    return "; ".join(parts)


def authorized(header: bytes | None, key: bytes) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <key>`` (constant-time compare)."""
    if not header:
        return False
    scheme, _, token = header.partition(b" ")
    # Hashing both sides first makes the comparison constant-time whatever the token length.
    ok_scheme = scheme.lower() == b"bearer"
    ok_token = hmac.compare_digest(
        hashlib.sha256(token.strip()).digest(), hashlib.sha256(key).digest()
    )
    return ok_scheme and ok_token


class Guard:
    """The middleware (see the module docstring).

    ``readiness`` returns ``(ready, detail)``; ``openapi`` returns the published OpenAPI
    document (called once, at the first request, when every route is registered).
    """

    def __init__(
        self,
        app,
        api_key: str | None,
        max_body_bytes: int,
        readiness: Callable[[], tuple[bool, dict]] | None = None,
        openapi: Callable[[], dict] | None = None,
        max_concurrency: int | None = None,
        deadline: float | None = None,
        admin_key: str | None = None,
    ) -> None:
        self.app = app
        self.key = api_key.encode("utf-8") if api_key else None
        self.admin_key = admin_key.encode("utf-8") if admin_key else None
        self.max_body = int(max_body_bytes)
        self.readiness = readiness
        self.openapi = openapi
        self.deadline = deadline
        self._in_flight = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._document: bytes | None = None
        self._methods: list | None = None

    # -- the published contract ----------------------------------------------------------
    def _load_document(self) -> None:
        try:
            doc = self.openapi() if self.openapi is not None else {"paths": {}}
        except Exception:  # served as a 500 at /docs.json; tried again on the next request
            logger.exception("building the OpenAPI document failed")
            return
        self._document = json.dumps(doc).encode("utf-8")
        self._methods = allowed_methods(doc)

    def allowed(self, path: str) -> frozenset[str] | None:
        """Methods allowed on ``path`` (None for a path neither documented nor served here)."""
        if self._methods is None:
            self._load_document()
        if path in GUARD_PATHS:
            return GUARD_PATHS[path]
        for pattern, methods in self._methods or ():
            if pattern.match(path):
                return methods
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        headers = dict(scope.get("headers") or [])
        allowed = self.allowed(path)
        if allowed is not None and method not in allowed:
            allow = ", ".join(sorted(allowed))
            message = f"{method} is not allowed here; allowed: {allow}"
            await _send_json(
                send,
                405,
                json_body("method_not_allowed", message),
                extra_headers=[(b"allow", allow.encode("ascii"))],
            )
            return
        if path == "/readyz" and self.readiness is not None:
            await self._readyz(send)
            return
        if path in ADMIN_PATHS:
            credentials = headers.get(b"authorization")
            # Missing credentials are a 401 whatever the configuration (RFC 9110); sent ones
            # cannot be checked without an admin key, so the endpoint is refused.
            if self.admin_key is None and credentials:
                message = "admin endpoints are off: set OMNISCORE_ADMIN_KEY to enable them"
                await _send_json(send, 403, json_body("forbidden", message))
                return
            if self.admin_key is None or not authorized(credentials, self.admin_key):
                message = "missing or wrong admin key: send 'Authorization: Bearer <admin key>'"
                await _send_json(
                    send,
                    401,
                    json_body("unauthorized", message),
                    extra_headers=[(b"www-authenticate", b"Bearer")],
                )
                return
        elif (
            self.key is not None
            and path not in OPEN_PATHS
            and not authorized(headers.get(b"authorization"), self.key)
        ):
            message = "missing or wrong API key: send 'Authorization: Bearer <key>'"
            await _send_json(
                send,
                401,
                json_body("unauthorized", message),
                extra_headers=[(b"www-authenticate", b"Bearer")],
            )
            return
        if path == "/docs":
            # BentoML serves its OpenAPI page at "/" (spec at /docs.json); /docs is the
            # address people try first.
            await send(
                {"type": "http.response.start", "status": 307, "headers": [(b"location", b"/")]}
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if path == "/docs.json" and self.openapi is not None:
            if self._document is None:
                await _send_json(send, 500, json_body("internal_error", SERVER_FAILED))
            else:
                await _send_json(send, 200, self._document)
            return
        if method == "POST":
            length = headers.get(b"content-length")
            if length is not None:
                try:
                    declared = int(length)
                except ValueError:
                    declared = -1
                if declared < 0:
                    body = json_body("bad_request", "invalid Content-Length header")
                    await _send_json(send, 400, body)
                    return
                if declared > self.max_body:
                    await self._too_large(send)
                    return
            ctype = headers.get(b"content-type", b"application/json").decode("latin-1")
            if ctype.split(";")[0].strip().lower() not in JSON_TYPES:
                message = f"send JSON (Content-Type: application/json), not {ctype!r}"
                await _send_json(send, 415, json_body("unsupported_media_type", message))
                return
        if path in UNLIMITED_PATHS or self._in_flight is None:
            await self._forward(scope, receive, send, deadline=None)
            return
        if self._in_flight.locked():
            message = "too many requests in flight; retry shortly"
            await _send_json(send, 429, json_body("too_many_requests", message))
            return
        async with self._in_flight:
            await self._forward(scope, receive, send, deadline=self.deadline)

    async def _readyz(self, send) -> None:
        import anyio.to_thread

        try:
            ready, detail = await anyio.to_thread.run_sync(self.readiness)
        except Exception as exc:  # a failing probe is a "not ready", never a 500
            logger.exception("the readiness probe failed")
            ready, detail = False, {"reason": f"the readiness probe failed ({type(exc).__name__})"}
        status = 200 if ready else 503
        if "reason" in detail:
            detail = {**detail, "reason": redact_paths(str(detail["reason"]))}
        body = json.dumps({"ready": ready, **detail}).encode("utf-8")
        await _send_json(send, status, body)

    async def _too_large(self, send) -> None:
        message = f"request body exceeds {self.max_body} bytes"
        await _send_json(send, 413, json_body("payload_too_large", message))

    async def _forward(self, scope, receive, send, deadline: float | None) -> None:
        import anyio

        path = scope.get("path", "")
        received = 0
        started = False
        held: dict | None = None
        chunks: list[bytes] = []
        max_body = self.max_body

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:
                    raise _BodyTooLarge
            return message

        async def guarded_send(message):
            nonlocal started, held
            if message["type"] == "http.response.start":
                if message["status"] >= 400:
                    held = message  # rewritten as JSON once the body is complete
                    return
                started = True
                await send(message)
                return
            if message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start, held = held, None
                body = as_json_error(start["status"], start, b"".join(chunks))
                started = True
                kept = _kept_headers(start.get("headers") or [])
                await _send_json(send, start["status"], body, extra_headers=kept)
                return
            await send(message)

        try:
            with anyio.move_on_after(deadline) as timer:
                await self.app(scope, limited_receive, guarded_send)
            if timer.cancelled_caught:
                logger.warning("%s %s: no answer within %g s", scope["method"], path, deadline)
                if not started:
                    message = f"the request was not answered within {deadline:g} s"
                    await _send_json(send, 504, json_body("timeout", message))
        except _BodyTooLarge:
            if not started:
                await self._too_large(send)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), path)
            if not started:
                await _send_json(send, 500, json_body("internal_error", SERVER_FAILED))


_DROP = {b"content-length", b"content-type"}


def _kept_headers(headers: list) -> list:
    return [(k, v) for k, v in headers if k.lower() not in _DROP]


def as_json_error(status: int, start: dict, body: bytes) -> bytes:
    """An error response body rewritten as the documented ``{"error", "message"}`` JSON.

    ``error`` keeps a snake_case code the body already has, else it is the status phrase
    (``bad_request``); ``message`` is the body's message, its pydantic validation errors
    summarised, or its text. Bodies of 5xx other than 503 and 504 become a generic message:
    their detail belongs in the log.
    """
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
    code = reason.lower().replace(" ", "_").replace("-", "_")
    ctype = dict(start.get("headers") or []).get(b"content-type", b"").decode("latin-1")
    message = None
    if "json" in ctype:
        try:
            data = json.loads(body or b"null")
        except ValueError:
            data = None
        if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
            data = data[0]  # BentoML 1.4 wraps some 4xx errors in a one-element list
        if isinstance(data, dict):
            error = data.get("error")
            if isinstance(error, str) and _ERROR_CODE.match(error):
                code = error
            detail = data.get("detail")
            message = summarise_validation(detail)
            for candidate in (data.get("message"), detail, error):
                if message is None and isinstance(candidate, str) and candidate.strip():
                    message = candidate
    if message is None:
        message = body.decode("utf-8", "replace").strip()[:500] or reason
    if status >= 500 and status not in (503, 504):
        code, message = "internal_error", SERVER_FAILED
    return json_body(code, message)


async def _send_json(send, status: int, body: bytes, extra_headers: list | None = None) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
