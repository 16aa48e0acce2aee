"""The HTTP contract: every response of the scoring service matches the OpenAPI document it
publishes at ``/docs.json``, error responses included, and none names a server path.

The pure parts first (the document's corrections, error-body rewriting, path redaction), then
a real ``bentoml serve`` subprocess with an API key on a private copy of ``serving_home``
(conftest.py: small real models registered and promoted). The online store's failure is
tested in test_serving_api.py. schemathesis reads the served document and fuzzes every operation
it lists, with all 14 of its checks, so endpoints added later are covered without changing
this file.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
import schemathesis
from conftest import SERVER_PATH
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from training_home import copy_home

from serving.guard import Guard, as_json_error, redact_paths
from serving.launcher import start_server
from serving.openapi import ADMIN_PATHS, allowed_methods, published_document

API_KEY = "contract-key-0123456789abcdef"
ADMIN_KEY = "contract-admin-0123456789abcdef"
MAX_IDS = 20
"""A small cap keeps fuzzed /score requests (up to MAX_IDS ids, explained) cheap."""
MAX_EXAMPLES = 25
"""Fuzzed cases per operation, on top of schemathesis's examples and coverage phases."""
UNDOCUMENTED_METHODS = ("TRACE", "PUT", "DELETE", "PATCH", "OPTIONS")


# --- the pure parts -------------------------------------------------------------------------
def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str = "ok") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR_REF = _ref("Error")
BENTO_ERRORS = {
    400: _json(_ref("InvalidArgument"), "Bad Request"),
    404: _json(_ref("NotFound"), "Not Found"),
    500: _json(_ref("InternalServerError"), "Internal Server Error"),
}
REPLY_INLINE = {
    "type": "object",
    "title": "ReplyIODescriptor",
    "properties": {"previous": {**_ref("Versions"), "default": None}},
}
REPLY_COMPONENT = {
    **REPLY_INLINE,
    "properties": {"previous": {"anyOf": [_ref("Versions"), {"type": "null"}]}},
}
IDS_BODY = {"type": "object", "required": ["ids"], "properties": {"ids": {"type": "array"}}}
BENTO_SPEC = {
    "openapi": "3.0.2",
    "paths": {
        "/readyz": {"get": {"responses": {200: {"description": "ok"}}}},
        "/reply": {
            "post": {
                "responses": {200: _json(REPLY_INLINE), **BENTO_ERRORS},
                "requestBody": {"content": {"application/json": {"schema": IDS_BODY}}},
            }
        },
        "/things/{thing_id}": {
            "get": {
                "parameters": [{"name": "thing_id", "in": "path", "required": True}],
                "responses": {200: {"description": "ok"}, 404: BENTO_ERRORS[404]},
            }
        },
    },
    "components": {
        "schemas": {
            "ReplyIODescriptor": REPLY_COMPONENT,
            "InvalidArgument": {},
            "NotFound": {},
            "InternalServerError": {},
        }
    },
}
"""What BentoML generates, in miniature: its error responses, an inline copy of a response
model that lost its null, an optional body with a required field, a templated path."""


def test_the_published_document_lists_every_status_with_one_error_body():
    doc = published_document(
        BENTO_SPEC, secured=True, extra_responses={("/reply", "post"): {403: "Refused."}}
    )
    schemas = doc["components"]["schemas"]
    assert not {"InvalidArgument", "NotFound", "InternalServerError"} & set(schemas)
    assert schemas["Error"]["required"] == ["error", "message"]
    reply = doc["paths"]["/reply"]["post"]
    assert sorted(reply["responses"]) == [
        "200", "400", "401", "403", "413", "415", "429", "500", "503", "504"
    ]  # fmt: skip
    assert reply["responses"]["403"]["description"] == "Refused."
    for status, response in reply["responses"].items():
        if status != "200":
            assert response["content"]["application/json"]["schema"] == ERROR_REF
    # The inline copy gives way to the component, which keeps previous nullable.
    assert reply["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ReplyIODescriptor"
    }
    assert reply["requestBody"]["required"] is True
    assert reply["security"] == [{"apiKey": []}]
    assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    # A templated path may answer 404; the probe needs no key and documents its 503 body.
    thing = doc["paths"]["/things/{thing_id}"]["get"]["responses"]
    assert thing["404"]["content"]["application/json"]["schema"] == ERROR_REF
    assert sorted(thing) == ["200", "400", "401", "404", "429", "500", "503", "504"]
    readyz = doc["paths"]["/readyz"]["get"]
    assert sorted(readyz["responses"]) == ["200", "500", "503"] and "security" not in readyz
    assert readyz["responses"]["503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Readiness"
    }
    unsecured = published_document(BENTO_SPEC, secured=False)
    assert "401" not in unsecured["paths"]["/reply"]["post"]["responses"]
    assert BENTO_SPEC["paths"]["/reply"]["post"]["responses"][400] == BENTO_ERRORS[400]


def test_allowed_methods_match_templated_paths():
    table = allowed_methods(published_document(BENTO_SPEC, secured=False))

    def allowed(path):
        return next((methods for pattern, methods in table if pattern.match(path)), None)

    assert allowed("/readyz") == {"GET", "HEAD"}
    assert allowed("/reply") == {"POST"}
    assert allowed("/things/C000001") == {"GET", "HEAD"}
    assert allowed("/things/") is None and allowed("/things/a/b") is None


def _start(status: int, content_type: bytes) -> dict:
    return {"status": status, "headers": [(b"content-type", content_type)]}


def test_error_bodies_are_rewritten_to_the_documented_shape():
    json_type = b"application/json"
    bento_400 = (
        b'[{"error": "1 validation error for ScoreRequestIODescriptor", "detail": '
        b'[{"type": "string_type", "loc": ["customer_ids", 1], "msg": "Input should be a '
        b'valid string"}]}]'
    )  # what BentoML 1.4 answers to a body that breaks the request model
    not_a_string = "customer_ids.1: Input should be a valid string"
    store_gone = b'{"error": "online_store_unavailable", "message": "file /srv/h/o.db gone"}'
    failed = "the server failed to handle the request; see its log"
    cases = [
        (400, json_type, bento_400, "bad_request", not_a_string),
        (404, b"text/plain", b"Not Found", "not_found", "Not Found"),
        (429, json_type, b'{"error": "Too many"}', "too_many_requests", "Too many"),
        (503, json_type, store_gone, "online_store_unavailable", "file <path> gone"),
        (500, b"text/plain", b"Traceback ... /srv/app/x.py", "internal_error", failed),
    ]
    for status, content_type, body, error, message in cases:
        rewritten = as_json_error(status, _start(status, content_type), body)
        assert json.loads(rewritten) == {"error": error, "message": message}, body


def test_server_paths_are_taken_out_of_messages():
    leak = "ImportError: cannot import name 'X' from 'training.x' (/work/main/training/x.py)"
    assert redact_paths(leak) == "ImportError: cannot import name 'X' from 'training.x' (<path>)"
    assert redact_paths("read file:///tmp/home/feast/online_store.db") == "read <path>"
    assert redact_paths("C:\\omniscore\\online_store.db is missing") == "<path> is missing"
    for kept in (
        "send JSON (Content-Type: application/json), not 'text/plain'",
        "customer_ids.1: Input should be a valid string",
        "request body exceeds 65536 bytes",
    ):
        assert redact_paths(kept) == kept


def _guarded(app, **options) -> httpx.AsyncClient:
    doc = published_document(BENTO_SPEC, secured=False)
    guard = Guard(app, api_key=None, max_body_bytes=1024, openapi=lambda: doc, **options)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://guard")


def test_the_guard_answers_429_over_the_limit_and_504_past_the_deadline():
    import anyio

    async def slow_app(scope, receive, send):
        await anyio.sleep(30)

    async def scenario():
        async with _guarded(slow_app, max_concurrency=1, deadline=0.5) as client:
            answers = {}

            async def post(name):
                answers[name] = await client.post("/reply", json={"ids": [1]})

            async with anyio.create_task_group() as group:
                group.start_soon(post, "first")
                await anyio.sleep(0.1)  # the first one holds the only slot
                group.start_soon(post, "second")
            return answers

    answers = anyio.run(scenario)
    assert answers["second"].status_code == 429
    assert answers["second"].json()["error"] == "too_many_requests"
    assert answers["first"].status_code == 504
    assert answers["first"].json() == {
        "error": "timeout",
        "message": "the request was not answered within 0.5 s",
    }


def test_the_guard_refuses_undocumented_methods_and_hides_crashes():
    import anyio

    async def failing_app(scope, receive, send):
        raise RuntimeError("cannot open /srv/omniscore/secret.db")

    async def scenario():
        async with _guarded(failing_app) as client:
            return (
                await client.request("TRACE", "/readyz"),
                await client.put("/things/C000001"),
                await client.post("/reply", json={"ids": [1]}),
            )

    trace, put, crashed = anyio.run(scenario)
    assert trace.status_code == 405 and trace.headers["allow"] == "GET, HEAD"
    assert put.status_code == 405 and put.headers["allow"] == "GET, HEAD"
    assert put.json() == {
        "error": "method_not_allowed",
        "message": "PUT is not allowed here; allowed: GET, HEAD",
    }
    assert crashed.status_code == 500
    assert crashed.json() == {
        "error": "internal_error",
        "message": "the server failed to handle the request; see its log",
    }


def test_admin_paths_need_their_own_key_documented_and_enforced():
    import anyio

    spec = {"paths": {"/admin/forget": {"post": {"responses": {200: {"description": "ok"}}}}}}
    doc = published_document(spec, secured=False)
    forget = doc["paths"]["/admin/forget"]["post"]
    assert forget["security"] == [{"adminKey": []}] and "401" in forget["responses"]
    assert doc["components"]["securitySchemes"]["adminKey"]["scheme"] == "bearer"

    async def ok_app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    def answers(admin_key):
        async def scenario():
            guard = Guard(ok_app, api_key=None, max_body_bytes=1024, admin_key=admin_key)
            transport = httpx.ASGITransport(app=guard)
            async with httpx.AsyncClient(transport=transport, base_url="http://g") as client:
                return [
                    (await client.post("/admin/forget", json={}, headers=headers)).status_code
                    for headers in ({}, {"Authorization": f"Bearer {ADMIN_KEY}"})
                ]

        return anyio.run(scenario)

    # Without credentials 401 always; credentials with no admin key configured: 403.
    assert answers(None) == [401, 403]
    assert answers(ADMIN_KEY) == [401, 200]


# --- the service over HTTP ----------------------------------------------------------------
@pytest.fixture(scope="module")
def contract_home(serving_home, tmp_path_factory):
    """A private copy of the serving home for this module's server."""
    return copy_home(serving_home, tmp_path_factory.mktemp("contract-home"))


@pytest.fixture(scope="module")
def server(contract_home):
    options = {
        "reload_interval": 0,
        "max_ids": MAX_IDS,
        "max_body_bytes": 64 * 1024,
        # The schema lets POST /events carry max_events events; schemathesis sends that many
        # copies of the documented example (about 300 bytes each), which must fit the body cap
        # or a schema-valid request gets a 413.
        "max_events": 100,
        "admin_key": ADMIN_KEY,
    }
    with start_server(contract_home, api_key=API_KEY, options=options) as handle:
        yield handle


@pytest.fixture(scope="module")
def document(server) -> dict:
    response = httpx.get(f"{server.url}/docs.json", headers=server.headers(), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def api_schema(server):
    """The served document, loaded by schemathesis: every check on, a fixed seed, a bounded
    number of cases, the API key on every request and the admin key on the admin paths
    (``ignored_auth`` and ``missing_required_header`` drop them on purpose)."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    config = SchemathesisConfig.from_dict(
        {
            "seed": 20261130,
            "cache": {"enabled": False},
            "headers": server.headers(),
            "request-timeout": 60,
            "generation": {"max-examples": MAX_EXAMPLES},
            "checks": {"enabled": True},
            "operations": [{"include-path": path, "headers": admin} for path in ADMIN_PATHS],
        }
    )
    return schemathesis.openapi.from_url(
        f"{server.url}/docs.json", config=config, headers=server.headers(), timeout=30
    )


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    # schemathesis 4.32 renames each operation's subtest through Node._nodeid, which
    # pytest 9.2 no longer has (it keeps ids in a NodeId); without the attribute the lazily
    # loaded schema fails before running anything.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@schema.parametrize()
@settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_every_response_matches_the_published_document(case):
    response = case.call_and_validate()
    if response.status_code >= 400:
        assert not SERVER_PATH.search(response.text), response.text


@pytest.mark.slow
def test_the_document_lists_every_endpoint_and_one_error_shape(document):
    paths = document["paths"]
    for path in ("/score", "/admin/reload", "/healthz", "/livez", "/readyz", "/metrics"):
        assert path in paths
    schemas = document["components"]["schemas"]
    assert schemas["Error"]["required"] == ["error", "message"]
    assert not {"InvalidArgument", "NotFound", "InternalServerError"} & set(schemas)
    for path, item in paths.items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and (path, status) != ("/readyz", "503"):
                    body = response["content"]["application/json"]["schema"]
                    assert body == {"$ref": "#/components/schemas/Error"}, (method, path, status)
            if path not in ("/healthz", "/livez", "/readyz"):
                assert "401" in operation["responses"] and operation["security"], (method, path)
    for path in ADMIN_PATHS & set(paths):
        assert paths[path]["post"]["security"] == [{"adminKey": []}]


@pytest.mark.slow
def test_undocumented_methods_get_405_with_allow_on_every_path(server, document):
    paths = [re.sub(r"\{[^}]+\}", "x", path) for path in document["paths"]]
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=30) as client:
        for path in [*paths, "/docs", "/docs.json"]:
            for method in UNDOCUMENTED_METHODS:
                response = client.request(method, path)
                assert response.status_code == 405, (method, path, response.text)
                assert response.json()["error"] == "method_not_allowed"
                assert method not in response.headers["allow"]
            # Without the key as well: the method is refused before auth is asked for.
            assert httpx.request("TRACE", f"{server.url}{path}").status_code == 405


@pytest.mark.slow
def test_a_bad_body_gets_the_documented_error_shape(server):
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=30) as client:
        for body in ({"customer_ids": ["C1", 7]}, {"customer_ids": []}, {"explain": True}):
            response = client.post("/score", json=body)
            assert response.status_code == 400, response.text
            assert set(response.json()) == {"error", "message"}
            assert response.json()["error"] == "bad_request"
        response = client.post("/admin/reload", json={"force": "yes"})
        assert response.status_code == 400
        expected = {"error": "bad_request", "message": "force: Input should be a valid boolean"}
        assert response.json() == expected
