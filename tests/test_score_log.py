"""The score log: scores are recorded in the background, dropped (and counted) rather than
blocking when the queue is full, kept for the retention, on SQLite or PostgreSQL; batch
scoring and the service record theirs."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
from training_home import copy_home

from data_layer.score_log import ScoreLog, destination, read_scores
from data_layer.settings import Settings

VERSIONS = {"propensity": "3", "churn": "2", "segments": "1"}
DAY = datetime(2026, 6, 1, tzinfo=UTC)


def _record(log: ScoreLog, ids: list[str], when: datetime, source: str = "score") -> bool:
    n = len(ids)
    return log.record(
        source,
        when,
        ids,
        np.ones(n, dtype=bool),
        {"propensity": np.linspace(0.1, 0.9, n), "churn": np.full(n, 0.25)},
        {
            "propensity": np.array(["low"] * n, dtype=object),
            "churn": np.array(["high"] * n, dtype=object),
        },  # fmt: skip
        np.arange(n),
        np.array([f"segment {i}" for i in range(n)], dtype=object),
        VERSIONS,
    )


def test_scores_are_written_and_read_back_per_model(tmp_path):
    settings = Settings.from_env(tmp_path, env={})
    log = ScoreLog.open(settings)
    for k in range(50):
        assert _record(log, [f"C{k:03d}a", f"C{k:03d}b"], DAY + timedelta(minutes=k))
    log.close()
    assert log.written == 200 and log.dropped == 0 and log.failed == 0
    churn = read_scores(settings, "omniscore-churn")
    assert len(churn) == 100
    assert set(churn["version"]) == {"2"} and set(churn["band"]) == {"high"}
    assert (churn["probability"] == 0.25).all()
    assert set(churn["segments_version"]) == {"1"}
    propensity = read_scores(settings, "omniscore-propensity", start=DAY + timedelta(minutes=49))
    assert sorted(propensity["customer_id"]) == ["C049a", "C049b"]
    assert propensity["probability"].tolist() == [0.1, 0.9]
    assert propensity["scored_at"].iloc[0] == DAY + timedelta(minutes=49)


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    settings = Settings.from_env(tmp_path, env={})
    dropped: list[int] = []
    log = ScoreLog.open(settings, on_drop=dropped.append, queue_batches=2)
    # Another writer holds the database: the log's writer waits on its first batch.
    blocker = sqlite3.connect(destination(settings))
    blocker.execute("BEGIN EXCLUSIVE")
    assert _record(log, ["A"], DAY)
    deadline = time.monotonic() + 30
    while log._queue.qsize() and time.monotonic() < deadline:
        time.sleep(0.01)  # until the writer has taken batch A and waits for the lock
    assert log._queue.qsize() == 0
    assert _record(log, ["B"], DAY) and _record(log, ["C"], DAY)
    # The queue is full: the next record returns (dropped) while the writer still waits.
    outcome: list[bool] = []
    caller = threading.Thread(target=lambda: outcome.append(_record(log, ["D", "E"], DAY)))
    caller.start()
    caller.join(timeout=10)
    assert not caller.is_alive() and outcome == [False]
    assert log.dropped == 1 and dropped == [2]
    blocker.rollback()
    blocker.close()
    log.close()
    assert sorted(set(read_scores(settings)["customer_id"])) == ["A", "B", "C"]


def test_retention_keeps_days_counted_back_from_the_newest_score(tmp_path):
    settings = Settings.from_env(tmp_path, env={"OMNISCORE_SCORE_LOG_RETENTION_DAYS": "10"})
    log = ScoreLog.open(settings)
    _record(log, ["old"], DAY - timedelta(days=11))
    _record(log, ["kept"], DAY - timedelta(days=9))
    _record(log, ["new"], DAY)
    log.close()
    # A new writer applies the retention when it starts.
    ScoreLog.open(settings).close()
    assert sorted(set(read_scores(settings)["customer_id"])) == ["kept", "new"]


def test_the_log_can_be_turned_off_and_a_bad_target_is_refused(tmp_path):
    off = Settings.from_env(tmp_path, env={"OMNISCORE_SCORE_LOG": "off"})
    assert ScoreLog.open(off) is None
    assert read_scores(off).empty
    bad = Settings.from_env(tmp_path, env={"OMNISCORE_SCORE_LOG": "mysql://x"})
    with pytest.raises(ValueError, match="OMNISCORE_SCORE_LOG"):
        ScoreLog.open(bad)
    with pytest.raises(ValueError, match="at least 1"):
        Settings.from_env(tmp_path, env={"OMNISCORE_SCORE_LOG_RETENTION_DAYS": "0"})


@pytest.mark.services
def test_postgres_score_log(tmp_path, postgres_db):
    url = postgres_db()
    settings = Settings.from_env(tmp_path, env={"OMNISCORE_SCORE_LOG": url})
    log = ScoreLog.open(settings)
    assert log.postgres
    threads = [
        threading.Thread(target=_record, args=(log, [f"T{t}-{i}" for i in range(20)], DAY))
        for t in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    frame = read_scores(settings, "omniscore-propensity")
    assert len(frame) == 80 and frame["known"].all()
    assert not (tmp_path / "score_log.db").exists()


@pytest.mark.slow
def test_batch_scoring_and_the_service_record_every_score(serving_home, tmp_path):
    from serving.batch import score_batch
    from serving.launcher import start_server

    home = copy_home(serving_home, tmp_path / "home")
    as_of = datetime(2026, 6, 28, tzinfo=UTC)
    report = score_batch(home, tmp_path / "scores.parquet", as_of=as_of)
    logged = read_scores(home)
    assert len(logged) == 2 * report.customers
    assert set(logged["source"]) == {"batch"}
    assert (logged["scored_at"] == as_of).all()
    assert set(logged["version"]) == {report.versions["propensity"], report.versions["churn"]}

    ids = ["C000001", "C000002", "not-a-customer"]
    options = {"features": "online", "reload_interval": 0, "clock": "2026-06-29T00:00:00Z"}
    with start_server(home, options=options) as server:
        response = httpx.post(f"{server.url}/score", json={"customer_ids": ids}, timeout=30)
        assert response.status_code == 200, response.text
        served = response.json()["scores"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            online = read_scores(home, start=datetime(2026, 6, 29, tzinfo=UTC))
            if len(online) == 2 * len(ids):
                break
            time.sleep(0.2)
    assert len(online) == 2 * len(ids)
    assert set(online["source"]) == {"score"}
    for record in served:
        row = online[
            (online["customer_id"] == record["customer_id"])
            & (online["model"] == "omniscore-propensity")
        ].iloc[0]
        assert row["probability"] == pytest.approx(record["propensity"]["probability"])
        assert row["band"] == record["propensity"]["band"]
        assert row["segment_id"] == record["segment"]["id"]
        assert bool(row["known"]) == record["known"]


def test_forget_customers_removes_their_scores(tmp_path):
    from data_layer.score_log import forget_customers

    settings = Settings.from_env(tmp_path, env={})
    log = ScoreLog.open(settings)
    _record(log, ["keep", "erase-1", "erase-2"], DAY)
    log.close()
    assert forget_customers(settings, ["erase-1", "erase-2", "never-scored"]) == 4
    assert set(read_scores(settings)["customer_id"]) == {"keep"}
