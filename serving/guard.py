"""ASGI middleware in front of the scoring service: auth, body limits, JSON errors, readiness.

BentoML lets a service add ASGI middleware (``Service.add_asgi_middleware``); this one

- answers ``/healthz``, ``/livez`` and ``/readyz`` itself, without auth (``/readyz`` asks the
  service instance whether its models are loaded and its online store answers, and says why
  not in JSON);
- when an API key is configured, requires ``Authorization: Bearer <key>`` on every other
  path, compared in constant time (:func:`hmac.compare_digest`), else 401;
- refuses a body over the cap with 413 (from ``Content-Length`` before reading, or while
  streaming a chunked body) and a non-JSON ``POST`` with 415;
- turns every error response into JSON with a ``message`` that says what is wrong
  (BentoML's validation errors are summarised field by field), and any exception that
  escapes into a generic 500 JSON without a stack trace.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from http import HTTPStatus

logger = logging.getLogger("omniscore.serving")
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
JSON_TYPES = ("application/json",)
SERVER_FAILED = "the server failed to handle the request; see its log"


class _BodyTooLarge(Exception):
    pass


def json_body(error: str, message: str, **extra) -> bytes:
    """The JSON error body every refusal uses: ``{"error", "message", ...}``."""
    return json.dumps({"error": error, "message": message, **extra}).encode("utf-8")


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
    """The middleware (see the module docstring). ``readiness`` returns ``(ready, detail)``."""

    def __init__(
        self,
        app,
        api_key: str | None,
        max_body_bytes: int,
        readiness: Callable[[], tuple[bool, dict]] | None = None,
    ) -> None:
        self.app = app
        self.key = api_key.encode("utf-8") if api_key else None
        self.max_body = int(max_body_bytes)
        self.readiness = readiness

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = dict(scope.get("headers") or [])
        if path == "/readyz" and self.readiness is not None:
            await self._readyz(scope, send)
            return
        if (
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
        if path == "/docs" and scope.get("method") in ("GET", "HEAD"):
            # BentoML serves its OpenAPI page at "/" (spec at /docs.json); /docs is the
            # address people try first.
            await send(
                {"type": "http.response.start", "status": 307, "headers": [(b"location", b"/")]}
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if scope.get("method") == "POST":
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
        await self._forward(scope, receive, send)

    async def _readyz(self, scope, send) -> None:
        import anyio.to_thread

        try:
            ready, detail = await anyio.to_thread.run_sync(self.readiness)
        except Exception as exc:  # a failing probe is a "not ready", never a 500
            ready, detail = False, {"reason": f"{type(exc).__name__}: {exc}"}
        status = 200 if ready else 503
        body = json.dumps({"ready": ready, **detail}).encode("utf-8")
        await _send_json(send, status, body)

    async def _too_large(self, send) -> None:
        message = f"request body exceeds {self.max_body} bytes"
        await _send_json(send, 413, json_body("payload_too_large", message))

    async def _forward(self, scope, receive, send) -> None:
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
                body = _as_json_error(start["status"], start, b"".join(chunks))
                started = True
                kept = _kept_headers(start.get("headers") or [])
                await _send_json(send, start["status"], body, extra_headers=kept)
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not started:
                await self._too_large(send)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _send_json(send, 500, json_body("internal_error", SERVER_FAILED))


_DROP = {b"content-length", b"content-type"}


def _kept_headers(headers: list) -> list:
    return [(k, v) for k, v in headers if k.lower() not in _DROP]


def _as_json_error(status: int, start: dict, body: bytes) -> bytes:
    """Rewrite an error body as ``{"error", "message", ...}`` JSON (keeps JSON details)."""
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
    code = reason.lower().replace(" ", "_").replace("-", "_")
    ctype = dict(start.get("headers") or []).get(b"content-type", b"").decode("latin-1")
    if "json" in ctype:
        try:
            data = json.loads(body or b"null")
        except ValueError:
            data = None
        if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
            data = data[0]  # BentoML 1.4 wraps some 4xx errors in a one-element list
        if isinstance(data, dict):
            message = summarise_validation(data.get("detail"))
            if message is None:
                message = str(data.get("message") or data.get("error") or reason)
            if status >= 500 and status not in (503, 504):
                return json_body(code, SERVER_FAILED)
            out = {"error": data.get("error", code), "message": message}
            if isinstance(data.get("detail"), list):
                out["detail"] = data["detail"]
            return json.dumps(out).encode("utf-8")
    text = body.decode("utf-8", "replace").strip()
    if status >= 500 and status not in (503, 504):
        text = SERVER_FAILED
    return json_body(code, text[:500] or reason)


async def _send_json(send, status: int, body: bytes, extra_headers: list | None = None) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
