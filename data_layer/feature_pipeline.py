"""Point-in-time cross-channel features: DuckDB SQL over the canonical event store.

A snapshot stamped T describes each customer using only events strictly before T, at any
instant T (microseconds, UTC). A window of w days is ``[T - w*24h, T)`` in continuous time.
Every windowed feature is a count or sum of per-event (or per-session, per-active-day) items,
so the pipeline computes, once, the running sums of each item at every window boundary of every
snapshot (:class:`_Accumulator`), and a window is the difference of two running sums: each
event is touched once however many snapshots overlap it.

Every feature at T depends only on the customer's events in ``[T - HISTORY_NEEDED, T)`` plus
four lifetime scalars (first event, last customer-initiated event per channel, last purchase
per channel) and the customer's purchases at any age (the 180-day, 365-day and lifetime
purchase features). The live path (:mod:`data_layer.live_state`) keeps exactly that per customer and
calls :func:`compute_snapshots` on it: one definition, two paths.

The BG/NBD features are the one exception to "a customer's features read only that customer":
their four population parameters are fitted at each instant on every customer's purchases
before it (:func:`bgnbd_population`). A build fits them once per instant over the whole store
(before any customer partition or Spark task), stores them in ``bgnbd_params.json`` beside the
snapshots, and hands them to every :func:`compute_snapshots` call; the per-customer values are
closed forms of the customer's own purchase days and those parameters, which the live path
reads from the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_layer import bgnbd
from data_layer.event_store import (
    BUCKET_HASH_SQL,
    empty_events_sql,
    event_files,
    events_relation_sql,
    profile_at,
    read_customers,
    relation_sql,
)
from data_layer.schema import (
    CHANNELS,
    CUSTOMER_INITIATED_FAMILIES,
    EVENT_TYPES,
    ONLINE_CHANNELS,
    PURCHASE_CHANNELS,
)
from data_layer.settings import Settings
from feature_repo.catalog import (
    ACTIVITY_WINDOWS_DAYS,
    BGNBD_HORIZON_DAYS,
    BUILTIN_FEATURES,
    CART_RECOVERY_HOURS,
    FEATURE_NAMES,
    FEATURES,
    LONG_WINDOW_DAYS,
    PURCHASE_WINDOWS_DAYS,
    SESSION_GAP_HOURS,
    SWITCH_LOOKBACK_DAYS,
    TOUCH_WINDOW_HOURS,
    VIEWS,
    features_of_view,
)

SESSION_CHANNELS = ("web", "app")
SNAPSHOT_KEY = ["customer_id", "event_timestamp"]
HISTORY_NEEDED = pd.Timedelta(days=LONG_WINDOW_DAYS + SWITCH_LOOKBACK_DAYS) + pd.Timedelta(
    hours=SESSION_GAP_HOURS
)
"""How far before T an event can still change a feature at T, lifetime scalars aside: a
channel switch at T - 90 d looks back 30 d for the previous session, whose start looks back one
session gap. (Touches look back 72 h and the 60-day trend is inside the 90-day window.)"""


@dataclass(frozen=True)
class BuildReport:
    """What one ``features build`` wrote."""

    snapshots: list[pd.Timestamp]
    rows: int
    customers: int
    seconds: float
    files: list[str]
    partitions: int = 1
    """Customer buckets built one after another (1: the one-pass build)."""


FEATURE_EVENT_COLUMNS = (
    "customer_id",
    "event_timestamp",
    "channel",
    "event_type",
    "family",
    "amount",
    "session_id",
    "rating",
)
"""The event columns :func:`compute_snapshots` reads."""


def build_events_sql(
    settings: Settings,
    times: Sequence[pd.Timestamp],
    partition: tuple[int, int] | None = None,
) -> str:
    """The events a build at ``times`` needs, as a DuckDB relation that lists only the files
    it needs (the store's month/bucket layout, :func:`data_layer.event_store.event_files`).

    - Events at or after the last instant change no feature: months after it are not read.
    - Events before ``lo = first instant - HISTORY_NEEDED`` reach a feature only through the
      lifetime scalars and the purchases (module docstring): of those months only the narrow
      columns are read, and only each customer's first event, last customer-initiated event
      per channel, and every purchase are kept (the rows the live state keeps, without their
      session and rating, which nothing at or after ``lo`` reads).
    - ``partition`` ``(p, N)``: only the store buckets holding build partition ``p``'s
      customers, filtered to them by the same hash.

    The result has the rows of the whole store's for every feature at ``times``; the equality
    tests compare the two builds value for value.
    """
    stamps = snapshot_instants(times)
    first, last = stamps[0], stamps[-1]
    lo = first - HISTORY_NEEDED
    lo_sql, last_sql = _ts_literal(lo), _ts_literal(last)
    mine = ""
    if partition is not None:
        hashed = BUCKET_HASH_SQL.format(column="customer_id")
        mine = f" AND {hashed} % {int(partition[1])} = {int(partition[0])}"
    columns = ", ".join(FEATURE_EVENT_COLUMNS)
    parts = []
    old = event_files(settings, until=lo, partition=partition)
    if old:
        initiated = _lit(sorted(f.value for f in CUSTOMER_INITIATED_FAMILIES))
        # Sorted back into each customer's time order, which the whole store's files have:
        # window sums add a customer's items in the order they arrive, and floating-point
        # sums are only equal when added in the same order.
        parts.append(
            f"""SELECT * FROM (
                SELECT customer_id, event_timestamp, channel, event_type, family, amount,
                       NULL::VARCHAR AS session_id, NULL::DOUBLE AS rating
                FROM {relation_sql(old)} WHERE event_timestamp < {lo_sql}{mine}
                QUALIFY event_type = 'purchase'
                    OR row_number() OVER (PARTITION BY customer_id
                                          ORDER BY event_timestamp) = 1
                    OR (family IN ({initiated})
                        AND row_number() OVER (
                            PARTITION BY customer_id, channel, family IN ({initiated})
                            ORDER BY event_timestamp DESC) = 1)
            ) ORDER BY customer_id, event_timestamp"""
        )
    recent = event_files(settings, since=lo, until=last, partition=partition)
    if recent:
        parts.append(
            f"SELECT {columns} FROM {relation_sql(recent)} "
            f"WHERE event_timestamp >= {lo_sql} AND event_timestamp < {last_sql}{mine}"
        )
    if not parts:
        if not event_files(settings):
            events_relation_sql(settings)  # raises the store's "no events" error
        return f"(SELECT {columns} FROM {empty_events_sql()})"
    return "(" + " UNION ALL ".join(f"({part})" for part in parts) + ")"


def _ts_literal(instant: pd.Timestamp) -> str:
    return f"'{pd.Timestamp(instant).tz_convert('UTC').isoformat()}'::TIMESTAMPTZ"


def snapshot_times(
    start: datetime | str, end: datetime | str, every: str | pd.Timedelta = "7D"
) -> list[pd.Timestamp]:
    """Snapshot times from ``start`` to ``end`` inclusive, every ``every`` (any instants)."""
    first, last = _utc(start), _utc(end)
    try:
        step = pd.Timedelta(every)
    except ValueError:
        raise ValueError(f"--every must be a duration such as 7D or 6h, got {every!r}") from None
    if step <= pd.Timedelta(0):
        raise ValueError(f"--every must be positive, got {every!r}")
    if last < first:
        raise ValueError(f"--end ({last}) is before --start ({first})")
    return list(pd.date_range(first, last, freq=step))


def _utc(value: datetime | str) -> pd.Timestamp:
    """A UTC timestamp at microsecond resolution (a naive value is read as UTC)."""
    try:
        stamp = pd.Timestamp(value)
    except ValueError:
        raise ValueError(f"not an instant: {value!r}") from None
    if stamp is pd.NaT:
        raise ValueError(f"not an instant: {value!r}")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    if stamp != stamp.floor("us"):
        # Events are stored in microseconds; a finer T would make "strictly before T" ambiguous.
        raise ValueError(f"snapshot times have microsecond resolution, got {stamp}")
    return stamp


def snapshot_instants(values: Sequence[datetime | str | pd.Timestamp]) -> list[pd.Timestamp]:
    """Distinct UTC instants, sorted (what ``features build --at`` takes)."""
    return sorted({_utc(v) for v in values})


def _lit(values: Sequence[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


_CHANNEL_CODE = {ch: i for i, ch in enumerate(CHANNELS)}
_TYPE_CODE = {t: i for i, t in enumerate(EVENT_TYPES)}
_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 86_400_000_000


def _case(column: str, codes: dict[str, int]) -> str:
    arms = " ".join(f"WHEN {_lit([k])} THEN {v}" for k, v in codes.items())
    # Values outside the default vocabulary share code -1: they still count as "another
    # channel" for journeys and switches, but get no per-channel feature of their own.
    return f"CASE {column} {arms} ELSE -1 END"


def _event_sql(events: str) -> str:
    """Event-level SQL: integer codes, and the flags that need neighbouring events.

    Cross-channel and cart flags look only at a fixed span around their own event, so a
    snapshot at T can use them without seeing past T (the cart flag is re-checked against T).
    """
    initiated = _lit(sorted(f.value for f in CUSTOMER_INITIATED_FAMILIES))
    purchase, cart = _TYPE_CODE["purchase"], _TYPE_CODE["add_to_cart"]
    web = _CHANNEL_CODE["web"]
    probe_channels = ", ".join(str(c) for c in [-1, *_CHANNEL_CODE.values()])
    # Pseudo-channel of email opens and clicks: the email-to-app journey starts with one of
    # them, not with any customer-initiated event on the email channel (a complaint by email).
    email_response = -2
    responses = ", ".join(str(_TYPE_CODE[t]) for t in ("email_open", "email_click"))
    return f"""
    CREATE TEMP TABLE ids AS
    SELECT customer_id, (row_number() OVER (ORDER BY customer_id) - 1)::INTEGER AS cust
    FROM (SELECT customer_id FROM customers UNION SELECT DISTINCT customer_id FROM {events});

    CREATE TEMP TABLE ev AS
    SELECT row_number() OVER () AS eid, i.cust,
           epoch_us(e.event_timestamp) AS ts,
           (epoch_us(e.event_timestamp) // {_US_PER_DAY})::INTEGER AS day,
           ({_case("e.channel", _CHANNEL_CODE)})::TINYINT AS ch,
           ({_case("e.event_type", _TYPE_CODE)})::TINYINT AS typ,
           e.family IN ({initiated}) AS initiated,
           e.amount, e.rating,
           CASE WHEN e.session_id IS NOT NULL THEN hash(e.session_id) END AS session_key
    FROM {events} e JOIN ids i USING (customer_id);

    CREATE TEMP TABLE touch AS
    WITH p AS (SELECT eid, cust, ts, ch AS pch FROM ev WHERE typ = {purchase}),
         probe AS (SELECT p.*, c.ch FROM p
                   CROSS JOIN (SELECT unnest([{probe_channels}, {email_response}]) AS ch) c),
         t AS (SELECT cust, ch, ts FROM ev WHERE initiated
               UNION ALL
               SELECT ev.cust, {email_response} AS ch, ev.ts FROM ev
               WHERE ev.typ IN ({responses}))
    SELECT probe.eid,
           bool_or(probe.ch <> probe.pch AND probe.ch <> {email_response}
                   AND t.ts >= probe.ts - {TOUCH_WINDOW_HOURS * _US_PER_HOUR})
             AS touched_other,
           bool_or(probe.ch = {web} AND t.ts >= probe.ts - {TOUCH_WINDOW_HOURS * _US_PER_HOUR})
             AS web_touch,
           bool_or(probe.ch = {email_response}
                   AND t.ts >= probe.ts - {TOUCH_WINDOW_HOURS * _US_PER_HOUR})
             AS email_touch
    FROM probe ASOF LEFT JOIN t ON probe.cust = t.cust AND probe.ch = t.ch AND probe.ts > t.ts
    GROUP BY probe.eid;

    CREATE TEMP TABLE cart_recovery AS
    SELECT c.eid,
           CASE WHEN p.ts <= c.ts + {CART_RECOVERY_HOURS * _US_PER_HOUR} THEN p.ts END
             AS recovered_at
    FROM (SELECT eid, cust, ts FROM ev WHERE typ = {cart}) c
    ASOF LEFT JOIN (SELECT cust, ts FROM ev WHERE typ = {purchase}) p
      ON c.cust = p.cust AND c.ts < p.ts;
    {_SESSIONS_SQL}
    """


# A session is a (channel, session_id), or a (channel, UTC day) for events without an id, cut
# where two of its events are more than SESSION_GAP_HOURS apart; it starts at its first event.
# Both depend only on earlier events, so events after T never move a session that began before
# T. A switch is a session whose previous session (any channel; ties in start time ordered by
# channel and key) started at most SWITCH_LOOKBACK_DAYS before it on another channel.
_SESSIONS_SQL = f"""
    CREATE TEMP TABLE sess AS
    WITH keyed AS (
        SELECT cust, ch, ts, session_key, CASE WHEN session_key IS NULL THEN day END AS sday,
               lag(ts) OVER (PARTITION BY cust, ch, session_key,
                                          CASE WHEN session_key IS NULL THEN day END
                             ORDER BY ts) AS prev_ts
        FROM ev WHERE initiated
    ), starts AS (
        SELECT cust, ch, ts, session_key, sday FROM keyed
        WHERE prev_ts IS NULL OR ts - prev_ts > {SESSION_GAP_HOURS * _US_PER_HOUR}
    )
    SELECT cust, ch, ts,
           coalesce(ch <> prev_ch AND ts - prev_start <= {SWITCH_LOOKBACK_DAYS * _US_PER_DAY},
                    false) AS is_switch
    FROM (
        SELECT cust, ch, ts,
               lag(ch) OVER w AS prev_ch, lag(ts) OVER w AS prev_start
        FROM starts
        WINDOW w AS (PARTITION BY cust ORDER BY ts, ch, session_key, sday)
    );
"""


_FETCH_EVENTS_SQL = """
SELECT ev.cust, ev.ts, ev.ch, ev.typ, ev.initiated,
       -- A purchase without an amount (a log ingested with `amounts: none`) stays NaN, so the
       -- customer's revenue features are missing rather than zero; amounts of other types
       -- are never summed.
       ev.amount::DOUBLE AS amount, coalesce(ev.rating, 'NaN'::DOUBLE) AS rating,
       coalesce(t.touched_other, false) AS touched_other,
       coalesce(t.web_touch, false) AS web_touch,
       coalesce(t.email_touch, false) AS email_touch,
       coalesce(r.recovered_at, -1) AS recovered_at
FROM ev LEFT JOIN touch t USING (eid) LEFT JOIN cart_recovery r USING (eid)
-- Window sums add each customer's amounts and ratings in the order rows arrive, and floating
-- point sums are equal only when added in the same order: sorting on the values makes it one
-- order whatever the files, their layout or DuckDB's threads (one pass, partitions, live).
ORDER BY ev.cust, ev.ts, ev.ch, ev.typ, ev.amount NULLS FIRST, ev.rating NULLS FIRST
"""

_FETCH_SESSIONS_SQL = "SELECT cust, ch, ts, is_switch FROM sess"

# Active days: each (customer, channel, UTC day) with a customer-initiated event, with its first
# and last event; the day is in [T - w, T) when its first event is before T and its last event
# is at or after T - w (a day holds at most 24 h, so it cannot straddle both edges).
_FETCH_DAYS_SQL = """
SELECT cust, ch, min(ts) AS first_ts, max(ts) AS last_ts
FROM ev WHERE initiated AND ch >= 0 GROUP BY cust, ch, day
"""

_FETCH_CUSTOMERS_SQL = """
SELECT i.cust, i.customer_id,
       -- A missing signup sorts after every T; a NULL would reach numpy as NaN and overflow.
       coalesce(epoch_us(c.signup_date), 9223372036854775807) AS signup_us
FROM ids i LEFT JOIN customers c USING (customer_id) ORDER BY i.cust
"""


def _running(op: np.ufunc, rows: np.ndarray) -> np.ndarray:
    """In-place running ``op`` down the rows (several times faster than ``accumulate``)."""
    for i in range(1, len(rows)):
        op(rows[i - 1], rows[i], out=rows[i])
    return rows


class _Accumulator:
    """Cumulative per-customer sums at window boundaries: C(b) = sum of x over items before b.

    Boundaries are instants in microseconds (every ``T - w`` of every snapshot). A window
    ``[T - w, T)`` is then ``C(T) - C(T - w)``, so every item is touched once no matter how many
    snapshots overlap it. Arrays are boundary-major (boundaries × customers) so that the running
    sums are vector operations.
    """

    def __init__(self, n_customers: int, boundaries: np.ndarray) -> None:
        self.n_customers = n_customers
        self.boundaries = boundaries
        self.width = len(boundaries) + 1

    def keys(self, cust: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Flat cell of each item: its bucket (boundaries at or before its time) and customer."""
        bucket = np.searchsorted(self.boundaries, ts, side="right").astype(np.int64)
        return bucket * self.n_customers + cust

    def cumulative(self, keys: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        flat = np.bincount(keys, weights=weights, minlength=self.width * self.n_customers)
        return _running(np.add, flat.reshape(self.width, self.n_customers))

    def latest(self, keys: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Latest ``ts`` before each boundary, per boundary and customer (-1 when none)."""
        dense = np.full(self.width * self.n_customers, -1, dtype=np.int64)
        np.maximum.at(dense, keys, ts)
        return _running(np.maximum, dense.reshape(self.width, self.n_customers))

    def rows(self, instants: np.ndarray) -> np.ndarray:
        """Rows of a cumulative array holding the sums over items before each instant."""
        return np.searchsorted(self.boundaries, instants, side="left")


def _window_columns(
    ev: dict[str, np.ndarray],
    sessions: dict[str, np.ndarray],
    active_days: dict[str, np.ndarray],
    acc: _Accumulator,
    t_us: np.ndarray,
) -> dict[str, np.ndarray]:
    """Every window sum and last-seen timestamp as (snapshots × customers) arrays."""
    long = LONG_WINDOW_DAYS
    cust, ch, typ = ev["cust"], ev["ch"], ev["typ"]
    initiated, amount = ev["initiated"], ev["amount"]
    keys = acc.keys(cust, ev["ts"])
    out: dict[str, np.ndarray] = {}
    rows_at = {
        offset: acc.rows(t_us - offset * _US_PER_DAY)
        for offset in {0, 60, *ACTIVITY_WINDOWS_DAYS, long, 30, *PURCHASE_WINDOWS_DAYS}
    }

    def at(cum: np.ndarray, offset_days: int) -> np.ndarray:
        return cum[rows_at[offset_days], :]

    def windows(name: str, mask: np.ndarray, weights=None, spans=(long,)) -> None:
        w = None if weights is None else weights[mask]
        cum = acc.cumulative(keys[mask], w)
        now = at(cum, 0)
        for span in spans:
            out[f"{name}__{span}"] = now - at(cum, span)

    def latest(name: str, mask: np.ndarray) -> None:
        out[name] = at(acc.latest(keys[mask], ev["ts"][mask]), 0)

    is_type = {t: typ == code for t, code in _TYPE_CODE.items()}
    purchase, ret = is_type["purchase"], is_type["return"]

    def trend(name: str, cum: np.ndarray) -> None:
        out[f"{name}__{long}"] = at(cum, 0) - at(cum, long)
        out[f"{name}__30"] = at(cum, 0) - at(cum, 30)
        out[f"{name}__prev30"] = at(cum, 30) - at(cum, 60)

    trend("n_all", acc.cumulative(keys[initiated]))
    for name, code in _CHANNEL_CODE.items():
        on = initiated & (ch == code)
        windows(f"n_{name}", on, spans=ACTIVITY_WINDOWS_DAYS)
        latest(f"last_{name}", on)
    windows("purch", purchase, spans=(long, *PURCHASE_WINDOWS_DAYS))
    trend("rev", acc.cumulative(keys[purchase], amount[purchase]))
    _purchase_history(out, ev, purchase, acc, at)
    windows("ret", ret)
    latest("last_purch", purchase)
    online = np.isin(ch, [_CHANNEL_CODE[c] for c in ONLINE_CHANNELS])
    windows("rev_online", purchase & online, amount)
    for name in PURCHASE_CHANNELS:
        on = ch == _CHANNEL_CODE[name]
        windows(f"purch_{name}", purchase & on)
        windows(f"rev_{name}", purchase & on, amount)
        windows(f"ret_{name}", ret & on)
        latest(f"last_purch_{name}", purchase & on)
    for event_type in (
        "email_send",
        "email_open",
        "email_click",
        "push_send",
        "push_open",
        "sms_send",
        "sms_click",
        "support_contact",
        "complaint",
    ):
        windows(event_type, is_type[event_type])
    session_channel = np.isin(ch, [_CHANNEL_CODE[c] for c in SESSION_CHANNELS])
    windows("product_views", is_type["product_view"] & session_channel, spans=(30,))
    rated = (is_type["review"] | is_type["survey_response"]) & ~np.isnan(ev["rating"])
    windows("rating_sum", rated, ev["rating"])
    windows("rating_n", rated)
    windows("low_ratings", rated & (ev["rating"] <= 2))
    windows("xch_purch", purchase & ev["touched_other"])
    windows("store_purch_web", purchase & (ch == _CHANNEL_CODE["store"]) & ev["web_touch"])
    windows("app_purch_email", purchase & (ch == _CHANNEL_CODE["app"]) & ev["email_touch"])

    # Active days in [T - w, T): days whose first event is before T, less those whose last
    # event is before T - w (a subset of the former).
    d_cust, d_ch = active_days["cust"], active_days["ch"]
    for name, code in _CHANNEL_CODE.items():
        on = d_ch == code
        begun = at(acc.cumulative(acc.keys(d_cust[on], active_days["first_ts"][on])), 0)
        ended = acc.cumulative(acc.keys(d_cust[on], active_days["last_ts"][on]))
        for span in ACTIVITY_WINDOWS_DAYS:
            out[f"days_{name}__{span}"] = begun - at(ended, span)

    # Carts: abandoned at T unless recovered before T.
    carts = is_type["add_to_cart"]
    cum_carts = acc.cumulative(keys[carts])
    recovered = carts & (ev["recovered_at"] >= 0)
    by_recovery = acc.cumulative(acc.keys(cust[recovered], ev["recovered_at"][recovered]))
    by_cart = acc.cumulative(keys[recovered])
    out["carts"] = at(cum_carts, 0) - at(cum_carts, long)
    out["abandoned"] = out["carts"] - (at(by_recovery, 0) - at(by_cart, long))

    s_cust, s_ts, s_ch = sessions["cust"], sessions["ts"], sessions["ch"]
    web_app = np.isin(s_ch, [_CHANNEL_CODE[c] for c in SESSION_CHANNELS])
    cum = acc.cumulative(acc.keys(s_cust[web_app], s_ts[web_app]))
    out["sessions__30"] = at(cum, 0) - at(cum, 30)
    switch = sessions["is_switch"]
    cum = acc.cumulative(acc.keys(s_cust[switch], s_ts[switch]))
    out[f"switches__{long}"] = at(cum, 0) - at(cum, long)

    first = np.full(acc.n_customers, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, cust, ev["ts"])
    out["first_ts"] = np.repeat(first[None, :], len(t_us), axis=0)
    return out


def _purchase_history(
    out: dict[str, np.ndarray], ev: dict[str, np.ndarray], purchase: np.ndarray, acc, at
) -> None:
    """Long-window and lifetime purchase sums for sparse buyers.

    ``rev__<span>`` for the long purchase windows and, over the whole history before T, the
    purchase count and revenue, the distinct purchase days and the sum and sum of squares of
    the whole-day gaps between consecutive purchase days. A purchase day is an item stamped at
    its first purchase, its gap measured from the customer's previous purchase day, so both
    depend only on purchases before T (every purchase, however old: the live state keeps them).
    """
    cust, ts, amount = ev["cust"][purchase], ev["ts"][purchase], ev["amount"][purchase]
    keys = acc.keys(cust, ts)
    revenue = acc.cumulative(keys, amount)
    for span in PURCHASE_WINDOWS_DAYS:
        out[f"rev__{span}"] = at(revenue, 0) - at(revenue, span)
    out["purch__life"] = at(acc.cumulative(keys), 0)
    out["rev__life"] = at(revenue, 0)
    day = ts // _US_PER_DAY
    order = np.lexsort((ts, day, cust))
    cust, ts, day = cust[order], ts[order], day[order]
    first = np.ones(len(cust), dtype=bool)
    first[1:] = (cust[1:] != cust[:-1]) | (day[1:] != day[:-1])
    d_cust, d_ts, d_day = cust[first], ts[first], day[first]
    has_prev = np.zeros(len(d_cust), dtype=bool)
    has_prev[1:] = d_cust[1:] == d_cust[:-1]
    gap = np.zeros(len(d_cust), dtype=np.float64)
    gap[1:] = np.where(has_prev[1:], d_day[1:] - d_day[:-1], 0).astype(np.float64)
    day_keys = acc.keys(d_cust, d_ts)
    out["pdays__life"] = at(acc.cumulative(day_keys), 0)
    out["gap_sum__life"] = at(acc.cumulative(day_keys, gap), 0)
    out["gap_sq__life"] = at(acc.cumulative(day_keys, gap * gap), 0)


# The BG/NBD summary (x, t_x, T) of every customer at every instant, counted by distinct summary.
# A purchase day counts at T when its first purchase is before T. Each purchase day k of a
# customer (days in order) stands for the instants after its first purchase up to the next
# day's first purchase: there the customer has k + 1 purchase days, the last one k. So a range
# join gives every (instant, customer) exactly once, with no (instant x customer) grouping.
_POPULATION_SQL = f"""
WITH days AS (
    SELECT customer_id, epoch_us(event_timestamp) // {_US_PER_DAY} AS day,
           min(epoch_us(event_timestamp)) AS first_us
    FROM {{source}} WHERE event_type = 'purchase' GROUP BY customer_id, day
), ranked AS (
    SELECT day, first_us,
           row_number() OVER w - 1 AS x,
           min(day) OVER (PARTITION BY customer_id) AS day0,
           coalesce(lead(first_us) OVER w, 9223372036854775807) AS next_us
    FROM days WINDOW w AS (PARTITION BY customer_id ORDER BY day)
)
SELECT i.t_us, r.x::DOUBLE AS x, (r.day - r.day0)::DOUBLE AS t_x,
       (i.t_us // {_US_PER_DAY} - r.day0)::DOUBLE AS age, count(*)::DOUBLE AS n
FROM bgnbd_instants i JOIN ranked r ON i.t_us > r.first_us AND i.t_us <= r.next_us
GROUP BY ALL ORDER BY ALL
"""


def bgnbd_population(
    source: str,
    times: Sequence[datetime | str | pd.Timestamp],
    connection: duckdb.DuckDBPyConnection | None = None,
) -> dict[pd.Timestamp, bgnbd.BGNBDFit | None]:
    """The BG/NBD population fit at each instant, on every customer's purchases before it.

    ``source`` is a DuckDB relation expression over canonical events (the whole store for a
    build: every customer, whatever the partitions). Only ``customer_id``, ``event_timestamp``
    and ``event_type`` are read. The fit sees the multiset of summaries only, so it is the same
    whoever computes it (one pass, each partitioned build, the Spark driver) and equal to
    :func:`data_layer.bgnbd.fit` on :func:`data_layer.bgnbd.rfm_summary` at that cutoff. None at
    an instant with nothing to fit: no purchase before it, every buyer first bought on T's day,
    or no buyer has a repeat purchase (the parameters are then not identified).
    """
    stamps = snapshot_instants(times)
    con = connection if connection is not None else duckdb.connect()
    try:
        t_us = np.array([t.value // 1000 for t in stamps], dtype=np.int64)
        con.register("bgnbd_instants", pd.DataFrame({"t_us": t_us}))
        rows = _fetch(con, _POPULATION_SQL.format(source=source))
    finally:
        con.unregister("bgnbd_instants")
        if connection is None:
            con.close()
    fits: dict[pd.Timestamp, bgnbd.BGNBDFit | None] = {}
    # Rows come ordered by instant: each instant's summaries are one slice.
    lows = np.searchsorted(rows["t_us"], t_us, side="left")
    highs = np.searchsorted(rows["t_us"], t_us, side="right")
    for stamp, low, high in zip(stamps, lows, highs, strict=True):
        mine = slice(low, high)
        try:
            fits[stamp] = bgnbd.fit(
                rows["x"][mine], rows["t_x"][mine], rows["age"][mine], counts=rows["n"][mine]
            )
        except ValueError:  # nothing before T identifies the parameters (see the docstring)
            fits[stamp] = None
    return fits


def fitted_params(
    fits: Mapping[pd.Timestamp, bgnbd.BGNBDFit | None],
) -> dict[pd.Timestamp, bgnbd.BGNBDParams | None]:
    """The parameters of each fit (what :func:`compute_snapshots` takes)."""
    return {t: None if v is None else v.params for t, v in fits.items()}


BGNBD_PARAMS_FILE = "bgnbd_params.json"
"""Per snapshot instant, the BG/NBD population fit the build used (in the features folder)."""


def write_bgnbd_params(settings: Settings, fits: Mapping[pd.Timestamp, bgnbd.BGNBDFit | None]):
    """Merge the fits of the instants just built into ``bgnbd_params.json`` (replacing those
    instants, keeping the others, as the snapshot files do)."""
    path = settings.features_dir / BGNBD_PARAMS_FILE
    settings.features_dir.mkdir(parents=True, exist_ok=True)
    stored = json.loads(path.read_text())["instants"] if path.exists() else {}
    for stamp, fitted in fits.items():
        stored[_utc(stamp).isoformat()] = (
            None
            if fitted is None
            else {
                "r": fitted.params.r,
                "alpha": fitted.params.alpha,
                "a": fitted.params.a,
                "b": fitted.params.b,
                "customers": fitted.n_customers,
                "log_likelihood": fitted.log_likelihood,
                "converged": fitted.converged,
            }
        )
    document = {
        "model": "BG/NBD; alpha in days; fitted at each instant on purchases strictly before it",
        "horizon_days": BGNBD_HORIZON_DAYS,
        "instants": dict(sorted(stored.items(), key=lambda item: pd.Timestamp(item[0]))),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=1))
    os.replace(tmp, path)


def read_bgnbd_params(settings: Settings) -> dict[pd.Timestamp, bgnbd.BGNBDParams | None]:
    """The stored population parameters by instant (empty before the first build)."""
    path = settings.features_dir / BGNBD_PARAMS_FILE
    if not path.exists():
        return {}
    instants = json.loads(path.read_text())["instants"]
    return {
        pd.Timestamp(at): None
        if v is None
        else bgnbd.BGNBDParams(r=v["r"], alpha=v["alpha"], a=v["a"], b=v["b"])
        for at, v in instants.items()
    }


def bgnbd_params_at(
    stored: Mapping[pd.Timestamp, bgnbd.BGNBDParams | None], at: pd.Timestamp
) -> bgnbd.BGNBDParams | None:
    """The parameters of the latest stored instant at or before ``at`` (None if there is
    none): what the live path uses between builds. A later instant's fit has seen purchases
    after ``at``, so it is never used."""
    at = _utc(at)
    earlier = [t for t in stored if t <= at]
    return stored[max(earlier)] if earlier else None


def _bgnbd_columns(
    f: dict[str, np.ndarray], params: Sequence[bgnbd.BGNBDParams | None]
) -> tuple[np.ndarray, np.ndarray]:
    """P(alive) and expected purchases over :data:`BGNBD_HORIZON_DAYS` for every row: the
    customer's summary from the purchase-day sums, the parameters of the row's instant."""
    rows = len(f["T"])
    alive, expected = np.full(rows, np.nan), np.full(rows, np.nan)
    days = f["pdays__life"].astype(np.float64) if "pdays__life" in f else np.zeros(rows)
    bought = days >= 1
    x = np.where(bought, days - 1, 0.0)
    t_x = np.where(bought, f["gap_sum__life"], 0.0) if "gap_sum__life" in f else np.zeros(rows)
    # Whole UTC days, as the population fit counts them: the first purchase day is the last
    # one less the sum of the gaps between purchase days.
    last_day = np.where(bought, f["last_purch"], 0) // _US_PER_DAY
    age = (f["T"] // _US_PER_DAY - last_day + t_x).astype(np.float64)
    for slot, theta in enumerate(params):
        mine = bought & (f["t_slot"] == slot)
        if theta is None or not mine.any():
            continue
        summary = x[mine], t_x[mine], age[mine]
        with np.errstate(all="ignore"):
            alive[mine] = bgnbd.probability_alive(theta, *summary)
            # At a == 1 exactly the closed form is undefined: the value stays missing.
            with contextlib.suppress(ValueError):
                expected[mine] = bgnbd.expected_purchases(theta, BGNBD_HORIZON_DAYS, *summary)
    return alive, np.where(np.isfinite(expected), expected, np.nan)


def _fetch(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, np.ndarray]:
    table = con.sql(sql).to_arrow_table()
    return {name: table.column(name).to_numpy() for name in table.column_names}


_TEMP_TABLES = ("ids", "ev", "touch", "cart_recovery", "sess")


def compute_snapshots(
    events: pa.Table | pd.DataFrame | str,
    customers: pd.DataFrame,
    times: Sequence[datetime | str | pd.Timestamp],
    *,
    connection: duckdb.DuckDBPyConnection | None = None,
    bgnbd_params: Mapping[pd.Timestamp, bgnbd.BGNBDParams | None] | None = None,
) -> pd.DataFrame:
    """One row per (customer, T) with every catalog feature, using only events before T.

    ``events`` is canonical events (a frame, an Arrow table, or a DuckDB relation expression
    such as ``read_parquet([...])``; only ``customer_id``, ``event_timestamp``, ``channel``,
    ``event_type``, ``family``, ``amount``, ``session_id`` and ``rating`` are read);
    ``customers`` the profile table: with several versions of a customer's row, each with its
    ``valid_from``, a snapshot at T takes the latest version valid strictly before T
    (:func:`data_layer.event_store.profile_at`). ``times`` are any instants (microsecond
    resolution). A customer appears at T when they signed up (earliest signup of their rows)
    before T or have any event before T. Returns
    ``customer_id``, ``event_timestamp`` (= T, UTC) and the features in catalog order.
    ``connection`` reuses a caller's DuckDB connection (the live path's per-call overhead);
    its temporary tables are dropped again before returning. ``bgnbd_params`` gives the BG/NBD
    population parameters of every instant (a build's fit over all customers, or the live
    path's stored ones); without it they are fitted here on ``events``
    (:func:`bgnbd_population`), which is the whole population only when ``events`` is.
    """
    stamps = snapshot_instants(times)
    if not stamps:
        raise ValueError("no snapshot times given")
    con = connection if connection is not None else duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        # Row order never matters here, and letting DuckDB drop it saves sorts and memory.
        con.execute("SET preserve_insertion_order = false")
        if isinstance(events, str):
            source = events
        else:
            con.register("events_in", events)
            source = "events_in"
        signups = customers[["customer_id", "signup_date"]]
        if signups["customer_id"].duplicated().any():  # several versions of a profile row
            signups = signups.groupby("customer_id", as_index=False)["signup_date"].min()
        con.register("customers", signups)
        if bgnbd_params is None:
            bgnbd_params = fitted_params(bgnbd_population(source, stamps, connection=con))
        missing = [t for t in stamps if t not in bgnbd_params]
        if missing:
            raise ValueError(f"no BG/NBD population parameters given for {missing[0]}")
        con.execute(_event_sql(source))
        ev = _fetch(con, _FETCH_EVENTS_SQL)
        sessions = _fetch(con, _FETCH_SESSIONS_SQL)
        active_days = _fetch(con, _FETCH_DAYS_SQL)
        ids = _fetch(con, _FETCH_CUSTOMERS_SQL)
    finally:
        if connection is None:
            con.close()
        else:
            for table in _TEMP_TABLES:
                con.execute(f"DROP TABLE IF EXISTS {table}")
            for view in ("events_in", "customers"):
                con.unregister(view)

    t_us = np.array([t.value // 1000 for t in stamps], dtype=np.int64)
    offsets = np.array(
        [0, *ACTIVITY_WINDOWS_DAYS, 60, LONG_WINDOW_DAYS, *PURCHASE_WINDOWS_DAYS], dtype=np.int64
    )
    boundaries = np.unique((t_us[:, None] - offsets[None, :] * _US_PER_DAY).ravel())
    acc = _Accumulator(len(ids["cust"]), boundaries)
    columns = _window_columns(ev, sessions, active_days, acc, t_us)

    # Rows are snapshot-major, customers in id order (codes follow sorted customer_id).
    signup = ids["signup_us"]
    signup = np.where(pd.isna(signup), np.iinfo(np.int64).max, signup).astype(np.int64)
    first = columns["first_ts"][0]
    present = (signup[None, :] < t_us[:, None]) | (first[None, :] < t_us[:, None])
    t_index, c_index = np.nonzero(present)

    # Plain arrays, one entry per row: timestamps stay int64 microseconds with _MISSING_US for
    # "none" (pandas objects per column cost more than the arithmetic at the live path's size).
    frame: dict[str, np.ndarray] = {"T": t_us[t_index], "t_slot": t_index}
    for name, values in columns.items():
        raw = values[t_index, c_index]
        if name.startswith("last_"):
            raw = np.where(raw < 0, _MISSING_US, raw)
        frame[name] = raw
    frame["signup_us"] = signup[c_index]
    frame["customer_id"] = ids["customer_id"][c_index]
    profile_columns = [*_PROFILE_COLUMNS, *(f.name for f in _profile_extras())]
    frame.update(profile_at(customers, frame["customer_id"], frame["T"], profile_columns))
    return _derive(frame, [bgnbd_params[t] for t in stamps])


def _profile_extras() -> list:
    """The extra profile features the home declared (catalog entries after the built-ins)."""
    return FEATURES[len(BUILTIN_FEATURES) :]


_MISSING_US = np.iinfo(np.int64).max
_PROFILE_COLUMNS = ("region", "age_band", "loyalty_tier", "preferred_device")


def _days_between(later_us: np.ndarray, earlier_us: np.ndarray) -> np.ndarray:
    """Fractional days from ``earlier_us`` to ``later_us`` (NaN where earlier is missing)."""
    seconds = (later_us - np.where(earlier_us == _MISSING_US, later_us, earlier_us)) / 1e6
    return np.where(earlier_us == _MISSING_US, np.nan, seconds / 86400.0)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _derive(
    f: dict[str, np.ndarray], bgnbd_params: Sequence[bgnbd.BGNBDParams | None]
) -> pd.DataFrame:
    """Turn window sums and last-seen timestamps into the catalog's features (``bgnbd_params``:
    the population parameters of each snapshot instant, indexed by the rows' ``t_slot``)."""
    long = LONG_WINDOW_DAYS
    rows = len(f["T"])

    def total(col: str) -> np.ndarray:
        return f[col].astype("float64") if col in f else np.zeros(rows)

    out: dict[str, np.ndarray | pd.api.extensions.ExtensionArray] = {}
    for ch in CHANNELS:
        for w in ACTIVITY_WINDOWS_DAYS:
            out[f"{ch}_events_{w}d"] = total(f"n_{ch}__{w}")
            out[f"{ch}_active_days_{w}d"] = total(f"days_{ch}__{w}")
        out[f"{ch}_days_since_last"] = _days_between(f["T"], f[f"last_{ch}"])
    for prefix, key in [("", "")] + [(f"{c}_", f"_{c}") for c in PURCHASE_CHANNELS]:
        purchases = total(f"purch{key}__{long}")
        revenue = total(f"rev{key}__{long}")
        returns = total(f"ret{key}__{long}")
        out[f"{prefix}purchases_{long}d"] = purchases
        out[f"{prefix}revenue_{long}d"] = revenue
        out[f"{prefix}avg_order_value_{long}d"] = _ratio(revenue, purchases)
        out[f"{prefix}returns_{long}d"] = returns
        out[f"{prefix}return_rate_{long}d"] = _ratio(returns, purchases)
        out[f"{prefix}days_since_last_purchase"] = _days_between(f["T"], f[f"last_purch{key}"])
    for span in PURCHASE_WINDOWS_DAYS:
        out[f"purchases_{span}d"] = total(f"purch__{span}")
        out[f"revenue_{span}d"] = total(f"rev__{span}")
    out["purchases_lifetime"] = total("purch__life")
    out["revenue_lifetime"] = total("rev__life")
    purchase_days = total("pdays__life")
    out["purchase_days_lifetime"] = purchase_days
    gaps = np.where(purchase_days >= 2, purchase_days - 1, 0)
    mean_gap = _ratio(total("gap_sum__life"), gaps)
    with np.errstate(invalid="ignore"):
        variance = np.maximum(_ratio(total("gap_sq__life"), gaps) - mean_gap * mean_gap, 0.0)
    out["purchase_gap_mean_days"] = mean_gap
    out["purchase_gap_std_days"] = np.sqrt(variance)
    out["purchase_recency_ratio"] = _ratio(out["days_since_last_purchase"], mean_gap)
    out["bgnbd_p_alive"], out[f"bgnbd_expected_purchases_{BGNBD_HORIZON_DAYS}d"] = _bgnbd_columns(
        f, bgnbd_params
    )
    for name, num, den in [
        ("email_open_rate", "email_open", "email_send"),
        ("email_click_rate", "email_click", "email_send"),
        ("push_open_rate", "push_open", "push_send"),
        ("sms_click_rate", "sms_click", "sms_send"),
    ]:
        out[f"{name}_{long}d"] = _ratio(total(f"{num}__{long}"), total(f"{den}__{long}"))
    out[f"cart_abandonment_rate_{long}d"] = _ratio(total("abandoned"), total("carts"))
    out["sessions_30d"] = total("sessions__30")
    out["product_views_per_session_30d"] = _ratio(total("product_views__30"), total("sessions__30"))
    out[f"support_contacts_{long}d"] = total(f"support_contact__{long}")
    out[f"complaints_{long}d"] = total(f"complaint__{long}")
    out[f"avg_rating_{long}d"] = _ratio(total(f"rating_sum__{long}"), total(f"rating_n__{long}"))
    out[f"low_ratings_{long}d"] = total(f"low_ratings__{long}")

    counts = np.column_stack([out[f"{ch}_events_{long}d"] for ch in CHANNELS])
    events = counts.sum(axis=1)
    out[f"active_channels_{long}d"] = (counts > 0).sum(axis=1).astype("float64")
    shares = counts / np.where(events > 0, events, 1)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = np.where(shares > 0, -shares * np.log2(np.where(shares > 0, shares, 1)), 0.0)
    out[f"channel_entropy_{long}d"] = np.where(events > 0, bits.sum(axis=1) + 0.0, np.nan)
    revenue = out[f"revenue_{long}d"]
    out[f"online_revenue_share_{long}d"] = _ratio(total(f"rev_online__{long}"), revenue)
    alphabetical = sorted(CHANNELS)
    ordered = np.column_stack([out[f"{ch}_events_{long}d"] for ch in alphabetical])
    preferred = np.array(alphabetical, dtype=object)[ordered.argmax(axis=1)]
    out[f"preferred_channel_{long}d"] = pd.array(
        np.where(events > 0, preferred, None), dtype="string"
    )
    purchases = out[f"purchases_{long}d"]
    out[f"cross_channel_purchase_rate_{long}d"] = _ratio(total(f"xch_purch__{long}"), purchases)
    out[f"web_to_store_purchase_rate_{long}d"] = _ratio(
        total(f"store_purch_web__{long}"), out[f"store_purchases_{long}d"]
    )
    out[f"email_to_app_purchase_rate_{long}d"] = _ratio(
        total(f"app_purch_email__{long}"), out[f"app_purchases_{long}d"]
    )
    out[f"channel_switches_{long}d"] = total(f"switches__{long}")
    out["events_trend_30d"] = np.log((total("n_all__30") + 1) / (total("n_all__prev30") + 1))
    out["revenue_trend_30d"] = np.log((total("rev__30") + 1) / (total("rev__prev30") + 1))
    # A customer seen before their recorded signup existed from that first event on.
    seen = np.where(f["first_ts"] < f["T"], f["first_ts"], _MISSING_US)
    out["tenure_days"] = _days_between(f["T"], np.minimum(f["signup_us"], seen))
    for col in _PROFILE_COLUMNS:
        values = f[col] if col in f else np.full(rows, None, dtype=object)
        out[col] = pd.array(np.where(pd.isna(values), None, values), dtype="string")
    for extra in _profile_extras():
        values = f[extra.name] if extra.name in f else np.full(rows, None, dtype=object)
        if extra.dtype == "string":
            text = np.where(pd.isna(values), None, values.astype(str)).astype(object)
            out[extra.name] = pd.array(text, dtype="string")
        else:
            out[extra.name] = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy("float64")

    result = {
        "customer_id": f["customer_id"].astype(str).astype(object),
        "event_timestamp": pd.DatetimeIndex(f["T"].astype("datetime64[us]"))
        .as_unit("ns")
        .tz_localize("UTC"),
    }
    result.update((name, out[name]) for name in FEATURE_NAMES)
    return pd.DataFrame(result)


def write_snapshots(settings: Settings, snapshots: pd.DataFrame, built_at: datetime) -> list[str]:
    """Merge snapshots into one Parquet file per feature view, replacing same-T rows."""
    settings.features_dir.mkdir(parents=True, exist_ok=True)
    new_times = set(snapshots["event_timestamp"].unique())
    written = []
    for view in VIEWS:
        columns = [f.name for f in features_of_view(view)]
        part = snapshots[SNAPSHOT_KEY + columns].copy()
        part.insert(2, "created_timestamp", pd.Timestamp(built_at).tz_convert("UTC"))
        path = settings.features_dir / f"{view}.parquet"
        if path.exists():
            kept = pq.read_table(path).to_pandas()
            kept = kept[~kept["event_timestamp"].isin(new_times)]
            part = pd.concat([kept, part], ignore_index=True)
        part = part.sort_values(SNAPSHOT_KEY, kind="stable").reset_index(drop=True)
        table = pa.Table.from_pandas(part, schema=_view_schema(view), preserve_index=False)
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp, compression="zstd")
        tmp.rename(path)
        written.append(str(path))
    return written


def _view_schema(view: str) -> pa.Schema:
    fields = [
        pa.field("customer_id", pa.string()),
        pa.field("event_timestamp", pa.timestamp("us", tz="UTC")),
        pa.field("created_timestamp", pa.timestamp("us", tz="UTC")),
    ]
    for feature in features_of_view(view):
        fields.append(
            pa.field(feature.name, pa.string() if feature.dtype == "string" else pa.float64())
        )
    return pa.schema(fields)


def read_snapshots(settings: Settings, view: str) -> pd.DataFrame:
    """All stored snapshots of one feature view."""
    return pq.read_table(settings.features_dir / f"{view}.parquet").to_pandas()


def default_snapshot_range(
    settings: Settings, weeks: int | None = None
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Weekly UTC midnights ending the day after the newest event: by default every one after
    the oldest event (the whole history the store holds), or the last ``weeks`` of them.

    Sparse buyers purchase a few times a year, so their models need the history's every
    season and year as training cutoffs (issue 12); ``weeks`` caps it for a quick build.
    """
    con = duckdb.connect()
    oldest, newest = con.execute(
        f"SELECT min(event_timestamp), max(event_timestamp) FROM {events_relation_sql(settings)}"
    ).fetchone()
    con.close()
    end = _utc(newest).normalize() + pd.Timedelta(days=1)
    # The earliest weekly instant still after the oldest event: an earlier one has no rows.
    whole = max(1, int(np.ceil((end - _utc(oldest)) / pd.Timedelta(weeks=1))))
    count = whole if weeks is None else weeks
    return end - pd.Timedelta(weeks=count - 1), end


def build_times(
    settings: Settings,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    every: str = "7D",
    at: Sequence[datetime | str | pd.Timestamp] = (),
) -> list[pd.Timestamp]:
    """The snapshot instants of a build (see :func:`build_features`; any engine)."""
    times = snapshot_instants(at)
    if start is not None or end is not None or not times:
        if start is None or end is None:
            default_start, default_end = default_snapshot_range(settings)
            start = start or default_start
            end = end or default_end
        times = sorted(set(times) | set(snapshot_times(start, end, every)))
    return times


def build_features(
    settings: Settings,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    every: str = "7D",
    at: Sequence[datetime | str | pd.Timestamp] = (),
) -> BuildReport:
    """Compute snapshots from the event store and write them for Feast (the CLI's runner).

    Snapshots are taken at the instants ``at`` plus the range ``start``..``end`` every
    ``every``; with ``at`` and neither ``start`` nor ``end``, only at ``at``; with nothing, at
    the default weekly range (:func:`default_snapshot_range`).

    When the store is too big for the memory budget (``OMNISCORE_BUILD_MEMORY_MB``), the
    customers are built in hash partitions (:mod:`data_layer.partitioned_build`), writing the
    same rows.
    """
    # The partitioned build composes this module's functions, so it is imported here.
    from data_layer.partitioned_build import build_partitioned, partition_count

    began = time.perf_counter()
    times = build_times(settings, start, end, every, at)
    partitions = partition_count(settings, len(times))
    if partitions > 1:
        # Past the memory budget: customers in hash buckets, one at a time (same rows).
        built = build_partitioned(settings, times, partitions)
        return BuildReport(
            snapshots=times,
            rows=built.rows,
            customers=built.customers,
            seconds=time.perf_counter() - began,
            files=built.files,
            partitions=partitions,
        )
    # The population fit reads the whole store; the snapshots only what the instants need.
    fits = bgnbd_population(events_relation_sql(settings), times)
    snapshots = compute_snapshots(
        build_events_sql(settings, times),
        read_customers(settings),
        times,
        bgnbd_params=fitted_params(fits),
    )
    files = write_snapshots(settings, snapshots, datetime.now(UTC))
    write_bgnbd_params(settings, fits)
    return BuildReport(
        snapshots=times,
        rows=len(snapshots),
        customers=snapshots["customer_id"].nunique(),
        seconds=time.perf_counter() - began,
        files=files,
    )
