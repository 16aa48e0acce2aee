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

_HASHED_COLUMNS = (
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
_HEX_PAIRS = np.array([f"{i:02x}".encode() for i in range(256)], dtype="S2")


def family_of(event_types: pd.Series) -> pd.Series:
    """The signal family of each event type (NaN for a type outside the vocabulary)."""
    return event_types.map({k: v.value for k, v in EVENT_TYPES.items()})


def _is_string_categorical(values: pd.Series) -> bool:
    dtype = values.dtype
    return isinstance(dtype, pd.CategoricalDtype) and (
        len(dtype.categories) == 0 or pd.api.types.is_string_dtype(dtype.categories.dtype)
    )


def event_id_hashes(events: pd.DataFrame) -> np.ndarray:
    """The 64-bit content hash behind each row's ``event_id`` (uint64, vectorised)."""
    content = pd.DataFrame(
        {
            col: (events[col] if col in events else pd.Series(None, index=events.index))
            for col in _HASHED_COLUMNS
        }
    )
    # Hash nanoseconds whatever the input resolution (Parquet reads back microseconds).
    content["event_timestamp"] = (
        pd.to_datetime(content["event_timestamp"], utc=True)
        .astype("datetime64[ns, UTC]")
        .astype("int64")
    )
    for col in ("amount", "rating"):
        content[col] = pd.to_numeric(content[col]).astype("float64")
    for col in ("customer_id", "channel", "event_type", "session_id", "device", "campaign_id"):
        # A categorical of strings hashes exactly like the strings, and much faster.
        if not _is_string_categorical(content[col]):
            content[col] = content[col].astype("string")
    return pd.util.hash_pandas_object(content, index=False).to_numpy(dtype=np.uint64)


def event_id_hashes_from_codes(
    columns: dict[str, np.ndarray | tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """:func:`event_id_hashes` for data held as codes: the same hashes, without pandas frames.

    ``columns`` maps every hashed column to its values: ``event_timestamp`` as int64 UTC
    nanoseconds, ``amount`` and ``rating`` as float64 (NaN when absent), and each string
    column as ``(codes, values)``: int codes into an array of distinct strings, -1 when absent.
    Strings are hashed once per distinct value, which is what makes bulk generation fast.
    """

    def column_hash(col: str) -> np.ndarray:
        value = columns[col]
        if isinstance(value, tuple):
            codes, strings = value
            hashed = pd.util.hash_array(np.asarray(strings, dtype=object), categorize=False)
            out = hashed[np.maximum(codes, 0)] if len(hashed) else np.zeros(len(codes), np.uint64)
            out[codes < 0] = np.iinfo(np.uint64).max  # how pandas hashes a missing value
            return out
        return pd.util.hash_array(np.asarray(value))

    return combine_hash_arrays((column_hash(c) for c in _HASHED_COLUMNS), len(_HASHED_COLUMNS))


def _hex16(hashes: np.ndarray) -> np.ndarray:
    as_bytes = hashes.astype(">u8").view(np.uint8).reshape(-1, 8)
    return _HEX_PAIRS[as_bytes].view("S16").ravel()


def compute_event_ids(events: pd.DataFrame) -> np.ndarray:
    """Deterministic 16-hex-digit ids from each row's content, vectorised.

    Re-ingesting a file therefore produces the same ids, which makes ingest idempotent.
    Two rows with identical content get the same id and count as one event.
    """
    return _hex16(event_id_hashes(events)).astype(str)


def event_id_array(hashes: np.ndarray) -> pa.Array:
    """Event ids as an Arrow string array from :func:`event_id_hashes` (no Python strings)."""
    hexed = np.ascontiguousarray(_hex16(hashes))
    offsets = np.arange(len(hexed) + 1, dtype=np.int32) * np.int32(16)
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
