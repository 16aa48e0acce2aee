"""Score-change triggers: a message when a folded event moves a customer across a band or
into another segment.

After ``POST /events`` (or ``omniscore stream --triggers``) folds a batch, the customers it
touched are scored again and each (customer, model) is compared with the last state
published for it. A change appends one message to the Redis Stream
``Settings.trigger_stream`` (``omniscore:score-changes``) with fields

``change_id`` (a hash of customer, model and causing event: the same change always has the
same id), ``customer_id``, ``model`` (``propensity``, ``churn`` or ``segments``),
``version``, ``old_value``, ``new_value``, ``old_band``, ``new_band`` (for segments: the
segment ids and names), ``event_id`` (the newest event of the customer in the batch),
``at`` (the service clock's instant of the fold, UTC ISO 8601).

Exactly once per change: the comparison and the publication are one Lua script run
atomically by Redis, which keeps per customer a hash ``<stream>:last:<customer>`` of
``model -> {band, value, event_id}`` and appends to the stream only when the band moved, then
records the new state in the same step. Redelivering an event (its fold is a duplicate, the
scores are those already published) or replaying a batch after a consumer crashed between the
fold and the publication finds the state it left, or publishes the change it missed, never a
second message. Without a published state for a pair, the scores from just before the fold
are its baseline (the first event of a customer the service has not seen publishes when it
moves the band from the cold-start one).

Webhooks (``Settings.trigger_webhooks``) get each message as JSON from a background thread,
with retries and exponential backoff; a URL whose deliveries keep failing is parked with its
reason (kept in ``<stream>:parked``) and skipped from then on. Nothing here blocks scoring: a
full webhook queue drops the message for the webhooks (the stream has it), and a Redis
failure is logged, not raised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from data_layer.settings import Settings, redact

logger = logging.getLogger("omniscore.triggers")
MODELS = ("propensity", "churn", "segments")
BAND_NAMES = ("low", "medium", "high")
PUBLISHED = {"accepted", "duplicate"}
"""Event statuses whose customers are compared: a duplicate may be the redelivery of an
event whose change was never published."""

_PUBLISH = """
local last = redis.call('HGET', KEYS[1], ARGV[1])
local band = ARGV[5]
local value = ARGV[6]
if last then
  local state = cjson.decode(last)
  if state['event_id'] == ARGV[4] then
    return false
  end
  band = state['band']
  value = state['value']
end
local new_state = cjson.encode({band = ARGV[2], value = ARGV[3], event_id = ARGV[4]})
redis.call('HSET', KEYS[1], ARGV[1], new_state)
if band == ARGV[2] then
  return false
end
local fields = {'old_band', band, 'old_value', value}
for i = 7, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
return {id, band, value}
"""
"""KEYS: state hash, stream. ARGV: model, new band, new value, causing event, baseline band
and value (used when the pair has no state), then the message's other fields."""


class TriggerConfigError(ValueError):
    """The trigger settings cannot work (unknown model, bad thresholds)."""


@dataclass(frozen=True)
class TriggerRules:
    """Which changes publish (``models``) and, optionally, the band boundaries on the score."""

    models: frozenset[str]
    thresholds: tuple[float, float] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> TriggerRules:
        text = (settings.triggers or "").strip().lower()
        models = (
            frozenset()
            if text in ("", "off", "none")
            else frozenset(part.strip() for part in text.split(",") if part.strip())
        )
        unknown = sorted(models - set(MODELS))
        if unknown:
            raise TriggerConfigError(
                f"OMNISCORE_TRIGGERS: unknown {unknown}; use a comma list of {MODELS} or off"
            )
        thresholds = None
        if settings.trigger_thresholds:
            try:
                low, high = (float(x) for x in settings.trigger_thresholds.split(","))
            except ValueError:
                raise TriggerConfigError(
                    "OMNISCORE_TRIGGER_THRESHOLDS: two scores 0-100, e.g. 70,90; got "
                    f"{settings.trigger_thresholds!r}"
                ) from None
            if not 0 <= low < high <= 100:
                raise TriggerConfigError(
                    f"OMNISCORE_TRIGGER_THRESHOLDS: need 0 <= low < high <= 100, got {low}, {high}"
                )
            thresholds = (low, high)
        return cls(models=models, thresholds=thresholds)

    def band(self, score: float, served: str) -> str:
        """The band a trigger compares: the served one, or from the configured thresholds."""
        if self.thresholds is None:
            return str(served)
        low, high = self.thresholds
        return BAND_NAMES[0] if score < low else BAND_NAMES[1] if score < high else BAND_NAMES[2]

    def states(self, scores) -> dict[tuple[str, str], tuple[str, str, str]]:
        """``(customer, model) -> (band, value, version)`` of :class:`serving.scoring.Scores`."""
        out = {}
        for i, customer in enumerate(scores.customer_ids):
            for model in ("propensity", "churn"):
                if model in self.models:
                    value = float(scores.score[model][i])
                    band = self.band(value, scores.band[model][i])
                    out[(customer, model)] = (band, f"{value:.4f}", scores.versions[model])
            if "segments" in self.models:
                out[(customer, "segments")] = (
                    str(scores.segment_name[i]),
                    str(int(scores.segment_id[i])),
                    scores.versions["segments"],
                )
        return out


def change_id(customer: str, model: str, event_id: str) -> str:
    """The idempotency key of a change: the same customer, model and cause, the same id."""
    return hashlib.sha256(f"{customer}\x1f{model}\x1f{event_id}".encode()).hexdigest()[:32]


def causes_of(records: Sequence, results: Sequence) -> dict[str, str]:
    """Customer -> the id of its last accepted (or duplicate) event in a folded batch."""
    causes: dict[str, str] = {}
    for record, result in zip(records, results, strict=False):
        if result.status in PUBLISHED and isinstance(record, Mapping):
            customer = record.get("customer_id")
            if isinstance(customer, str) and result.event_id:
                causes[customer] = str(result.event_id)
    return causes


def trigger_url(settings: Settings) -> str | None:
    """Redis URL of the score-change stream (None: no Redis configured, triggers off)."""
    if settings.trigger_redis:
        return settings.trigger_redis
    if settings.stream_redis:
        return settings.stream_redis
    spec = settings.online_store.strip()
    if spec.startswith(("redis://", "rediss://")):
        return spec.split("?", 1)[0]
    return None


class TriggerPublisher:
    """Compares scores with the last published state and appends changes (see module doc)."""

    def __init__(
        self, settings: Settings, client=None, webhooks: WebhookSender | None = None
    ) -> None:
        self.rules = TriggerRules.from_settings(settings)
        self.stream = settings.trigger_stream
        if client is None:
            import redis

            url = trigger_url(settings)
            if url is None:
                raise TriggerConfigError(
                    "triggers need Redis: set OMNISCORE_TRIGGER_REDIS or OMNISCORE_STREAM_REDIS"
                )
            client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.client = client
        self._script = client.register_script(_PUBLISH)
        self.webhooks = webhooks

    @classmethod
    def open(cls, settings: Settings) -> TriggerPublisher | None:
        """The publisher of the settings, or None when triggers are off or have no Redis."""
        rules = TriggerRules.from_settings(settings)
        if not rules.models or trigger_url(settings) is None:
            return None
        urls = [u.strip() for u in (settings.trigger_webhooks or "").split(",") if u.strip()]
        webhooks = None
        if urls:
            webhooks = WebhookSender(urls, parked_key=f"{settings.trigger_stream}:parked")
        publisher = cls(settings, webhooks=webhooks)
        if webhooks is not None:
            webhooks.client = publisher.client
            webhooks.start()
        return publisher

    def state_key(self, customer: str) -> str:
        return f"{self.stream}:last:{customer}"

    def publish(self, before, after, causes: Mapping[str, str], at) -> list[dict]:
        """Publish the changes between the published state (else ``before``, the scores just
        before the fold) and ``after`` for the customers of ``causes``; returns them."""
        old = self.rules.states(before) if before is not None else {}
        stamp = at.isoformat().replace("+00:00", "Z")
        published = []
        for (customer, model), (band, value, version) in self.rules.states(after).items():
            cause = causes.get(customer)
            if cause is None:
                continue
            base_band, base_value, _ = old.get((customer, model), ("", "", ""))
            fields = {
                "change_id": change_id(customer, model, cause),
                "customer_id": customer,
                "model": model,
                "version": version,
                "new_band": band,
                "new_value": value,
                "event_id": cause,
                "at": stamp,
            }
            args = [model, band, value, cause, base_band, base_value]
            for key, item in fields.items():
                args += [key, item]
            added = self._script(keys=[self.state_key(customer), self.stream], args=args)
            if not added:
                continue
            message_id, old_band, old_value = (_text(x) for x in added)
            message = {"id": message_id, **fields, "old_band": old_band, "old_value": old_value}
            published.append(message)
            if self.webhooks is not None:
                self.webhooks.submit(message)
        return published

    def baseline(self, before) -> None:
        """Record ``before`` (the scores just before a fold) as the published state of every
        pair that has none, so that a fold whose publication is lost to a crash is published
        when its batch is replayed: the replay's fold is a duplicate and its own scores from
        before the fold already hold the change."""
        pipe = self.client.pipeline(transaction=False)
        for (customer, model), (band, value, _) in self.rules.states(before).items():
            state = json.dumps({"band": band, "value": value, "event_id": ""})
            pipe.hsetnx(self.state_key(customer), model, state)
        pipe.execute()

    def forget(self, customers: Sequence[str]) -> int:
        """Erase customers: their published state and their messages in the stream (scanned
        in pages); returns the messages deleted."""
        if not customers:
            return 0
        wanted = {c.encode() for c in customers}
        self.client.delete(*[self.state_key(c) for c in customers])
        deleted, start = 0, "-"
        while True:
            page = self.client.xrange(self.stream, start, "+", count=1000)
            doomed = [mid for mid, fields in page if fields.get(b"customer_id") in wanted]
            if doomed:
                deleted += self.client.xdel(self.stream, *doomed)
            if len(page) < 1000:
                return deleted
            start = "(" + _text(page[-1][0])

    def close(self) -> None:
        if self.webhooks is not None:
            self.webhooks.stop()


def read_changes(client, stream: str, start: str = "-") -> list[dict]:
    """Every message of the score-change stream from ``start`` on, as dicts (with ``id``)."""
    return [
        {"id": _text(mid), **{_text(k): _text(v) for k, v in fields.items()}}
        for mid, fields in client.xrange(stream, start, "+")
    ]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclass
class WebhookSender:
    """POSTs messages to webhook URLs from one daemon thread (retries, backoff, parking)."""

    urls: list[str]
    attempts: int = 4
    backoff: float = 0.5
    timeout: float = 5.0
    park_after: int = 3
    """Consecutive messages a URL failed (every attempt) before it is parked."""
    parked_key: str | None = None
    client: object = None
    capacity: int = 10_000
    parked: dict[str, str] = field(default_factory=dict)
    delivered: int = 0
    dropped: int = 0
    _failures: dict[str, int] = field(default_factory=dict)
    _queue: queue.Queue = field(default=None)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._queue = queue.Queue(maxsize=self.capacity)
        self._thread = threading.Thread(target=self._run, name="omniscore-webhooks", daemon=True)
        self._thread.start()

    def submit(self, message: dict) -> None:
        """Queue a message; never blocks (a full queue drops it and counts it)."""
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self.dropped += 1
            logger.warning("webhook queue full: change %s not sent to webhooks", message["id"])

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every queued message has been handled (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.02)
        return False

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout) as http:
            while True:
                message = self._queue.get()
                try:
                    if message is None:
                        return
                    for url in self.urls:
                        if url not in self.parked:
                            self._deliver(http, url, message)
                finally:
                    self._queue.task_done()

    def _deliver(self, http, url: str, message: dict) -> None:
        reason = ""
        for attempt in range(self.attempts):
            try:
                response = http.post(url, json=message)
                if response.status_code < 300:
                    self._failures[url] = 0
                    self.delivered += 1
                    return
                reason = f"HTTP {response.status_code}"
            except Exception as exc:  # a webhook's failure must never reach the scorer
                reason = f"{type(exc).__name__}: {redact(str(exc))}"
            if attempt + 1 < self.attempts:
                time.sleep(self.backoff * 2**attempt)
        failures = self._failures.get(url, 0) + 1
        self._failures[url] = failures
        logger.warning("webhook %s failed %d times for change %s: %s", redact(url),
                       self.attempts, message["id"], reason)  # fmt: skip
        if failures >= self.park_after:
            self.parked[url] = f"{failures} deliveries in a row failed; last: {reason}"
            logger.error("webhook %s parked: %s", redact(url), self.parked[url])
            if self.client is not None and self.parked_key:
                try:
                    self.client.hset(self.parked_key, url, self.parked[url])
                except Exception:
                    logger.exception("could not record the parked webhook in Redis")


class ScoreTriggers:
    """Scores the customers of a fold before and after it and publishes their changes.

    ``models`` returns the current :class:`~serving.scoring.ModelSet` (None: not loaded, no
    triggers); ``features(models, customers, at)`` returns their
    :class:`~serving.online.FeatureBatch` as served at ``at``.
    """

    def __init__(self, publisher: TriggerPublisher, models: Callable, features: Callable) -> None:
        self.publisher = publisher
        self.models = models
        self.features = features

    def before(self, records: Sequence, at):
        """Scores of the batch's customers just before its fold (None if no models)."""
        try:
            models = self.models()
            return self._score(models, records, at) if models is not None else None
        except Exception:
            logger.exception("scoring before the fold failed; changes use the published state")
            return None

    def _score(self, models, records: Sequence, at):
        from serving.scoring import score

        customers = sorted({
            r["customer_id"] for r in records
            if isinstance(r, Mapping) and isinstance(r.get("customer_id"), str)
            and 0 < len(r["customer_id"]) <= 128
        })  # fmt: skip
        if not customers:
            return None
        before = score(models, self.features(models, customers, at))
        self.publisher.baseline(before)
        return before

    def after(self, records: Sequence, report, at, before) -> list[dict]:
        """Publish the changes the fold made; a failure is logged, scoring goes on."""
        from serving.scoring import score

        try:
            models = self.models()
            causes = causes_of(records, report.results)
            if models is None or not causes:
                return []
            after = score(models, self.features(models, sorted(causes), at))
            return self.publisher.publish(before, after, causes, at)
        except Exception:
            logger.exception("publishing score changes failed; the events are folded")
            return []

    def around(self, records: list, fold: Callable, at):
        """``fold()`` between the two scorings (the stream consumer's ``around_fold``)."""
        before = self.before(records, at)
        report = fold()
        self.after(records, report, at, before)
        return report


def stream_triggers(settings: Settings, state, clock=None) -> Callable | None:
    """The ``around_fold`` of ``omniscore stream --triggers``: the champions loaded from the
    registry, features live from ``state`` as of ``clock`` (else now); None when triggers are
    off or have no Redis."""
    from data_layer.feast_store import feature_store
    from data_layer.live_ingest import utc_now
    from serving.live import LiveFeatures
    from serving.scoring import champion_versions, load_model_set

    publisher = TriggerPublisher.open(settings)
    if publisher is None:
        return None
    models = load_model_set(settings, feature_store(settings), champion_versions(settings))
    live = LiveFeatures(state, settings)

    def features(model_set, customers, at):
        live.invalidate(customers)  # the fold just changed them
        return live.batch(model_set.layout, customers, at)

    triggers = ScoreTriggers(publisher, lambda: models, features)

    def around(records, fold):
        return triggers.around(records, fold, utc_now(clock))

    return around
