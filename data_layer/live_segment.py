"""The live segment of the canonical event store, and the store's event-id index and lock.

Live events (``POST /events``, ``omniscore stream``) arrive a few at a time; a Parquet file
per request would litter the store with tiny files. They are appended instead to an SQLite
file in the store, ``events/live-segment.db`` (WAL, ``synchronous=FULL``: a committed
append has been fsync'd), and *sealed* into an ordinary Parquet file of the store
(``live-<first seq>-<last seq>.parquet``) when any reader lists the store
(:func:`data_layer.event_store.event_files` calls :func:`seal`) or when the segment grows
past :data:`SEAL_ROWS`. Every reader of the store therefore sees every accepted live event,
and a batch rebuild reproduces the live state.

The same SQLite file indexes the ``event_id`` of every stored event (Parquet files are
indexed once, when they first appear), so deciding whether an event is a duplicate is one
indexed lookup, never a scan of the store.

Every writer of the store (live appends, sealing, :func:`data_layer.event_store.write_events`)
holds :func:`store_lock`: an exclusive ``fcntl`` lock on ``events/.lock``, re-entrant within
a process. Several processes appending at once therefore give exact results.

Crash safety: a seal writes and fsyncs its Parquet file, renames it into place, and only
then, in one SQLite transaction, records the file as indexed and deletes the rows it holds.
A process killed in between leaves a ``live-*`` file that is not yet recorded; the next
holder of the lock (:func:`_recover`) finishes that bookkeeping before anything else, so no
event is ever both in the segment and in a Parquet file when the lock is released.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_layer.schema import EVENT_SCHEMA
from data_layer.settings import Settings

SEGMENT_NAME = "live-segment.db"
LOCK_NAME = ".lock"
SEAL_ROWS = 200_000
"""A segment holding this many rows is sealed by the append that reaches it."""
_SEALED = re.compile(r"^live-(\d{12})-(\d{12})\.parquet$")
_LOOKUP_CHUNK = 900  # stays below SQLite's smallest limit on bound parameters
_COLUMNS = tuple(EVENT_SCHEMA.names)

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: names sealed files
    event_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    event_timestamp INTEGER NOT NULL,
    channel TEXT NOT NULL,
    event_type TEXT NOT NULL,
    family TEXT NOT NULL,
    amount REAL,
    session_id TEXT,
    device TEXT,
    rating REAL,
    campaign_id TEXT
);
CREATE TABLE IF NOT EXISTS stored_ids (event_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS indexed_files (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""

_process_locks: dict[Path, threading.RLock] = {}
_held: dict[Path, list] = {}  # lock path -> [open file, depth]
_registry_guard = threading.Lock()


def segment_path(settings: Settings) -> Path:
    """The SQLite file holding unsealed live events and the event-id index."""
    return settings.events_dir / SEGMENT_NAME


@contextmanager
def store_lock(settings: Settings) -> Iterator[None]:
    """Exclusive lock on the event store across processes (``fcntl.flock``) and threads.

    Re-entrant in one thread: a writer that holds it may call another function that takes it.
    """
    settings.events_dir.mkdir(parents=True, exist_ok=True)
    path = (settings.events_dir / LOCK_NAME).resolve()
    with _registry_guard:
        rlock = _process_locks.setdefault(path, threading.RLock())
    with rlock:
        entry = _held.get(path)
        if entry is None:
            handle = open(path, "a+b")  # noqa: SIM115 - held across the yield below
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            except BaseException:
                handle.close()
                raise
            entry = _held[path] = [handle, 0]
        entry[1] += 1
        try:
            yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[path]
                fcntl.flock(entry[0].fileno(), fcntl.LOCK_UN)
                entry[0].close()


class _Connection:
    """The process's connection to one segment file, used only while the store lock is held.

    Reopened when the file was replaced (another process reset the store) or after a fork.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed transaction has been fsync'd, so an accepted event survives a
        # crash of the machine, not only of the process.
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(_SCHEMA_SQL)
        self.identity = (os.getpid(), os.stat(path).st_ino)

    def current(self) -> bool:
        try:
            return self.identity == (os.getpid(), os.stat(self.path).st_ino)
        except FileNotFoundError:
            return False


_connections: dict[Path, _Connection] = {}
_readers = threading.local()


def _connect(settings: Settings) -> sqlite3.Connection:
    """The segment connection (call with the store lock held; do not close it)."""
    path = segment_path(settings).resolve()
    cached = _connections.get(path)
    if cached is None or not cached.current():
        if cached is not None and cached.identity[0] == os.getpid():
            cached.conn.close()
        cached = _connections[path] = _Connection(path)
    return cached.conn


def _forget(settings: Settings) -> None:
    cached = _connections.pop(segment_path(settings).resolve(), None)
    if cached is not None and cached.identity[0] == os.getpid():
        cached.conn.close()


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction; rolled back on any error, so the cached connection stays usable."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _parquet_files(settings: Settings) -> list[Path]:
    # Every file of the store: directly under events/ and in its month/bucket layout.
    return sorted(settings.events_dir.rglob("*.parquet"))


def _name(settings: Settings, path: Path) -> str:
    """A file's key in ``indexed_files``: its path inside the store (layout files share names)."""
    return path.relative_to(settings.events_dir).as_posix()


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in folder ``path`` durable (fsync the folder itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _recover(conn: sqlite3.Connection, files: list[Path]) -> None:
    """Finish a seal whose process died after renaming its file (see the module docstring)."""
    indexed = {row[0] for row in conn.execute("SELECT name FROM indexed_files")}
    for path in files:
        match = _SEALED.match(path.name)
        # Only a seal's own file (directly under events/) can be unfinished: a live file
        # that migrate-events moved into the layout was recorded long before.
        if match is None or path.name in indexed or path.parent.name.startswith("bucket="):
            continue
        first, last = int(match.group(1)), int(match.group(2))
        with _transaction(conn):
            conn.execute("INSERT OR IGNORE INTO indexed_files VALUES (?)", (path.name,))
            conn.execute("DELETE FROM pending WHERE seq BETWEEN ? AND ?", (first, last))


def _sync_index(conn: sqlite3.Connection, settings: Settings) -> None:
    """Bring the event-id index up to date with the store's Parquet files (lock held).

    New files (from ``generate`` or ``ingest``) have their ids added once; if an indexed file
    has disappeared (the store was replaced), the index is rebuilt from what is stored.
    """
    files = _parquet_files(settings)
    _recover(conn, files)
    names = {_name(settings, p) for p in files}
    indexed = {row[0] for row in conn.execute("SELECT name FROM indexed_files")}
    if indexed - names:
        with _transaction(conn):
            conn.execute("DELETE FROM stored_ids")
            conn.execute("DELETE FROM indexed_files")
            conn.execute("INSERT OR IGNORE INTO stored_ids SELECT event_id FROM pending")
        indexed = set()
    for path in files:
        if _name(settings, path) in indexed:
            continue
        column = pq.read_table(path, columns=["event_id"]).column("event_id").combine_chunks()
        ordered = column.take(pc.sort_indices(column))  # sorted keys: B-tree appends
        with _transaction(conn):
            conn.executemany(
                "INSERT OR IGNORE INTO stored_ids VALUES (?)", zip(ordered.to_pylist(), strict=True)
            )
            conn.execute("INSERT INTO indexed_files VALUES (?)", (_name(settings, path),))


def index_store(settings: Settings) -> None:
    """Index the ids of every stored Parquet file now (the first live append would otherwise
    do it inside its request: seconds per ten million events). The service calls it at start."""
    if not _parquet_files(settings):
        return
    with store_lock(settings):
        _sync_index(_connect(settings), settings)


def _lookup(conn: sqlite3.Connection, event_ids: list[str]) -> set[str]:
    found: set[str] = set()
    unique = list(dict.fromkeys(event_ids))
    for lo in range(0, len(unique), _LOOKUP_CHUNK):
        part = unique[lo : lo + _LOOKUP_CHUNK]
        marks = ",".join("?" * len(part))
        found.update(
            row[0]
            for row in conn.execute(
                f"SELECT event_id FROM stored_ids WHERE event_id IN ({marks})", part
            )
        )
    return found


def append(settings: Settings, table: pa.Table) -> np.ndarray:
    """Durably append the rows of ``table`` whose ``event_id`` is not stored yet.

    ``table`` is canonical (:data:`EVENT_SCHEMA`). Returns a boolean array, one per row: True
    for a row written now, False for a duplicate (already stored, or repeated earlier in
    ``table``). When this returns, the written rows are committed and fsync'd.
    """
    if table.schema != EVENT_SCHEMA:
        table = table.cast(EVENT_SCHEMA)
    ids = table.column("event_id").to_pylist()
    fresh = np.zeros(len(ids), dtype=bool)
    if not ids:
        return fresh
    with store_lock(settings):
        conn = _connect(settings)
        _sync_index(conn, settings)
        known = _lookup(conn, ids)
        seen: dict[str, None] = {}
        for i, event_id in enumerate(ids):
            if event_id not in known and event_id not in seen:
                fresh[i] = True
                seen[event_id] = None
        if fresh.any():
            rows = _rows(table.filter(pa.array(fresh)))
            with _transaction(conn):
                conn.executemany("INSERT INTO stored_ids VALUES (?)", ((i,) for i in seen))
                conn.executemany(
                    f"INSERT INTO pending ({', '.join(_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_COLUMNS))})",
                    rows,
                )
        # A bound on the row count from the rowid range: count(*) would scan the segment.
        low, high = conn.execute("SELECT min(seq), max(seq) FROM pending").fetchone()
        if low is not None and high - low + 1 >= SEAL_ROWS:
            seal(settings)
    return fresh


def _rows(table: pa.Table) -> Iterator[tuple]:
    columns = {}
    for name in _COLUMNS:
        column = table.column(name)
        if name == "event_timestamp":
            column = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        columns[name] = column.to_pylist()
    return zip(*(columns[name] for name in _COLUMNS), strict=True)


def pending_count(settings: Settings) -> int:
    """Live events not sealed into Parquet yet."""
    if not segment_path(settings).exists():
        return 0
    with store_lock(settings):
        return _connect(settings).execute("SELECT count(*) FROM pending").fetchone()[0]


def _reader(settings: Settings) -> sqlite3.Connection | None:
    """A read-only connection of this thread to the segment (None when there is none)."""
    path = segment_path(settings)
    cached = getattr(_readers, "connections", None)
    if cached is None:
        cached = _readers.connections = {}
    entry = cached.get(path)
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return None
    if entry is None or entry[1] != inode:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        entry = cached[path] = (conn, inode)
    return entry[0]


def last_seq(settings: Settings) -> int:
    """The sequence number of the newest live event ever appended (0 when none)."""
    conn = _reader(settings)
    if conn is None:
        return 0
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'pending'").fetchone()
    except sqlite3.OperationalError:  # created but no table yet
        return 0
    return int(row[0]) if row else 0


def customers_since(settings: Settings, seq: int) -> tuple[int, set[str] | None]:
    """``(newest sequence number, customers with live events appended after seq)``.

    The set is None when some of those events were sealed away already (their customers can
    no longer be told; a cache must then forget everything). One indexed read, no lock.
    """
    newest = last_seq(settings)
    if newest == seq:
        return newest, set()
    if newest < seq:  # the segment was reset (the store replaced)
        return newest, None
    conn = _reader(settings)
    rows = conn.execute("SELECT min(seq) FROM pending WHERE seq > ?", (seq,)).fetchone()
    if rows[0] is None or rows[0] != seq + 1:
        return newest, None
    found = conn.execute("SELECT DISTINCT customer_id FROM pending WHERE seq > ?", (seq,))
    return newest, {row[0] for row in found}


def seal(settings: Settings) -> Path | None:
    """Move the segment's events into a Parquet file of the store; returns it (None if empty)."""
    if not segment_path(settings).exists():
        return None
    with store_lock(settings):
        conn = _connect(settings)
        _recover(conn, _parquet_files(settings))
        cursor = conn.execute(f"SELECT seq, {', '.join(_COLUMNS)} FROM pending ORDER BY seq")
        rows = cursor.fetchall()
        if not rows:
            return None
        first, last = rows[0][0], rows[-1][0]
        columns = list(zip(*rows, strict=True))[1:]
        arrays = {}
        for name, values in zip(_COLUMNS, columns, strict=True):
            field = EVENT_SCHEMA.field(name)
            if name == "event_timestamp":
                arrays[name] = pa.array(values, pa.int64()).cast(field.type)
            else:
                arrays[name] = pa.array(values, field.type)
        table = pa.Table.from_pydict(arrays, schema=EVENT_SCHEMA)
        # Same order as the batch writer: grouped by customer, then by time.
        table = table.sort_by([("customer_id", "ascending"), ("event_timestamp", "ascending")])
        path = settings.events_dir / f"live-{first:012d}-{last:012d}.parquet"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")
            handle.flush()
            os.fsync(handle.fileno())
        tmp.rename(path)
        fsync_dir(settings.events_dir)
        with _transaction(conn):
            conn.execute("INSERT OR IGNORE INTO indexed_files VALUES (?)", (path.name,))
            conn.execute("DELETE FROM pending WHERE seq BETWEEN ? AND ?", (first, last))
        return path


def reset(settings: Settings) -> None:
    """Forget the segment and the index (the store is being replaced; lock held by caller)."""
    with store_lock(settings):
        _forget(settings)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{segment_path(settings)}{suffix}").unlink(missing_ok=True)
