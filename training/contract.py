"""The model contract: one row per model, from which every other place derives its names.

Each :class:`ModelContract` says what a model is called in the registry, which Feast feature
service it reads, what kind of model it is (a classifier or a clustering) and, for a
classifier, how its label is defined and with which defaults. Training, the registry,
serving, the command line and the notebooks' workspace read this table; none of them spells
a model name. Adding a model means one row here and the model's own job module (and, for a
new kind of label, its rule in :mod:`training.labels`).

This module is plain data: it imports nothing heavy, so the command line's ``--help`` and the
serving process can read it freely.
"""

from __future__ import annotations

from dataclasses import dataclass

CLASSIFIER = "classifier"
"""A calibrated probability of a labelled outcome (propensity, churn)."""
CLUSTERING = "clustering"
"""An unsupervised partition of customers into named, stable segments."""
KINDS: tuple[str, ...] = (CLASSIFIER, CLUSTERING)

KNOWN = "known"
"""Population: customers who signed up, or appeared in an event, before the cutoff."""
ACTIVE = "active"
"""Population: customers with a customer-initiated event in the lookback before the cutoff."""
PURCHASE = "purchase"
"""Outcome: 1 when the customer buys, on any channel, within the horizon after the cutoff."""
LAPSE = "lapse"
"""Outcome: 1 when the customer neither buys nor initiates any event within the horizon."""
REGISTERED_PREFIX = "omniscore-"
DEFAULT_ACTIVE_LOOKBACK_DAYS = 90


@dataclass(frozen=True)
class LabelDefaults:
    """How a classifier's label is defined, and its default windows.

    The label of a (customer, cutoff T) row is ``outcome`` observed in ``[T, T + horizon)``,
    for the customers of ``population`` at T (``active`` looks back ``active_lookback_days``).
    ``omniscore train --horizon-days`` and ``--churn-lookback-days`` override the windows.
    """

    population: str
    outcome: str
    horizon_days: int
    active_lookback_days: int = DEFAULT_ACTIVE_LOOKBACK_DAYS


@dataclass(frozen=True)
class ModelContract:
    """One model of the platform: its names, its features, its kind and its label."""

    name: str
    """Short name used on the command line and in ``/score`` (``propensity``)."""
    kind: str
    """:data:`CLASSIFIER` or :data:`CLUSTERING`."""
    feature_service: str
    """The Feast feature service the model is trained and served on (``propensity_v1``)."""
    summary: str
    """What the model tells, in a few words (registered model description, CLI help)."""
    label: LabelDefaults | None = None
    """The label definition of a classifier; ``None`` for a clustering."""
    population_lookback_days: int = DEFAULT_ACTIVE_LOOKBACK_DAYS
    """A clustering learns from the customers active in this many days before its cutoff."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model {self.name!r}: kind must be one of {KINDS}, not {self.kind!r}")
        if (self.kind == CLASSIFIER) != (self.label is not None):
            raise ValueError(f"model {self.name!r}: a classifier, and only one, has a label")

    @property
    def registered_name(self) -> str:
        """Name of the model in the MLflow registry (``omniscore-propensity``)."""
        return f"{REGISTERED_PREFIX}{self.name}"


CONTRACTS: tuple[ModelContract, ...] = (
    ModelContract(
        name="propensity",
        kind=CLASSIFIER,
        feature_service="propensity_v1",
        summary="probability of a purchase on any channel in the next days",
        label=LabelDefaults(population=KNOWN, outcome=PURCHASE, horizon_days=14),
    ),
    ModelContract(
        name="churn",
        kind=CLASSIFIER,
        feature_service="churn_v1",
        summary="probability that an active customer goes silent",
        label=LabelDefaults(population=ACTIVE, outcome=LAPSE, horizon_days=60),
    ),
    ModelContract(
        name="segments",
        kind=CLUSTERING,
        feature_service="segments_v1",
        summary="cross-channel behavioural segment of each customer",
    ),
)
"""Every model of the platform, in the order commands run and report them."""

_BY_NAME = {c.name: c for c in CONTRACTS}
_BY_REGISTERED_NAME = {c.registered_name: c for c in CONTRACTS}
MODEL_NAMES: tuple[str, ...] = tuple(_BY_NAME)
"""Short names of every model (the command line's choices, besides ``all``)."""
CLASSIFIERS: tuple[str, ...] = tuple(c.name for c in CONTRACTS if c.kind == CLASSIFIER)
CLUSTERINGS: tuple[str, ...] = tuple(c.name for c in CONTRACTS if c.kind == CLUSTERING)


def contract(model: str) -> ModelContract:
    """The contract of a model by its short name (``churn``) or registered name.

    Raises ``ValueError`` naming the known models otherwise.
    """
    found = _BY_NAME.get(model) or _BY_REGISTERED_NAME.get(model)
    if found is None:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
    return found


def registered_name(model: str) -> str:
    """Registry name of a model given its short or registered name."""
    return contract(model).registered_name
