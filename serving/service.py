"""The OmniScore scoring service: one class-based ``@bentoml.service``.

Start it with ``omniscore serve`` (:func:`serving.launcher.serve`) or
``bentoml serve serving.service:OmniScore --host 127.0.0.1 --port 3000`` with
``OMNISCORE_HOME`` set. At start-up it loads the ``champion`` version of
``omniscore-propensity``, ``omniscore-churn`` and ``omniscore-segments`` from the configured
MLflow registry, reads from each version's tags the Feast feature service it was trained on,
and opens the Feast store of the home.

Endpoints: ``POST /score``; ``GET /healthz`` (the process runs), ``GET /readyz`` (models
loaded and the online store answers), ``GET /metrics`` (Prometheus), ``POST /admin/reload``
(check the registry now).

This module is the service's start-up: BentoML imports it to start a server, and the service
decorator and the request models need the limits when they are declared, so it reads the
serving settings (:func:`serving.config.startup_config`) at import. No other module imports it
(``tests/test_project.py`` checks), so nothing else reads the environment on import.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from functools import cache
from typing import Annotated, Literal

import bentoml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints
from starlette.responses import JSONResponse

from serving.config import DEFAULT_HOST, DEFAULT_PORT, startup_config
from serving.guard import Guard

logger = logging.getLogger("omniscore.serving")
CONFIG = startup_config()
INLINE_IDS = 8
"""Requests of at most this many ids (without explain) on a direct read of SQLite or a
standalone Redis are read and scored on the event loop; larger ones, explanations and other
stores go to a worker thread."""
EXAMPLE_VERSIONS = {"propensity": "3", "churn": "2", "segments": "1"}
RECENT_EVENTS = 20
"""Events listed by ``GET /customers/{id}``."""

CustomerId = Annotated[
    str,
    StringConstraints(strict=True, min_length=1, max_length=128),
    Field(description="A customer id as the event store keeps it.", examples=["C000042"]),
]


# --- request and response models ----------------------------------------------------------
class ScoreRequest(BaseModel):
    """Customers to score."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"customer_ids": ["C000001", "C000002"], "explain": False}},
    )

    customer_ids: list[CustomerId] = Field(
        min_length=1,
        max_length=CONFIG.max_ids,
        description=f"Customer ids to score, 1 to {CONFIG.max_ids} per request "
        "(OMNISCORE_MAX_IDS). Results come back in the same order.",
        examples=[["C000001", "C000002"]],
    )
    explain: StrictBool = Field(
        default=False,
        description="Also return each score's top reasons and its contributions per channel. "
        "Costs roughly 30 predictions per customer, so it is off by default.",
        examples=[False],
    )


class ModelScore(BaseModel):
    """One classifier's output for a customer."""

    model_config = ConfigDict(extra="forbid")

    probability: float = Field(
        ge=0, le=1, description="Calibrated probability of the event.", examples=[0.31]
    )
    score: float = Field(
        ge=0,
        le=100,
        description="0-100: the probability's percentile in the training population.",
        examples=[82.5],
    )
    band: Literal["low", "medium", "high"] = Field(
        description="low below the 70th training percentile, medium to the 90th, high above.",
        examples=["medium"],
    )


class SegmentOut(BaseModel):
    """The behavioural segment a customer is assigned to."""

    model_config = ConfigDict(extra="forbid")

    id: int = Field(description="Stable segment id (kept across retrains).", examples=[2])
    name: str = Field(
        description="Human-readable segment name.", examples=["app-first, high value"]
    )


class Reason(BaseModel):
    """One feature's contribution to a score."""

    model_config = ConfigDict(extra="forbid")

    feature: str = Field(description="Feature name (docs/features.md).", examples=["web_events_7d"])
    value: float | str | None = Field(
        description="The feature's value for this customer (null when missing).", examples=[14.0]
    )
    contribution: float = Field(
        description="SHAP contribution to the raw score (log-odds); positive raises it.",
        examples=[0.42],
    )
    channel: str = Field(
        description="Channel the feature describes, or profile / cross_channel.",
        examples=["web"],
    )


class Explanation(BaseModel):
    """Why a classifier scored a customer as it did (exact TreeSHAP, log-odds units)."""

    model_config = ConfigDict(extra="forbid")

    raw_score: float = Field(description="The model's raw score (log-odds, before calibration).")
    base_value: float = Field(description="The raw score of an average customer (SHAP base).")
    top_reasons: list[Reason] = Field(description="Features with the largest |contribution|.")
    channels: dict[str, float] = Field(
        description="Contributions summed per channel; with base_value they add up to raw_score.",
        examples=[{"web": 0.3, "email": -0.1, "store": 0.05, "profile": 0.01}],
    )


class Explanations(BaseModel):
    """Explanations of both classifiers."""

    model_config = ConfigDict(extra="forbid")

    propensity: Explanation = Field(description="Why the propensity score is what it is.")
    churn: Explanation = Field(description="Why the churn risk is what it is.")


class ModelVersions(BaseModel):
    """Registered versions that produced the scores."""

    model_config = ConfigDict(extra="forbid")

    propensity: str = Field(description="omniscore-propensity version.", examples=["3"])
    churn: str = Field(description="omniscore-churn version.", examples=["2"])
    segments: str = Field(description="omniscore-segments version.", examples=["1"])


class CustomerScore(BaseModel):
    """Scores of one customer."""

    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(description="The id as requested.", examples=["C000001"])
    known: bool = Field(
        description="False when the online store has no features for this customer: the "
        "scores and segment are then the population's cold-start defaults.",
        examples=[True],
    )
    propensity: ModelScore = Field(description="Purchase propensity.")
    churn: ModelScore = Field(description="Churn risk.")
    segment: SegmentOut = Field(description="Behavioural segment.")
    feature_timestamp: str | None = Field(
        description="Freshness: the snapshot time (UTC, ISO 8601) of the oldest feature view "
        "served for this customer; null when unknown.",
        examples=["2026-06-29T00:00:00Z"],
    )
    model_versions: ModelVersions = Field(description="Model versions used.")
    explanation: Explanations | None = Field(
        default=None,
        description="Only with explain=true, and null for unknown customers.",
    )


class ScoreResponse(BaseModel):
    """Scores in request order."""

    model_config = ConfigDict(extra="forbid")

    scores: list[CustomerScore] = Field(description="One entry per requested id, in order.")
    model_versions: ModelVersions = Field(
        description="Model versions used for every score of this response.",
        examples=[EXAMPLE_VERSIONS],
    )


class ReloadRequest(BaseModel):
    """Reload options."""

    model_config = ConfigDict(extra="forbid")

    force: StrictBool = Field(
        default=False,
        description="Reload even when the registry's versions are the ones being served.",
    )


class ReloadResponse(BaseModel):
    """What a reload did."""

    model_config = ConfigDict(extra="forbid")

    reloaded: bool = Field(description="Whether a new model set was swapped in.")
    model_versions: ModelVersions = Field(description="Versions served after the call.")
    previous_versions: ModelVersions | None = Field(
        default=None, description="Versions served before, when they changed."
    )


class ForgetRequest(BaseModel):
    """Customers to erase from every store of the service's home."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"customer_ids": ["C000042"]}}
    )

    customer_ids: list[CustomerId] = Field(
        min_length=1,
        max_length=CONFIG.max_ids,
        description=f"Customer ids to forget, 1 to {CONFIG.max_ids} per request.",
    )


class ForgottenModel(BaseModel):
    """A registered version trained on data that included some of the customers."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="Registered model name.")
    version: str = Field(description="Registered version.")


class ForgetResponse(BaseModel):
    """The erasure receipt (as the audit log keeps it: keyed hashes, never the ids)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(description="Receipt id in the audit log.")
    requested_at: str = Field(description="When the request was made (UTC, ISO 8601).")
    completed_at: str = Field(description="When every store had been erased.")
    subjects: list[str] = Field(description="Keyed hashes (HMAC-SHA256) of the customers.")
    stores: dict[str, int] = Field(description="Rows (or keys) removed per store.")
    model_versions: list[ForgottenModel] = Field(
        description="Registered versions trained on data that included the customers."
    )


# --- live events and the customer view -----------------------------------------------------
EVENT_EXAMPLE = {
    "event_id": "pos-20260603-000917",
    "customer_id": "C000042",
    "event_timestamp": "2026-06-03T14:21:07Z",
    "channel": "store",
    "event_type": "purchase",
    "amount": 59.9,
    "session_id": None,
    "device": None,
    "rating": None,
    "campaign_id": None,
}


class EventsRequest(BaseModel):
    """Canonical events to ingest live."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"events": [EVENT_EXAMPLE]}}
    )

    events: list[dict] = Field(
        min_length=1,
        max_length=CONFIG.max_events,
        description=f"1 to {CONFIG.max_events} events (OMNISCORE_MAX_EVENTS) in the canonical "
        "schema: customer_id, event_timestamp (ISO 8601; naive means UTC), channel, "
        "event_type and amount (required on purchases), optionally session_id, device, rating "
        "(1-5), campaign_id, event_id (default: a hash of the content) and family (checked "
        "against event_type). Validated like `omniscore ingest`; each event gets a result.",
        examples=[[EVENT_EXAMPLE]],
    )


class EventResultOut(BaseModel):
    """What happened to one posted event."""

    model_config = ConfigDict(extra="forbid")

    event_id: str | None = Field(
        description="The stored event id (given, or the content hash); for a rejected event "
        "the id it carried, if any.",
        examples=["pos-20260603-000917"],
    )
    status: Literal["accepted", "duplicate", "rejected"] = Field(
        description="accepted: stored durably now; duplicate: an event with this id was "
        "already stored (nothing changes); rejected: invalid, quarantined with the reason.",
        examples=["accepted"],
    )
    reason: str | None = Field(
        description="Why the event was rejected (null otherwise).", examples=[None]
    )


class EventsResponse(BaseModel):
    """One result per posted event, in order."""

    model_config = ConfigDict(extra="forbid")

    results: list[EventResultOut] = Field(description="Results in the order of the events.")


class RecentEvent(BaseModel):
    """One of the customer's latest events, on any channel."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(description="Stored event id.")
    event_timestamp: str = Field(description="UTC, ISO 8601.", examples=["2026-06-03T14:21:07Z"])
    channel: str = Field(description="Channel of the event.", examples=["store"])
    event_type: str = Field(description="Event type (docs/ingest.md).", examples=["purchase"])
    family: str = Field(description="Signal family of the event type.", examples=["transactional"])
    amount: float | None = Field(description="Money, for purchases and returns.")
    session_id: str | None = Field(description="Session id, when the event had one.")
    rating: float | None = Field(description="Rating 1-5, for reviews and surveys.")


class CustomerView(BaseModel):
    """A customer's complete current context, as of the service's clock."""

    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(description="The id as requested.", examples=["C000042"])
    as_of: str = Field(
        description="The instant (UTC, ISO 8601) the features are as of: the request's (or "
        "OMNISCORE_CLOCK when set) when they come from the live state, the snapshot time "
        "when the service serves the Feast online store (OMNISCORE_SERVE_FEATURES=online).",
        examples=["2026-06-03T14:25:00Z"],
    )
    features: dict[str, float | str | None] = Field(
        description="Every served feature by name (docs/features.md), null when missing."
    )
    propensity: ModelScore = Field(description="Purchase propensity.")
    churn: ModelScore = Field(description="Churn risk.")
    segment: SegmentOut = Field(description="Behavioural segment.")
    model_versions: ModelVersions = Field(description="Model versions used.")
    computed_at: str = Field(
        description="When the scores were computed (UTC, ISO 8601; the service's clock).",
        examples=["2026-06-03T14:25:00Z"],
    )
    recent_events: list[RecentEvent] = Field(
        description="The customer's most recent events across channels, newest first."
    )


# --- metrics ------------------------------------------------------------------------------
@cache
def _metrics() -> dict:
    return {
        "customers": bentoml.metrics.Counter(
            name="omniscore_customers_scored_total",
            documentation="Customers scored, by whether the online store knew them.",
            labelnames=["known"],
        ),
        "reloads": bentoml.metrics.Counter(
            name="omniscore_model_reloads_total",
            documentation="Model set reloads, by outcome (swapped, unchanged, failed).",
            labelnames=["outcome"],
        ),
        "unavailable": bentoml.metrics.Counter(
            name="omniscore_online_store_unavailable_total",
            documentation="Requests answered 503 because the online store failed.",
        ),
        "events": bentoml.metrics.Counter(
            name="omniscore_events_total",
            documentation="Events posted to POST /events, by result status.",
            labelnames=["status"],
        ),
        "score_log_dropped": bentoml.metrics.Counter(
            name="omniscore_score_log_dropped_total",
            documentation="Scores not recorded in the score log because its queue was full.",
        ),
        "seconds": bentoml.metrics.Histogram(
            name="omniscore_score_seconds",
            documentation="Time to read features and score one request, in seconds.",
            buckets=(0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0),
        ),
    }


def _freeze_heap() -> None:
    """Exempt every object alive now (libraries, registry clients, the models) from garbage
    collection passes; reference counting still frees them.

    A 100-id request holds about 45,000 small objects at once (its 11,200 rows), which
    pushes them into the oldest generation and triggers full collections. Each full pass
    walked the ~400,000 objects the imports and models leave behind and stalled the process
    for about 250 ms: 8 of 120 such requests in a row (measured in process). After a freeze, a pass
    walks only what requests allocate. Called after each model swap, so the new set is
    exempt too. What a freeze keeps from collection is cyclic garbage made before it: about
    260 small registry-client objects per model load (measured), no model data.
    """
    gc.freeze()


def _number(value) -> float | None:
    """A float for JSON: None for a missing value (NaN, None)."""
    if value is None:
        return None
    value = float(value)
    return None if value != value else value


def _error(status: int, error: str, message: str) -> JSONResponse:
    """An error response in the documented shape (``serving.openapi.ERROR_SCHEMA``)."""
    return JSONResponse({"error": error, "message": message}, status_code=status)


def _failure(exc: BaseException) -> str:
    """What a client is told about an exception: its type only. Its text can name server
    paths or connection URLs; it goes to the log."""
    return f"{type(exc).__name__} (details in the server log)"


def _published_document() -> dict:
    """The OpenAPI document served at ``/docs.json`` (see :mod:`serving.openapi`)."""
    from serving.openapi import published_document

    return published_document(
        OmniScore.openapi_spec.asdict(),
        secured=bool(CONFIG.api_key),
        extra_responses=EXTRA_RESPONSES,
    )


EXTRA_RESPONSES = {
    ("/admin/forget", "post"): {
        403: "No admin key (OMNISCORE_ADMIN_KEY) is configured, so erasure is refused.",
        503: "The erasure failed part-way; the request can be sent again and completes.",
    },
    ("/admin/reload", "post"): {
        403: "No API key is configured, so the reload is refused.",
        503: "The reload failed; the models served before stay in service.",
    },
}
"""Statuses an endpoint answers beyond those every endpoint can (``serving.openapi``)."""


def _readiness() -> tuple[bool, dict]:
    try:
        instance = bentoml.get_current_service()
    except Exception:
        instance = None
    if instance is None:
        return False, {"reason": "the service is starting"}
    return instance.readiness()


# --- the service --------------------------------------------------------------------------
@bentoml.service(
    name="omniscore",
    workers=1,
    threads=CONFIG.threads,
    # The Guard middleware enforces the concurrency limit and a deadline of timeout + 5 s
    # with documented error bodies; BentoML's own timeout stays only as a backstop.
    traffic={"timeout": CONFIG.timeout + 10},
    http={"host": DEFAULT_HOST, "port": DEFAULT_PORT},
)
class OmniScore:
    """Real-time customer scores: propensity, churn risk and segment from Feast features."""

    def __init__(self) -> None:
        from data_layer.feast_store import feature_store
        from data_layer.settings import Settings
        from serving.online import OnlineReader

        self.config = CONFIG
        self.settings = Settings.from_env()
        self.store = feature_store(self.settings)
        self.reader = OnlineReader(self.store, self.config.online_read, timeout=self.config.timeout)
        self.models = None  # a ModelSet; replaced whole, never mutated
        self.load_error: str | None = None
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._pinned = self._read_pins()
        self._limiter = None  # created on the event loop by the first request
        self._open_live()
        self.triggers = self._open_triggers()
        self.score_log = self._open_score_log()
        try:
            self.reload(force=True)
        except Exception as exc:  # serve /healthz and a reasoned /readyz while retrying
            logger.exception("loading the models failed; retrying every reload interval")
            self.load_error = _failure(exc)
        interval = self.config.reload_interval or (5.0 if self.models is None else 0)
        if interval:
            self._watcher = threading.Thread(
                target=self._watch, args=(interval,), name="omniscore-reload", daemon=True
            )
            self._watcher.start()

    # -- live state ----------------------------------------------------------------------
    def _open_live(self) -> None:
        """The live state, the clock and the feature cache (see :mod:`serving.live`)."""
        from data_layer import live_segment
        from data_layer.live_ingest import parse_clock
        from data_layer.live_state import LiveState
        from serving.live import LiveFeatures

        self.clock = parse_clock(self.config.clock)
        live_segment.index_store(self.settings)  # not inside the first POST /events
        self.live = LiveState.open(self.settings, timeout_seconds=self.config.timeout)
        self.live_features = (
            LiveFeatures(self.live, self.settings) if self.config.features != "online" else None
        )
        self._live_on = False
        self._online_writer = None
        self._accept_lock = threading.Lock()

    def _open_triggers(self):
        """Score-change triggers after each fold (:mod:`serving.triggers`), or None when they
        are off, have no Redis, or cannot be set up (scoring goes on; the reason is logged)."""
        from serving.triggers import ScoreTriggers, TriggerPublisher

        try:
            publisher = TriggerPublisher.open(self.settings)
        except Exception:
            logger.exception("score-change triggers cannot be set up; they are off")
            return None
        if publisher is None:
            return None
        return ScoreTriggers(publisher, lambda: self.models, self._batch)

    def _open_score_log(self):
        """The score log (:mod:`data_layer.score_log`), or None when it is off or cannot be
        opened: scoring goes on without it, and the failure is in the log."""
        from data_layer.score_log import ScoreLog

        try:
            return ScoreLog.open(self.settings, on_drop=_metrics()["score_log_dropped"].inc)
        except Exception:
            logger.exception("the score log cannot be opened; scores are served unlogged")
            return None

    def _log_scores(self, source: str, scores) -> None:
        """Queue the scores for the score log (never blocks; see ScoreLog.record)."""
        if self.score_log is not None:
            self.score_log.record_scores(source, self.now(), scores)

    def serving_live(self) -> bool:
        """Whether features come from the live state (``features`` live, or auto and the
        state holds anything; once on, it stays on)."""
        if self._live_on or self.live_features is None:
            return self._live_on
        if self.config.features == "live" or self.live.horizon() is not None:
            self._live_on = True
        return self._live_on

    def now(self):
        """The service's clock: OMNISCORE_CLOCK when set, else the current UTC time."""
        from data_layer.live_ingest import utc_now

        return utc_now(self.clock)

    def accept(self, events: list) -> list[dict]:
        """``POST /events``: accept, fold, rewrite online features, refresh the cache."""
        from data_layer.live_ingest import OnlineFeatureWriter, accept_events

        now = self.now()
        with self._accept_lock:  # one fold at a time in this process (the state's cursor)
            if self._online_writer is None:
                try:
                    self._online_writer = OnlineFeatureWriter(self.settings, self.store)
                except Exception:
                    logger.exception("the Feast online store cannot be written; events are "
                                     "still stored and folded")  # fmt: skip
            triggers = self.triggers
            before = triggers.before(events, now) if triggers is not None else None
            report = accept_events(
                self.settings,
                events,
                now,
                self.live,
                online=self._online_writer,
                source="POST /events",
            )
            cache = self.live_features
            if cache is not None and report.customers:
                cache.sync()  # forget what other processes changed, then what this one did
                cache.invalidate(report.customers)
                if report.features is not None:
                    cache.remember(report.features, now)
            if triggers is not None:
                triggers.after(events, report, now, before)
        _metrics()["events"].labels(status="accepted").inc(report.accepted)
        _metrics()["events"].labels(status="duplicate").inc(report.duplicates)
        _metrics()["events"].labels(status="rejected").inc(report.rejected)
        return [
            {"event_id": r.event_id, "status": r.status, "reason": r.reason} for r in report.results
        ]

    def customer_view(self, customer_id: str) -> dict | None:
        """``GET /customers/{id}``: features, scores, segment and recent events (None: unknown)."""
        from serving.scoring import score, to_records

        models = self.models
        if models is None:
            raise RuntimeError("models not loaded")
        now = self.now()
        batch = self._batch(models, [customer_id], now)
        if not batch.known[0]:  # no event and no profile row (or, served online: no row)
            return None
        scores = score(models, batch)
        self._log_scores("customer_view", scores)
        record = to_records(scores)[0]
        features = {}
        for j, name in enumerate(models.layout.names):
            if name in batch.strings:
                features[name] = batch.strings[name][0]
            else:
                value = float(batch.numeric[0, j])
                features[name] = None if value != value else value
        recent = self.live.recent_events(customer_id, limit=RECENT_EVENTS)
        events = []
        for row in recent.to_dict("records"):
            events.append(
                {
                    "event_id": row["event_id"],
                    "event_timestamp": row["event_timestamp"].isoformat().replace("+00:00", "Z"),
                    "channel": row["channel"],
                    "event_type": row["event_type"],
                    "family": row["family"],
                    "amount": _number(row.get("amount")),
                    "session_id": row.get("session_id"),
                    "rating": _number(row.get("rating")),
                }
            )
        stamp = now.isoformat().replace("+00:00", "Z")
        return {
            "customer_id": customer_id,
            # Served online, the features are those of the stored snapshot.
            "as_of": stamp if self.serving_live() else record["feature_timestamp"],
            "features": features,
            "propensity": record["propensity"],
            "churn": record["churn"],
            "segment": record["segment"],
            "model_versions": record["model_versions"],
            "computed_at": stamp,
            "recent_events": events,
        }

    def _batch(self, models, customer_ids: list[str], at=None):
        """Features of the customers: live as of the clock, or as the online store holds them."""
        if self.serving_live():
            return self.live_features.batch(models.layout, customer_ids, at or self.now())
        return self.reader.read(models.layout, customer_ids)

    # -- models --------------------------------------------------------------------------
    def _read_pins(self) -> dict[str, str] | None:
        path = self.config.pinned_models
        if not path:
            return None
        with open(path) as handle:
            pins = json.load(handle)
        return {k: str(v) for k, v in pins.get("versions", pins).items()}

    def _wanted_versions(self) -> dict[str, str]:
        from serving.scoring import champion_versions

        return dict(self._pinned) if self._pinned else champion_versions(self.settings)

    def reload(self, force: bool = False) -> dict:
        """Load the registry's versions if they differ from those served; swap atomically.

        The new :class:`~serving.scoring.ModelSet` is built completely (downloaded, verified,
        warmed up) before one reference assignment makes it current; a request in flight
        keeps the set it started with.
        """
        from serving.online import empty_batch
        from serving.scoring import load_model_set, score

        with self._reload_lock:
            current = self.models
            wanted = self._wanted_versions()
            if current is not None and current.versions == wanted and not force:
                _metrics()["reloads"].labels(outcome="unchanged").inc()
                return {"reloaded": False, "model_versions": current.versions}
            try:
                fresh = load_model_set(self.settings, self.store, wanted, reuse=current)
                score(fresh, empty_batch(fresh.layout, ["__warmup__"]))
            except Exception:
                _metrics()["reloads"].labels(outcome="failed").inc()
                raise
            self.models = fresh
            self.load_error = None
            _freeze_heap()
            _metrics()["reloads"].labels(outcome="swapped").inc()
            logger.info("serving model versions %s", fresh.versions)
            return {
                "reloaded": True,
                "model_versions": fresh.versions,
                "previous_versions": current.versions if current else None,
            }

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.reload()
            except Exception as exc:
                logger.warning("model reload failed, keeping the current set: %s", exc)
                if self.models is None:
                    self.load_error = _failure(exc)

    def readiness(self) -> tuple[bool, dict]:
        """``(ready, detail)``: models loaded and the online store answering."""
        from serving.online import OnlineStoreUnavailable

        models = self.models
        if models is None:
            return False, {"reason": f"models not loaded: {self.load_error or 'loading'}"}
        detail = {"model_versions": models.versions, "online_read": self.reader.method}
        try:
            self.reader.ping(models.layout)
        except OnlineStoreUnavailable as exc:
            logger.warning("online store unavailable: %s (cause: %s)", exc, exc.__cause__)
            return False, {**detail, "reason": str(exc)}
        return True, detail

    def __is_ready__(self) -> bool:
        return self.readiness()[0]

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self._stop.set()
        self.reader.close()
        if self.triggers is not None:
            self.triggers.publisher.close()
        if self.score_log is not None:
            self.score_log.close(timeout=5)

    # -- endpoints -----------------------------------------------------------------------
    @bentoml.api(route="/score", input_spec=ScoreRequest, output_spec=ScoreResponse)
    async def score(self, customer_ids: list[str], explain: bool = False) -> ScoreResponse:
        """Score customers: propensity and churn (probability, 0-100 score, band), segment,
        feature freshness and model versions; with ``explain``, the reasons and the
        contributions per channel. Unknown customers get cold-start scores, not an error."""
        import anyio
        import anyio.to_thread

        from serving.online import OnlineStoreUnavailable

        models = self.models  # the set this request uses, whatever a reload does meanwhile
        if models is None:
            return _error(503, "not_ready", f"models not loaded: {self.load_error or 'loading'}")
        started = time.perf_counter()
        small = explain is False and len(customer_ids) <= INLINE_IDS
        reader = self.reader
        try:
            live = self.live_features if self.serving_live() else None
            if small and live is not None and live.cached(customer_ids, self.now()):
                # Cached live features need only the time-linear ones recomputed.
                records = self._score_sync(models, customer_ids, False)
            elif small and live is None and reader.method == "direct" and reader.sqlite:
                # A few ids from the local SQLite file take well under a millisecond: handing
                # them to a worker thread and back would cost as much.
                records = self._score_sync(models, customer_ids, False)
            elif small and live is None and reader.reads_async:
                # Redis read on the event loop, without a thread hop; its socket timeouts and
                # this deadline bound a server that stops answering.
                with anyio.fail_after(self.config.timeout):
                    batch = await reader.read_async(models.layout, customer_ids)
                records = self._records(models, batch, False)
            else:
                if self._limiter is None:
                    self._limiter = anyio.CapacityLimiter(self.config.threads)
                with anyio.fail_after(self.config.timeout):
                    # A store that hangs leaves its thread behind but not the request: the
                    # client gets a 503 at the timeout, and the limiter bounds such threads.
                    records = await anyio.to_thread.run_sync(
                        self._score_sync,
                        models,
                        customer_ids,
                        explain,
                        abandon_on_cancel=True,
                        limiter=self._limiter,
                    )
        except TimeoutError:
            _metrics()["unavailable"].inc()
            return _error(
                503,
                "timeout",
                f"features could not be read and scored within {self.config.timeout:g} s",
            )
        except OnlineStoreUnavailable as exc:
            _metrics()["unavailable"].inc()
            logger.warning("online store unavailable: %s (cause: %s)", exc, exc.__cause__)
            return _error(503, "online_store_unavailable", str(exc))
        _metrics()["seconds"].observe(time.perf_counter() - started)
        return ScoreResponse.model_validate({"scores": records, "model_versions": models.versions})

    def _score_sync(self, models, customer_ids: list[str], explain: bool) -> list[dict]:
        return self._records(models, self._batch(models, customer_ids), explain)

    def _records(self, models, batch, explain: bool) -> list[dict]:
        """Score a batch, count its customers in the metrics, and return the JSON records."""
        from serving.scoring import score, to_records

        scores = score(models, batch, explain=explain)
        self._log_scores("score", scores)
        known = int(scores.known.sum())
        counter = _metrics()["customers"]
        if known:
            counter.labels(known="true").inc(known)
        if known < len(scores):
            counter.labels(known="false").inc(len(scores) - known)
        return to_records(scores)

    @bentoml.api(route="/events", input_spec=EventsRequest, output_spec=EventsResponse)
    async def events(self, events: list[dict]) -> EventsResponse:
        """Ingest canonical events live: each is validated like ``omniscore ingest``, stored
        durably in the event store before the answer (exactly once: an id already stored is a
        duplicate), folded into the live state and the customer's features rewritten, so a
        ``/score`` sent after this answer sees it. Rejected events are quarantined with
        their reason. One result per event, in order."""
        import anyio.to_thread

        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.config.threads)
        results = await anyio.to_thread.run_sync(self.accept, events, limiter=self._limiter)
        return EventsResponse.model_validate({"results": results})

    def forget(self, customer_ids: list[str]) -> dict:
        """``POST /admin/forget``: erase the customers everywhere, then drop them from the
        feature cache, so ``/score`` treats them as unknown from the answer on."""
        from data_layer.erasure import forget
        from training.erasure_lineage import versions_trained_on

        score_log = getattr(self, "score_log", None)
        if score_log is not None:  # scores queued before this request are written, then erased
            score_log.flush()
        with self._accept_lock:  # no fold of their events can run in between
            receipt = forget(
                self.settings, customer_ids, models=versions_trained_on, live_state=self.live
            )
            if self.live_features is not None:
                self.live_features.invalidate(customer_ids)
            if self.triggers is not None:  # their score-change state and messages too
                self.triggers.publisher.forget(customer_ids)
        return receipt.as_dict()

    @bentoml.api(route="/admin/forget", input_spec=ForgetRequest, output_spec=ForgetResponse)
    async def admin_forget(self, customer_ids: list[str]) -> ForgetResponse:
        """Erase customers (right to erasure): the event store, quarantine, profile table,
        feature snapshots, Feast online store, live state, streams and logs, with their
        events suppressed from then on and a receipt in the audit log. Requires the admin
        key (``OMNISCORE_ADMIN_KEY``), not the scoring key."""
        import anyio.to_thread

        try:
            receipt = await anyio.to_thread.run_sync(self.forget, customer_ids)
        except ValueError as exc:  # an id that is only blanks
            return _error(400, "bad_request", str(exc))
        except Exception as exc:
            logger.exception("the requested erasure failed part-way; it can be sent again")
            return _error(503, "forget_failed", f"erasure failed: {_failure(exc)}")
        receipt.pop("kind", None)
        return ForgetResponse.model_validate(receipt)

    @bentoml.api(route="/admin/reload", input_spec=ReloadRequest, output_spec=ReloadResponse)
    async def admin_reload(self, force: bool = False) -> ReloadResponse:
        """Check the registry now and swap in the ``champion`` versions if they moved.
        Requires the API key; without one configured the endpoint is refused."""
        import anyio.to_thread

        if not self.config.api_key:
            return _error(
                403, "forbidden", "set OMNISCORE_API_KEY to enable the authenticated reload"
            )
        try:
            result = await anyio.to_thread.run_sync(self.reload, force)
        except Exception as exc:
            logger.exception("the requested reload failed; keeping the current models")
            return _error(503, "reload_failed", f"reload failed: {_failure(exc)}")
        return ReloadResponse.model_validate(result)


def _customers_app():
    """``GET /customers/{customer_id}``: BentoML APIs are POST-only, so the customer view is a
    small FastAPI app mounted under ``/customers`` (it is in the OpenAPI document too)."""
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool

    app = FastAPI(title="omniscore customers", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get(
        "/{customer_id}",
        response_model=CustomerView,
        summary="A customer's complete current context",
        responses={
            404: {"description": "No customer with this id: no event and no profile row."},
            503: {"description": "The models are not loaded yet."},
        },
    )
    async def customer(customer_id: str) -> CustomerView:
        """Every served feature by name, the three scores with bands and the segment, when
        they were computed, and the customer's most recent events across channels; all as of
        the service's clock."""
        service = bentoml.get_current_service()
        if service is None or service.models is None:
            return _error(503, "not_ready", "models not loaded")
        if not customer_id or len(customer_id) > 128:
            return _error(400, "bad_request", "a customer id is 1 to 128 characters")
        view = await run_in_threadpool(service.customer_view, customer_id)
        if view is None:
            return _error(
                404,
                "not_found",
                f"unknown customer {customer_id!r}: the live state has no event and no "
                "profile row for this id",
            )
        return CustomerView.model_validate(view)

    return app


OmniScore.mount_asgi_app(_customers_app(), path="/customers", name="customers")


def _ui_app():
    """The customer page at ``/ui`` (:mod:`serving.ui`)."""
    from serving.ui import ui_app

    return ui_app(bentoml.get_current_service)


OmniScore.mount_asgi_app(_ui_app(), path="/ui", name="ui")

OmniScore.add_asgi_middleware(
    Guard,
    api_key=CONFIG.api_key,
    max_body_bytes=CONFIG.max_body_bytes,
    readiness=_readiness,
    openapi=_published_document,
    max_concurrency=CONFIG.max_concurrency,
    deadline=CONFIG.timeout + 5,
    admin_key=CONFIG.admin_key,
)
