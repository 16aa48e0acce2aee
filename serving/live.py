"""Features as of the request instant, from the live state, with an exact per-customer cache.

``/score`` and ``GET /customers/{id}`` serve every feature as of the moment of the request, so
windows slide with time even when no event arrives. Computing them
(:meth:`data_layer.live_state.LiveState.features`, the batch pipeline's own code) takes tens of
milliseconds, so :class:`LiveFeatures` keeps, per customer, the features computed at some
instant ``t0`` together with the first instant ``t1`` at which any of them can change other
than by the passage of time:

- every feature but the time-linear ones (``*_days_since_last*`` and ``tenure_days``) is a
  function of which of the customer's events lie in which window. Such a set changes only
  when an event enters a window (at its timestamp) or leaves one (its timestamp plus a window
  length, a look-back or a recovery/touch delay). ``t1`` is the earliest of these instants
  after ``t0`` over the customer's events, so those features are constant on ``[t0, t1)``;
- a time-linear feature is ``(t - anchor) / 86400 s`` with an anchor (last event, first seen,
  signup) fixed on ``[t0, t1)``. The anchor is recovered from the value at ``t0`` and kept only
  if recomputing the value at ``t0`` from it gives the same float bit for bit; the value at
  ``t`` is then computed as the batch computes it, so it is equal, not close. A ratio of such
  a feature to a constant one (:data:`RATIOS`) is divided again the same way;
- every entry is checked when it is made: its values moved :data:`PROBE_US` ahead must equal
  the live state's own at that instant, or it serves only ``t0``. A feature whose dependence
  on time these rules miss therefore costs cache hits, never exactness.

A cached customer is recomputed when the request instant leaves ``[t0, t1)`` or when an event
of theirs is stored: this process tells the cache itself (``POST /events``), and events
stored by other processes (``omniscore stream``) are found through the live segment's
sequence numbers (:func:`data_layer.live_segment.customers_since`) at each request.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_layer import erasure, live_segment
from data_layer.feature_pipeline import HISTORY_NEEDED
from data_layer.settings import Settings
from feature_repo.catalog import (
    ACTIVITY_WINDOWS_DAYS,
    CART_RECOVERY_HOURS,
    FEATURES,
    LONG_WINDOW_DAYS,
    SESSION_GAP_HOURS,
    SWITCH_LOOKBACK_DAYS,
    TOUCH_WINDOW_HOURS,
)
from serving.online import FeatureBatch, FeatureLayout, empty_batch

_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 24 * _US_PER_HOUR
_MISSING = np.iinfo(np.int64).min
NUMERIC = tuple(f.name for f in FEATURES if f.dtype != "string")
STRINGS = tuple(f.name for f in FEATURES if f.dtype == "string")
LINEAR = tuple(n for n in NUMERIC if "days_since_last" in n or n == "tenure_days")
"""Features that grow with time alone: ``(t - anchor) / 86400 s``."""
RATIOS = {
    name: parts
    for name, parts in {
        "purchase_recency_ratio": ("days_since_last_purchase", "purchase_gap_mean_days"),
    }.items()
    if name in NUMERIC and all(p in NUMERIC for p in parts)
}
"""Time-dependent features that are a time-linear feature over a constant one (the pipeline's
``_ratio``: missing unless the denominator is positive)."""
_WINDOW_DAYS = {int(m.group(1)) for n in NUMERIC if (m := re.search(r"_(\d+)d$", n))}
_DAY_OFFSETS = {
    *ACTIVITY_WINDOWS_DAYS,
    *_WINDOW_DAYS,
    *(2 * d for d in _WINDOW_DAYS),  # trends compare a window with the one before it
    LONG_WINDOW_DAYS,
    LONG_WINDOW_DAYS + SWITCH_LOOKBACK_DAYS,
}
_HOUR_OFFSETS = {CART_RECOVERY_HOURS, TOUCH_WINDOW_HOURS, SESSION_GAP_HOURS}
CHANGE_OFFSETS_US = np.array(
    sorted(
        {0, HISTORY_NEEDED.value // 1000}
        | {d * _US_PER_DAY for d in _DAY_OFFSETS}
        | {h * _US_PER_HOUR for h in _HOUR_OFFSETS}
        | {d * _US_PER_DAY + SESSION_GAP_HOURS * _US_PER_HOUR for d in _DAY_OFFSETS}
    ),
    dtype=np.int64,
)
"""After an event at ``ts``, the instants ``ts + offset`` at which it can enter or leave a
window, a look-back or a delay of some feature (over-counting only shortens a cache entry)."""
PROBE_US = 1_000_000
"""Each cache entry is checked one second after it was computed: the cached values moved to
that instant must equal the state's own there, or the entry serves only its own instant."""
MAX_CACHED = 200_000
"""Customers kept; past it the cache starts over (bounded memory)."""


def _us(at: pd.Timestamp) -> int:
    return int(pd.Timestamp(at).value // 1000)


def _fresh(entry, at_us: int) -> bool:
    """Whether a cache entry (or None) holds a customer's features at ``at_us``."""
    return entry is not None and entry.computed_us <= at_us < entry.valid_until_us


def days_between_us(later_us: np.ndarray | int, earlier_us: np.ndarray) -> np.ndarray:
    """``(later - earlier)`` in days, rounded as the batch pipeline rounds it
    (``Timedelta.total_seconds() / 86400``)."""
    delta = np.asarray(later_us, dtype=np.int64) - np.asarray(earlier_us, dtype=np.int64)
    return (delta / 1_000_000) / 86400.0


@dataclass
class _Entry:
    computed_us: int
    valid_until_us: int
    """First instant at which a non-linear feature may differ (exclusive end)."""
    numeric: np.ndarray
    """Values of :data:`NUMERIC` at ``computed_us``."""
    anchors: np.ndarray
    """Per :data:`LINEAR` feature, its anchor in µs (``_MISSING`` where the value is missing)."""
    strings: dict[str, str | None]


class LiveFeatures:
    """Serves :class:`~serving.online.FeatureBatch` rows from the live state (thread-safe)."""

    def __init__(self, state, settings: Settings) -> None:
        self.state = state
        self.settings = settings
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._seq = live_segment.last_seq(settings)
        self._erasures = erasure.suppression_stamp(settings)
        self._bgnbd = state.bgnbd_version()
        self._numeric_index = {n: i for i, n in enumerate(NUMERIC)}
        self._linear_index = np.array([self._numeric_index[n] for n in LINEAR], dtype=np.int64)
        self._layouts: dict[tuple[str, ...], tuple] = {}
        self.hits = 0
        self.misses = 0

    # -- invalidation -----------------------------------------------------------------------
    def invalidate(self, customers: Sequence[str]) -> None:
        """Forget these customers (their state changed)."""
        with self._lock:
            for customer in customers:
                self._entries.pop(customer, None)

    def clear(self) -> None:
        """Forget every customer (e.g. after the state was rebuilt)."""
        with self._lock:
            self._entries.clear()

    def sync(self) -> None:
        """Forget customers whose events other processes stored since the last look, and
        everything once another process erased customers (``omniscore forget``)."""
        stamp = erasure.suppression_stamp(self.settings)
        if stamp != self._erasures:
            self.clear()  # the list holds keyed hashes: which entries are theirs is unknown
            self._erasures = stamp
        population = self.state.bgnbd_version()
        if population != self._bgnbd:
            self.clear()  # a build stored new BG/NBD parameters: every customer's values move
            self._bgnbd = population
        seq, customers = live_segment.customers_since(self.settings, self._seq)
        if seq == self._seq:
            return
        with self._lock:
            if customers is None:
                self._entries.clear()
            else:
                for customer in customers:
                    self._entries.pop(customer, None)
            self._seq = seq

    # -- reading --------------------------------------------------------------------------
    def batch(
        self, layout: FeatureLayout, customer_ids: list[str], at: pd.Timestamp
    ) -> FeatureBatch:
        """Features of ``customer_ids`` at ``at`` in ``layout``'s order (unknown: missing)."""
        entries = self._entries_at(customer_ids, at)
        return self._assemble(layout, customer_ids, entries, _us(at))

    def _entries_at(self, customer_ids: Sequence[str], at: pd.Timestamp) -> dict:
        """The cache entry of each distinct customer valid at ``at``, recomputing the stale
        and missing ones (counted as misses; the rest as hits)."""
        self.sync()
        at_us = _us(at)
        with self._lock:
            entries = {c: self._entries.get(c) for c in dict.fromkeys(customer_ids)}
        stale = [c for c, e in entries.items() if not _fresh(e, at_us)]
        self.hits += len(entries) - len(stale)
        self.misses += len(stale)
        if stale:
            entries.update(self._compute(stale, at))
        return entries

    def cached(self, customer_ids: Sequence[str], at: pd.Timestamp) -> bool:
        """Whether every one of ``customer_ids`` can be served at ``at`` without recomputing."""
        self.sync()
        at_us = _us(at)
        with self._lock:
            return all(_fresh(self._entries.get(c), at_us) for c in customer_ids)

    def features_frame(self, customer_ids: Sequence[str], at: pd.Timestamp) -> pd.DataFrame:
        """``LiveState.features`` rows of the known customers, through the cache."""
        ids = list(dict.fromkeys(customer_ids))
        entries = self._entries_at(ids, at)
        at_us = _us(at)
        rows = []
        for customer in ids:
            entry = entries.get(customer)
            if entry is None:
                continue
            numeric = self._numeric_at(entry, at_us)
            row = {"customer_id": customer, "event_timestamp": pd.Timestamp(at)}
            row.update(zip(NUMERIC, numeric.tolist(), strict=True))
            row.update(entry.strings)
            rows.append(row)
        return pd.DataFrame(rows)

    def remember(self, features: pd.DataFrame, at: pd.Timestamp) -> None:
        """Cache rows just computed elsewhere (the accept path computes them to rewrite the
        online store), so the next ``/score`` of these customers needs no recomputation."""
        if features.empty:
            return
        entries = self._entries_from(features, _us(at))
        with self._lock:
            self._store(entries)

    def _compute(self, customers: list[str], at: pd.Timestamp) -> dict[str, _Entry | None]:
        known = [c for c, k in zip(customers, self.state.known(customers), strict=True) if k]
        if not known:  # no event and no profile row: nothing to compute
            return dict.fromkeys(customers)
        frame = self.state.features(known, at)
        probe = self.state.features(known, pd.Timestamp(at) + pd.Timedelta(microseconds=PROBE_US))
        entries = self._entries_from(frame, _us(at), probe)
        with self._lock:
            self._store(entries)
        return {c: entries.get(c) for c in customers}

    def _store(self, entries: dict[str, _Entry | None]) -> None:
        if len(self._entries) + len(entries) > MAX_CACHED:
            self._entries.clear()
        for customer, entry in entries.items():
            if entry is not None:
                self._entries[customer] = entry
            else:
                self._entries.pop(customer, None)

    def _entries_from(
        self, frame: pd.DataFrame, at_us: int, probe: pd.DataFrame | None = None
    ) -> dict[str, _Entry | None]:
        """Cache entries of ``LiveState.features`` rows computed at ``at_us``.

        With ``probe`` (the same customers' rows one :data:`PROBE_US` later) an entry whose
        values moved to the probe's instant equal the probe's is valid until its next event
        boundary; otherwise (and without a probe) only at ``at_us`` itself.
        """
        if frame.empty:
            return {}
        customers = frame["customer_id"].astype(str).tolist()
        numeric = frame[list(NUMERIC)].to_numpy(dtype="float64")
        strings = frame[list(STRINGS)].astype(object).where(frame[list(STRINGS)].notna(), None)
        linear = numeric[:, self._linear_index]
        present = ~np.isnan(linear)
        anchors = np.full(linear.shape, _MISSING, dtype=np.int64)
        offsets = np.rint(np.where(present, linear, 0.0) * 86400.0 * 1_000_000).astype(np.int64)
        anchors[present] = (at_us - offsets)[present]
        exact = np.where(present, days_between_us(at_us, anchors) == linear, True).all(axis=1)
        until = self._valid_until(customers, at_us) if probe is not None else {}
        checks = {}
        if probe is not None and not probe.empty:
            probed = probe.set_index(probe["customer_id"].astype(str))
            checks = {
                c: (
                    probed.loc[c, list(NUMERIC)].to_numpy(dtype="float64"),
                    probed.loc[c, list(STRINGS)],
                )
                for c in customers
                if c in probed.index
            }
        out: dict[str, _Entry | None] = {}
        for i, customer in enumerate(customers):
            if not exact[i]:
                out[customer] = None  # an anchor that does not reproduce the value: no cache
                continue
            entry = _Entry(
                computed_us=at_us,
                valid_until_us=at_us + 1,
                numeric=numeric[i].copy(),
                anchors=anchors[i].copy(),
                strings=dict(zip(STRINGS, strings.iloc[i].tolist(), strict=True)),
            )
            boundary = until.get(customer, at_us)
            if customer in checks and boundary > at_us + PROBE_US:
                values, texts = checks[customer]
                moved = self._numeric_at(entry, at_us + PROBE_US)
                same = np.array_equal(moved, values, equal_nan=True) and all(
                    (entry.strings[n] is None and pd.isna(texts[n])) or entry.strings[n] == texts[n]
                    for n in STRINGS
                )
                if same:
                    entry.valid_until_us = boundary
            out[customer] = entry
        return out

    def _valid_until(self, customers: list[str], at_us: int) -> dict[str, int]:
        """Per customer, the first instant after ``at_us`` at which an event of theirs enters or
        leaves a window (:data:`CHANGE_OFFSETS_US`), or the BG/NBD features move without an
        event (the next UTC midnight or stored parameters' instant), whichever is first."""
        population = self.state.next_bgnbd_change_us(at_us)
        out = {}
        for customer in customers:
            events = self.state.recent_events(customer, limit=1_000_000)
            stamps = pd.to_datetime(events["event_timestamp"], utc=True)
            ts = stamps.dt.tz_localize(None).to_numpy().astype("datetime64[us]").astype(np.int64)
            changes = (ts[:, None] + CHANGE_OFFSETS_US[None, :]).ravel()
            later = changes[changes > at_us]
            out[customer] = min(int(later.min()) if len(later) else population, population)
        return out

    def _numeric_at(self, entry: _Entry, at_us: int) -> np.ndarray:
        values = entry.numeric.copy()
        if at_us == entry.computed_us:
            return values
        anchors = entry.anchors
        present = anchors != _MISSING
        if present.any():
            moved = days_between_us(at_us, np.where(present, anchors, 0))
            values[self._linear_index[present]] = moved[present]
        index = self._numeric_index
        for name, (num, den) in RATIOS.items():
            d = values[index[den]]
            values[index[name]] = values[index[num]] / d if d > 0 else np.nan
        return values

    def _assemble(
        self, layout: FeatureLayout, ids: list[str], entries: dict, at_us: int
    ) -> FeatureBatch:
        batch = empty_batch(layout, ids)
        plan = self._layouts.get(layout.names)
        if plan is None:
            columns = [(j, self._numeric_index[n]) for j, n in enumerate(layout.names)
                       if n in self._numeric_index]  # fmt: skip
            plan = (
                np.array([j for j, _ in columns], dtype=np.int64),
                np.array([k for _, k in columns], dtype=np.int64),
            )
            self._layouts[layout.names] = plan
        targets, sources = plan
        seconds = at_us // 1_000_000
        for row, customer in enumerate(ids):
            entry = entries.get(customer)
            if entry is None:
                continue
            numeric = self._numeric_at(entry, at_us)
            batch.numeric[row, targets] = numeric[sources]
            for name in layout.strings:
                batch.strings[name][row] = entry.strings.get(name)
            batch.timestamps[row, :] = seconds
            batch.known[row] = True
        return batch
