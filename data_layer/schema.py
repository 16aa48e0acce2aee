"""The canonical event schema: one row per customer interaction, on any channel.

Every source (the synthetic generator, ``omniscore ingest``) writes exactly these columns, so
the feature pipeline reads one shape. ``../shared/DESIGN.md`` is the contract this mirrors.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.core.util.hashing import combine_hash_arrays


class Family(StrEnum):
    """Signal families of the omnichannel literature; every event type belongs to one."""

    BEHAVIORAL = "behavioral"
    TRANSACTIONAL = "transactional"
    ATTITUDINAL = "attitudinal"
    CONTEXTUAL = "contextual"


CHANNELS: tuple[str, ...] = ("web", "app", "email", "store", "call_center", "social", "sms", "push")
"""Default channel vocabulary (configurable per ingest mapping)."""

ONLINE_CHANNELS: tuple[str, ...] = ("web", "app", "social", "email", "sms", "push")
"""Channels counted as online for the online/offline revenue share; the rest are offline."""

PURCHASE_CHANNELS: tuple[str, ...] = ("web", "app", "store", "call_center")
"""Channels where orders are placed; transaction features are computed for each of them."""

EVENT_TYPES: dict[str, Family] = {
    # behavioral: what the customer does
    "page_view": Family.BEHAVIORAL,
    "product_view": Family.BEHAVIORAL,
    "search": Family.BEHAVIORAL,
    "add_to_cart": Family.BEHAVIORAL,
    "app_open": Family.BEHAVIORAL,
    "email_open": Family.BEHAVIORAL,
    "email_click": Family.BEHAVIORAL,
    "push_open": Family.BEHAVIORAL,
    "sms_click": Family.BEHAVIORAL,
    "social_engagement": Family.BEHAVIORAL,
    "ad_click": Family.BEHAVIORAL,
    "store_visit": Family.BEHAVIORAL,
    # transactional: money changing hands
    "purchase": Family.TRANSACTIONAL,
    "return": Family.TRANSACTIONAL,
    # attitudinal: what the customer thinks
    "review": Family.ATTITUDINAL,
    "survey_response": Family.ATTITUDINAL,
    "support_contact": Family.ATTITUDINAL,
    "complaint": Family.ATTITUDINAL,
    # contextual: what the business sent and the circumstances, not a customer action
    "email_send": Family.CONTEXTUAL,
    "push_send": Family.CONTEXTUAL,
    "sms_send": Family.CONTEXTUAL,
    "ad_impression": Family.CONTEXTUAL,
    "other": Family.CONTEXTUAL,
}
"""Documented event-type vocabulary, each type tagged with its signal family."""

CUSTOMER_INITIATED_FAMILIES = frozenset(
    {Family.BEHAVIORAL, Family.TRANSACTIONAL, Family.ATTITUDINAL}
)
"""Families whose events are the customer's own actions (activity, engagement, churn)."""

REQUIRED_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "event_timestamp",
    "channel",
    "event_type",
    "amount",
)
OPTIONAL_COLUMNS: tuple[str, ...] = ("session_id", "device", "rating", "campaign_id")

EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("event_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("family", pa.string(), nullable=False),
        pa.field("amount", pa.float64()),
        pa.field("session_id", pa.string()),
        pa.field("device", pa.string()),
        pa.field("rating", pa.float64()),
        pa.field("campaign_id", pa.string()),
    ]
)
"""Arrow schema of the canonical event store (``family`` is derived from ``event_type``)."""

CUSTOMER_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("signup_date", pa.timestamp("us", tz="UTC")),
        pa.field("region", pa.string()),
        pa.field("age_band", pa.string()),
        pa.field("loyalty_tier", pa.string()),
        pa.field("preferred_device", pa.string()),
    ]
)
"""Arrow schema of the customers (profile) table."""

SOURCE_COLUMNS = (
    "customer_id",
    "event_timestamp",
    "channel",
    "event_type",
    "amount",
    "session_id",
    "device",
    "rating",
    "campaign_id",
)
"""The columns a source event carries: what a client sends, and what a computed event id
hashes."""
_HEX_PAIRS = np.array([f"{i:02x}".encode() for i in range(256)], dtype="S2")


def family_of(event_types: pd.Series) -> pd.Series:
    """The signal family of each event type (NaN for a type outside the vocabulary)."""
    return event_types.map({k: v.value for k, v in EVENT_TYPES.items()})


def _is_string_categorical(values: pd.Series) -> bool:
    dtype = values.dtype
    return isinstance(dtype, pd.CategoricalDtype) and (
        len(dtype.categories) == 0 or pd.api.types.is_string_dtype(dtype.categories.dtype)
    )


EVENT_ID_HEX_DIGITS = 32
"""Width of a computed ``event_id``: 128 bits as lowercase hex. At 10^11 events the chance
that any two distinct events share an id is about 10^-17 (64 bits, the width before issue 12,
gave about 3% at 10^9). Stores written with 16-digit ids are migrated
(:func:`data_layer.event_store.migrate_event_ids`)."""
LEGACY_EVENT_ID_HEX_DIGITS = 16
"""Width of the ids computed before issue 12 (the first half of today's, for the same row)."""

# The second 64 bits of an id: strings hashed with another SipHash key, numbers re-mixed with
# a salt, and the columns combined in reverse order, so the halves are independent hashes.
_SECOND_KEY = "omniscore-ids-v2"
_SALT = np.uint64(0x9E3779B97F4A7C15)
_MISSING_HASH = np.iinfo(np.uint64).max  # how pandas hashes a missing value
_SOURCE_ID_TAG = "omniscore:source-event-id"


def _code_columns(events: pd.DataFrame) -> dict[str, np.ndarray | tuple[np.ndarray, np.ndarray]]:
    """A frame's hashed columns in the form :func:`event_id_hashes_from_codes` takes."""
    n = len(events)
    columns: dict[str, np.ndarray | tuple[np.ndarray, np.ndarray]] = {}
    for col in SOURCE_COLUMNS:
        values = events[col] if col in events else pd.Series(None, index=events.index)
        if col == "event_timestamp":
            # Hash nanoseconds whatever the input resolution (Parquet reads back microseconds).
            columns[col] = (
                pd.to_datetime(values, utc=True).astype("datetime64[ns, UTC]").astype("int64")
            ).to_numpy()
        elif col in ("amount", "rating"):
            columns[col] = pd.to_numeric(values).astype("float64").to_numpy()
        elif _is_string_categorical(values):
            categories = values.cat.categories.to_numpy(dtype=object)
            columns[col] = (values.cat.codes.to_numpy(dtype=np.int64), categories)
        else:
            codes, uniques = pd.factorize(values.astype("string"), use_na_sentinel=True)
            columns[col] = (
                np.asarray(codes, dtype=np.int64).reshape(n),
                np.asarray(uniques.astype(object), dtype=object),
            )
    return columns


def event_id_hashes(events: pd.DataFrame) -> np.ndarray:
    """The 128-bit content hash behind each row's ``event_id``: uint64 array of shape (n, 2)."""
    return event_id_hashes_from_codes(_code_columns(events))


def event_id_hashes_from_codes(
    columns: dict[str, np.ndarray | tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """:func:`event_id_hashes` for data held as codes: the same hashes, without pandas frames.

    ``columns`` maps every hashed column to its values: ``event_timestamp`` as int64 UTC
    nanoseconds, ``amount`` and ``rating`` as float64 (NaN when absent), and each string
    column as ``(codes, values)``: int codes into an array of distinct strings, -1 when absent.
    Strings are hashed once per distinct value, which is what makes bulk generation fast.
    The first half is the 64-bit hash ids were made of before issue 12.
    """
    first: list[np.ndarray] = []
    second: list[np.ndarray] = []
    for col in SOURCE_COLUMNS:
        value = columns[col]
        if isinstance(value, tuple):
            codes, strings = value
            codes = np.asarray(codes)
            strings = np.asarray(strings, dtype=object)
            for out, key in ((first, "0123456789123456"), (second, _SECOND_KEY)):
                hashed = pd.util.hash_array(strings, hash_key=key, categorize=False)
                per_row = (
                    hashed[np.maximum(codes, 0)] if len(hashed) else np.zeros(len(codes), np.uint64)
                )
                per_row[codes < 0] = _MISSING_HASH
                out.append(per_row)
        else:
            hashed = pd.util.hash_array(np.asarray(value))
            first.append(hashed)
            second.append(pd.util.hash_array(hashed ^ _SALT))
    n = len(SOURCE_COLUMNS)
    return np.column_stack(
        [combine_hash_arrays(iter(first), n), combine_hash_arrays(iter(reversed(second)), n)]
    )


def source_id_hashes(source_ids: pd.Series) -> np.ndarray:
    """128-bit hashes of a source's own event ids (the ``event_id`` column of a mapping).

    Tagged so that they never equal a content hash of the same text; (n, 2) uint64.
    """
    text = np.asarray(source_ids.astype("string").astype(object), dtype=object)
    tag = np.full(len(text), _SOURCE_ID_TAG, dtype=object)
    halves = []
    for key in ("0123456789123456", _SECOND_KEY):
        parts = [pd.util.hash_array(a, hash_key=key, categorize=False) for a in (tag, text)]
        halves.append(combine_hash_arrays(iter(parts), 2))
    return np.column_stack(halves)


def ranked_repeats(hashes: np.ndarray) -> np.ndarray:
    """Content hashes made distinct for repeated content within one source.

    The first row of a content keeps its hash (the id a single such row gets), the k-th
    repeat (k >= 1, in row order) gets the hash combined with k. Two identical lines of a log
    are two purchases and stay two events, while re-reading the same file gives the same ids
    again, so re-ingesting it adds nothing. ``hashes`` is (n, 2) uint64 from
    :func:`event_id_hashes`; the first half of a repeat's id is what the generator gave
    repeats before ids were widened.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    if len(hashes) == 0:
        return hashes.copy()
    keys = pd.DataFrame({"first": hashes[:, 0], "second": hashes[:, 1]})
    rank = keys.groupby(["first", "second"], sort=False).cumcount().to_numpy(dtype=np.uint64)
    repeat = rank > 0
    out = hashes.copy()
    if repeat.any():
        k = rank[repeat]
        out[repeat, 0] = combine_hash_arrays(iter([hashes[repeat, 0], pd.util.hash_array(k)]), 2)
        out[repeat, 1] = combine_hash_arrays(
            iter([hashes[repeat, 1], pd.util.hash_array(k ^ _SALT)]), 2
        )
    return out


def _hex32(hashes: np.ndarray) -> np.ndarray:
    as_bytes = np.ascontiguousarray(hashes, dtype=np.uint64).astype(">u8").view(np.uint8)
    return _HEX_PAIRS[as_bytes.reshape(-1, 16)].view(f"S{EVENT_ID_HEX_DIGITS}").ravel()


def event_ids_of(hashes: np.ndarray) -> np.ndarray:
    """``event_id`` strings (32 hex digits) of (n, 2) hashes."""
    return _hex32(hashes).astype(str)


def compute_event_ids(events: pd.DataFrame, *, distinct_repeats: bool = False) -> np.ndarray:
    """Deterministic 32-hex-digit ids from each row's content, vectorised.

    Re-ingesting a file therefore produces the same ids, which makes ingest idempotent. With
    ``distinct_repeats`` (what ``omniscore ingest`` asks for) identical rows get distinct ids
    by their rank among the frame's rows (:func:`ranked_repeats`); without it, identical
    rows share an id and count as one event (the live path: a redelivered message).
    """
    hashes = event_id_hashes(events)
    if distinct_repeats:
        hashes = ranked_repeats(hashes)
    return event_ids_of(hashes)


def is_legacy_event_id(ids: pd.Series) -> np.ndarray:
    """Which ids have the shape of a pre-issue-12 computed id (16 lowercase hex digits)."""
    text = ids.astype("string")
    return text.str.fullmatch(r"[0-9a-f]{16}").fillna(False).to_numpy(dtype=bool)


def event_id_array(hashes: np.ndarray) -> pa.Array:
    """Event ids as an Arrow string array from :func:`event_id_hashes` (no Python strings)."""
    hexed = np.ascontiguousarray(_hex32(hashes))
    width = np.int32(EVENT_ID_HEX_DIGITS)
    offsets = np.arange(len(hexed) + 1, dtype=np.int32) * width
    return pa.Array.from_buffers(
        pa.string(), len(hexed), [None, pa.py_buffer(offsets), pa.py_buffer(hexed)]
    )


def to_canonical_table(events: pd.DataFrame) -> pa.Table:
    """Arrow table in :data:`EVENT_SCHEMA` order, adding ``family`` and ``event_id``.

    The frame must already hold valid canonical values (ingest validates first).
    """
    frame = events.copy()
    for col in OPTIONAL_COLUMNS:
        if col not in frame:
            frame[col] = None
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    frame["family"] = family_of(frame["event_type"])
    if "event_id" not in frame:
        frame["event_id"] = compute_event_ids(frame)
    return pa.Table.from_pandas(
        frame[list(EVENT_SCHEMA.names)], schema=EVENT_SCHEMA, preserve_index=False
    )
