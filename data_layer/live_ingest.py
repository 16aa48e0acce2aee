"""Live events in: validate, store durably and exactly once, fold, rewrite online features.

:func:`accept_events` is the one entry point of ``POST /events`` and ``omniscore stream``.
For a batch of canonical events (plain dicts, as JSON gives them) it

1. validates each with the rules and reasons of ``omniscore ingest``
   (:func:`data_layer.ingest.normalise` with the canonical mapping: ISO-8601 timestamps,
   naive ones taken as UTC, the default channel and event-type vocabularies), plus three
   live rules: no unknown field, a well-formed ``event_id`` when one is given, and no
   timestamp more than ``Settings.future_tolerance_seconds`` after the clock;
2. quarantines the rejected ones, with their reason and original values, in
   ``quarantine_dir`` (one Parquet file per batch that has any);
3. appends the valid ones whose ``event_id`` is not stored yet to the canonical event store
   (:func:`data_layer.live_segment.append`: fsync'd, under the store's cross-process lock,
   an indexed duplicate check) before returning;
4. folds every valid event, duplicates included, into the live state. Folding is idempotent
   by ``event_id``, so an event stored by a process that died before folding it is folded by
   whichever delivery comes next, and one folded twice changes nothing;
5. rewrites the affected customers' features, as of ``now``, in the Feast online store.

An event without ``event_id`` gets the content hash ``omniscore ingest`` gives it
(:func:`data_layer.schema.compute_event_ids`), so a redelivered message is recognised.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from data_layer import erasure, live_segment
from data_layer.event_store import ensure_current_event_ids
from data_layer.ingest import (
    _INTEGRAL_FLOAT,
    CANONICAL_INPUTS,
    NULL_TOKENS,
    IngestMapping,
    normalise,
    quarantine_rows,
    store_quarantine,
)
from data_layer.schema import CHANNELS, EVENT_TYPES, compute_event_ids, to_canonical_table
from data_layer.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

Status = Literal["accepted", "duplicate", "rejected"]

EVENT_ID_MAX = 128
LIVE_FIELDS: tuple[str, ...] = ("event_id", *CANONICAL_INPUTS, "family")
"""Fields an event may carry: the canonical schema (``family`` is derived and checked)."""
UNKNOWN_FIELDS = "unknown field(s): {names}"
INVALID_EVENT_ID = (
    f"invalid event_id: must be a non-empty string of at most {EVENT_ID_MAX} characters"
)
WRONG_FAMILY = "family {value} does not match event_type {event_type} ({expected})"
FUTURE_TIMESTAMP = "event_timestamp {value} is more than {seconds} s after the clock ({now})"
NOT_AN_OBJECT = "an event must be a JSON object"
LIVE_REASONS: tuple[str, ...] = (
    NOT_AN_OBJECT,
    UNKNOWN_FIELDS,
    INVALID_EVENT_ID,
    WRONG_FAMILY,
    FUTURE_TIMESTAMP,
)
"""Reasons only the live path gives, checked after ``omniscore ingest``'s
(:data:`data_layer.ingest.REASON_ORDER`)."""


@dataclass(frozen=True)
class EventResult:
    """What happened to one event of a batch."""

    event_id: str | None
    """The stored id (given, or the content hash); None when the event was rejected before
    an id could be derived."""
    status: Status
    reason: str | None
    """Why the event was rejected (None otherwise)."""


@dataclass
class AcceptReport:
    """One :func:`accept_events` call: a result per input event, in order."""

    results: list[EventResult]
    customers: list[str] = field(default_factory=list)
    """Customers whose state was folded (valid events, accepted or duplicate)."""
    quarantine_path: str | None = None
    fold: Any = None
    """The live state's ``FoldReport``, when a state was given."""
    online_rows: int = 0
    """Customer rows rewritten in the Feast online store."""
    features: pd.DataFrame | None = None
    """The features written there (``LiveState.features`` of ``customers`` at ``now``)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Time spent per stage (validate, store, fold, online)."""

    def count(self, status: Status) -> int:
        """Events of the batch with ``status``."""
        return sum(1 for r in self.results if r.status == status)

    @property
    def accepted(self) -> int:
        return self.count("accepted")

    @property
    def duplicates(self) -> int:
        return self.count("duplicate")

    @property
    def rejected(self) -> int:
        return self.count("rejected")


@dataclass
class ValidatedBatch:
    """A batch split into canonical events and per-position rejections."""

    events: pa.Table
    """Valid events in :data:`~data_layer.schema.EVENT_SCHEMA`, in input order."""
    positions: np.ndarray
    """Input position of each row of ``events``."""
    reasons: list[str | None]
    """Per input position, the rejection reason or None."""
    quarantine: pd.DataFrame
    """Rejected events as ``omniscore ingest`` quarantines rows (original values as text)."""


def parse_clock(value: str | None) -> pd.Timestamp | None:
    """``OMNISCORE_CLOCK``: an ISO-8601 instant (naive means UTC) fixing the clock, or None."""
    if value is None or not str(value).strip():
        return None
    try:
        stamp = pd.Timestamp(str(value).strip())
    except ValueError as exc:
        raise ValueError(f"OMNISCORE_CLOCK={value!r} is not an ISO-8601 instant") from exc
    if pd.isna(stamp):
        raise ValueError(f"OMNISCORE_CLOCK={value!r} is not an ISO-8601 instant")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def utc_now(clock: pd.Timestamp | None = None) -> pd.Timestamp:
    """The fixed clock when one is set, else the current UTC time (microseconds)."""
    return clock if clock is not None else pd.Timestamp.now(tz="UTC").floor("us")


def _as_text(value: Any) -> Any:
    """JSON scalars as the text a log file would hold (exact for floats: repr round-trips)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def validate_records(
    records: Sequence[Any],
    now: pd.Timestamp,
    tolerance_seconds: int,
    source: str = "live",
) -> ValidatedBatch:
    """Validate live events with ``omniscore ingest``'s rules plus the live ones (pure).

    An event already in exact canonical form (what producers normally send) is recognised by
    :func:`_canonical_row` without pandas; every other one goes through
    :func:`data_layer.ingest.normalise`, which then decides and gives the reason. Both give
    the same canonical values for an event (a test checks it), the first a hundred times
    faster for a single event.
    """
    n = len(records)
    reasons: list[str | None] = [None] * n
    fast: dict[int, tuple] = {}
    slow: list[int] = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            reasons[i] = NOT_AN_OBJECT
            continue
        row = _canonical_row(record)
        if row is not None:
            fast[i] = row
        else:
            slow.append(i)
    parts = []
    if fast:
        positions = np.fromiter(fast, dtype=np.int64, count=len(fast))
        parts.append((positions, _fast_frame(list(fast.values()))))
    if slow:
        rows = [{str(k): _as_text(v) for k, v in records[i].items()} for i in slow]
        # An explicit index keeps one row per record: records that are all empty ({}) would
        # otherwise give a frame of no rows, and their positions would point past it.
        raw = pd.DataFrame.from_records(
            rows, columns=_columns(rows), index=range(len(rows))
        ).astype(object)
        raw = raw.where(raw.notna(), None)
        for name in CANONICAL_INPUTS:
            if name not in raw:
                raw[name] = None
        accepted, quarantined = normalise(raw[list(CANONICAL_INPUTS)], IngestMapping(), source)
        rejected = {int(r) - 1 for r in quarantined["source_row"]}
        for row, reason in zip(quarantined["source_row"], quarantined["reason"], strict=True):
            reasons[slow[int(row) - 1]] = str(reason)
        for i in slow:  # the live reasons come after ingest's, like its own order
            unknown = sorted(str(k) for k in records[i] if k not in LIVE_FIELDS)
            if unknown and reasons[i] is None:
                reasons[i] = UNKNOWN_FIELDS.format(names=", ".join(unknown))
        kept = np.array([i for j, i in enumerate(slow) if j not in rejected], dtype=np.int64)
        parts.append((kept, accepted))
    if parts:
        positions = np.concatenate([p for p, _ in parts])
        # One dtype per column on both sides, so an all-missing column changes nothing.
        frame = pd.concat([f.astype(_FRAME_DTYPES) for _, f in parts], ignore_index=True)
        order = np.argsort(positions, kind="stable")
        positions, frame = positions[order], frame.iloc[order].reset_index(drop=True)
    else:
        positions = np.array([], dtype=np.int64)
        frame = _fast_frame([])
    frame = frame.astype(
        {"amount": "float64", "rating": "float64", "event_timestamp": "datetime64[ns, UTC]"}
    )
    given = [records[i].get("event_id") for i in positions.tolist()]
    families = [records[i].get("family") for i in positions.tolist()]
    types = frame["event_type"].tolist()
    stamps = frame["event_timestamp"]
    limit = now + pd.Timedelta(seconds=tolerance_seconds)
    future = (stamps > limit).to_numpy(dtype=bool)
    computed = compute_event_ids(frame) if len(frame) else np.array([], dtype=str)
    ids: list[str] = []
    for j, i in enumerate(positions.tolist()):
        event_id = given[j]
        if event_id is not None and (
            not isinstance(event_id, str) or not event_id.strip() or len(event_id) > EVENT_ID_MAX
        ):
            reasons[i] = reasons[i] or INVALID_EVENT_ID
        family = families[j]
        expected = EVENT_TYPES[types[j]].value
        if family is not None and family != expected:
            reasons[i] = reasons[i] or WRONG_FAMILY.format(
                value=family, event_type=types[j], expected=expected
            )
        if future[j]:
            reasons[i] = reasons[i] or FUTURE_TIMESTAMP.format(
                value=stamps.iloc[j].isoformat(), seconds=tolerance_seconds, now=now.isoformat()
            )
        ids.append(event_id.strip() if isinstance(event_id, str) else str(computed[j]))
    keep = np.array([reasons[i] is None for i in positions.tolist()], dtype=bool)
    events = frame[keep].copy()
    events["event_id"] = np.array(ids, dtype=object)[keep] if len(ids) else []
    table = to_canonical_table(events.reset_index(drop=True))
    return ValidatedBatch(
        events=table,
        positions=positions[keep],
        reasons=reasons,
        quarantine=_quarantine(records, reasons, source),
    )


_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})$")
_INTEGRAL = re.compile(_INTEGRAL_FLOAT)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CHANNEL_SET = frozenset(CHANNELS)
_MIN_US = pd.Timestamp.min.value // 1000 + 1
_MAX_US = pd.Timestamp.max.value // 1000 - 1


def _plain_text(value: Any, identifier: bool) -> bool:
    """A string ingest would store unchanged (trimmed, not a null token, not ``12.0``)."""
    return (
        isinstance(value, str)
        and value != ""
        and value == value.strip()
        and value not in NULL_TOKENS
        and not (identifier and _INTEGRAL.match(value))
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _canonical_row(record: dict) -> tuple | None:
    """The canonical values of an event that is plainly valid, or None (let ingest decide).

    None for anything ingest would change, reject or note: text needing a trim or an id
    rewrite, a timestamp not in strict ISO-8601 with an offset, a value outside the
    vocabulary, a purchase without a positive amount, a negative return, a rating outside
    1-5, an unknown field or a malformed ``event_id`` / ``family``.
    """
    for key in record:
        if key not in LIVE_FIELDS:
            return None
    customer_id = record.get("customer_id")
    stamp = record.get("event_timestamp")
    channel = record.get("channel")
    event_type = record.get("event_type")
    if not _plain_text(customer_id, True) or not isinstance(stamp, str):
        return None
    if not isinstance(channel, str) or not isinstance(event_type, str):
        return None
    if channel not in _CHANNEL_SET or event_type not in EVENT_TYPES:
        return None
    if not _TIMESTAMP.match(stamp):
        return None
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    micros = (moment - _EPOCH) // timedelta(microseconds=1)
    if not _MIN_US <= micros <= _MAX_US:  # outside pandas' nanosecond range: ingest decides
        return None
    amount = record.get("amount")
    if amount is not None:
        amount = _number(amount)
        if amount is None:
            return None
    if event_type == "purchase" and (amount is None or amount <= 0):
        return None
    if event_type == "return" and amount is not None and amount < 0:
        return None
    rating = record.get("rating")
    if rating is not None:
        rating = _number(rating)
        if rating is None or not 1 <= rating <= 5:
            return None
    optional = []
    for name in ("session_id", "device", "campaign_id"):
        value = record.get(name)
        if value is not None and not _plain_text(value, name != "device"):
            return None
        optional.append(value)
    event_id = record.get("event_id")
    if event_id is not None and (
        not isinstance(event_id, str) or not event_id.strip() or len(event_id) > EVENT_ID_MAX
    ):
        return None
    family = record.get("family")
    if family is not None and family != EVENT_TYPES[event_type].value:
        return None
    return (customer_id, micros, channel, event_type, amount, optional[0], optional[1],
            rating, optional[2])  # fmt: skip


_FRAME_DTYPES = {
    "customer_id": "string",
    "event_timestamp": "datetime64[ns, UTC]",
    "channel": "string",
    "event_type": "string",
    "amount": "float64",
    "session_id": "string",
    "device": "string",
    "rating": "float64",
    "campaign_id": "string",
}
"""Column dtypes of a validated batch (``normalise``'s canonical frame)."""


def _fast_frame(rows: list[tuple]) -> pd.DataFrame:
    """Canonical frame (``normalise``'s columns and dtypes) from :func:`_canonical_row` rows."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * 9
    micros = np.array(columns[1], dtype=np.int64)

    def floats(values) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype="float64")

    def strings(values) -> pd.Series:
        return pd.Series(list(values), dtype="string")

    return pd.DataFrame(
        {
            "customer_id": strings(columns[0]),
            "event_timestamp": pd.to_datetime(micros, unit="us", utc=True),
            "channel": strings(columns[2]),
            "event_type": strings(columns[3]),
            "amount": floats(columns[4]),
            "session_id": strings(columns[5]),
            "device": strings(columns[6]),
            "rating": floats(columns[7]),
            "campaign_id": strings(columns[8]),
        }
    )


def _quarantine(records: Sequence[Any], reasons: list[str | None], source: str) -> pd.DataFrame:
    """Rejected events as ingest quarantines rows: position, reason, original values as text."""
    bad = [i for i, reason in enumerate(reasons) if reason is not None]
    rows = [
        {str(k): _as_text(v) for k, v in records[i].items()}
        if isinstance(records[i], dict)
        else {"original": repr(records[i])}
        for i in bad
    ]
    index = pd.Index(bad, dtype=np.int64)  # quarantine_rows numbers rows index + 1
    raw = pd.DataFrame(rows, columns=_columns(rows), index=index)
    return quarantine_rows(raw, pd.Series([reasons[i] for i in bad], index=index), source)


def withhold_erased(
    settings: Settings, records: Sequence[Any], batch: ValidatedBatch, source: str
) -> ValidatedBatch:
    """``batch`` with the valid events of customers on the suppression list
    (``omniscore forget``) rejected as ``erased customer``; the quarantine keeps the keyed
    hash in place of their id (:func:`data_layer.erasure.scrub_quarantine`)."""
    if not erasure.suppressed_hashes(settings):
        return batch
    hit = erasure.is_suppressed(settings, batch.events.column("customer_id").to_pylist())
    if hit.any():
        reasons = list(batch.reasons)
        for position in batch.positions[hit].tolist():
            reasons[position] = erasure.ERASED_REASON
        batch = ValidatedBatch(
            events=batch.events.filter(pa.array(~hit)),
            positions=batch.positions[~hit],
            reasons=reasons,
            quarantine=_quarantine(records, reasons, source),
        )
    batch.quarantine = erasure.scrub_quarantine(settings, batch.quarantine)
    return batch


def _columns(rows: list[dict]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)


def _given_id(record: Any) -> str | None:
    """The ``event_id`` a rejected event carried, echoed back when it is usable text."""
    value = record.get("event_id") if isinstance(record, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= EVENT_ID_MAX else None


class OnlineFeatureWriter:
    """Rewrites customers' feature rows in the Feast online store (SQLite or Redis).

    Built once per process (it holds the Feast store and its views): one row per customer and
    view, stamped with the instant the features were computed for, written with the bulk
    writers of :mod:`data_layer.online_format` that ``features materialize`` uses.
    """

    def __init__(self, settings: Settings, store: FeatureStore | None = None) -> None:
        from data_layer.feast_store import feature_store

        self.store = store or feature_store(settings)
        self.config = self.store.config
        self.views = list(self.store.list_feature_views())
        self._redis = None

    def write(self, features: pd.DataFrame, computed_at: pd.Timestamp) -> int:
        """Write ``features`` (``LiveState.features`` rows) to every view; customers written."""
        from data_layer import online_format
        from data_layer.feast_store import CREATED, JOIN_KEY, TIMESTAMP

        if features.empty:
            return 0
        created = pd.Timestamp(computed_at).tz_convert("UTC")
        items = []
        for view in self.views:
            names = [f.name for f in view.features]
            part = features[[JOIN_KEY, TIMESTAMP, *names]].copy()
            part.insert(2, CREATED, created)
            part[TIMESTAMP] = pd.to_datetime(part[TIMESTAMP], utc=True)
            items.append((view, pa.Table.from_pandas(part, preserve_index=False)))
        if online_format.sqlite_supported(self.config):
            conn = online_format.connect_sqlite(self.config, cache_mb=16)
            try:
                for view, table in items:
                    online_format.apply_sqlite(
                        conn, online_format.prepare_sqlite(self.config, view, table)
                    )
            finally:
                conn.close()
        elif self.config.online_store.type == "redis":
            if self._redis is None:
                self._redis = online_format.redis_client(self.config)
            # The Redis writer skips a row whose stored time is as new as its own, as Feast
            # does; with a fixed clock every rewrite has the same time, so the stored times
            # of these customers are dropped first and the rewrite always lands.
            keys = online_format.redis_keys(self.config, features[JOIN_KEY].astype(str).tolist())
            fields = [f"_ts:{view.name}".encode() for view in self.views]
            with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hdel(key, *fields)
                pipe.execute()
            online_format.write_redis(self.config, items, client=self._redis)
        else:
            from data_layer.feast_store import write_online_batch

            for view, table in items:
                write_online_batch(self.store, view, table)
        return len(features)


def accept_events(
    settings: Settings,
    records: Sequence[Any],
    now: pd.Timestamp,
    state: Any = None,
    *,
    online: OnlineFeatureWriter | None = None,
    source: str = "live",
) -> AcceptReport:
    """Validate, quarantine, store durably (exactly once), fold and rewrite online features.

    ``records`` are canonical events as dicts; ``now`` is the clock (the fixed one in
    replays); ``state`` a :class:`data_layer.live_state.LiveState` (None: store only);
    ``online`` rewrites the folded customers' features in the Feast online store (None: the
    online store is left as it is). See the module docstring for the steps and guarantees.
    """
    timings: dict[str, float] = {}
    mark = time.perf_counter()
    now = (
        pd.Timestamp(now).tz_convert("UTC")
        if pd.Timestamp(now).tzinfo
        else pd.Timestamp(now, tz="UTC")
    )
    batch = validate_records(records, now, settings.future_tolerance_seconds, source=source)
    batch = withhold_erased(settings, records, batch, source)
    timings["validate"] = time.perf_counter() - mark
    quarantine_path = None
    if len(batch.quarantine):
        # Quarantine before storing: a failure afterwards loses no rejected event.
        batch.quarantine.insert(0, "received_at", now)
        name = f"live-{now.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
        quarantine_path = str(store_quarantine(settings, batch.quarantine, name))
    mark = time.perf_counter()
    # A store of pre-128-bit ids is migrated first, so a redelivery is still recognised.
    ensure_current_event_ids(settings)
    fresh = live_segment.append(settings, batch.events)
    timings["store"] = time.perf_counter() - mark
    ids = batch.events.column("event_id").to_pylist()
    results: list[EventResult] = [
        EventResult(event_id=_given_id(record), status="rejected", reason=reason)
        for record, reason in zip(records, batch.reasons, strict=True)
    ]
    for row, position in enumerate(batch.positions):
        status: Status = "accepted" if fresh[row] else "duplicate"
        results[int(position)] = EventResult(event_id=ids[row], status=status, reason=None)
    report = AcceptReport(results=results, quarantine_path=quarantine_path, seconds=timings)
    if batch.events.num_rows == 0:
        return report
    customers = sorted(set(batch.events.column("customer_id").to_pylist()))
    report.customers = customers
    if state is not None:
        mark = time.perf_counter()
        report.fold = state.fold(batch.events.to_pandas(), now)
        timings["fold"] = time.perf_counter() - mark
        if online is not None:
            mark = time.perf_counter()
            report.features = state.features(customers, now)
            timings["features"] = time.perf_counter() - mark
            mark = time.perf_counter()
            report.online_rows = online.write(report.features, now)
            timings["online"] = time.perf_counter() - mark
    return report
