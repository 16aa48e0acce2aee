"""Labels from the event store: what happened to each customer after a cutoff T.

Definitions (recorded as the ``label_definition`` lineage tag of every training run):

- **propensity** — among customers known before T (signed up, or seen in an event, before T):
  1 when the customer makes any purchase, on any channel, in ``[T, T + H)``; H defaults to 14
  days.
- **churn** — among customers *active* before T (at least one customer-initiated event —
  behavioural, transactional or attitudinal — in ``[T - 90 d, T)``): 1 when the customer makes
  no purchase and no customer-initiated (engagement) event in ``[T, T + 60 d)``. Business
  sends (emails, pushes, impressions) are not the customer's doing and do not count.

The label window starts at T inclusive, the exact complement of the feature windows, which
use events strictly before T: no event can inform both a feature and a label, and none falls
between them. Both windows are configurable through :class:`LabelSpec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pandas as pd

from data_layer.event_store import events_relation_sql
from data_layer.schema import CUSTOMER_INITIATED_FAMILIES
from data_layer.settings import Settings

LABEL_MODELS: tuple[str, ...] = ("propensity", "churn")


@dataclass(frozen=True)
class LabelSpec:
    """A label definition: which model, the horizon after T and (churn) the activity lookback."""

    model: str
    horizon_days: int
    active_lookback_days: int = 90

    @classmethod
    def default(cls, model: str) -> LabelSpec:
        """The documented defaults: propensity 14 days; churn 60 days among 90-day actives."""
        if model == "propensity":
            return cls("propensity", 14)
        if model == "churn":
            return cls("churn", 60, 90)
        raise ValueError(f"no label for model {model!r}; labelled models: {LABEL_MODELS}")

    @property
    def lookback_days(self) -> int:
        """History needed before T: the churn activity window, else the feature window (90)."""
        return self.active_lookback_days

    def definition(self) -> str:
        """One-line definition, logged as the run's ``label_definition`` tag."""
        if self.model == "propensity":
            return (
                f"propensity: any purchase on any channel in [T, T+{self.horizon_days}d), "
                "among customers known before T"
            )
        return (
            f"churn: no purchase and no customer-initiated event in [T, T+{self.horizon_days}d), "
            "among customers with a customer-initiated event in "
            f"[T-{self.active_lookback_days}d, T)"
        )


def _cutoff_literal(cutoffs: Sequence[pd.Timestamp]) -> str:
    stamps = ", ".join(f"TIMESTAMPTZ '{pd.Timestamp(t).isoformat()}'" for t in cutoffs)
    return f"[{stamps}]"


def observed_range(settings: Settings) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First event time and the end of the last observed UTC day (exclusive)."""
    con = duckdb.connect()
    try:
        relation = events_relation_sql(settings)
        lo, hi = con.execute(
            f"SELECT min(event_timestamp), max(event_timestamp) FROM {relation}"
        ).fetchone()
    finally:
        con.close()
    first = pd.Timestamp(lo).tz_convert("UTC")
    last = pd.Timestamp(hi).tz_convert("UTC").normalize() + pd.Timedelta(days=1)
    return first, last


def label_frame(
    settings: Settings, spec: LabelSpec, cutoffs: Sequence[pd.Timestamp]
) -> pd.DataFrame:
    """One row per (customer, cutoff) in the model's population, with its 0/1 label.

    Columns: ``customer_id``, ``event_timestamp`` (the cutoff T, UTC) and ``label``. Rows are
    sorted by cutoff then customer id, so the frame (and any training set built on it) is
    deterministic.
    """
    if not cutoffs:
        raise ValueError("no cutoffs given")
    events = events_relation_sql(settings)
    fams = ", ".join(f"'{f.value}'" for f in sorted(CUSTOMER_INITIATED_FAMILIES))
    h = int(spec.horizon_days)
    customers_sql = ""
    if settings.customers_path.exists():
        customers_sql = (
            "UNION ALL SELECT customer_id, signup_date AS ts FROM "
            f"read_parquet('{settings.customers_path.as_posix()}') WHERE signup_date IS NOT NULL"
        )
    if spec.model == "propensity":
        sql = f"""
        WITH cut AS (SELECT unnest({_cutoff_literal(cutoffs)}) AS t),
        ev AS (SELECT customer_id, event_timestamp AS ts, event_type FROM {events}),
        seen AS (
            SELECT customer_id, min(ts) AS first_ts FROM (
                SELECT customer_id, ts FROM ev {customers_sql}
            ) GROUP BY customer_id
        ),
        pop AS (SELECT s.customer_id, c.t FROM seen s JOIN cut c ON s.first_ts < c.t),
        pos AS (
            SELECT DISTINCT e.customer_id, c.t FROM ev e JOIN cut c
              ON e.ts >= c.t AND e.ts < c.t + INTERVAL {h} DAY
            WHERE e.event_type = 'purchase'
        )
        SELECT p.customer_id, p.t AS event_timestamp,
               CASE WHEN pos.customer_id IS NULL THEN 0 ELSE 1 END AS label
        FROM pop p LEFT JOIN pos USING (customer_id, t)
        ORDER BY p.t, p.customer_id
        """
    elif spec.model == "churn":
        lb = int(spec.active_lookback_days)
        sql = f"""
        WITH cut AS (SELECT unnest({_cutoff_literal(cutoffs)}) AS t),
        ev AS (
            SELECT customer_id, event_timestamp AS ts FROM {events} WHERE family IN ({fams})
        ),
        pop AS (
            SELECT DISTINCT e.customer_id, c.t FROM ev e JOIN cut c
              ON e.ts >= c.t - INTERVAL {lb} DAY AND e.ts < c.t
        ),
        kept AS (
            SELECT DISTINCT e.customer_id, c.t FROM ev e JOIN cut c
              ON e.ts >= c.t AND e.ts < c.t + INTERVAL {h} DAY
        )
        SELECT p.customer_id, p.t AS event_timestamp,
               CASE WHEN k.customer_id IS NULL THEN 1 ELSE 0 END AS label
        FROM pop p LEFT JOIN kept k USING (customer_id, t)
        ORDER BY p.t, p.customer_id
        """
    else:
        raise ValueError(f"no label for model {spec.model!r}; labelled models: {LABEL_MODELS}")
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        frame = con.execute(sql).df()
    finally:
        con.close()
    frame["customer_id"] = frame["customer_id"].astype(str)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    frame["label"] = frame["label"].astype("int8")
    return frame.reset_index(drop=True)


def population_frame(
    settings: Settings, cutoffs: Sequence[pd.Timestamp], active_lookback_days: int | None = None
) -> pd.DataFrame:
    """Unlabelled (customer, cutoff) rows: customers known before each cutoff, or active in
    the ``active_lookback_days`` before it when given. Used for segments."""
    if active_lookback_days is None:
        frame = label_frame(settings, LabelSpec("propensity", 1), cutoffs)
    else:
        frame = label_frame(settings, LabelSpec("churn", 1, active_lookback_days), cutoffs)
    return frame.drop(columns="label")


def oracle_probabilities(
    settings: Settings, spec: LabelSpec, cutoff: pd.Timestamp
) -> pd.DataFrame | None:
    """The simulator's exact probability of each customer's label at one cutoff, or None.

    Only synthetic homes have ground truth (``ground_truth/daily.parquet`` with the latent
    daily ``p_purchase`` and ``p_active``). Days are independent given the latent path, so
    propensity = 1 - prod(1 - p_purchase) and churn = prod(1 - p_active) over the label window.
    Columns: ``customer_id``, ``oracle``.
    """
    path = settings.ground_truth_dir / "daily.parquet"
    if not path.exists():
        return None
    column = "p_purchase" if spec.model == "propensity" else "p_active"
    t = pd.Timestamp(cutoff).tz_convert("UTC")
    end = t + pd.Timedelta(days=spec.horizon_days)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        frame = con.execute(
            f"""
            SELECT CAST(customer_id AS VARCHAR) AS customer_id,
                   exp(sum(ln(greatest(1 - CAST({column} AS DOUBLE), 1e-12)))) AS q
            FROM read_parquet('{path.as_posix()}')
            WHERE CAST(date AS TIMESTAMPTZ) >= TIMESTAMPTZ '{t.isoformat()}'
              AND CAST(date AS TIMESTAMPTZ) < TIMESTAMPTZ '{end.isoformat()}'
            GROUP BY 1
            """
        ).df()
    finally:
        con.close()
    frame["oracle"] = 1.0 - frame["q"] if spec.model == "propensity" else frame["q"]
    return frame[["customer_id", "oracle"]]
