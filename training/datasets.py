"""Training sets: cutoffs, eligibility checks and point-in-time features from Feast.

A training row is a (customer_id, cutoff T). Its label comes from the event store after T
(:mod:`training.labels`); its features come only from Feast ``get_historical_features`` on
the model's feature service (``data_layer.feast_store.historical_features``), which returns
exactly one row per entity row even where Feast's file offline store would drop one.

Splits are by time only (:func:`plan_cutoffs`): the test cutoff is the latest snapshot whose
label window is complete, the validation cutoff is the latest whose label window closes by
the test cutoff, and the training cutoffs are earlier still, their label windows closed by the
validation cutoff. No label a model learns from, nor any it is tuned on, overlaps the period
it is judged on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd

from data_layer.schema import CHANNELS
from data_layer.settings import Settings
from feature_repo.catalog import CATEGORICAL_FEATURES, FEATURES_BY_NAME, service_features
from training.contract import ACTIVE, CLUSTERING, CLUSTERINGS, contract
from training.labels import LabelSpec, label_frame, observed_range, population_frame

DEFAULT_CUTOFFS: int | None = None
"""``None``: the number of cutoffs is chosen from the history and the horizon
(:func:`auto_train_cutoffs`); an integer N asks for validation, test and up to N - 2 training
cutoffs, the latest ones."""
DEFAULT_MIN_CLASS = 100
DEFAULT_TRAIN_STEP_DAYS = 7
MAX_AUTO_TRAIN_CUTOFFS = 30
"""Training cutoffs an automatic plan takes at most: spread over the whole history, so every
season is seen, while the rows stay a few hundred thousand at tens of thousands of customers."""
SNAPSHOT_VIEW = "transactions"
"""Feature view whose snapshot times define the available cutoffs."""


class IneligibleError(ValueError):
    """The data cannot support a trustworthy model; the message says what is missing."""


@dataclass(frozen=True)
class CutoffPlan:
    """Training, validation and test cutoffs (UTC midnights), oldest first."""

    train: tuple[pd.Timestamp, ...]
    valid: pd.Timestamp
    test: pd.Timestamp

    @property
    def all(self) -> list[pd.Timestamp]:
        """Every cutoff, oldest first."""
        return [*self.train, self.valid, self.test]

    def describe(self) -> str:
        """Compact text for the ``cutoffs`` lineage tag."""
        fmt = lambda t: pd.Timestamp(t).strftime("%Y-%m-%d")  # noqa: E731
        return (
            f"train={','.join(fmt(t) for t in self.train)};valid={fmt(self.valid)};"
            f"test={fmt(self.test)}"
        )


def snapshot_cutoffs(settings: Settings) -> list[pd.Timestamp]:
    """Snapshot times present in the feature store's offline data, oldest first."""
    path = settings.features_dir / f"{SNAPSHOT_VIEW}.parquet"
    if not path.exists():
        raise FileNotFoundError(
            f"no feature snapshots at {path}: run `omniscore features build` and "
            "`omniscore features apply` first"
        )
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        rows = con.execute(
            f"SELECT DISTINCT event_timestamp FROM read_parquet('{path.as_posix()}') ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    return [pd.Timestamp(r[0]).tz_convert("UTC") for r in rows]


def check_history(
    observed_start: pd.Timestamp, observed_end: pd.Timestamp, lookback_days: int, horizon_days: int
) -> None:
    """Refuse when the event history is shorter than lookback plus horizon."""
    have = (observed_end - observed_start) / pd.Timedelta(days=1)
    need = lookback_days + horizon_days
    if have < need:
        raise IneligibleError(
            f"not enough history: the events span {have:.0f} days "
            f"({observed_start.date()} to {observed_end.date()}), but a model needs at least "
            f"lookback + horizon = {lookback_days} + {horizon_days} = {need} days"
        )


def plan_cutoffs(
    snapshots: Sequence[pd.Timestamp],
    observed_start: pd.Timestamp,
    observed_end: pd.Timestamp,
    horizon_days: int,
    lookback_days: int,
    n_cutoffs: int | None = DEFAULT_CUTOFFS,
    train_step_days: int = DEFAULT_TRAIN_STEP_DAYS,
) -> CutoffPlan:
    """Choose time-split cutoffs among the available snapshot times (pure).

    Test: the latest snapshot T with ``T + horizon <= observed_end``. Validation: the latest
    with ``T + horizon <= test``. Training: snapshots ending at the latest with
    ``T + horizon <= valid``, each with a full lookback of history before it: up to
    ``n_cutoffs - 2`` of them spaced at least ``train_step_days`` apart, or, with
    ``n_cutoffs=None``, cutoffs spread over the whole usable history
    (:func:`auto_train_cutoffs`). Raises :class:`IneligibleError` when no plan fits.
    """
    check_history(observed_start, observed_end, lookback_days, horizon_days)
    h = pd.Timedelta(days=horizon_days)
    earliest = observed_start + pd.Timedelta(days=lookback_days)
    usable = sorted(t for t in snapshots if t >= earliest)
    test = [t for t in usable if t + h <= observed_end]
    valid = [t for t in usable if test and t + h <= test[-1]]
    train_pool = [t for t in usable if valid and t + h <= valid[-1]]
    if not train_pool:
        found = f"{len(usable)} snapshots from {earliest.date()} on" if usable else "none usable"
        raise IneligibleError(
            "not enough history for an out-of-time split: need training, validation and test "
            f"cutoffs each {horizon_days} days apart, after {lookback_days} days of lookback and "
            f"before {observed_end.date()} (events end); snapshots available: {found}. "
            "Build features over a longer range or use a shorter horizon."
        )
    if n_cutoffs is None:
        return CutoffPlan(
            auto_train_cutoffs(train_pool, horizon_days, train_step_days), valid[-1], test[-1]
        )
    picked: list[pd.Timestamp] = []
    for t in reversed(train_pool):
        if len(picked) >= max(1, n_cutoffs - 2):
            break
        if not picked or picked[-1] - t >= pd.Timedelta(days=train_step_days):
            picked.append(t)
    return CutoffPlan(tuple(sorted(picked)), valid[-1], test[-1])


def auto_train_cutoffs(
    pool: Sequence[pd.Timestamp],
    horizon_days: int,
    train_step_days: int = DEFAULT_TRAIN_STEP_DAYS,
    max_cutoffs: int = MAX_AUTO_TRAIN_CUTOFFS,
) -> tuple[pd.Timestamp, ...]:
    """Training cutoffs chosen from the history and the horizon (pure; ``pool`` sorted).

    From the latest candidate backwards, cutoffs at least ``max(train_step_days, horizon / 2)``
    apart (consecutive label windows overlap by half at most, so each adds new outcomes), and
    further apart when more than ``max_cutoffs`` would fit, so that they still span the whole
    pool (every season of a multi-year history) rather than its latest stretch.
    """
    if not pool:
        return ()
    span_days = (pool[-1] - pool[0]) / pd.Timedelta(days=1)
    step = max(float(train_step_days), horizon_days / 2, span_days / max(max_cutoffs - 1, 1))
    picked: list[pd.Timestamp] = []
    for t in reversed(pool):
        if len(picked) >= max_cutoffs:
            break
        if not picked or (picked[-1] - t) / pd.Timedelta(days=1) >= step - 1e-9:
            picked.append(t)
    return tuple(sorted(picked))


def check_eligibility(
    labels: pd.DataFrame, plan: CutoffPlan, min_class: int = DEFAULT_MIN_CLASS
) -> None:
    """Refuse when either class has fewer than ``min_class`` training examples, or when the
    validation or test cutoff lacks one class (its AUC would be undefined)."""
    split = split_of(labels["event_timestamp"], plan)
    train = labels.loc[split == "train", "label"]
    pos, neg = int(train.sum()), int((1 - train).sum())
    if min(pos, neg) < min_class:
        raise IneligibleError(
            f"too few examples to train: the training cutoffs hold {pos} positive and {neg} "
            f"negative rows; each class needs at least {min_class} "
            "(lower it with --min-class, or add customers / history)"
        )
    for name in ("valid", "test"):
        part = labels.loc[split == name, "label"]
        if part.nunique() < 2:
            raise IneligibleError(
                f"the {name} cutoff has {len(part)} rows and only one class: cannot evaluate"
            )


def split_of(timestamps: pd.Series, plan: CutoffPlan) -> np.ndarray:
    """``train`` / ``valid`` / ``test`` for each row's cutoff."""
    ts = pd.to_datetime(timestamps, utc=True)
    out = np.full(len(ts), "train", dtype=object)
    out[(ts == plan.valid).to_numpy()] = "valid"
    out[(ts == plan.test).to_numpy()] = "test"
    return out


def channel_features(feature_names: Sequence[str]) -> dict[str, list[str]]:
    """Features of each single channel (for the single-channel baselines)."""
    groups: dict[str, list[str]] = {}
    for name in feature_names:
        ch = FEATURES_BY_NAME[name].channel if name in FEATURES_BY_NAME else None
        if ch in CHANNELS:
            groups.setdefault(ch, []).append(name)
    return groups


def fetch_features(settings: Settings, service: str, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features of ``service`` for each entity row, from Feast only.

    Exactly one output row per entity row, in entity order, other columns (labels) kept.
    """
    from data_layer.feast_store import feature_store, historical_features

    store = feature_store(settings)
    try:
        store.get_feature_service(service)
    except Exception as exc:
        raise LookupError(
            f"feature service {service!r} is not registered in {settings.feast_registry_path}: "
            "run `omniscore features apply`"
        ) from exc
    frame = historical_features(store, service, entity_df)
    if len(frame) != len(entity_df):
        raise RuntimeError(
            f"Feast returned {len(frame)} rows for {len(entity_df)} entity rows (service {service})"
        )
    return frame


@dataclass
class TrainingSet:
    """Labelled rows with features for one model, split by time."""

    model: str
    spec: LabelSpec
    plan: CutoffPlan
    feature_service: str
    feature_names: list[str]
    frame: pd.DataFrame
    split: np.ndarray = field(repr=False)

    def part(self, name: str) -> pd.DataFrame:
        """Rows of one split (``train``, ``valid``, ``test``, or ``fit`` = train + valid)."""
        if name == "fit":
            return self.frame[self.split != "test"]
        return self.frame[self.split == name]

    @property
    def categorical(self) -> list[str]:
        """String features of the model (encoded with a stored vocabulary)."""
        return [n for n in self.feature_names if n in CATEGORICAL_FEATURES]


def build_training_set(
    settings: Settings,
    model: str,
    spec: LabelSpec | None = None,
    feature_service: str | None = None,
    n_cutoffs: int | None = DEFAULT_CUTOFFS,
    min_class: int = DEFAULT_MIN_CLASS,
    train_step_days: int = DEFAULT_TRAIN_STEP_DAYS,
) -> TrainingSet:
    """Plan cutoffs, label rows, check eligibility, fetch features from Feast.

    ``spec`` and ``feature_service`` default to the model's contract.
    """
    spec = spec or LabelSpec.default(model)
    service = feature_service or contract(model).feature_service
    start, end = observed_range(settings)
    plan = plan_cutoffs(
        snapshot_cutoffs(settings),
        start,
        end,
        spec.horizon_days,
        spec.lookback_days,
        n_cutoffs=n_cutoffs,
        train_step_days=train_step_days,
    )
    labels = label_frame(settings, spec, plan.all)
    check_eligibility(labels, plan, min_class)
    frame = fetch_features(settings, service, labels)
    return TrainingSet(
        model=model,
        spec=spec,
        plan=plan,
        feature_service=service,
        feature_names=service_features(service),
        frame=frame,
        split=split_of(frame["event_timestamp"], plan),
    )


def latest_complete_cutoff(settings: Settings, spec: LabelSpec) -> pd.Timestamp:
    """The latest snapshot whose label window is complete (the out-of-time test cutoff)."""
    start, end = observed_range(settings)
    h = pd.Timedelta(days=spec.horizon_days)
    earliest = start + pd.Timedelta(days=spec.lookback_days)
    fits = [t for t in snapshot_cutoffs(settings) if t >= earliest and t + h <= end]
    if not fits:
        raise IneligibleError(
            f"no snapshot has a complete {spec.horizon_days}-day label window before "
            f"{end.date()}: build features over an earlier range"
        )
    return fits[-1]


def segment_frame(
    settings: Settings,
    feature_service: str | None = None,
    cutoff: pd.Timestamp | None = None,
    active_lookback_days: int | None = None,
    model: str = CLUSTERINGS[0],
) -> tuple[pd.DataFrame, pd.Timestamp]:
    """Features of the customers active in the ``active_lookback_days`` before a cutoff
    (default: the latest snapshot), for learning or evaluating segments.

    The feature service and the lookback default to the contract of the clustering ``model``.
    """
    terms = contract(model)
    feature_service = feature_service or terms.feature_service
    active_lookback_days = active_lookback_days or terms.population_lookback_days
    if cutoff is None:
        cutoff = snapshot_cutoffs(settings)[-1]
    rows = population_frame(settings, [cutoff], active_lookback_days)
    if rows.empty:
        raise IneligibleError(
            f"no customer was active in the {active_lookback_days} days before {cutoff}"
        )
    return fetch_features(settings, feature_service, rows), cutoff


def evaluation_set(
    settings: Settings, model: str, feature_service: str, spec: LabelSpec | None = None
) -> tuple[pd.DataFrame, np.ndarray | None, str]:
    """Rows to compare champion and challenger on: the latest out-of-time cutoff.

    Classifiers: the latest cutoff whose label window is complete, labelled with ``spec``
    (the label the version was trained with; default: the contract's); a clustering: the
    latest snapshot. Returns (frame with features, labels or None, description of the cutoff
    and, for a classifier, of the label windows).
    """
    if contract(model).kind == CLUSTERING:
        frame, cutoff = segment_frame(settings, feature_service, model=model)
        return frame, None, f"{model}@{cutoff.date()}"
    spec = spec or LabelSpec.default(model)
    cutoff = latest_complete_cutoff(settings, spec)
    labels = label_frame(settings, spec, [cutoff])
    frame = fetch_features(settings, feature_service, labels)
    described = f"{model}@{cutoff.date()} (label {spec.horizon_days}d"
    if spec.population == ACTIVE:
        described += f", active {spec.active_lookback_days}d"
    return frame, frame["label"].to_numpy(dtype=int), described + ")"
