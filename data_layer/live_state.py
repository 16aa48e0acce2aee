"""The live state: per customer, what the features at any instant need, kept current event by
event, so the live path serves exactly the batch pipeline's values.

Every feature at T depends only on the customer's events in ``[T - HISTORY_NEEDED, T)`` plus
the lifetime scalars (first event, last customer-initiated event per channel, last purchase per
channel) and the customer's purchases (for the long purchase windows and the lifetime purchase
features; see :mod:`data_layer.feature_pipeline`). Per customer the state keeps:

- **recent events**: every event with a timestamp at or after the horizon (the newest ``now``
  folded minus :data:`LIVE_HORIZON`), with only the columns the features read plus
  ``event_id``;
- **purchases**: every purchase event, however old (a slot each, ``purchase_event:<id>``), for
  the 180-day, 365-day and lifetime purchase features; purchases are sparse beside the other
  events, and a set keyed by event id folds idempotently;
- **slots**: for each lifetime scalar, the event that sets it, among all events (``all:``) and
  among the events older than the horizon (``old:``). Each is a minimum or a maximum by
  (timestamp, event_id), so folding is idempotent and order-free. The ``old:`` slots make the
  answer exact even when an event after T would hide, in the ``all:`` slot, an older one that
  already left the recent events; the ``all:`` slots keep the scalars when Redis expires the
  recent events of a customer silent for longer than the horizon;
- **the profile row** (the customers table).

The BG/NBD features also need the population's parameters, which no single customer's events
give: the live path takes those the latest build stored for the latest instant at or before
the asked one (``bgnbd_params.json``), so at a built instant it equals the batch exactly, and
between builds it applies last week's population fit to the customer's current purchases.

:meth:`LiveState.features` runs :func:`~data_layer.feature_pipeline.compute_snapshots` on those
events and that profile: the same code as the batch, so values are equal, not just close. The
answer is exact at any T from ``horizon + HISTORY_NEEDED`` on (nine days before the newest
``now`` with the default horizon); earlier instants raise ``ValueError``.

Two backends: SQLite (embedded, ``$OMNISCORE_HOME/live/state.db``, WAL, several processes) when
the online store is SQLite, and the online store's Redis (keys
``omniscore:live:<feast project>:…``, so projects sharing a Redis keep apart) when it is Redis.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from data_layer.event_store import events_relation_sql, read_customers
from data_layer.feature_pipeline import (
    BGNBD_PARAMS_FILE,
    FEATURE_EVENT_COLUMNS,
    HISTORY_NEEDED,
    bgnbd_params_at,
    compute_snapshots,
    read_bgnbd_params,
)
from data_layer.schema import CUSTOMER_INITIATED_FAMILIES, CUSTOMER_SCHEMA
from data_layer.settings import Settings

LIVE_HORIZON = pd.Timedelta(days=130)
"""Recent events kept per customer: the features' look-back (:data:`HISTORY_NEEDED`, 121 days)
plus nine days in which features can still be asked at an instant before the newest ``now``
(tests/test_live_ingest.py checks it stays longer than the look-back)."""
REDIS_PREFIX = "omniscore:live:"

REDIS_TTL_MARGIN = pd.Timedelta(days=2)
"""A customer's recent events expire this long after the horizon has passed their last write
(longer than any accepted clock skew, so every expired event is older than the horizon)."""


def redis_key_prefix(project: str) -> str:
    """Start of every live-state key of one Feast project (``omniscore:live:<project>:``)."""
    return f"{REDIS_PREFIX}{project}:"


EVENT_COLUMNS = ("event_id", *FEATURE_EVENT_COLUMNS)
"""The columns the state keeps: what the features read, and the event id."""
_ARROW_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("customer_id", pa.string()),
        ("event_timestamp", pa.timestamp("us", tz="UTC")),
        ("channel", pa.string()),
        ("event_type", pa.string()),
        ("family", pa.string()),
        ("amount", pa.float64()),
        ("session_id", pa.string()),
        ("rating", pa.float64()),
    ]
)
_INITIATED = sorted(f.value for f in CUSTOMER_INITIATED_FAMILIES)
_PROFILE_COLUMNS = tuple(CUSTOMER_SCHEMA.names)
_BOOTSTRAP_CHUNK = 500_000


@dataclass(frozen=True)
class FoldReport:
    """What one fold changed: ``customers`` whose features may have changed (they had an event
    folded or older than the horizon), events ``folded`` into the recent events,
    ``already_folded`` (held already, or repeated in the batch), and ``too_old`` (older than
    the horizon: they change only the lifetime scalars and, for a purchase, the long purchase
    windows; never a window of the other events)."""

    customers: list[str]
    folded: int
    already_folded: int
    too_old: int


@dataclass
class _Batch:
    """Incoming events as plain columns (timestamps as int64 microseconds)."""

    event_id: np.ndarray
    customer_id: np.ndarray
    ts: np.ndarray
    channel: np.ndarray
    event_type: np.ndarray
    family: np.ndarray
    amount: np.ndarray
    session_id: np.ndarray
    rating: np.ndarray
    duplicates_in_batch: int = 0
    rows: list[tuple] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_id)


def _us(value: pd.Timestamp) -> int:
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.value // 1000


def _batch(events: pd.DataFrame) -> _Batch:
    missing = [c for c in EVENT_COLUMNS if c not in events and c not in ("session_id", "rating")]
    if missing:
        raise ValueError(f"events lack columns {missing}; expected canonical events")
    frame = events.drop_duplicates("event_id")
    ts = pd.to_datetime(frame["event_timestamp"], utc=True)
    if ts.isna().any():
        raise ValueError("events with a missing event_timestamp cannot be folded")

    def strings(col: str) -> np.ndarray:
        if col not in frame:
            return np.full(len(frame), None, dtype=object)
        values = frame[col].astype(object).to_numpy()
        return np.where(pd.isna(values), None, values).astype(object)

    def floats(col: str) -> np.ndarray:
        if col not in frame:
            return np.full(len(frame), np.nan)
        return pd.to_numeric(frame[col], errors="raise").astype("float64").to_numpy()

    batch = _Batch(
        event_id=frame["event_id"].astype(str).to_numpy(dtype=object),
        customer_id=frame["customer_id"].astype(str).to_numpy(dtype=object),
        ts=(ts.astype("datetime64[us, UTC]").astype("int64")).to_numpy(dtype=np.int64),
        channel=strings("channel"),
        event_type=strings("event_type"),
        family=strings("family"),
        amount=floats("amount"),
        session_id=strings("session_id"),
        rating=floats("rating"),
        duplicates_in_batch=len(events) - len(frame),
    )
    return batch


def _rows(batch: _Batch, positions: np.ndarray) -> list[tuple]:
    """:func:`_row` of many events, column-wise."""
    amount, rating = batch.amount[positions], batch.rating[positions]
    return list(
        zip(
            batch.event_id[positions],
            batch.customer_id[positions],
            batch.ts[positions].tolist(),
            batch.channel[positions],
            batch.event_type[positions],
            batch.family[positions],
            np.where(np.isnan(amount), None, amount).tolist(),
            batch.session_id[positions],
            np.where(np.isnan(rating), None, rating).tolist(),
            strict=True,
        )
    )


def _row(batch: _Batch, i: int) -> tuple:
    """One event as the tuple both backends store (NaN as None)."""
    amount, rating = batch.amount[i], batch.rating[i]
    return (
        batch.event_id[i],
        batch.customer_id[i],
        int(batch.ts[i]),
        batch.channel[i],
        batch.event_type[i],
        batch.family[i],
        None if math.isnan(amount) else float(amount),
        batch.session_id[i],
        None if math.isnan(rating) else float(rating),
    )


def lifetime_slots(batch: _Batch, rows: Iterable[int], prefix: str) -> dict[tuple[str, str], tuple]:
    """The winning event of each (customer, slot) among ``rows`` of ``batch``.

    The slots are the lifetime scalars of :func:`~data_layer.feature_pipeline.compute_snapshots`
    (``first_ts``, ``last_<channel>``, ``last_purch``, ``last_purch_<channel>``): the first
    event of any kind (a minimum), the last customer-initiated event per channel and the last
    purchase per channel (maxima; the last purchase overall is the latest of those); and one
    slot per purchase event (``purchase_event:<event_id>``), which the long-window and lifetime
    purchase features read. Ties on the
    timestamp go to the smaller (minimum) or larger (maximum) event_id, so the winner does not
    depend on the order events arrive in. Returns ``{(customer, slot): (kind, row)}``.
    """
    idx = np.fromiter(rows, dtype=np.int64)
    if not len(idx):
        return {}
    channel = pd.Series(batch.channel[idx], dtype=object).fillna("")
    every = np.ones(len(idx), dtype=bool)
    purchases = batch.event_type[idx] == "purchase"
    event_ids = pd.Series(batch.event_id[idx], index=channel.index, dtype=object)
    offers = [
        ("min", every, pd.Series(f"{prefix}first", index=channel.index, dtype=object)),
        ("max", np.isin(batch.family[idx], _INITIATED), f"{prefix}last:" + channel),
        ("max", batch.event_type[idx] == "purchase", f"{prefix}purchase:" + channel),
        # Every purchase keeps a slot of its own (not prefixed, so "all:" and "old:" offers
        # coincide): the long-window and lifetime purchase features read all of them. One
        # event per slot, so merging it again is a no-op, as for the other slots.
        ("max", purchases, "purchase_event:" + event_ids),
    ]
    best: dict[tuple[str, str], tuple] = {}
    for kind, mask, slot in offers:
        if not mask.any():
            continue
        candidates = pd.DataFrame(
            {
                "customer": batch.customer_id[idx][mask],
                "slot": slot.to_numpy()[mask],
                "ts": batch.ts[idx][mask],
                "event_id": batch.event_id[idx][mask],
                "position": idx[mask],
            }
        ).sort_values(["customer", "slot", "ts", "event_id"], kind="stable")
        winners = candidates.drop_duplicates(
            ["customer", "slot"], keep="first" if kind == "min" else "last"
        )
        for customer, name, position in zip(
            winners["customer"], winners["slot"], winners["position"], strict=True
        ):
            best[(customer, name)] = (kind, _row(batch, int(position)))
    return best


def _beats(kind: str, row: tuple, held: tuple) -> bool:
    new, old = (row[2], row[0]), (held[2], held[0])
    return new < old if kind == "min" else new > old


def _slot_rows(rows: Sequence[tuple]) -> _Batch:
    """Stored event tuples back into a batch (to compute slots of pruned events)."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(EVENT_COLUMNS)
    return _Batch(
        event_id=np.array(columns[0], dtype=object),
        customer_id=np.array(columns[1], dtype=object),
        ts=np.array(columns[2], dtype=np.int64),
        channel=np.array(columns[3], dtype=object),
        event_type=np.array(columns[4], dtype=object),
        family=np.array(columns[5], dtype=object),
        amount=np.array([np.nan if v is None else v for v in columns[6]], dtype=np.float64),
        session_id=np.array(columns[7], dtype=object),
        rating=np.array([np.nan if v is None else v for v in columns[8]], dtype=np.float64),
    )


def _events_table(rows: Sequence[tuple]) -> pa.Table:
    """Stored event tuples as the Arrow table compute_snapshots reads (one row per event_id)."""
    unique = list({row[0]: row for row in rows}.values())
    columns = list(zip(*unique, strict=True)) if unique else [()] * len(EVENT_COLUMNS)
    arrays = {name: list(values) for name, values in zip(EVENT_COLUMNS, columns, strict=True)}
    arrays["event_timestamp"] = pa.array(arrays["event_timestamp"], pa.int64()).cast(
        pa.timestamp("us", tz="UTC")
    )
    return pa.table(arrays, schema=_ARROW_SCHEMA)


def _profiles_frame(rows: Sequence[tuple]) -> pd.DataFrame:
    if not rows:
        return CUSTOMER_SCHEMA.empty_table().to_pandas()
    columns = list(zip(*rows, strict=True))
    data = {name: list(values) for name, values in zip(_PROFILE_COLUMNS, columns, strict=True)}
    data["signup_date"] = pa.array(data["signup_date"], pa.int64()).cast(
        pa.timestamp("us", tz="UTC")
    )
    return pa.table(data, schema=CUSTOMER_SCHEMA).to_pandas()


def _profile_rows(customers: pd.DataFrame) -> list[tuple]:
    frame = customers.drop_duplicates("customer_id", keep="last")
    signup = pd.to_datetime(frame["signup_date"], utc=True)
    signup_us = signup.astype("datetime64[us, UTC]").astype("int64").where(signup.notna(), None)
    out = []
    for i, customer in enumerate(frame["customer_id"].astype(str)):
        values = [customer, None if pd.isna(signup.iloc[i]) else int(signup_us.iloc[i])]
        for col in _PROFILE_COLUMNS[2:]:
            value = frame[col].iloc[i] if col in frame else None
            values.append(None if pd.isna(value) else str(value))
        out.append(tuple(values))
    return out


class LiveState:
    """The per-customer live state (see the module docstring); one backend per instance."""

    def __init__(self, backend: _Backend, settings: Settings) -> None:
        self._backend = backend
        self._settings = settings
        self._duck = duckdb.connect()
        self._duck_lock = threading.Lock()
        self._bgnbd: tuple[tuple[int, int] | None, dict] = (None, {})

    @classmethod
    def open(cls, settings: Settings, timeout_seconds: float = 10.0) -> LiveState:
        """The state of this home: SQLite under the home, or the online store's Redis.

        ``timeout_seconds`` bounds every Redis call, and a timed-out call is not retried: the
        service passes its request timeout so an unresponsive Redis gives a 503, not a hang.
        """
        spec = settings.online_store.strip()
        if spec.startswith("redis"):
            backend = _RedisBackend.connect(spec, timeout_seconds, settings.feast_project)
            return cls(backend, settings)
        path = settings.home / "live" / "state.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(_SqliteBackend(path), settings)

    @property
    def settings(self) -> Settings:
        """The home whose event store and customers table :meth:`bootstrap` reads."""
        return self._settings

    def close(self) -> None:
        """Release the connections."""
        self._backend.close()
        self._duck.close()

    def __enter__(self) -> LiveState:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writing -------------------------------------------------------------------------
    def fold(self, events: pd.DataFrame, now: pd.Timestamp) -> FoldReport:
        """Fold canonical events (validated already) as of ``now``.

        Idempotent by event_id and order-free: folding an event twice, or events in any order,
        gives the same state. Events at or after the horizon (``now - LIVE_HORIZON``, or a later
        horizon already set) join the recent events; older ones only compete for the lifetime
        slots. The customers' recent events older than the horizon leave them (after competing
        for the ``old:`` slots).
        """
        batch = _batch(events)
        if not len(batch):
            return FoldReport(
                customers=[], folded=0, already_folded=batch.duplicates_in_batch, too_old=0
            )
        with self._backend.transaction():
            cutoff = self._backend.advance_horizon(_us(now) - LIVE_HORIZON.value // 1000)
            recent = np.flatnonzero(batch.ts >= cutoff)
            old = np.flatnonzero(batch.ts < cutoff)
            added = self._backend.add_recent(_rows(batch, recent))
            slots = lifetime_slots(batch, range(len(batch)), "all:")
            slots.update(lifetime_slots(batch, old, "old:"))
            # Slots are merged even for events already folded: a fold cut short before this
            # point is completed by the redelivery.
            self._backend.merge_slots(slots)
            self._prune(sorted(set(batch.customer_id)), cutoff)
        changed = {c for c, n in added.items() if n} | set(batch.customer_id[old])
        customers = sorted(changed)
        folded = sum(added.values())
        return FoldReport(
            customers=customers,
            folded=folded,
            already_folded=len(recent) - folded + batch.duplicates_in_batch,
            too_old=len(old),
        )

    def _prune(self, customers: Sequence[str], cutoff: int) -> None:
        """Move the customers' recent events older than ``cutoff`` into the ``old:`` slots."""
        expired = self._backend.recent_before(customers, cutoff)
        if expired:
            pruned = _slot_rows(expired)
            self._backend.merge_slots(lifetime_slots(pruned, range(len(pruned)), "old:"))
            self._backend.remove_recent(expired)

    def upsert_profiles(self, customers: pd.DataFrame) -> None:
        """Insert or replace profile rows (the customers table's columns)."""
        if "customer_id" not in customers or "signup_date" not in customers:
            raise ValueError("profiles need at least customer_id and signup_date")
        self._backend.put_profiles(_profile_rows(customers))

    def bootstrap(self, at: pd.Timestamp | None = None) -> int:
        """Rebuild the state from the event store and the customers table; events folded.

        The horizon is set from ``at`` (default: the earlier of now and the newest stored
        event, so a replayed world keeps its recent events), so the live path continues from
        exactly the batch's state. Live folds running at the same time may be lost: run it
        before starting the consumers (``features materialize`` does it).
        """
        settings = self._settings
        self._backend.clear()
        customers = read_customers(settings)
        if len(customers):
            self.upsert_profiles(customers)
        try:
            source = events_relation_sql(settings)
        except FileNotFoundError:  # an empty event store: profiles only
            return 0
        con = duckdb.connect()
        try:
            newest = con.sql(f"SELECT max(event_timestamp) FROM {source}").fetchall()[0][0]
            if newest is None:
                return 0
            if at is None:
                at = min(pd.Timestamp.now(tz="UTC"), pd.Timestamp(newest).tz_convert("UTC"))
            columns = ", ".join(c for c in EVENT_COLUMNS)
            reader = con.sql(f"SELECT {columns} FROM {source}").to_arrow_reader(_BOOTSTRAP_CHUNK)
            total = 0
            for chunk in reader:
                self.fold(chunk.to_pandas(), at)
                total += chunk.num_rows
        finally:
            con.close()
        return total

    # --- reading -------------------------------------------------------------------------
    def features(self, customer_ids: Sequence[str], at: pd.Timestamp) -> pd.DataFrame:
        """Every catalog feature of the known customers among ``customer_ids`` at ``at``.

        Exactly the columns of ``compute_snapshots`` (customer_id, event_timestamp = ``at``,
        then every feature), computed by it on the customers' state. Unknown ids get no row.
        """
        at_us = _us(at)
        horizon = self._backend.horizon()
        needed = at_us - HISTORY_NEEDED.value // 1000
        if horizon is not None and needed < horizon:
            raise ValueError(
                f"features at {pd.Timestamp(at_us, unit='us', tz='UTC')} need events from "
                f"{pd.Timestamp(needed, unit='us', tz='UTC')} on, but the live state keeps "
                f"them only from {pd.Timestamp(horizon, unit='us', tz='UTC')}"
            )
        ids = sorted({str(c) for c in customer_ids})
        events = _events_table(self._backend.events_of(ids))
        profiles = _profiles_frame(self._backend.profiles_of(ids))
        at = pd.Timestamp(at_us, unit="us", tz="UTC")
        population = {at: bgnbd_params_at(self._stored_bgnbd(), at)}
        with self._duck_lock:
            return compute_snapshots(
                events, profiles, [at], connection=self._duck, bgnbd_params=population
            )

    def _stored_bgnbd(self) -> dict:
        """The builds' BG/NBD parameters by instant, re-read only when the file changed."""
        path = self._settings.features_dir / BGNBD_PARAMS_FILE
        try:
            stat = path.stat()
            key = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            key = None
        if key != self._bgnbd[0]:
            self._bgnbd = (key, read_bgnbd_params(self._settings) if key else {})
        return self._bgnbd[1]

    def bgnbd_version(self) -> tuple[int, int] | None:
        """Which stored BG/NBD parameters :meth:`features` uses (changes when a build writes
        new ones): a cache of features must start over when it changes."""
        self._stored_bgnbd()
        return self._bgnbd[0]

    def next_bgnbd_change_us(self, at_us: int) -> int:
        """The first instant after ``at_us`` (microseconds) at which the BG/NBD features may
        change with no new event: the next UTC midnight (their ages count whole days) or the
        next stored instant (whose parameters then apply), whichever is first."""
        day = 86_400_000_000
        later = [t.value // 1000 for t in self._stored_bgnbd() if t.value // 1000 > at_us]
        return min([(at_us // day + 1) * day, *later])

    def recent_events(self, customer_id: str, limit: int = 20) -> pd.DataFrame:
        """The customer's newest events (recent events and lifetime-slot events), newest first."""
        rows = self._backend.events_of([str(customer_id)])
        table = _events_table(rows).to_pandas()
        table = table.sort_values(["event_timestamp", "event_id"], ascending=False, kind="stable")
        return table.head(limit).reset_index(drop=True)

    def known(self, customer_ids: Sequence[str]) -> list[bool]:
        """Whether the state holds a profile row or any event of each id."""
        return self._backend.known([str(c) for c in customer_ids])

    def horizon(self) -> pd.Timestamp | None:
        """Events before this instant are no longer kept as recent events (None: no fold yet)."""
        value = self._backend.horizon()
        return None if value is None else pd.Timestamp(value, unit="us", tz="UTC")

    def forget(self, customer_ids: Sequence[str]) -> int:
        """Erase customers from the state (``omniscore forget``): every recent event, slot and
        profile row, or their Redis keys; the SQLite file is vacuumed so no freed page keeps
        them. Returns the rows (SQLite) or keys (Redis) removed."""
        return self._backend.forget(list(dict.fromkeys(str(c) for c in customer_ids)))


# --- backends ------------------------------------------------------------------------------


class _Backend:
    """Storage of recent events, slots, profiles and the horizon (all idempotent operations)."""

    def transaction(self) -> AbstractContextManager: ...
    def advance_horizon(self, candidate: int) -> int: ...
    def horizon(self) -> int | None: ...
    def add_recent(self, rows: list[tuple]) -> dict[str, int]: ...
    def recent_before(self, customers: Sequence[str], cutoff: int) -> list[tuple]: ...
    def remove_recent(self, rows: list[tuple]) -> None: ...
    def merge_slots(self, slots: dict[tuple[str, str], tuple]) -> None: ...
    def events_of(self, customers: Sequence[str]) -> list[tuple]: ...
    def profiles_of(self, customers: Sequence[str]) -> list[tuple]: ...
    def put_profiles(self, rows: list[tuple]) -> None: ...
    def known(self, customers: Sequence[str]) -> list[bool]: ...
    def clear(self) -> None: ...
    def forget(self, customers: Sequence[str]) -> int: ...
    def close(self) -> None: ...


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS recent (
    event_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, ts INTEGER NOT NULL,
    channel TEXT, event_type TEXT, family TEXT, amount REAL, session_id TEXT, rating REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recent_by_customer ON recent (customer_id, ts);
CREATE TABLE IF NOT EXISTS slots (
    customer_id TEXT NOT NULL, slot TEXT NOT NULL, event_id TEXT NOT NULL, ts INTEGER NOT NULL,
    channel TEXT, event_type TEXT, family TEXT, amount REAL, session_id TEXT, rating REAL,
    PRIMARY KEY (customer_id, slot)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS profiles (
    customer_id TEXT PRIMARY KEY, signup_us INTEGER, region TEXT, age_band TEXT,
    loyalty_tier TEXT, preferred_device TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""
_EVENT_SELECT = "event_id, customer_id, ts, channel, event_type, family, amount, session_id, rating"
_CHUNK = 500


def _chunks(items: Sequence, size: int = _CHUNK) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _SqliteBackend(_Backend):
    """One SQLite file in WAL mode; every write is one IMMEDIATE transaction, so several
    processes (service workers, stream consumers) can share it."""

    def __init__(self, path) -> None:
        self.path = path
        self.con = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self.lock = threading.RLock()
        self.depth = 0
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=NORMAL")
        self.con.executescript(_SQLITE_SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One IMMEDIATE transaction (nested uses join the outer one): a fold is atomic."""
        with self.lock:
            if self.depth:
                self.depth += 1
                try:
                    yield
                finally:
                    self.depth -= 1
                return
            self.con.execute("BEGIN IMMEDIATE")
            self.depth = 1
            try:
                yield
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            else:
                self.con.execute("COMMIT")
            finally:
                self.depth = 0

    def _write(self, statements) -> None:
        with self.transaction():
            statements(self.con)

    def advance_horizon(self, candidate: int) -> int:
        out = []

        def run(con) -> None:
            con.execute(
                "INSERT INTO meta VALUES ('horizon', ?) ON CONFLICT (key) DO UPDATE "
                "SET value = max(value, excluded.value)",
                (candidate,),
            )
            out.append(con.execute("SELECT value FROM meta WHERE key = 'horizon'").fetchone()[0])

        self._write(run)
        return out[0]

    def horizon(self) -> int | None:
        with self.lock:
            row = self.con.execute("SELECT value FROM meta WHERE key = 'horizon'").fetchone()
        return None if row is None else row[0]

    def add_recent(self, rows: list[tuple]) -> dict[str, int]:
        """Insert the events not held yet; new events per customer."""
        added: dict[str, int] = {}

        def run(con) -> None:
            for part in _chunks(rows):
                marks = ",".join("?" * len(part))
                held = {
                    r[0]
                    for r in con.execute(
                        f"SELECT event_id FROM recent WHERE event_id IN ({marks})",
                        [row[0] for row in part],
                    )
                }
                fresh = [row for row in part if row[0] not in held]
                con.executemany(
                    f"INSERT INTO recent ({_EVENT_SELECT}) VALUES (?,?,?,?,?,?,?,?,?)", fresh
                )
                for row in fresh:
                    added[row[1]] = added.get(row[1], 0) + 1

        if rows:
            self._write(run)
        return added

    def recent_before(self, customers: Sequence[str], cutoff: int) -> list[tuple]:
        out: list[tuple] = []
        with self.lock:
            for part in _chunks(list(customers)):
                marks = ",".join("?" * len(part))
                out += self.con.execute(
                    f"SELECT {_EVENT_SELECT} FROM recent WHERE customer_id IN ({marks}) AND ts < ?",
                    (*part, cutoff),
                ).fetchall()
        return out

    def remove_recent(self, rows: list[tuple]) -> None:
        self._write(
            lambda con: con.executemany(
                "DELETE FROM recent WHERE event_id = ?", [(r[0],) for r in rows]
            )
        )

    def merge_slots(self, slots: dict[tuple[str, str], tuple]) -> None:
        # A slot changes only when the offered event beats the held one (by ts, then id), so
        # concurrent or repeated merges commute.
        better = {
            "max": "(excluded.ts, excluded.event_id) > (slots.ts, slots.event_id)",
            "min": "(excluded.ts, excluded.event_id) < (slots.ts, slots.event_id)",
        }
        by_kind: dict[str, list[tuple]] = {"max": [], "min": []}
        for (customer, slot), (kind, row) in slots.items():
            by_kind[kind].append((customer, slot, row[0], *row[2:]))

        def run(con) -> None:
            for kind, params in by_kind.items():
                if params:
                    con.executemany(
                        "INSERT INTO slots (customer_id, slot, event_id, ts, channel, event_type, "
                        "family, amount, session_id, rating) VALUES (?,?,?,?,?,?,?,?,?,?) "
                        "ON CONFLICT (customer_id, slot) DO UPDATE SET event_id = "
                        "excluded.event_id, ts = excluded.ts, channel = excluded.channel, "
                        "event_type = excluded.event_type, family = excluded.family, "
                        "amount = excluded.amount, session_id = excluded.session_id, "
                        f"rating = excluded.rating WHERE {better[kind]}",
                        params,
                    )

        if slots:
            self._write(run)

    def events_of(self, customers: Sequence[str]) -> list[tuple]:
        out: list[tuple] = []
        with self.lock:
            for part in _chunks(list(customers)):
                marks = ",".join("?" * len(part))
                out += self.con.execute(
                    f"SELECT {_EVENT_SELECT} FROM recent WHERE customer_id IN ({marks}) "
                    f"UNION ALL SELECT {_EVENT_SELECT} FROM slots WHERE customer_id IN ({marks})",
                    (*part, *part),
                ).fetchall()
        return out

    def profiles_of(self, customers: Sequence[str]) -> list[tuple]:
        out: list[tuple] = []
        with self.lock:
            for part in _chunks(list(customers)):
                marks = ",".join("?" * len(part))
                out += self.con.execute(
                    "SELECT customer_id, signup_us, region, age_band, loyalty_tier, "
                    f"preferred_device FROM profiles WHERE customer_id IN ({marks})",
                    part,
                ).fetchall()
        return out

    def put_profiles(self, rows: list[tuple]) -> None:
        self._write(
            lambda con: con.executemany(
                "INSERT OR REPLACE INTO profiles VALUES (?,?,?,?,?,?)", rows
            )
        )

    def known(self, customers: Sequence[str]) -> list[bool]:
        held: set[str] = set()
        with self.lock:
            for part in _chunks(list(dict.fromkeys(customers))):
                marks = ",".join("?" * len(part))
                for table in ("profiles", "slots"):
                    held.update(
                        r[0]
                        for r in self.con.execute(
                            f"SELECT DISTINCT customer_id FROM {table} "
                            f"WHERE customer_id IN ({marks})",
                            part,
                        )
                    )
        return [c in held for c in customers]

    def clear(self) -> None:
        def run(con) -> None:
            for table in ("recent", "slots", "profiles", "meta"):
                con.execute(f"DELETE FROM {table}")

        self._write(run)

    def forget(self, customers: Sequence[str]) -> int:
        removed = 0

        def run(con) -> None:
            nonlocal removed
            for part in _chunks(customers):
                marks = ",".join("?" * len(part))
                for table in ("recent", "slots", "profiles"):
                    removed += con.execute(
                        f"DELETE FROM {table} WHERE customer_id IN ({marks})", part
                    ).rowcount

        self._write(run)
        with self.lock:
            # Deleted rows stay in freed pages and WAL frames until the file is rebuilt.
            self.con.execute("PRAGMA secure_delete=ON")
            self.con.execute("VACUUM")
            self.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed

    def close(self) -> None:
        with self.lock:
            self.con.close()


# Sets each offered slot when it beats the held one: ARGV is (slot, kind, ts, event_id,
# value) five at a time. A held value is "<ts>:<length of event_id>:<event_id><payload JSON>"
# (see _slot_value), so the comparison reads two numbers and a substring instead of decoding
# JSON; ts is in microseconds, exact in Lua's doubles up to 2^53.
_MERGE_SLOTS_LUA = """
for i = 1, #ARGV, 5 do
    local slot, kind, ts, id = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
    local held = redis.call('HGET', KEYS[1], slot)
    local take = not held
    if held then
        local a = string.find(held, ':', 1, true)
        local b = string.find(held, ':', a + 1, true)
        local hts = tonumber(string.sub(held, 1, a - 1))
        local hid = string.sub(held, b + 1, b + tonumber(string.sub(held, a + 1, b - 1)))
        if kind == 'max' then
            take = ts > hts or (ts == hts and id > hid)
        else
            take = ts < hts or (ts == hts and id < hid)
        end
    end
    if take then
        redis.call('HSET', KEYS[1], slot, ARGV[i + 4])
    end
end
return 1
"""
_MAX_LUA = """
local held = redis.call('GET', KEYS[1])
if (not held) or tonumber(ARGV[1]) > tonumber(held) then
    redis.call('SET', KEYS[1], ARGV[1])
    return tonumber(ARGV[1])
end
return tonumber(held)
"""


def _slot_value(row: tuple) -> str:
    """A slot's stored value: its event's time and id up front for the merge script."""
    return f"{row[2]}:{len(row[0].encode())}:{row[0]}{_member(row)}"


def _slot_row(value: bytes) -> tuple:
    """The event tuple held in a slot value."""
    _, _, rest = value.partition(b":")
    length, _, rest = rest.partition(b":")
    return tuple(json.loads(rest[int(length) :]))


def _member(row: tuple) -> str:
    """A recent event as its sorted-set member: deterministic, so re-adding it is a no-op."""
    return json.dumps(row, separators=(",", ":"), allow_nan=False)


class _RedisBackend(_Backend):
    """Per customer: ``omniscore:live:<project>:{id}:recent`` (sorted set by time, expiring a
    little after the horizon passes its last write), ``…:slots`` (hash) and ``…:profile``
    (string). Slots and profile do not expire: a customer silent for longer than the horizon
    still has a tenure and a *days since* in the batch, so the live path must keep them too."""

    def __init__(self, client, project: str) -> None:
        self.r = client
        self.prefix = redis_key_prefix(project)
        # Every Redis operation here is idempotent and commutes, so a fold needs no
        # transaction: a fold cut short is completed by folding the same events again.
        self.transaction = nullcontext
        self.ttl = int((LIVE_HORIZON + REDIS_TTL_MARGIN).total_seconds())
        self.merge = client.register_script(_MERGE_SLOTS_LUA)
        self.max = client.register_script(_MAX_LUA)

    @classmethod
    def connect(cls, spec: str, timeout_seconds: float, project: str) -> _RedisBackend:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        from data_layer.feast_store import redis_online_store_config

        config = redis_online_store_config(spec)
        if config.get("redis_type") == "redis_cluster":
            raise ValueError("the live state does not support Redis Cluster yet")
        options: dict = {}
        host_port = None
        for part in config["connection_string"].split(","):
            if "=" in part:
                key, value = part.split("=", 1)
                options[key.strip()] = value.strip()
            elif host_port is None:
                host_port = part.strip()
        host, _, port = host_port.rpartition(":")
        client = redis.Redis(
            host=host or "localhost",
            port=int(port or 6379),
            db=int(options.get("db", 0)),
            password=options.get("password"),
            username=options.get("username"),
            ssl=options.get("ssl", "false").lower() == "true",
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, project)

    def _key(self, customer: str, part: str) -> str:
        return f"{self.prefix}{{{customer}}}:{part}"

    def advance_horizon(self, candidate: int) -> int:
        return int(self.max(keys=[f"{self.prefix}horizon"], args=[candidate]))

    def horizon(self) -> int | None:
        value = self.r.get(f"{self.prefix}horizon")
        return None if value is None else int(value)

    def add_recent(self, rows: list[tuple]) -> dict[str, int]:
        """ZADD each customer's events at once; new events per customer."""
        members: dict[str, dict[str, int]] = {}
        for row in rows:
            members.setdefault(row[1], {})[_member(row)] = row[2]
        pipe = self.r.pipeline(transaction=False)
        for customer, scored in members.items():
            key = self._key(customer, "recent")
            pipe.zadd(key, scored)
            pipe.expire(key, self.ttl)
        results = pipe.execute()
        return {c: int(n) for c, n in zip(members, results[::2], strict=True)}

    def recent_before(self, customers: Sequence[str], cutoff: int) -> list[tuple]:
        pipe = self.r.pipeline(transaction=False)
        for customer in customers:
            pipe.zrangebyscore(self._key(customer, "recent"), "-inf", f"({cutoff}")
        return [tuple(json.loads(m)) for members in pipe.execute() for m in members]

    def remove_recent(self, rows: list[tuple]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for row in rows:
            pipe.zrem(self._key(row[1], "recent"), _member(row))
        pipe.execute()

    def merge_slots(self, slots: dict[tuple[str, str], tuple]) -> None:
        by_customer: dict[str, list] = {}
        for (customer, slot), (kind, row) in slots.items():
            by_customer.setdefault(customer, []).extend(
                [slot, kind, row[2], row[0], _slot_value(row)]
            )
        pipe = self.r.pipeline(transaction=False)
        for customer, args in by_customer.items():
            self.merge(keys=[self._key(customer, "slots")], args=args, client=pipe)
        pipe.execute()

    def events_of(self, customers: Sequence[str]) -> list[tuple]:
        pipe = self.r.pipeline(transaction=False)
        for customer in customers:
            pipe.zrange(self._key(customer, "recent"), 0, -1)
            pipe.hvals(self._key(customer, "slots"))
        out: list[tuple] = []
        for i, members in enumerate(pipe.execute()):
            if i % 2 == 0:
                out += [tuple(json.loads(m)) for m in members]
            else:
                out += [_slot_row(v) for v in members]
        return out

    def profiles_of(self, customers: Sequence[str]) -> list[tuple]:
        values = self.r.mget([self._key(c, "profile") for c in customers]) if customers else []
        return [tuple(json.loads(v)) for v in values if v is not None]

    def put_profiles(self, rows: list[tuple]) -> None:
        for part in _chunks(rows, 5000):
            self.r.mset({self._key(row[0], "profile"): json.dumps(row) for row in part})

    def known(self, customers: Sequence[str]) -> list[bool]:
        pipe = self.r.pipeline(transaction=False)
        for customer in customers:
            pipe.exists(self._key(customer, "profile"), self._key(customer, "slots"))
        return [bool(n) for n in pipe.execute()]

    def forget(self, customers: Sequence[str]) -> int:
        removed = 0
        for part in _chunks(customers):
            keys = [self._key(c, kind) for c in part for kind in ("recent", "slots", "profile")]
            removed += int(self.r.delete(*keys))
        return removed

    def clear(self) -> None:
        batch: list = []
        for key in self.r.scan_iter(match=f"{self.prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                self.r.delete(*batch)
                batch = []
        if batch:
            self.r.delete(*batch)

    def close(self) -> None:
        self.r.close()
