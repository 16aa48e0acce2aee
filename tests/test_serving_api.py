"""The scoring service over real HTTP: a ``bentoml serve`` subprocess on a trained home.

One home (a private copy of conftest.py's ``serving_home``: the session's generated world,
Feast applied and materialized, three small real models trained with one Optuna trial on
four cutoffs, registered and promoted) and one server for every test, with an API key and
a one-second registry poll. The store-failure test runs last because it breaks the store.

Booting a server (imports, model loading) is what this module waits for most, and it uses
one core: every server is started before the first test that needs it and boots while the
tests that read in-process run, so the boots overlap each other and that work.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import SERVER_PATH
from training_home import copy_home, train_and_promote

from data_layer.feast_store import apply, feature_store, materialize, online_features
from serving.batch import score_batch
from serving.config import PINNED_MODELS_FILE
from serving.launcher import start_server
from serving.online import OnlineReader
from serving.scoring import load_model_set
from training.model_io import load_champion

pytestmark = pytest.mark.slow
API_KEY = "test-key-0123456789abcdef"
IDS = [f"C{i:06d}" for i in range(1, 41)]
UNKNOWN = "not-a-customer-7"


BOOT_TIMEOUT = 300
"""Seconds a server may take to boot: several boot at once on a loaded two-core machine."""
ONLINE = {"features": "online"}
"""These servers serve the rows of the Feast online store (the live path, which computes
features as of each request from the live state, is tested in tests/test_live_service.py)."""


@pytest.fixture(scope="module")
def home(serving_home, tmp_path_factory):
    """A private copy: the hot-reload test promotes a new churn version, the last test
    breaks the online store for a moment."""
    return copy_home(serving_home, tmp_path_factory.mktemp("serving-api-home"))


@pytest.fixture(scope="module", autouse=True)
def booting_server(home):
    """The module's server, started before its first test and not waited for."""
    options = {
        **ONLINE,
        "reload_interval": 1,
        "max_ids": 1000,
        "max_body_bytes": 256 * 1024,
        "max_concurrency": 4,
    }
    with start_server(home, api_key=API_KEY, options=options, wait=False) as handle:
        yield handle


@pytest.fixture(scope="module")
def server(booting_server):
    """The module's server, once ready."""
    booting_server.wait_ready(BOOT_TIMEOUT)
    return booting_server


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=30) as c:
        yield c


def _score(client, ids, explain=False) -> dict:
    response = client.post("/score", json={"customer_ids": ids, "explain": explain})
    assert response.status_code == 200, response.text
    return response.json()


# --- in this process, while the servers boot -----------------------------------------------
def test_direct_and_feast_reads_agree(home):
    store = feature_store(home)
    layout = load_model_set(home, store).layout
    ids = [*IDS[:20], UNKNOWN, IDS[3]]
    direct = OnlineReader(store, "direct").read(layout, ids)
    feast = OnlineReader(store, "feast").read(layout, ids)
    assert np.array_equal(direct.numeric, feast.numeric, equal_nan=True)
    assert np.array_equal(direct.timestamps, feast.timestamps)
    assert direct.known.tolist() == feast.known.tolist() == [True] * 20 + [False, True]
    for name in layout.strings:
        assert direct.strings[name].tolist() == feast.strings[name].tolist()
    assert any(v is not None for v in direct.strings["region"].tolist())


@pytest.fixture(scope="module")
def redis_home(home, services, tmp_path_factory):
    """The home's snapshots materialized into Redis (own Feast project), same registry."""
    import uuid

    import redis

    project = f"omniscore_test_{uuid.uuid4().hex[:12]}"
    settings = replace(
        home,
        home=tmp_path_factory.mktemp("serving-redis"),
        mlflow_tracking_uri=home.tracking_uri,
        online_store=services["redis"],
        feast_project=project,
    )
    settings.ensure_dirs()
    for path in home.features_dir.glob("*.parquet"):
        shutil.copy(path, settings.features_dir / path.name)
    apply(settings)
    # Feast's rows only (these servers serve them): the live state's Redis keys are not per
    # Feast project, so other tests on the same Redis would see them.
    materialize(settings, live_state=False)
    yield settings
    client = redis.Redis.from_url(services["redis"])
    for key in client.scan_iter(match=b"*" + project.encode(), count=1000):
        client.delete(key)


@pytest.fixture(scope="module")
def redis_servers(redis_home):
    """Two servers on the Redis home, booting from the first Redis test on: one on the real
    Redis, one on a Redis that never answers (a listening socket that never replies:
    connects succeed, reads hang)."""
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(64)
        port = black_hole.getsockname()[1]
        silent = replace(redis_home, online_store=f"redis://127.0.0.1:{port}/0")
        logs = redis_home.home
        with (
            start_server(
                redis_home, api_key=API_KEY, options={**ONLINE, "reload_interval": 0}, wait=False,
                log_path=logs / "serving-redis.log",
            ) as on_redis,
            start_server(
                silent, api_key=API_KEY, options={**ONLINE, "reload_interval": 0, "timeout": 1},
                wait=False, log_path=logs / "serving-silent-redis.log",
            ) as on_silent_redis,
        ):  # fmt: skip
            yield {"redis": on_redis, "silent": on_silent_redis}


@pytest.mark.services
def test_redis_direct_reads_equal_feast_and_sqlite_reads(home, redis_home, redis_servers):
    layout = load_model_set(home, feature_store(home)).layout
    ids = [*IDS[:20], UNKNOWN, IDS[3]]
    sqlite = OnlineReader(feature_store(home), "direct").read(layout, ids)
    store = feature_store(redis_home)
    direct = OnlineReader(store, "direct").read(layout, ids)
    feast = OnlineReader(store, "feast").read(layout, ids)
    # What the service reads for a few ids on its event loop.
    on_loop = asyncio.run(OnlineReader(store, "direct").read_async(layout, ids))
    assert OnlineReader(store).method == "direct" and OnlineReader(store).reads_async
    assert not OnlineReader(feature_store(home)).reads_async
    for other in (feast, sqlite, on_loop):
        assert np.array_equal(direct.numeric, other.numeric, equal_nan=True)
        assert np.array_equal(direct.timestamps, other.timestamps)
        assert direct.known.tolist() == other.known.tolist() == [True] * 20 + [False, True]
        for name in layout.strings:
            assert direct.strings[name].tolist() == other.strings[name].tolist()


# --- scores ---------------------------------------------------------------------------------
def test_known_and_unknown_customers(home, client):
    body = _score(client, [IDS[0], UNKNOWN, IDS[1]])
    known, unknown, second = body["scores"]
    assert [s["customer_id"] for s in body["scores"]] == [IDS[0], UNKNOWN, IDS[1]]
    assert known["known"] and second["known"] and not unknown["known"]

    frame = online_features(feature_store(home), "propensity_v1", [IDS[0]])
    propensity = load_champion(home, "propensity")
    expected = float(propensity.predict_proba(frame)[0])
    assert known["propensity"]["probability"] == pytest.approx(expected, rel=1e-9)
    assert known["propensity"]["score"] == pytest.approx(
        float(propensity.score_percentile(expected)), abs=1e-9
    )
    assert known["propensity"]["band"] == str(propensity.band(expected))
    assert known["feature_timestamp"].endswith("Z")
    assert known["explanation"] is None

    churn, segments = load_champion(home, "churn"), load_champion(home, "segments")
    for name, model in (("propensity", propensity), ("churn", churn)):
        assert unknown[name] == {
            "probability": pytest.approx(model.cold_start["probability"]),
            "score": pytest.approx(model.cold_start["percentile"]),
            "band": model.cold_start["band"],
        }
    assert unknown["segment"] == {
        "id": segments.cold_start["segment_id"],
        "name": segments.cold_start["segment_name"],
    }
    assert unknown["feature_timestamp"] is None
    versions = {"propensity": propensity.version, "churn": churn.version}
    versions["segments"] = segments.version
    assert body["model_versions"] == versions == known["model_versions"]


def test_a_full_request_of_the_capped_size_is_served(home, client):
    ids = [f"C{i:06d}" for i in range(1000)]
    body = _score(client, ids)
    assert [s["customer_id"] for s in body["scores"]] == ids
    known = online_features(feature_store(home), "segments_v1", ids)["known"].tolist()
    assert [s["known"] for s in body["scores"]] == known
    assert sum(known) == 500  # the home has 500 customers


def test_explanations_sum_per_channel_to_the_raw_score(home, client):
    body = _score(client, IDS[:5] + [UNKNOWN], explain=True)
    frame = online_features(feature_store(home), "propensity_v1", IDS[:5])
    for name in ("propensity", "churn"):
        model = load_champion(home, name)
        raw = model.raw_score(frame)
        for i, item in enumerate(body["scores"][:5]):
            e = item["explanation"][name]
            assert sum(e["channels"].values()) + e["base_value"] == pytest.approx(
                e["raw_score"], abs=1e-9
            )
            assert e["raw_score"] == pytest.approx(float(raw[i]), abs=1e-9)
            assert {"web", "email", "store", "profile"} <= set(e["channels"])
            contributions = [abs(r["contribution"]) for r in e["top_reasons"]]
            assert contributions == sorted(contributions, reverse=True)
            assert len(contributions) == 5
            first = e["top_reasons"][0]
            value = frame.loc[i, first["feature"]]
            if isinstance(value, str):
                assert first["value"] == value
            elif pd.isna(value):
                assert first["value"] is None
            else:
                assert first["value"] == pytest.approx(float(value))
    assert body["scores"][5]["explanation"] is None


def test_batch_scores_equal_online_scores(home, client, tmp_path):
    out = tmp_path / "scores.parquet"
    report = score_batch(home, out)
    assert report.customers == 500 and report.known == 500
    batch = pq.read_table(out).to_pandas().set_index("customer_id")
    body = _score(client, IDS)
    for item in body["scores"]:
        row = batch.loc[item["customer_id"]]
        for name in ("propensity", "churn"):
            assert row[f"{name}_probability"] == pytest.approx(item[name]["probability"], rel=1e-12)
            assert row[f"{name}_score"] == pytest.approx(item[name]["score"], rel=1e-12)
            assert row[f"{name}_band"] == item[name]["band"]
        assert row["segment_id"] == item["segment"]["id"]
        assert row["segment_name"] == item["segment"]["name"]
        stamp = row["feature_timestamp"].isoformat().replace("+00:00", "Z")
        assert stamp == item["feature_timestamp"]
        assert row["propensity_version"] == item["model_versions"]["propensity"]


@pytest.mark.services
def test_score_on_redis_equals_score_on_sqlite(redis_servers, client):
    ids = [IDS[0], UNKNOWN, IDS[5], IDS[9]]
    server = redis_servers["redis"]
    assert server.wait_ready(BOOT_TIMEOUT)["online_read"] == "direct"
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=30) as redis_c:
        for explain in (False, True):
            on_redis = _score(redis_c, ids, explain=explain)
            on_sqlite = _score(client, ids, explain=explain)
            assert on_redis == on_sqlite
    assert on_redis["scores"][0]["explanation"] is not None


@pytest.mark.services
def test_redis_that_never_answers_gives_503_within_the_timeout(redis_servers):
    server = redis_servers["silent"]
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    ready = httpx.get(f"{server.url}/readyz", timeout=10)
    assert ready.status_code == 503
    assert "online store" in ready.json()["reason"]
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=10) as c:
        began = time.monotonic()
        response = c.post("/score", json={"customer_ids": [IDS[0]]})
        elapsed = time.monotonic() - began
    assert response.status_code == 503, response.text
    assert response.json()["error"] in ("online_store_unavailable", "timeout")
    assert "Traceback" not in response.text
    assert elapsed < 5


# --- security and errors --------------------------------------------------------------------
def test_auth_is_required_except_for_health_checks(server):
    url = server.url
    for headers in (
        {},
        {"Authorization": "Bearer wrong-key-0123456789"},
        {"Authorization": API_KEY},
    ):
        response = httpx.post(f"{url}/score", json={"customer_ids": [IDS[0]]}, headers=headers)
        assert response.status_code == 401
        assert "API key" in response.json()["message"]
        assert httpx.get(f"{url}/metrics", headers=headers).status_code == 401
        assert httpx.post(f"{url}/admin/reload", json={}, headers=headers).status_code == 401
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/readyz").json()["ready"] is True
    metrics = httpx.get(f"{url}/metrics", headers=server.headers())
    assert metrics.status_code == 200
    assert "omniscore_customers_scored_total" in metrics.text
    assert "bentoml_service_request_total" in metrics.text


BAD_INPUTS = [
    ("malformed JSON", b'{"customer_ids": ["C000001"', "Invalid JSON"),
    ("wrong type", {"customer_ids": "C000001"}, "customer_ids: Input should be a valid"),
    ("empty list", {"customer_ids": []}, "at least 1 item"),
    ("too many ids", {"customer_ids": ["C1"] * 1001}, "at most 1000 items"),
    (
        "non-string id",
        {"customer_ids": ["C000001", 42]},
        "customer_ids.1: Input should be a valid string",
    ),
    ("unknown field", {"customer_ids": ["C000001"], "limit": 3}, "limit: Extra inputs"),
    ("explain not a boolean", {"customer_ids": ["C1"], "explain": "yes"}, "explain: Input should"),
    ("missing ids", {}, "customer_ids: Field required"),
    ("empty id", {"customer_ids": [""]}, "at least 1 character"),
]


@pytest.mark.parametrize("case, body, expected", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_4xx_saying_what_is_wrong(client, case, body, expected):
    if isinstance(body, bytes):
        response = client.post("/score", content=body, headers={"content-type": "application/json"})
    else:
        response = client.post("/score", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert expected in response.json()["message"]
    assert "Traceback" not in response.text


def test_oversized_body_and_wrong_media_type_are_refused(client):
    response = client.post(
        "/score", content=b'{"customer_ids": ["' + b"x" * 300_000 + b'"]}',
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 413 and "exceeds" in response.json()["message"]
    response = client.post(
        "/score", content=b"customer_ids=C1", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415 and "JSON" in response.json()["message"]
    response = client.get("/no-such-endpoint")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_openapi_documents_every_field(client):
    response = client.get("/docs", follow_redirects=False)
    assert response.status_code == 307
    spec = client.get("/docs.json").json()
    schemas = spec["components"]["schemas"]
    request = next(v for k, v in schemas.items() if k.startswith("ScoreRequest"))
    assert request["additionalProperties"] is False
    for field in ("customer_ids", "explain"):
        assert request["properties"][field]["description"]
    for model in ("CustomerScore", "ModelScore", "Explanation", "Reason"):
        for field, prop in schemas[model]["properties"].items():
            assert prop.get("description"), f"{model}.{field} has no description"


def test_over_the_concurrency_limit_answers_429_at_once(server):
    ids = [f"C{i:06d}" for i in range(1000)]
    codes: list[int] = []
    barrier = threading.Barrier(12)

    def heavy() -> None:
        with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as c:
            barrier.wait()
            r = c.post("/score", json={"customer_ids": ids, "explain": True})
            codes.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["error"]

    threads = [threading.Thread(target=heavy) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(codes)) == [200, 429], codes
    assert codes.count(200) >= 1


def test_bento_build_pins_the_champion_versions(home, tmp_path):
    from serving.bento import build_bento

    # The build must never write the checkout: servers other test workers start from it at the
    # same time refuse a pin file found there. Watched for the whole build, not only after it.
    seen_in_checkout: list[bool] = []
    building = threading.Event()

    def watch() -> None:
        while building.is_set():
            seen_in_checkout.append(PINNED_MODELS_FILE.exists())
            time.sleep(0.01)

    building.set()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        built = build_bento(home, bentoml_home=str(tmp_path / "bentoml"))
    finally:
        building.clear()
        watcher.join()
    assert len(seen_in_checkout) > 10 and not any(seen_in_checkout)
    source = Path(built.path) / "src"
    pinned = json.loads((source / "serving" / "pinned_models.json").read_text())
    champions = {m: load_champion(home, m).version for m in ("propensity", "churn", "segments")}
    assert pinned["versions"] == built.versions == champions
    manifest = (Path(built.path) / "bento.yaml").read_text()
    assert f"churn_version: '{champions['churn']}'" in manifest
    for module in ("serving/service.py", "data_layer/settings.py", "feature_repo/entities.py"):
        assert (source / module).is_file(), f"{module} is missing from the Bento"
    assert not (source / "tests").exists()


# --- hot reload -----------------------------------------------------------------------------
def test_hot_reload_after_a_promotion_fails_no_request(home, server, client):
    before = _score(client, [IDS[0]])["model_versions"]
    results: list[tuple[int, dict | None]] = []
    stop = threading.Event()

    def keep_scoring() -> None:
        with httpx.Client(base_url=server.url, headers=server.headers(), timeout=30) as c:
            while not stop.is_set():
                r = c.post("/score", json={"customer_ids": IDS[:3]})
                results.append((r.status_code, r.json() if r.status_code == 200 else None))
                time.sleep(0.005)  # leave the 2 cores some room for the training meanwhile

    thread = threading.Thread(target=keep_scoring, daemon=True)
    thread.start()
    try:
        new_version = train_and_promote(home, "churn", seed=2)
        assert new_version != before["churn"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (
                results
                and results[-1][1]
                and results[-1][1]["model_versions"]["churn"] == new_version
            ):
                break
            time.sleep(0.2)
        time.sleep(0.5)  # keep scoring a little after the swap
    finally:
        stop.set()
        thread.join(timeout=30)
    assert results, "the client never got an answer"
    failures = [code for code, _ in results if code != 200]
    assert failures == [], f"{len(failures)} failed requests during the reload"
    seen = [body["model_versions"]["churn"] for _, body in results]
    assert seen[0] == before["churn"] and seen[-1] == new_version
    switch = seen.index(new_version)
    assert all(v == new_version for v in seen[switch:]), "versions went back and forth"
    for _, body in results:  # every response is consistent with the versions it reports
        assert all(s["model_versions"] == body["model_versions"] for s in body["scores"])

    # The authenticated reload answers with what is served.
    response = client.post("/admin/reload", json={})
    assert response.status_code == 200
    assert response.json()["model_versions"]["churn"] == new_version


# --- the online store failing (last: it breaks the store) -----------------------------------
@pytest.mark.parametrize("failure", ["removed", "unreadable"])
def test_online_store_failure_gives_503_and_not_ready(home, server, client, failure):
    path = Path(home.online_store_path)
    aside = path.with_name(path.name + ".aside")
    shutil.move(path, aside)
    try:
        if failure == "unreadable":
            path.write_bytes(b"this is not a SQLite database" * 100)
        started = time.monotonic()
        response = client.post("/score", json={"customer_ids": [IDS[0]]})
        assert time.monotonic() - started < 10
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "online_store_unavailable"
        assert "Traceback" not in response.text
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        if failure == "removed":
            missing = "the online store file is missing"
            assert response.json()["message"] == missing and ready.json()["reason"] == missing
        # The client is told what failed, never where: the path stays in the server's log.
        for answer in (response, ready):
            assert path.name not in answer.text and not SERVER_PATH.search(answer.text)
        assert str(path) in server.log()
    finally:
        path.unlink(missing_ok=True)
        shutil.move(aside, path)
    assert client.post("/score", json={"customer_ids": [IDS[0]]}).status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_server_binds_loopback_by_default(server):
    port = int(server.url.rsplit(":", 1)[1])
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0 / ::
