"""The score log: every score served, kept so it can later be checked against what happened.

One row per customer and classifier: when it was scored (the scorer's clock), the customer,
the registered model name and version, the calibrated probability, the band, the segment
(id, name and the segments version) and where it was served from (``score`` for
``POST /score``, ``customer_view`` for ``GET /customers/{id}``, ``batch`` for
``omniscore score-batch``). ``omniscore backtest`` reads it (:func:`read_scores`).

Where it goes is the :class:`~data_layer.settings.Settings` field ``score_log``
(``OMNISCORE_SCORE_LOG``): unset or ``sqlite``, the SQLite file ``<home>/score_log.db``;
a ``postgresql://`` URL, a table ``score_log`` in that database; ``off``, nowhere.
``score_log_retention_days`` (``OMNISCORE_SCORE_LOG_RETENTION_DAYS``) keeps that many days,
counted back from the newest score logged (so a replay with a fixed clock keeps its scores).

Writing never holds up a request: :meth:`ScoreLog.record` only puts a reference to the
request's score arrays on a bounded queue (no copy, no row building) and returns. A
background thread takes batches off the queue, expands them into rows and writes them in one
transaction per flush; it lingers a quarter second after the first batch of a flush so that
steady traffic costs it one wake-up and one commit per flush, not one per request. When the
queue is full (the database is slower than the traffic for longer than the queue lasts) the
batch is dropped and counted (:attr:`ScoreLog.dropped`, and the ``on_drop`` callback, which
the service wires to a Prometheus counter); a request is never blocked. A write that fails is
logged and its rows counted in :attr:`ScoreLog.failed`.

The module knows no model: it stores names, versions and numbers it is given.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from data_layer.settings import Settings

logger = logging.getLogger("omniscore.score_log")

QUEUE_BATCHES = 10_000
"""Batches (one per request) the queue holds before new ones are dropped."""
FLUSH_ROWS = 5_000
"""Rows written per transaction at most."""
FLUSH_SECONDS = 0.5
"""A partial batch of rows waits at most this long before it is written."""
LINGER_SECONDS = 0.25
"""After the first request of a flush arrives, the writer waits this long for more (unless
asked to flush): one wake-up and one transaction per quarter second under steady traffic,
rather than one per request competing with the next request for the CPU and the GIL."""
RETENTION_EVERY_SECONDS = 3600.0
"""How often the writer deletes scores older than the retention."""
REGISTERED_PREFIX = "omniscore-"
"""Prefix of registered model names (as in :mod:`training.contract`)."""
SOURCES = ("score", "customer_view", "batch")
_NOTHING = object()
COLUMNS = (
    "scored_at",
    "customer_id",
    "model",
    "version",
    "probability",
    "band",
    "segment_id",
    "segment_name",
    "segments_version",
    "known",
    "source",
)
_SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS score_log (
    scored_at REAL NOT NULL, customer_id TEXT NOT NULL, model TEXT NOT NULL,
    version TEXT NOT NULL, probability REAL NOT NULL, band TEXT NOT NULL,
    segment_id INTEGER, segment_name TEXT, segments_version TEXT,
    known INTEGER NOT NULL, source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS score_log_model_time ON score_log (model, scored_at);
"""
_PG_DDL = """
CREATE TABLE IF NOT EXISTS score_log (
    scored_at DOUBLE PRECISION NOT NULL, customer_id TEXT NOT NULL, model TEXT NOT NULL,
    version TEXT NOT NULL, probability DOUBLE PRECISION NOT NULL, band TEXT NOT NULL,
    segment_id BIGINT, segment_name TEXT, segments_version TEXT,
    known BOOLEAN NOT NULL, source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS score_log_model_time ON score_log (model, scored_at);
"""


def destination(settings: Settings) -> str | None:
    """Where ``settings`` send the score log: a ``postgresql://`` URL, a SQLite file path,
    or None when it is off."""
    value = (settings.score_log or "sqlite").strip()
    if value.lower() == "off":
        return None
    if value.lower() == "sqlite":
        return str(settings.home / "score_log.db")
    if value.startswith(("postgresql://", "postgres://")):
        return value
    raise ValueError(
        "score_log (OMNISCORE_SCORE_LOG) must be 'sqlite', 'off' or a postgresql:// URL, "
        f"got {value!r}"
    )


@dataclass
class _Batch:
    """One call's scores, as references to the caller's arrays (expanded by the writer)."""

    source: str
    scored_at: float
    customer_ids: Sequence[str]
    known: np.ndarray
    probability: Mapping[str, np.ndarray]
    band: Mapping[str, np.ndarray]
    segment_id: np.ndarray
    segment_name: np.ndarray
    versions: Mapping[str, str]

    def rows(self) -> list[tuple]:
        """The batch as rows in :data:`COLUMNS` order, one per customer and classifier."""
        ids = list(self.customer_ids)
        known = np.asarray(self.known, dtype=bool).tolist()
        seg_id = np.asarray(self.segment_id).tolist()
        seg_name = np.asarray(self.segment_name, dtype=object).tolist()
        seg_version = self.versions.get("segments")
        out = []
        for short, probability in self.probability.items():
            name = REGISTERED_PREFIX + short
            version = str(self.versions[short])
            p = np.asarray(probability, dtype=float).tolist()
            b = np.asarray(self.band[short], dtype=object).tolist()
            for i, cid in enumerate(ids):
                out.append(
                    (
                        self.scored_at, cid, name, version, p[i], b[i],
                        seg_id[i], seg_name[i], seg_version, known[i], self.source,
                    )
                )  # fmt: skip
        return out


class ScoreLog:
    """A bounded queue and the background thread that writes it (see the module docstring).

    Open with :meth:`open` (None when the log is off); :meth:`close` flushes and stops.
    """

    def __init__(
        self,
        target: str,
        retention_days: int,
        queue_batches: int = QUEUE_BATCHES,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.target = target
        self.retention_days = retention_days
        self.on_drop = on_drop
        self.dropped = 0
        """Batches dropped because the queue was full."""
        self.failed = 0
        """Rows whose write failed (logged)."""
        self.written = 0
        """Rows written."""
        self._queue: queue.Queue = queue.Queue(maxsize=queue_batches)
        self._ready = threading.Event()
        self._hurry = threading.Event()
        """Set by flush() and close(): write what is queued now, without lingering."""
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="omniscore-score-log", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    @classmethod
    def open(
        cls, settings: Settings, on_drop: Callable[[int], None] | None = None, **options
    ) -> ScoreLog | None:
        """The score log the settings configure, started; None when it is off."""
        target = destination(settings)
        if target is None:
            return None
        return cls(target, settings.score_log_retention_days, on_drop=on_drop, **options)

    @property
    def postgres(self) -> bool:
        """Whether the log is a PostgreSQL table."""
        return self.target.startswith(("postgresql://", "postgres://"))

    # -- the request side ----------------------------------------------------------------
    def record(
        self,
        source: str,
        scored_at: datetime | float,
        customer_ids: Sequence[str],
        known,
        probability: Mapping[str, np.ndarray],
        band: Mapping[str, np.ndarray],
        segment_id,
        segment_name,
        versions: Mapping[str, str],
    ) -> bool:
        """Queue one call's scores (the arrays are referenced, not copied: do not mutate them
        afterwards). Never blocks; returns False when the queue was full and they were
        dropped."""
        if isinstance(scored_at, datetime):
            scored_at = utc_seconds(scored_at)
        batch = _Batch(
            source, float(scored_at), customer_ids, known, probability, band,
            segment_id, segment_name, versions,
        )  # fmt: skip
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop(len(customer_ids))
            return False
        return True

    def record_scores(self, source: str, scored_at: datetime | float, scores) -> bool:
        """Queue a :class:`serving.scoring.Scores` (duck-typed: this layer knows no model)."""
        return self.record(
            source,
            scored_at,
            scores.customer_ids,
            scores.known,
            scores.probability,
            scores.band,
            scores.segment_id,
            scores.segment_name,
            scores.versions,
        )

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until everything queued so far is written (or failed)."""
        deadline = time.monotonic() + timeout
        self._hurry.set()
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self, timeout: float = 60.0) -> None:
        """Write what is queued, then stop the writer thread."""
        self.flush(timeout)
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._hurry.set()
        self._thread.join(timeout)

    # -- the writer thread ---------------------------------------------------------------
    def _connect(self):
        if self.postgres:
            import psycopg

            connection = psycopg.connect(self.target, autocommit=False)
            with connection.cursor() as cursor:
                cursor.execute(_PG_DDL)
            connection.commit()
            return connection
        Path(self.target).parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.target, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL syncs at checkpoints, not at every commit: a power cut may lose
        # the last commits of a log, never corrupt it, and commits stop waiting on the disk.
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(_SQLITE_DDL)
        connection.commit()
        return connection

    def _run(self) -> None:
        try:
            connection = self._connect()
        except BaseException as exc:  # reported to open()'s caller
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        last_retention = -math.inf  # a new writer applies the retention at once
        stop = False
        while not stop:
            try:
                batch = self._queue.get(timeout=FLUSH_SECONDS)
            except queue.Empty:
                batch = _NOTHING  # nothing queued: still check the retention below
            taken = 0 if batch is _NOTHING else 1
            if batch is not _NOTHING and batch is not None:
                # Let the next requests' scores join this write (see LINGER_SECONDS).
                self._hurry.wait(LINGER_SECONDS)
            self._hurry.clear()
            rows: list[tuple] = []
            while batch is not _NOTHING:
                if batch is None:  # close() asked the writer to stop
                    stop = True
                    break
                rows.extend(batch.rows())
                if len(rows) >= FLUSH_ROWS:
                    break
                try:
                    batch = self._queue.get_nowait()
                except queue.Empty:
                    break
                taken += 1
            if rows:
                connection = self._write(connection, rows)
            for _ in range(taken):
                self._queue.task_done()
            if time.monotonic() - last_retention > RETENTION_EVERY_SECONDS:
                last_retention = time.monotonic()
                connection = self._apply_retention(connection)
        connection.close()

    def _write(self, connection, rows: list[tuple]):
        marks = ", ".join(["%s" if self.postgres else "?"] * len(COLUMNS))
        sql = f"INSERT INTO score_log ({', '.join(COLUMNS)}) VALUES ({marks})"
        try:
            if self.postgres:
                with connection.cursor() as cursor:
                    cursor.executemany(sql, rows)
            else:
                connection.executemany(sql, rows)
            connection.commit()
            self.written += len(rows)
        except Exception:
            self.failed += len(rows)
            logger.exception("writing %d score-log rows failed; they are lost", len(rows))
            try:
                connection.rollback()
            except Exception:
                connection = self._reconnect(connection)
        return connection

    def _reconnect(self, connection):
        with contextlib.suppress(Exception):  # it is being replaced anyway
            connection.close()
        try:
            return self._connect()
        except Exception:
            logger.exception("the score log cannot reconnect; retrying at the next flush")
            return connection

    def _apply_retention(self, connection):
        """Delete scores older than the retention, counted back from the newest score."""
        try:
            cursor = connection.cursor()
            cursor.execute("SELECT max(scored_at) FROM score_log")
            newest = cursor.fetchone()[0]
            if newest is not None:
                cutoff = float(newest) - self.retention_days * 86400.0
                mark = "%s" if self.postgres else "?"
                cursor.execute(f"DELETE FROM score_log WHERE scored_at < {mark}", (cutoff,))
            connection.commit()
        except Exception:
            logger.exception("applying the score-log retention failed")
            connection = self._reconnect(connection)
        return connection


def read_scores(
    settings: Settings,
    model: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pd.DataFrame:
    """Logged scores (columns :data:`COLUMNS`, ``scored_at`` as UTC timestamps) of a
    registered model (or all) scored in ``[start, end)``; empty when there is no log."""
    target = destination(settings)
    empty = pd.DataFrame({c: [] for c in COLUMNS})
    if target is None:
        return empty
    postgres = target.startswith(("postgresql://", "postgres://"))
    if not postgres and not Path(target).exists():
        return empty
    mark = "%s" if postgres else "?"
    where, params = [], []
    if model is not None:
        where.append(f"model = {mark}")
        params.append(model)
    if start is not None:
        where.append(f"scored_at >= {mark}")
        params.append(utc_seconds(start))
    if end is not None:
        where.append(f"scored_at < {mark}")
        params.append(utc_seconds(end))
    sql = f"SELECT {', '.join(COLUMNS)} FROM score_log"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if postgres:
        import psycopg

        with psycopg.connect(target) as connection, connection.cursor() as cursor:
            try:
                cursor.execute(sql, params)
            except psycopg.errors.UndefinedTable:
                return empty
            rows = cursor.fetchall()
    else:
        with sqlite3.connect(target) as connection:
            try:
                rows = connection.execute(sql, params).fetchall()
            except sqlite3.OperationalError:
                return empty
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["scored_at"] = pd.to_datetime(frame["scored_at"], unit="s", utc=True)
    frame["known"] = frame["known"].astype(bool)
    return frame


def utc_seconds(moment: datetime) -> float:
    """Epoch seconds of an aware or naive-UTC datetime."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def forget_customers(settings: Settings, customer_ids: Sequence[str]) -> int:
    """Delete every logged score of the customers (right to erasure); returns rows removed.

    Scores still queued in a running writer are written afterwards: call this after the
    service has stopped scoring them (the erasure path drops them from its cache first).
    """
    target = destination(settings)
    ids = list(dict.fromkeys(customer_ids))
    if target is None or not ids:
        return 0
    if target.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(target) as connection, connection.cursor() as cursor:
            try:
                cursor.execute("DELETE FROM score_log WHERE customer_id = ANY(%s)", (ids,))
            except psycopg.errors.UndefinedTable:
                return 0
            return cursor.rowcount
    if not Path(target).exists():
        return 0
    with sqlite3.connect(target, timeout=30) as connection:
        try:
            removed = 0
            for lo in range(0, len(ids), 500):
                chunk = ids[lo : lo + 500]
                marks = ", ".join("?" * len(chunk))
                removed += connection.execute(
                    f"DELETE FROM score_log WHERE customer_id IN ({marks})", chunk
                ).rowcount
        except sqlite3.OperationalError:
            return 0
    return removed
