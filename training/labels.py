"""Labels from the event store: what happened to each customer after a cutoff T.

A label is an *outcome* observed in ``[T, T + H)`` for the customers of a *population* at T.
Which of each a model uses, and its default windows, is its row of the model contract
(:mod:`training.contract`); this module holds the rules themselves:

- populations: ``known`` (signed up, or seen in an event, before T) and ``active`` (at least
  one customer-initiated event, behavioural, transactional or attitudinal, in
  ``[T - lookback, T)``);
- outcomes: ``purchase`` (1 when the customer makes any purchase, on any channel, in the
  window) and ``lapse`` (1 when the customer makes no purchase and no customer-initiated event
  in the window; business sends such as emails, pushes and impressions do not count).

So propensity is ``purchase`` among ``known`` customers over 14 days, churn is ``lapse``
among 90-day ``active`` customers over 60 days. The definition is recorded as the
``label_definition`` lineage tag of every training run and, machine-readably
(:meth:`LabelSpec.tags`), on every registered version: the promotion gate evaluates a version
with the label it was trained on (:func:`recorded_label_spec`).

The label window starts at T inclusive, the exact complement of the feature windows, which
use events strictly before T: no event can inform both a feature and a label, and none falls
between them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from data_layer.event_store import events_relation_sql
from data_layer.schema import CUSTOMER_INITIATED_FAMILIES
from data_layer.settings import Settings
from training.contract import ACTIVE, KNOWN, LAPSE, PURCHASE, contract

HORIZON_TAG = "omniscore.label_horizon_days"
LOOKBACK_TAG = "omniscore.label_lookback_days"
"""Version tags recording a classifier's label windows (see :meth:`LabelSpec.tags`)."""
HORIZON_PARAM = "horizon_days"
LOOKBACK_PARAM = "active_lookback_days"
"""Run parameters that recorded the windows before the version tags existed."""


@dataclass(frozen=True)
class _Outcome:
    """How one outcome is observed, phrased and predicted by the simulator's oracle."""

    event_filter: str
    """SQL condition on an event ``e`` (with ``{families}``) that counts as seen."""
    label_when_seen: int
    phrase: str
    """One-line definition with ``{h}`` for the horizon in days."""
    oracle_column: str
    """Latent daily probability in ``ground_truth/daily.parquet``."""
    oracle_when_seen: bool
    """The oracle is P(seen at least once) when true, else P(never seen)."""
    oracle_missing: float | None
    """Oracle of a customer without latent rows; ``None``: the population median."""


_OUTCOMES: dict[str, _Outcome] = {
    PURCHASE: _Outcome(
        event_filter="e.event_type = 'purchase'",
        label_when_seen=1,
        phrase="any purchase on any channel in [T, T+{h}d)",
        oracle_column="p_purchase",
        oracle_when_seen=True,
        oracle_missing=None,
    ),
    LAPSE: _Outcome(
        event_filter="e.family IN ({families})",
        label_when_seen=0,
        phrase="no purchase and no customer-initiated event in [T, T+{h}d)",
        oracle_column="p_active",
        oracle_when_seen=False,
        # No latent activity at all: the customer certainly stays silent.
        oracle_missing=1.0,
    ),
}
_POPULATION_PHRASES = {
    KNOWN: "among customers known before T",
    ACTIVE: "among customers with a customer-initiated event in [T-{lb}d, T)",
}


@dataclass(frozen=True)
class LabelSpec:
    """A classifier's label: the model (whose contract gives the population and outcome), the
    horizon after T and the activity lookback of an ``active`` population."""

    model: str
    horizon_days: int
    active_lookback_days: int = 90

    @classmethod
    def default(cls, model: str) -> LabelSpec:
        """The contract's defaults (propensity 14 days; churn 60 days among 90-day actives)."""
        defaults = contract(model).label
        if defaults is None:
            raise ValueError(f"model {model!r} has no label: it is not a classifier")
        return cls(model, defaults.horizon_days, defaults.active_lookback_days)

    @property
    def population(self) -> str:
        """``known`` or ``active`` (from the model's contract)."""
        return contract(self.model).label.population

    @property
    def outcome(self) -> str:
        """``purchase`` or ``lapse`` (from the model's contract)."""
        return contract(self.model).label.outcome

    @property
    def lookback_days(self) -> int:
        """History needed before T: the activity window, else the feature window (90)."""
        return self.active_lookback_days

    def definition(self) -> str:
        """One-line definition, logged as the run's ``label_definition`` tag."""
        outcome = _OUTCOMES[self.outcome].phrase.format(h=self.horizon_days)
        population = _POPULATION_PHRASES[self.population].format(lb=self.active_lookback_days)
        return f"{self.model}: {outcome}, {population}"

    def tags(self) -> dict[str, str]:
        """The windows as registered-version tags, read back by :func:`recorded_label_spec`."""
        return {HORIZON_TAG: str(self.horizon_days), LOOKBACK_TAG: str(self.active_lookback_days)}


def label_spec(
    model: str, horizon_days: int | None = None, active_lookback_days: int | None = None
) -> LabelSpec:
    """A classifier's label: the contract's defaults with the given overrides.

    ``active_lookback_days`` (``--churn-lookback-days``) applies only to a model whose
    population is ``active`` (churn), so that ``train all`` with it leaves the propensity
    label, and the history it needs, as it is.
    """
    spec = LabelSpec.default(model)
    if spec.population != ACTIVE:
        active_lookback_days = None
    return LabelSpec(
        model,
        horizon_days or spec.horizon_days,
        active_lookback_days or spec.active_lookback_days,
    )


def recorded_label_spec(
    model: str, tags: Mapping[str, str], run_params: Mapping[str, str] | None = None
) -> LabelSpec:
    """The label a registered version was trained with.

    Read from the version's tags (:meth:`LabelSpec.tags`), else from its training run's
    parameters (``horizon_days``, ``active_lookback_days``, logged by every training run),
    else the contract's defaults for a version that records neither.
    """
    params = run_params or {}
    horizon = tags.get(HORIZON_TAG) or params.get(HORIZON_PARAM)
    lookback = tags.get(LOOKBACK_TAG) or params.get(LOOKBACK_PARAM)
    return label_spec(model, int(horizon) if horizon else None, int(lookback) if lookback else None)


def _cutoff_literal(cutoffs: Sequence[pd.Timestamp]) -> str:
    stamps = ", ".join(f"TIMESTAMPTZ '{pd.Timestamp(t).isoformat()}'" for t in cutoffs)
    return f"[{stamps}]"


def _families() -> str:
    return ", ".join(f"'{f.value}'" for f in sorted(CUSTOMER_INITIATED_FAMILIES))


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


def _population_sql(settings: Settings, population: str, lookback_days: int) -> str:
    """SQL of the (customer_id, t) rows of a population, over the CTEs ``ev`` and ``cut``."""
    if population == KNOWN:
        customers_sql = ""
        if settings.customers_path.exists():
            customers_sql = (
                "UNION ALL SELECT customer_id, signup_date AS ts FROM "
                f"read_parquet('{settings.customers_path.as_posix()}') "
                "WHERE signup_date IS NOT NULL"
            )
        return f"""
            SELECT s.customer_id, c.t FROM (
                SELECT customer_id, min(ts) AS first_ts FROM (
                    SELECT customer_id, ts FROM ev {customers_sql}
                ) GROUP BY customer_id
            ) s JOIN cut c ON s.first_ts < c.t"""
    if population == ACTIVE:
        return f"""
            SELECT DISTINCT e.customer_id, c.t FROM ev e JOIN cut c
              ON e.ts >= c.t - INTERVAL {int(lookback_days)} DAY AND e.ts < c.t
            WHERE e.family IN ({_families()})"""
    raise ValueError(f"unknown population {population!r}; known: {KNOWN}, {ACTIVE}")


def _population_rows(
    settings: Settings,
    cutoffs: Sequence[pd.Timestamp],
    population_sql: str,
    extra_ctes: str = "",
    label_sql: str = "",
) -> pd.DataFrame:
    """Run a population query (optionally labelled) over the event store, one row per
    (customer, cutoff), sorted by cutoff then customer id so the frame is deterministic."""
    if not cutoffs:
        raise ValueError("no cutoffs given")
    sql = f"""
        WITH cut AS (SELECT unnest({_cutoff_literal(cutoffs)}) AS t),
        ev AS (
            SELECT customer_id, event_timestamp AS ts, event_type, family
            FROM {events_relation_sql(settings)}
        ),
        pop AS ({population_sql}){extra_ctes}
        SELECT p.customer_id, p.t AS event_timestamp{label_sql}
        ORDER BY p.t, p.customer_id
        """
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        frame = con.execute(sql).df()
    finally:
        con.close()
    frame["customer_id"] = frame["customer_id"].astype(str)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame


def label_frame(
    settings: Settings, spec: LabelSpec, cutoffs: Sequence[pd.Timestamp]
) -> pd.DataFrame:
    """One row per (customer, cutoff) in the model's population, with its 0/1 label.

    Columns: ``customer_id``, ``event_timestamp`` (the cutoff T, UTC) and ``label``. Rows are
    sorted by cutoff then customer id, so the frame (and any training set built on it) is
    deterministic.
    """
    outcome = _OUTCOMES[spec.outcome]
    seen = outcome.event_filter.format(families=_families())
    hits = f""",
        hit AS (
            SELECT DISTINCT e.customer_id, c.t FROM ev e JOIN cut c
              ON e.ts >= c.t AND e.ts < c.t + INTERVAL {int(spec.horizon_days)} DAY
            WHERE {seen}
        )"""
    when_seen = outcome.label_when_seen
    label = f""",
               CASE WHEN hit.customer_id IS NULL THEN {1 - when_seen} ELSE {when_seen} END AS label
        FROM pop p LEFT JOIN hit USING (customer_id, t)"""
    population = _population_sql(settings, spec.population, spec.active_lookback_days)
    frame = _population_rows(settings, cutoffs, population, hits, label)
    frame["label"] = frame["label"].astype("int8")
    return frame.reset_index(drop=True)


def population_frame(
    settings: Settings, cutoffs: Sequence[pd.Timestamp], active_lookback_days: int | None = None
) -> pd.DataFrame:
    """Unlabelled (customer, cutoff) rows: customers known before each cutoff, or active in
    the ``active_lookback_days`` before it when given. Used for segments."""
    if active_lookback_days is None:
        population = _population_sql(settings, KNOWN, 0)
    else:
        population = _population_sql(settings, ACTIVE, active_lookback_days)
    frame = _population_rows(settings, cutoffs, population, label_sql=" FROM pop p")
    return frame.reset_index(drop=True)


def oracle_probabilities(
    settings: Settings, spec: LabelSpec, cutoff: pd.Timestamp
) -> pd.DataFrame | None:
    """The simulator's exact probability of each customer's label at one cutoff, or None.

    Only synthetic homes have ground truth (``ground_truth/daily.parquet`` with the latent
    daily ``p_purchase`` and ``p_active``). Days are independent given the latent path, so
    a ``purchase`` label has probability 1 - prod(1 - p_purchase) and a ``lapse`` label
    prod(1 - p_active) over the label window. Columns: ``customer_id``, ``oracle``.
    """
    path = settings.ground_truth_dir / "daily.parquet"
    if not path.exists():
        return None
    outcome = _OUTCOMES[spec.outcome]
    t = pd.Timestamp(cutoff).tz_convert("UTC")
    end = t + pd.Timedelta(days=spec.horizon_days)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        frame = con.execute(
            f"""
            SELECT CAST(customer_id AS VARCHAR) AS customer_id,
                   exp(sum(ln(greatest(1 - CAST({outcome.oracle_column} AS DOUBLE), 1e-12)))) AS q
            FROM read_parquet('{path.as_posix()}')
            WHERE CAST(date AS TIMESTAMPTZ) >= TIMESTAMPTZ '{t.isoformat()}'
              AND CAST(date AS TIMESTAMPTZ) < TIMESTAMPTZ '{end.isoformat()}'
            GROUP BY 1
            """
        ).df()
    finally:
        con.close()
    frame["oracle"] = 1.0 - frame["q"] if outcome.oracle_when_seen else frame["q"]
    return frame[["customer_id", "oracle"]]


def oracle_for_rows(
    settings: Settings, spec: LabelSpec, cutoff: pd.Timestamp, customer_ids: pd.Series
) -> np.ndarray | None:
    """:func:`oracle_probabilities` aligned with ``customer_ids`` (None without ground
    truth); a customer without latent rows gets the outcome's fill value."""
    oracle = oracle_probabilities(settings, spec, cutoff)
    if oracle is None:
        return None
    rows = pd.DataFrame({"customer_id": customer_ids.to_numpy()})
    values = rows.merge(oracle, on="customer_id", how="left")["oracle"]
    fill = _OUTCOMES[spec.outcome].oracle_missing
    return values.fillna(values.median() if fill is None else fill).to_numpy(dtype=float)
