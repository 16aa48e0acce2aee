"""``omniscore stream``: a Redis Stream consumer group feeding :func:`accept_events`.

Producers add one canonical event per message, as JSON in the field ``event``::

    XADD omniscore:events * event '{"customer_id": "C000042", "event_timestamp": ...}'

Each consumer of the group (``Settings.stream_name``; group ``omniscore`` by default) loops:

1. messages delivered to it earlier and never acknowledged (its own pending list: a restart
   under the same consumer name picks them up first);
2. messages another consumer took and left unacknowledged for ``claim_idle_ms``
   (``XAUTOCLAIM``: that consumer is taken for dead);
3. new messages (``XREADGROUP ... >``), blocking up to ``block_ms``.

A batch goes through :func:`data_layer.live_ingest.accept_events` (validated, rejects
quarantined, the rest stored durably and exactly once, folded into the live state) and is
acknowledged (``XACK``) only after that returns. Delivery is at least once; the effect is
exactly once because the store deduplicates by ``event_id`` under its cross-process lock and
folding is idempotent by ``event_id``. A consumer killed at any point (even between the
durable write and the acknowledgement) loses nothing: its messages stay pending and are
processed again, as duplicates where they were stored already. Several consumers at once
therefore give exact results as well.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from data_layer.live_ingest import AcceptReport, OnlineFeatureWriter, accept_events, utc_now
from data_layer.settings import Settings, redact

logger = logging.getLogger("omniscore.stream")
DEFAULT_GROUP = "omniscore"
EVENT_FIELD = b"event"
NOT_JSON = "message field 'event' is not JSON: {error}"
NO_EVENT_FIELD = "message has no 'event' field (fields: {fields})"


class StreamConfigError(ValueError):
    """The stream cannot be consumed as configured (no Redis URL, bad URL)."""


def stream_url(settings: Settings) -> str:
    """The Redis URL of the event stream: ``stream_redis``, else a Redis online store's URL."""
    if settings.stream_redis:
        return settings.stream_redis
    spec = settings.online_store.strip()
    if spec.startswith(("redis://", "rediss://")):
        return spec.split("?", 1)[0]
    raise StreamConfigError(
        "omniscore stream needs Redis: set OMNISCORE_STREAM_REDIS (e.g. redis://127.0.0.1:6379/0)"
        " or use a Redis online store (OMNISCORE_ONLINE_STORE)"
    )


def redis_client(settings: Settings):
    """A redis-py client for the event stream."""
    import redis

    url = stream_url(settings)
    try:
        return redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=10)
    except ValueError as exc:
        raise StreamConfigError(f"invalid stream Redis URL {redact(url)!r}: {exc}") from exc


def default_consumer_name() -> str:
    """``<host>-<pid>``: unique per running process."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class ConsumerStats:
    """Counts since the consumer started."""

    batches: int = 0
    messages: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    claimed: int = 0
    """Messages taken over from idle consumers (XAUTOCLAIM)."""
    started: float = field(default_factory=time.monotonic)

    def add(self, report: AcceptReport, messages: int) -> None:
        self.batches += 1
        self.messages += messages
        self.accepted += report.accepted
        self.duplicates += report.duplicates
        self.rejected += report.rejected

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "started"}
        out["seconds"] = round(time.monotonic() - self.started, 3)
        return out


def decode_message(fields: dict) -> Any:
    """The event of one stream message: a dict, or a description of why it is not one.

    Whatever is not an event object is passed on as text, so that ``accept_events`` rejects
    and quarantines it with its content rather than it being dropped.
    """
    raw = fields.get(EVENT_FIELD)
    if raw is None:
        names = ", ".join(sorted(k.decode("utf-8", "replace") for k in fields)) or "none"
        return NO_EVENT_FIELD.format(fields=names)
    try:
        return json.loads(raw)
    except ValueError as exc:
        return NOT_JSON.format(error=exc) + f": {raw[:200].decode('utf-8', 'replace')}"


class StreamConsumer:
    """One member of the consumer group (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        state: Any = None,
        online: OnlineFeatureWriter | None = None,
        group: str = DEFAULT_GROUP,
        consumer: str | None = None,
        batch_size: int = 500,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        clock: pd.Timestamp | None = None,
        client=None,
        around_fold: Callable[[list, Callable[[], AcceptReport]], AcceptReport] | None = None,
    ) -> None:
        if batch_size < 1 or block_ms < 0 or claim_idle_ms < 0:
            raise ValueError("batch_size must be positive; block_ms and claim_idle_ms >= 0")
        self.settings = settings
        self.state = state
        self.online = online
        self.stream = settings.stream_name
        self.group = group
        self.consumer = consumer or default_consumer_name()
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.clock = clock
        self.client = client or redis_client(settings)
        # A layer above may wrap each fold (``around_fold(records, fold)`` calls ``fold()``
        # once and returns its report): the serving layer scores before and after it to
        # publish score changes (serving.triggers), which this layer cannot know about.
        self.around_fold = around_fold
        self.stats = ConsumerStats()
        self._own_pending_done = False
        self._claim_cursor = "0-0"
        self._last_claim = 0.0

    def ensure_group(self) -> None:
        """Create the stream and the group if missing (the group starts at the beginning)."""
        import redis

        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _own_pending(self) -> list:
        """Messages delivered to this consumer name and never acknowledged."""
        reply = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: "0"}, count=self.batch_size
        )
        messages = reply[0][1] if reply else []
        if not messages:
            self._own_pending_done = True
        return messages

    def _claim(self) -> list:
        """Messages idle in a dead consumer's pending list, taken over (XAUTOCLAIM)."""
        reply = self.client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id=self._claim_cursor,
            count=self.batch_size,
        )
        cursor, messages = reply[0], reply[1]
        self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        # Entries deleted from the stream come back as None fields: nothing to process.
        messages = [(mid, fields) for mid, fields in messages if fields is not None]
        self.stats.claimed += len(messages)
        return messages

    def _new(self, block_ms: int | None) -> list:
        reply = self.client.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=self.batch_size,
            block=block_ms,
        )
        return reply[0][1] if reply else []

    def poll(self, block: bool = True) -> int:
        """Process one batch if there is one; returns the number of messages handled."""
        messages = []
        if not self._own_pending_done:
            messages = self._own_pending()
        if not messages and time.monotonic() - self._last_claim >= self.claim_idle_ms / 2000:
            self._last_claim = time.monotonic()
            messages = self._claim()
        if not messages:
            messages = self._new(self.block_ms if block else None)
        if not messages:
            return 0
        self.process(messages)
        return len(messages)

    def process(self, messages: list) -> AcceptReport:
        """Accept a batch of ``(id, fields)`` messages, then acknowledge them all."""
        records = [decode_message(fields) for _, fields in messages]
        now = utc_now(self.clock)

        def fold() -> AcceptReport:
            return accept_events(
                self.settings,
                records,
                now,
                self.state,
                online=self.online,
                source=f"stream:{self.stream}",
            )

        report = fold() if self.around_fold is None else self.around_fold(records, fold)
        # Only now is every event of the batch durable (stored or quarantined) and folded.
        self.client.xack(self.stream, self.group, *[mid for mid, _ in messages])
        self.stats.add(report, len(messages))
        return report

    def run(
        self,
        *,
        idle_exit_seconds: float | None = None,
        max_messages: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> ConsumerStats:
        """Consume until stopped, until no message came for ``idle_exit_seconds``, or after
        ``max_messages``; returns the counts."""
        self.ensure_group()
        idle_since = time.monotonic()
        while not should_stop():
            handled = self.poll()
            now = time.monotonic()
            if handled:
                idle_since = now
            elif idle_exit_seconds is not None and now - idle_since >= idle_exit_seconds:
                # Before leaving, take over what idle consumers left behind, so an
                # ``--idle-exit`` run drains the group (XAUTOCLAIM obeys claim_idle_ms).
                if not self._drain_claims():
                    break
                idle_since = now
            if max_messages is not None and self.stats.messages >= max_messages:
                break
        return self.stats

    def _drain_claims(self) -> bool:
        pending = self.client.xpending(self.stream, self.group)
        if not pending or not pending.get("pending"):
            return False
        self._claim_cursor = "0-0"
        messages = self._claim()
        if messages:
            self.process(messages)
            return True
        # Pending, but not idle for claim_idle_ms yet: wait for them to become claimable.
        time.sleep(min(1.0, self.claim_idle_ms / 1000))
        return True
