"""Right to erasure: forget customers everywhere the home stores them, and keep them out.

:func:`forget` takes a batch of customer ids (one or thousands) and makes one pass per store:

- **suppression first**: the keyed hashes of the ids join the suppression list before any
  store is touched, so an event arriving meanwhile is quarantined as ``erased customer``
  instead of slipping back in (:func:`is_suppressed`, checked by ``omniscore ingest``,
  ``POST /events`` and the stream through :func:`withhold_events`);
- **Parquet** (event store, quarantine, profile table, feature snapshots, ground truth, any
  other table under the home with a ``customer_id`` column): each file that holds a row of
  an erased customer is rewritten without those rows into a temporary file, fsync'd and
  renamed over the original, so a file is always either the old or the new one;
- **SQLite** (the live segment's event-id index, the Feast online store, the live state):
  rows deleted, then ``VACUUM`` and a WAL checkpoint that truncates the log, so no freed
  page or WAL frame still holds an id (``secure_delete`` zeroes freed pages too);
- **Redis** (Feast online hashes, live-state keys, stream entries): keys and entries
  deleted; pending stream entries of erased customers are acknowledged.

Each request ends with a receipt appended to the audit log (:data:`AUDIT_NAME`): keyed
hashes, times, per-store row counts and the model versions the caller says were trained on
data that included the customers. No raw id is written anywhere by this module.

Every step is idempotent, so a forget killed halfway is completed by running it again: the
suppression entry and the pending obligations (:data:`PENDING_NAME`) survive the crash, and
the stores are searched again. Other customers' rows are copied unchanged.

The key of the hashes is ``$OMNISCORE_ERASURE_KEY`` or, when unset, a random key generated
once into ``privacy/erasure.key`` (mode 0600) under the home. It is never printed.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_layer.live_segment import fsync_dir
from data_layer.settings import Settings

ERASED_REASON = "erased customer"
"""Quarantine reason of an event or profile row of a suppressed customer."""
KEY_ENV = "OMNISCORE_ERASURE_KEY"
PRIVACY_DIR = "privacy"
KEY_NAME = "erasure.key"
SUPPRESSION_NAME = "suppressed.txt"
AUDIT_NAME = "audit.jsonl"
PENDING_NAME = "pending.json"
HASH_PREFIX = "erased:"
"""What replaces an erased customer's id in a quarantined row: ``erased:<keyed hash>``."""
_TMP_SUFFIX = ".erasing"
_CHUNK = 500


# --- keyed hashes and the suppression list -----------------------------------------------------
def privacy_dir(settings: Settings) -> Path:
    """Folder of the suppression list, the audit log and the generated key."""
    return settings.home / PRIVACY_DIR


def erasure_key(settings: Settings) -> bytes:
    """The HMAC key: ``$OMNISCORE_ERASURE_KEY``, or the home's generated key file."""
    configured = os.environ.get(KEY_ENV, "").strip()
    if configured:
        if len(configured) < 16:
            raise ValueError(f"{KEY_ENV} must be at least 16 characters")
        return configured.encode("utf-8")
    path = privacy_dir(settings) / KEY_NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process generated it first
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
    return path.read_text().strip().encode("utf-8")


def subject_hashes(key: bytes, customer_ids: Iterable[str]) -> list[str]:
    """HMAC-SHA256 of each id under ``key``, as hex: the only form an erased id is kept in."""
    return [hmac.new(key, str(c).encode("utf-8"), hashlib.sha256).hexdigest() for c in customer_ids]


@contextmanager
def _privacy_lock(settings: Settings) -> Iterator[None]:
    folder = privacy_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


_suppression_cache: dict[Path, tuple[tuple[int, int], frozenset[str]]] = {}


def suppression_stamp(settings: Settings) -> tuple[int, int] | None:
    """A value that changes whenever the suppression list changes (None: no list yet); a
    cache of features compares it to drop what it holds after another process's erasure."""
    try:
        stat = os.stat(privacy_dir(settings) / SUPPRESSION_NAME)
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def suppressed_hashes(settings: Settings) -> frozenset[str]:
    """The suppression list (keyed hashes); re-read only when the file changed."""
    path = privacy_dir(settings) / SUPPRESSION_NAME
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return frozenset()
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _suppression_cache.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    hashes = frozenset(line.strip() for line in path.read_text().splitlines() if line.strip())
    _suppression_cache[path] = (stamp, hashes)
    return hashes


def _change_suppression(settings: Settings, add: Sequence[str], remove: Sequence[str]) -> int:
    with _privacy_lock(settings):
        current = set(suppressed_hashes(settings))
        before = len(current)
        current.update(add)
        current.difference_update(remove)
        path = privacy_dir(settings) / SUPPRESSION_NAME
        _write_atomic(path, "".join(f"{h}\n" for h in sorted(current)))
        _suppression_cache.pop(path, None)
        return len(current) - before


def is_suppressed(settings: Settings, customer_ids: Sequence[Any]) -> np.ndarray:
    """One boolean per id: is it on the suppression list? (Cheap when the list is empty.)"""
    out = np.zeros(len(customer_ids), dtype=bool)
    hashes = suppressed_hashes(settings)
    if not hashes or not len(customer_ids):
        return out
    key = erasure_key(settings)
    cache: dict[str, bool] = {}
    for i, value in enumerate(customer_ids):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        text = str(value)
        hit = cache.get(text)
        if hit is None:
            hit = cache[text] = subject_hashes(key, [text])[0] in hashes
        out[i] = hit
    return out


def unsuppress(settings: Settings, customer_ids: Sequence[str]) -> int:
    """Lift the suppression of customers who sign up again; returns how many were lifted.

    The audit log gets a receipt of the lift (hash and time only)."""
    hashes = subject_hashes(erasure_key(settings), _clean_ids(customer_ids))
    lifted = len(set(hashes) & suppressed_hashes(settings))
    _change_suppression(settings, [], hashes)
    _append_audit(
        settings,
        {"kind": "unsuppress", "subjects": hashes, "lifted": lifted, "at": _now_iso()},
    )
    return lifted


def scrub_quarantine(settings: Settings, frame: pd.DataFrame) -> pd.DataFrame:
    """Quarantine rows with every cell that is a suppressed customer's id replaced by
    ``erased:<keyed hash>``, so the quarantine keeps what was rejected but no erased id."""
    hashes = suppressed_hashes(settings)
    if not hashes or frame.empty:
        return frame
    key = erasure_key(settings)
    out = frame.copy()
    text_columns = [
        name for name in out.columns
        if out[name].dtype.kind in "OSU" or str(out[name].dtype) == "string"
    ]  # fmt: skip
    found: dict[str, str] = {}
    for name in text_columns:
        values = out[name].dropna().astype(str).unique().tolist()
        for value, digest in zip(values, subject_hashes(key, values), strict=True):
            if digest in hashes:
                found[value] = HASH_PREFIX + digest
    if not found:
        return out
    # The ids found as whole cells are also replaced inside other cells (a session id or a
    # raw line that embeds the customer id).
    pattern = re.compile("|".join(re.escape(i) for i in sorted(found, key=len, reverse=True)))

    def scrub(value):
        if isinstance(value, str):
            return pattern.sub(lambda m: found[m.group(0)], value)
        return value

    for name in text_columns:
        out[name] = out[name].map(scrub)
    return out


def withhold_events(
    settings: Settings, raw: pd.DataFrame, accepted: pd.DataFrame, quarantined: pd.DataFrame,
    source: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Move a normalised file's valid rows of suppressed customers to its quarantine.

    ``raw`` is the source frame, ``accepted`` and ``quarantined`` what
    :func:`data_layer.ingest.normalise` made of it. The moved rows get the reason
    ``erased customer``; every quarantined cell holding an erased id is then scrubbed
    (:func:`scrub_quarantine`). Returns the new (accepted, quarantined).
    """
    if not suppressed_hashes(settings) or (accepted.empty and quarantined.empty):
        return accepted, quarantined
    from data_layer.ingest import quarantine_rows

    hit = is_suppressed(settings, accepted["customer_id"].tolist()) if len(accepted) else []
    if len(accepted) and hit.any():
        base = raw.reset_index(drop=True)
        base.columns = [str(c).strip() for c in base.columns]
        bad_rows = set((quarantined["source_row"].astype(int) - 1).tolist())
        good_positions = np.array([i for i in range(len(base)) if i not in bad_rows], dtype=int)
        if len(good_positions) == len(accepted):
            reason = pd.Series(pd.NA, index=base.index, dtype="string")
            reason.iloc[good_positions[hit]] = ERASED_REASON
            extra = quarantine_rows(base, reason, source)
        else:  # rows do not map one to one onto the source: quarantine the normalised ones
            rows = accepted[hit].astype("string").reset_index(drop=True)
            reason = pd.Series(ERASED_REASON, index=rows.index, dtype="string")
            extra = quarantine_rows(rows, reason, source)
        notes = accepted.attrs.get("notes", {})
        accepted = accepted[~hit].reset_index(drop=True)
        accepted.attrs["notes"] = notes
        quarantined = pd.concat([quarantined, extra], ignore_index=True)
        quarantined = quarantined.sort_values("source_row", kind="stable").reset_index(drop=True)
    return accepted, scrub_quarantine(settings, quarantined)


# --- the audit log -------------------------------------------------------------------------
def _now_iso() -> str:
    return pd.Timestamp.now(tz="UTC").isoformat()


def _append_audit(settings: Settings, receipt: dict) -> None:
    """Append one receipt (a JSON line, fsync'd); the log is never rewritten."""
    folder = privacy_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with _privacy_lock(settings), open(folder / AUDIT_NAME, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(receipt, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_audit(settings: Settings) -> list[dict]:
    """Every receipt of the audit log, oldest first."""
    path = privacy_dir(settings) / AUDIT_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- forgetting ----------------------------------------------------------------------------
@dataclass
class Receipt:
    """What one forget request did (what the audit log records, and the CLI prints)."""

    request_id: str
    requested_at: str
    completed_at: str = ""
    subjects: list[str] = field(default_factory=list)
    """Keyed hashes of the customers (never the ids)."""
    stores: dict[str, int] = field(default_factory=dict)
    """Store name → rows (or keys, entries) removed by this run."""
    model_versions: list[dict] = field(default_factory=list)
    """Registered versions trained on data that included some of the customers."""

    def as_dict(self) -> dict:
        """The receipt as the audit log stores it."""
        return {"kind": "forget", **asdict(self)}


FirstSeen = dict[str, pd.Timestamp]
"""Keyed hash → the customer's earliest event or signup (what training may have used)."""
ModelLookup = Callable[[Settings, FirstSeen], list[dict]]


def _clean_ids(customer_ids: Iterable[Any]) -> list[str]:
    ids = []
    for value in customer_ids:
        text = str(value).strip() if value is not None else ""
        if not text:
            raise ValueError("a customer id to forget must be a non-empty string")
        ids.append(text)
    return list(dict.fromkeys(ids))


def read_ids_file(path: Path) -> list[str]:
    """Customer ids of a file, one per line (blank lines and ``#`` comments skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def forget(
    settings: Settings,
    customer_ids: Sequence[str],
    *,
    models: ModelLookup | None = None,
    live_state: Any = None,
    progress: Callable[[str, int], None] | None = None,
) -> Receipt:
    """Erase ``customer_ids`` from every store of the home and suppress them (see the
    module docstring). ``models`` finds the registered versions trained on data including
    the customers (:func:`training.erasure_lineage.versions_trained_on`); ``live_state`` is
    an open :class:`data_layer.live_state.LiveState` to erase through (the service passes
    its own, else one is opened); ``progress(store, rows)`` is called after each store."""
    ids = _clean_ids(customer_ids)
    if not ids:
        raise ValueError("no customer ids to forget")
    settings.home.mkdir(parents=True, exist_ok=True)
    key = erasure_key(settings)
    hashes = subject_hashes(key, ids)
    receipt = Receipt(request_id=uuid.uuid4().hex, requested_at=_now_iso(), subjects=hashes)
    # 1. Suppress before erasing: nothing about them can come back in while stores change.
    _change_suppression(settings, hashes, [])
    # 2. Record which models learned from them while their events still say so; a re-run
    # after a crash finds the earlier run's findings in the pending file.
    pending = _read_pending(settings)
    if models is not None:
        first = first_seen(settings, ids, hashes)
        found = models(settings, first) if first else []
        for digest in hashes:
            known = {(m["name"], m["version"]) for m in pending.get(digest, [])}
            for m in found:
                if digest in m.get("subjects", ()) and (m["name"], m["version"]) not in known:
                    pending.setdefault(digest, []).append(
                        {k: v for k, v in m.items() if k != "subjects"}
                    )
        _write_pending(settings, pending)
    erased = set(ids)

    def done(store: str, rows: int) -> None:
        receipt.stores[store] = receipt.stores.get(store, 0) + rows
        if progress is not None:
            progress(store, rows)

    # 3. One pass per store.
    done("event_store", _forget_events(settings, erased))
    _forget_parquet_tables(settings, erased, done)
    done("quarantine", _forget_quarantine(settings, erased))
    for store, rows in _forget_online(settings, ids).items():
        done(store, rows)
    done("live_state", _forget_live_state(settings, ids, live_state))
    for store, rows in _forget_streams(settings, erased).items():
        done(store, rows)
    for store, rows in _forget_sqlite_tables(settings, ids).items():
        done(store, rows)
    for store, rows in _forget_score_log_postgres(settings, ids).items():
        done(store, rows)
    done("logs", _forget_logs(settings, ids))
    # 4. The receipt, then the pending obligations move into it.
    merged: dict[tuple[str, str], dict] = {}
    for digest in hashes:
        for m in pending.get(digest, []):
            merged.setdefault((m["name"], m["version"]), dict(m))
    receipt.model_versions = sorted(merged.values(), key=lambda m: (m["name"], int(m["version"])))
    receipt.completed_at = _now_iso()
    _append_audit(settings, receipt.as_dict())
    if pending:
        for digest in hashes:
            pending.pop(digest, None)
        _write_pending(settings, pending)
    return receipt


def _read_pending(settings: Settings) -> dict[str, list[dict]]:
    path = privacy_dir(settings) / PENDING_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def _write_pending(settings: Settings, pending: dict) -> None:
    path = privacy_dir(settings) / PENDING_NAME
    with _privacy_lock(settings):
        if pending:
            _write_atomic(path, json.dumps(pending, sort_keys=True))
        else:
            path.unlink(missing_ok=True)


def first_seen(settings: Settings, ids: Sequence[str], hashes: Sequence[str]) -> FirstSeen:
    """Keyed hash → earliest event or signup of each customer still in the store."""
    import duckdb

    from data_layer.event_store import event_files

    earliest: dict[str, pd.Timestamp] = {}
    wanted = pa.table({"customer_id": pa.array(list(ids), pa.string())})
    con = duckdb.connect()
    con.register("wanted", wanted)
    files = event_files(settings)
    if files:
        listing = ", ".join(f"'{f.as_posix()}'" for f in files)
        rows = con.execute(
            f"SELECT customer_id, min(event_timestamp) FROM read_parquet([{listing}], "
            "hive_partitioning = false) "
            "WHERE customer_id IN (SELECT customer_id FROM wanted) GROUP BY customer_id"
        ).fetchall()
        earliest.update({cid: pd.Timestamp(ts) for cid, ts in rows})
    if settings.customers_path.exists():
        path = settings.customers_path.as_posix()
        rows = con.execute(
            f"SELECT customer_id, min(signup_date) FROM read_parquet('{path}') "
            "WHERE customer_id IN (SELECT customer_id FROM wanted) GROUP BY customer_id"
        ).fetchall()
        for cid, ts in rows:
            if ts is not None:
                stamp = pd.Timestamp(ts)
                stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
                earliest[cid] = min(earliest.get(cid, stamp), stamp)
    con.close()
    by_id = dict(zip(ids, hashes, strict=True))
    return {by_id[cid]: pd.Timestamp(ts).tz_convert("UTC") for cid, ts in earliest.items()}


# --- Parquet ---------------------------------------------------------------------------------
def _id_mask(column: pa.ChunkedArray, erased: pa.Array) -> pa.ChunkedArray:
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = column.cast(pa.string())  # dictionary-encoded or integer ids
    return pc.fill_null(pc.is_in(column, value_set=erased), False)


def _rewrite_without(path: Path, keep: pa.ChunkedArray | pa.Array, table: pa.Table) -> None:
    """Replace ``path`` by ``table`` filtered to ``keep``, atomically, with the original file's
    compression, row-group size and schema metadata."""
    meta = pq.ParquetFile(path).metadata
    compression = "snappy"
    row_group_size = None
    if meta.num_row_groups and meta.num_columns:
        compression = meta.row_group(0).column(0).compression.lower()
        row_group_size = max(meta.row_group(0).num_rows, 1)
    if compression == "uncompressed":
        compression = "none"
    kept = table.filter(keep)
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    with open(tmp, "wb") as handle:
        pq.write_table(kept, handle, compression=compression, row_group_size=row_group_size)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _delete_customers(conn: sqlite3.Connection, table: str, ids: Sequence[str]) -> int:
    """Delete the rows of ``ids`` from a SQLite ``table`` (in chunks under SQLite's bound
    variable limit); returns how many went."""
    removed = 0
    for lo in range(0, len(ids), _CHUNK):
        part = list(ids[lo : lo + _CHUNK])
        marks = ",".join("?" * len(part))
        removed += conn.execute(
            f'DELETE FROM "{table}" WHERE customer_id IN ({marks})', part
        ).rowcount
    return removed


def _clean_leftovers(folder: Path) -> None:
    """Remove temporary files of a run that was killed (they hold only kept rows)."""
    if folder.exists():
        for tmp in folder.rglob(f"*{_TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)


def _forget_events(settings: Settings, erased: set[str]) -> int:
    """The canonical event store: seal the live segment, drop the erased customers' event
    ids from the index, rewrite the files that hold their events, vacuum the segment."""
    from data_layer import live_segment

    if not settings.events_dir.exists():
        return 0
    value_set = pa.array(sorted(erased), pa.string())
    removed = 0
    with live_segment.store_lock(settings):
        _clean_leftovers(settings.events_dir)
        live_segment.seal(settings)
        segment = live_segment.segment_path(settings)
        for path in sorted(settings.events_dir.rglob("*.parquet")):  # flat files and layout
            ids = pq.read_table(path, columns=["customer_id"]).column("customer_id")
            mask = _id_mask(ids, value_set)
            if not pc.any(mask).as_py():
                continue
            table = pq.read_table(path)
            gone = table.filter(mask).column("event_id").to_pylist()
            if segment.exists():
                # The index first: an id missing from it only lets a duplicate through,
                # and a suppressed customer's event cannot arrive; the reverse order could
                # leave an erased id in the index after a crash.
                conn = live_segment._connect(settings)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for lo in range(0, len(gone), _CHUNK):
                        part = gone[lo : lo + _CHUNK]
                        marks = ",".join("?" * len(part))
                        conn.execute(f"DELETE FROM stored_ids WHERE event_id IN ({marks})", part)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            _rewrite_without(path, pc.invert(mask), table)
            removed += len(gone)
        if segment.exists():
            conn = live_segment._connect(settings)
            removed += _delete_customers(conn, "pending", list(erased))
            _vacuum(conn)
    return removed


def _vacuum(conn: sqlite3.Connection) -> None:
    """Rebuild the file so no free page keeps a deleted row, then empty the WAL."""
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("VACUUM")
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    if str(mode).lower() == "wal":
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


_SPECIAL_TABLES = ("events", "quarantine")


def _forget_parquet_tables(
    settings: Settings, erased: set[str], done: Callable[[str, int], None]
) -> None:
    """Every other Parquet file under the home with a ``customer_id`` column: the profile
    table, the feature snapshots, the simulator's ground truth, score outputs."""
    value_set = pa.array(sorted(erased), pa.string())
    counts: dict[str, int] = {}
    current: str | None = None
    skip = {settings.home / name for name in _SPECIAL_TABLES}
    skip.add(settings.home / "mlartifacts")
    for path in sorted(settings.home.rglob("*.parquet")):
        if any(path.is_relative_to(folder) for folder in skip):
            continue
        _clean_leftovers(path.parent)
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowInvalid, OSError):
            continue
        if "customer_id" not in schema.names:
            continue
        ids = pq.read_table(path, columns=["customer_id"]).column("customer_id")
        mask = _id_mask(ids, value_set)
        hits = pc.sum(mask).as_py() or 0
        store = _store_name(settings, path)
        if current is not None and store != current:
            done(current, counts.pop(current))  # reported as each store is finished
        current = store
        counts.setdefault(store, 0)
        if hits:
            _rewrite_without(path, pc.invert(mask), pq.read_table(path))
            counts[store] += hits
    for store, rows in counts.items():
        done(store, rows)


def _store_name(settings: Settings, path: Path) -> str:
    relative = path.relative_to(settings.home)
    if relative == settings.customers_path.relative_to(settings.home):
        return "customers"
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _forget_quarantine(settings: Settings, erased: set[str]) -> int:
    """Quarantined rows holding an erased id in any text column (the id's column depends on
    the source file's mapping, and a rejected row may have it anywhere)."""
    folder = settings.quarantine_dir
    if not folder.exists():
        return 0
    _clean_leftovers(folder)
    pattern = "|".join(re.escape(i) for i in sorted(erased, key=len, reverse=True))
    removed = 0
    for path in sorted(folder.glob("*.parquet")):
        table = pq.read_table(path)
        mask = None
        for column in table.columns:
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
                    or pa.types.is_dictionary(column.type)):  # fmt: skip
                continue
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                column = column.cast(pa.string())
            # Substrings too: a rejected raw line or session id may embed the id.
            hit = pc.fill_null(pc.match_substring_regex(column, pattern), False)
            mask = hit if mask is None else pc.or_(mask, hit)
        if mask is None or not pc.any(mask).as_py():
            continue
        removed += pc.sum(mask).as_py()
        _rewrite_without(path, pc.invert(mask), table)
    return removed


# --- Feast online store --------------------------------------------------------------------
def _forget_online(settings: Settings, ids: list[str]) -> dict[str, int]:
    """Feast's online rows of the customers: SQLite rows by entity key, or Redis hashes.

    Feast has no call to delete one entity, so the rows are deleted where Feast keeps them
    (the layout :mod:`data_layer.online_format` writes)."""
    from data_layer import online_format

    spec = settings.online_store.strip()
    if spec.startswith("redis"):
        from data_layer.feast_store import feature_store

        config = feature_store(settings).config
        client = online_format.redis_client(config)
        keys = online_format.redis_keys(config, ids)
        deleted = 0
        for lo in range(0, len(keys), _CHUNK):
            deleted += client.delete(*keys[lo : lo + _CHUNK])
        return {"feast_online_redis": deleted}
    path = settings.online_store_path
    if not path.exists():
        return {"feast_online_sqlite": 0}
    keys = list(dict.fromkeys(online_format.entity_keys(ids, 3)))
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    deleted = 0
    try:
        tables = [
            row[0]
            for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if "entity_key" in {c[1] for c in conn.execute(f'PRAGMA table_info("{row[0]}")')}
        ]
        conn.execute("BEGIN IMMEDIATE")
        for table in tables:
            for lo in range(0, len(keys), _CHUNK):
                part = keys[lo : lo + _CHUNK]
                deleted += conn.execute(
                    f'DELETE FROM "{table}" WHERE entity_key IN ({",".join("?" * len(part))})',
                    part,
                ).rowcount
        conn.execute("COMMIT")
        _vacuum(conn)
    finally:
        conn.close()
    return {"feast_online_sqlite": deleted}


# --- live state, streams, logs ---------------------------------------------------------------
def _forget_live_state(settings: Settings, ids: list[str], live_state: Any) -> int:
    from data_layer.live_state import LiveState

    spec = settings.online_store.strip()
    state_file = settings.home / "live" / "state.db"
    if live_state is None and not spec.startswith("redis") and not state_file.exists():
        return 0
    state = live_state or LiveState.open(settings)
    try:
        return state.forget(ids)
    finally:
        if live_state is None:
            state.close()


_SQLITE_HEADER = b"SQLite format 3\x00"


def _forget_sqlite_tables(settings: Settings, ids: list[str]) -> dict[str, int]:
    """Every other SQLite database under the home with a ``customer_id`` column (the score
    log ``score_log.db``, or any table added later): rows deleted, then vacuumed."""
    handled = {
        settings.online_store_path.resolve(),
        (settings.home / "live" / "state.db").resolve(),
        (settings.events_dir / "live-segment.db").resolve(),
    }
    counts: dict[str, int] = {}
    for path in sorted(settings.home.rglob("*")):
        if not path.is_file() or path.resolve() in handled or path.name.endswith(("-wal", "-shm")):
            continue
        if path.is_relative_to(settings.home / "mlartifacts"):
            continue
        with open(path, "rb") as handle:
            if handle.read(16) != _SQLITE_HEADER:
                continue
        conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        try:
            tables = [
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                if "customer_id" in {c[1] for c in conn.execute(f'PRAGMA table_info("{row[0]}")')}
            ]
            if not tables:
                continue
            removed = 0
            conn.execute("BEGIN IMMEDIATE")
            for table in tables:
                removed += _delete_customers(conn, table, ids)
            conn.execute("COMMIT")
            # Vacuumed even when nothing matched: rows deleted earlier (a retention sweep)
            # may still sit in free pages.
            _vacuum(conn)
            counts[path.relative_to(settings.home).as_posix()] = removed
        finally:
            conn.close()
    return counts


def _forget_score_log_postgres(settings: Settings, ids: list[str]) -> dict[str, int]:
    """The score log's PostgreSQL table, when the score log is configured there."""
    url = str(getattr(settings, "score_log", None) or "").strip()
    if not url.startswith(("postgresql://", "postgres://")):
        return {}
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=10)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass('score_log') IS NOT NULL")
            if not cur.fetchone()[0]:
                return {"score_log (postgresql)": 0}
            cur.execute("DELETE FROM score_log WHERE customer_id = ANY(%s)", (list(ids),))
            removed = cur.rowcount
        conn.autocommit = True
        with conn.cursor() as cur:
            # Dead tuples keep the values until vacuumed.
            cur.execute("VACUUM score_log")
    finally:
        conn.close()
    return {"score_log (postgresql)": removed}


def _stream_names(settings: Settings) -> list[str]:
    return [settings.stream_name, "omniscore:score-changes"]


def _forget_streams(settings: Settings, erased: set[str]) -> dict[str, int]:
    """Entries of the event stream (and score-change stream) about erased customers:
    deleted, and acknowledged in every consumer group so none stays pending."""
    from data_layer.stream_consumer import StreamConfigError, redis_client

    try:
        client = redis_client(settings)
    except StreamConfigError:
        return {}
    counts: dict[str, int] = {}
    needles = [c.encode("utf-8") for c in erased]
    exact = set(needles)
    for stream in _stream_names(settings):
        if not client.exists(stream):
            continue
        doomed: list[bytes] = []
        cursor = "-"
        while True:
            page = client.xrange(stream, min=cursor, count=1000)
            if not page:
                break
            for mid, fields in page:
                if _mentions(fields, exact, needles):
                    doomed.append(mid)
            last = page[-1][0].decode() if isinstance(page[-1][0], bytes) else page[-1][0]
            ms, seq = last.split("-")
            cursor = f"{ms}-{int(seq) + 1}"
            if len(page) < 1000:
                break
        groups = [g["name"] for g in client.xinfo_groups(stream)] if doomed else []
        for lo in range(0, len(doomed), _CHUNK):
            part = doomed[lo : lo + _CHUNK]
            for group in groups:
                client.xack(stream, group, *part)
            client.xdel(stream, *part)
        counts[f"stream {stream}"] = len(doomed)
    return counts


def _mentions(fields: dict, exact: set[bytes], needles: list[bytes]) -> bool:
    for value in fields.values():
        if value in exact:
            return True
        try:
            event = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            event = None
        if isinstance(event, dict) and str(event.get("customer_id", "")).encode() in exact:
            return True
        if len(needles) <= 64 and any(n in value for n in needles):
            return True
    return False


def _forget_logs(settings: Settings, ids: list[str]) -> int:
    """Lines of the home's text logs (``logs/`` and any ``*.log``, such as the service's
    ``serving.log``) that mention an erased id as a whole token."""
    folder = settings.home / "logs"
    files = set(folder.rglob("*")) if folder.exists() else set()
    files |= set(settings.home.rglob("*.log"))
    if not ids:
        return 0
    pattern = re.compile(
        "(?<![A-Za-z0-9_])(?:" + "|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True))
        + ")(?![A-Za-z0-9_])"
    )  # fmt: skip
    removed = 0
    for path in sorted(p for p in files if p.is_file()):
        if path.name.endswith(_TMP_SUFFIX):
            path.unlink(missing_ok=True)
            continue
        data = path.read_bytes()
        text = data.decode("utf-8", "surrogateescape")
        if not pattern.search(text):
            continue
        lines = text.splitlines(keepends=True)
        kept = [line for line in lines if not pattern.search(line)]
        removed += len(lines) - len(kept)
        tmp = path.with_name(path.name + _TMP_SUFFIX)
        with open(tmp, "wb") as handle:
            handle.write("".join(kept).encode("utf-8", "surrogateescape"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    return removed


def format_receipt(receipt: Receipt) -> str:
    """The CLI's answer: rows removed per store, then the models trained on the data."""
    lines = [f"forgot {len(receipt.subjects)} customer(s); receipt {receipt.request_id}"]
    width = max((len(s) for s in receipt.stores), default=0)
    for store, rows in receipt.stores.items():
        lines.append(f"  {store:<{width}}  {rows:>9,} removed")
    if receipt.model_versions:
        lines.append("  model versions trained on data that included them:")
        for m in receipt.model_versions:
            lines.append(f"    {m['name']} v{m['version']}")
    return "\n".join(lines)
