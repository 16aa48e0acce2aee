"""Bring-your-own events: map, validate and load interaction logs into the canonical store.

``omniscore ingest FILE --mapping mapping.yaml`` reads a CSV, TSV, Parquet or JSON Lines file,
renames its columns and recodes its values with an :class:`IngestMapping`, validates every
row, appends the valid rows to the event store and writes every rejected row, with its
original values and the reason, to a quarantine Parquet file. No row is dropped or changed
silently: ``rows_read == accepted + duplicates + quarantined``.

Ingest is idempotent and loses no line: ``event_id`` is a 128-bit hash of the row's content
combined with its rank among identical lines of the file (the k-th repeat gets its own id,
:func:`data_layer.schema.ranked_repeats`), or of the source's own id when the mapping names
an ``event_id_column``. Re-ingesting a file gives the same ids, so every duplicate is a
re-ingested row. ``docs/ingest.md`` is the user guide.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import zoneinfo
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from data_layer.erasure import withhold_events
from data_layer.event_store import (
    WriteResult,
    merge_customers,
    read_profile_extras,
    write_events,
)
from data_layer.schema import (
    CHANNELS,
    EVENT_TYPES,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    event_id_hashes,
    event_ids_of,
    ranked_repeats,
    source_id_hashes,
    to_canonical_table,
)
from data_layer.settings import Settings
from feature_repo.catalog import profile_extra_features, use_profile_extras

# --- reasons, in the order they are checked (a row gets the first that applies) ---------------
MISSING_EVENT_ID = "missing event_id"
MISSING_CUSTOMER_ID = "missing customer_id"
MISSING_TIMESTAMP = "missing event_timestamp"
UNPARSEABLE_TIMESTAMP = "unparseable event_timestamp"
AMBIGUOUS_TIMESTAMP = "ambiguous local event_timestamp (DST fall-back)"
NONEXISTENT_TIMESTAMP = "nonexistent local event_timestamp (DST spring-forward gap)"
MISSING_CHANNEL = "missing channel"
UNKNOWN_CHANNEL = "unknown channel: {value}"
MISSING_EVENT_TYPE = "missing event_type"
UNKNOWN_EVENT_TYPE = "unknown event_type: {value}"
NON_NUMERIC_AMOUNT = "non-numeric amount: {value}"
MISSING_CURRENCY = "missing currency"
UNKNOWN_CURRENCY = "unknown currency: {value}"
MISSING_PURCHASE_AMOUNT = "missing amount on purchase"
NEGATIVE_PURCHASE_AMOUNT = "negative purchase amount"
RATING_OUT_OF_RANGE = "rating out of range (1-5)"
CONFLICTING_EVENT_ID = "event_id {value} repeated with different content"

REASON_ORDER: tuple[str, ...] = (
    MISSING_EVENT_ID,
    MISSING_CUSTOMER_ID,
    MISSING_TIMESTAMP,
    UNPARSEABLE_TIMESTAMP,
    AMBIGUOUS_TIMESTAMP,
    NONEXISTENT_TIMESTAMP,
    MISSING_CHANNEL,
    UNKNOWN_CHANNEL,
    MISSING_EVENT_TYPE,
    UNKNOWN_EVENT_TYPE,
    NON_NUMERIC_AMOUNT,
    MISSING_CURRENCY,
    UNKNOWN_CURRENCY,
    MISSING_PURCHASE_AMOUNT,
    NEGATIVE_PURCHASE_AMOUNT,
    RATING_OUT_OF_RANGE,
    CONFLICTING_EVENT_ID,
)
"""Every quarantine reason, in checking order; ``{value}`` is the row's source value."""

MISSING_COLUMN = "missing required column: {name}"
"""Start of the ValueError raised when a whole file lacks a required column."""

NOTE_UNKNOWN_AS_OTHER = "event_type mapped to other: {value}"
NOTE_RETURN_SIGN = "negative return amount stored as a positive refund"
NOTE_IDENTICAL_LINES = "identical lines kept as separate events (k-th repeat gets its own id)"
NOTE_NO_AMOUNTS = "no amounts in this log (amounts: none): amount stored as missing"

AMOUNT_MODES: tuple[str, ...] = ("required", "none")
"""``amounts`` of a mapping: purchases need an amount, or the log carries no revenue."""

FORMATS: tuple[str, ...] = ("csv", "tsv", "parquet", "jsonl")
"""File formats ``read_source`` understands (chosen by extension unless given)."""

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_COMPRESSIONS = (".gz", ".bz2", ".zip", ".xz", ".zst")

_NULL_WORDS = ("", "null", "none", "nan", "nat", "na", "n/a", "<na>")
NULL_TOKENS: frozenset[str] = frozenset(
    v for w in _NULL_WORDS for v in (w, w.upper(), w.capitalize(), w.title())
) | frozenset({"NaN", "NaT", "<NA>"})
"""Source values that mean "no value" (after trimming whitespace)."""

QUARANTINE_META: tuple[str, ...] = ("source_file", "source_row", "reason")
"""Columns a quarantine file adds before the source's own columns."""

CANONICAL_INPUTS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
"""Canonical columns a source column can be mapped to."""

VALUE_MAPPED_COLUMNS: tuple[str, ...] = ("channel", "event_type", "device")
"""Canonical columns whose values a mapping can recode."""

_INTEGRAL_FLOAT = r"^[+-]?\d+\.0*$"
# An offset must follow a time ("...:MM" or "...:SS[.f]") so a date like 2024-01-05 is naive.
_HAS_OFFSET = r":\d{2}(?:[.,]\d+)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"
_EPOCH_SECONDS_LIMIT = 9.2e9
_EPOCH_UNITS = {"epoch_s": ("s", 1.0), "epoch_ms": ("ms", 1e3)}


def _read_mapping_file(path: str | Path) -> dict | None:
    """The YAML mapping file's keys and values (``None`` for an empty file)."""
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{path}: a mapping file must be a YAML mapping of keys to values")
    return data


@dataclass(frozen=True)
class IngestMapping:
    """How one source's columns and values map onto the canonical event schema."""

    columns: dict[str, str] = field(default_factory=dict)
    """Source column → canonical column (``user: customer_id``); same-named columns need none."""
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per canonical column, source value → canonical value (``channel: {mobile: app}``)."""
    timestamp_format: str | None = None
    """``epoch_s``, ``epoch_ms``, a strptime format, or None for ISO-8601."""
    timezone: str = "UTC"
    """IANA zone of naive timestamps; timestamps carrying an offset are converted to UTC."""
    default_channel: str | None = None
    """Channel of rows without one (single-channel logs)."""
    default_event_type: str | None = None
    """Event type of rows without one (e.g. ``purchase`` for order exports)."""
    unknown_to_other: bool = False
    """Store event types outside the vocabulary as ``other`` instead of quarantining them."""
    channels: list[str] = field(default_factory=lambda: list(CHANNELS))
    """Channel vocabulary accepted by this source."""
    currency_column: str | None = None
    """Source column holding each amount's currency code (None: amounts are in base)."""
    currency_rates: dict[str, float] = field(default_factory=dict)
    """Currency code → units of ``base_currency`` per unit (``USD: 0.92`` with base EUR)."""
    base_currency: str = "USD"
    """Currency of stored amounts; rows already in it need no rate."""
    amounts: str = "required"
    """``required``: purchases need an amount. ``none``: the log has no revenue; amounts are
    stored as missing and revenue features are missing, not zero."""
    event_id_column: str | None = None
    """Source column holding the source's own event id; rows sharing it are one event."""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> IngestMapping:
        """A mapping from plain data (a parsed YAML document); unknown keys are an error."""
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown mapping key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        # YAML reads a column called 2024 or a value 1 as numbers; names are text.
        if isinstance(data.get("columns"), dict):
            data["columns"] = {str(k).strip(): str(v).strip() for k, v in data["columns"].items()}
        if isinstance(data.get("values"), dict):
            data["values"] = {
                str(col): {str(k): str(v) for k, v in (table or {}).items()}
                for col, table in data["values"].items()
            }
        if data.get("channels") is not None:
            data["channels"] = [str(c) for c in data["channels"]]
        if "amounts" in data:
            # YAML reads a bare `none` as text but `null`/`~` as None: both mean no amounts.
            data["amounts"] = "none" if data["amounts"] is None else str(data["amounts"]).lower()
        mapping = cls(**data)
        mapping.validate()
        return mapping

    @classmethod
    def from_yaml(cls, path: str | Path) -> IngestMapping:
        """Load a mapping file (see ``docs/ingest.md`` for a full example)."""
        return cls.from_dict(_read_mapping_file(path))

    def with_overrides(self, **overrides: Any) -> IngestMapping:
        """This mapping with CLI options applied on top; options left as None are ignored."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return IngestMapping.from_dict({**dataclasses.asdict(self), **given})

    def fingerprint(self) -> str:
        """A short stable hash of the mapping (names quarantine files of a run)."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def validate(self) -> None:
        """Raise ValueError when the mapping itself is inconsistent."""
        problems: list[str] = []
        for source, target in self.columns.items():
            if target not in CANONICAL_INPUTS:
                problems.append(
                    f"columns: {source!r} maps to {target!r}, which is not a canonical column "
                    f"({', '.join(CANONICAL_INPUTS)})"
                )
        targets = list(self.columns.values())
        for target in sorted({t for t in targets if targets.count(t) > 1}):
            problems.append(f"columns: several source columns map to {target!r}")
        if not self.channels:
            problems.append("channels: the channel vocabulary is empty")
        if self.amounts not in AMOUNT_MODES:
            problems.append(f"amounts {self.amounts!r} must be one of {', '.join(AMOUNT_MODES)}")
        if self.event_id_column is not None and self.event_id_column in self.columns:
            problems.append(
                f"event_id_column {self.event_id_column!r} is also mapped under columns:"
            )
        for column, table in self.values.items():
            if column not in VALUE_MAPPED_COLUMNS:
                problems.append(
                    f"values: {column!r} cannot be recoded (only {', '.join(VALUE_MAPPED_COLUMNS)})"
                )
            vocabulary = self._vocabulary(column)
            for source, target in (table or {}).items():
                if vocabulary is not None and target not in vocabulary:
                    problems.append(
                        f"values: {column} {source!r} → {target!r} is not in the {column} "
                        "vocabulary"
                    )
        if self.default_channel is not None and self.default_channel not in self.channels:
            problems.append(f"default_channel {self.default_channel!r} is not in channels")
        if self.default_event_type is not None and self.default_event_type not in EVENT_TYPES:
            problems.append(f"default_event_type {self.default_event_type!r} is not an event type")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            problems.append(f"timezone {self.timezone!r} is not an IANA time zone")
        for code, rate in self.currency_rates.items():
            if not isinstance(rate, int | float) or not np.isfinite(rate) or rate <= 0:
                problems.append(f"currency_rates: {code} has rate {rate!r}; it must be > 0")
        if problems:
            raise ValueError("invalid ingest mapping:\n  " + "\n  ".join(problems))

    def _vocabulary(self, column: str) -> set[str] | None:
        if column == "channel":
            return set(self.channels)
        if column == "event_type":
            return set(EVENT_TYPES)
        return None


def load_mapping(mapping_path: str | Path | None = None, **overrides: Any) -> IngestMapping:
    """The mapping for a CLI run: the YAML file (or defaults) with non-None options on top."""
    base = IngestMapping.from_yaml(mapping_path) if mapping_path else IngestMapping()
    return base.with_overrides(**overrides)


# --- reading ----------------------------------------------------------------------------------
def detect_format(path: str | Path) -> str:
    """The file format implied by a file name (``events.csv.gz`` → ``csv``)."""
    name = Path(path).name.lower()
    for compression in _COMPRESSIONS:
        if name.endswith(compression):
            name = name[: -len(compression)]
            break
    suffix = Path(name).suffix
    if suffix not in _EXTENSIONS:
        raise ValueError(
            f"cannot tell the format of {Path(path).name!r} from its extension; "
            f"pass one of {', '.join(FORMATS)}"
        )
    return _EXTENSIONS[suffix]


def read_source(path: str | Path, file_format: str | None = None) -> pd.DataFrame:
    """A source file as a frame, rows in file order, text kept as written.

    CSV and TSV are read entirely as strings (only empty fields are missing) so ids such as
    ``00123`` and values such as ``NA`` reach validation untouched; Parquet keeps its types;
    JSON Lines keeps JSON's types without date or dtype guessing.
    """
    fmt = (file_format or detect_format(path)).lower()
    if fmt in ("csv", "tsv"):
        return pd.read_csv(
            path,
            sep="," if fmt == "csv" else "\t",
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8-sig",
        )
    if fmt == "parquet":
        return pq.read_table(path).to_pandas()
    if fmt == "jsonl":
        if Path(path).stat().st_size == 0:
            return pd.DataFrame()
        return pd.read_json(path, lines=True, dtype=False, convert_dates=False, precise_float=True)
    raise ValueError(f"unknown file format {fmt!r}; use one of {', '.join(FORMATS)}")


# --- normalising (pure) -----------------------------------------------------------------------
def _missing_column_error(name: str, detail: str) -> ValueError:
    return ValueError(f"{MISSING_COLUMN.format(name=name)} ({detail})")


def _resolve_columns(available: list[str], mapping: IngestMapping) -> dict[str, str]:
    """Canonical column → the source column that feeds it (mapped names win)."""
    sources: dict[str, str] = {}
    for source, target in mapping.columns.items():
        if source in available:
            sources[target] = source
    for name in CANONICAL_INPUTS:
        if name not in sources and name in available and name not in mapping.columns:
            sources[name] = name
    listing = ", ".join(available) or "none"
    defaults = {"channel": mapping.default_channel, "event_type": mapping.default_event_type}
    for name in ("customer_id", "event_timestamp", "channel", "event_type"):
        if name in sources or defaults.get(name) is not None:
            continue
        mapped_from = [s for s, t in mapping.columns.items() if t == name]
        if mapped_from:
            detail = f"the mapping reads it from {mapped_from[0]!r}, which the file lacks"
        else:
            detail = f"map one of the file's columns to it under `columns:`; file has: {listing}"
            if name in defaults:
                detail += f", or set default_{name}"
        raise _missing_column_error(name, detail)
    if mapping.currency_column is not None and mapping.currency_column not in available:
        raise _missing_column_error(
            mapping.currency_column, f"currency_column of the mapping; file has: {listing}"
        )
    if mapping.event_id_column is not None and mapping.event_id_column not in available:
        raise _missing_column_error(
            mapping.event_id_column, f"event_id_column of the mapping; file has: {listing}"
        )
    return sources


def _text(values: pd.Series) -> pd.Series:
    """Trimmed Arrow-backed strings with null tokens as <NA> (vectorised in Arrow)."""
    text = values.astype("string[pyarrow]").str.strip()
    return text.mask(text.isin(NULL_TOKENS))


def _id_text(values: pd.Series) -> pd.Series:
    """Ids as decimal strings: ``123`` and ``123.0`` → "123"; string ids stay as given."""
    text = _text(values)
    integral = text.str.contains(_INTEGRAL_FLOAT, regex=True).fillna(False).to_numpy(dtype=bool)
    if integral.any():
        text[integral] = text[integral].str.replace(r"\.0*$", "", regex=True)
    return text


def _numbers(text: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float values, mask of present-but-not-a-finite-number)."""
    parsed = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    bad = text.notna().to_numpy() & ~np.isfinite(parsed)
    parsed[bad] = np.nan
    return parsed, bad


def _localize(naive: pd.Series, timezone: str) -> tuple[pd.Series, pd.Series]:
    """Naive local times → UTC, with the DST reason of each time that has no single UTC."""
    local = naive.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    problem = pd.Series(pd.NA, index=naive.index, dtype="string")
    failed = local.isna() & naive.notna()
    if failed.any():
        some = naive[failed]
        in_gap = some.dt.tz_localize(
            timezone, ambiguous=np.ones(len(some), dtype=bool), nonexistent="NaT"
        ).isna()
        problem[failed] = np.where(in_gap, NONEXISTENT_TIMESTAMP, AMBIGUOUS_TIMESTAMP)
    return local.dt.tz_convert("UTC"), problem


def _parse_naive_iso(text: pd.Series) -> pd.Series:
    parsed = pd.to_datetime(text, format="ISO8601", errors="coerce")
    if pd.api.types.is_datetime64_dtype(parsed.dtype):
        return parsed.astype("datetime64[ns]")
    # Rare: an offset the pattern did not spot. Such a value is not naive: leave it unparsed
    # here rather than guess its zone (it is quarantined as unparseable).
    aware = parsed.map(lambda v: getattr(v, "tzinfo", None) is not None).astype(bool)
    out = pd.to_datetime(text.where(~aware), format="ISO8601", errors="coerce")
    return out.astype("datetime64[ns]")


def _parse_timestamps(raw: pd.Series, mapping: IngestMapping) -> tuple[pd.Series, pd.Series]:
    """(UTC timestamps rounded to µs, reason per row or <NA>) for one source column."""
    index = raw.index
    fmt = mapping.timestamp_format
    problem = pd.Series(pd.NA, index=index, dtype="string")
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        present = raw.notna()
        utc = raw.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    elif pd.api.types.is_datetime64_dtype(raw.dtype):
        present = raw.notna()
        utc, problem = _localize(raw.astype("datetime64[ns]"), mapping.timezone)
    elif fmt in _EPOCH_UNITS:
        unit, per_second = _EPOCH_UNITS[fmt]
        if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw):
            values = raw.to_numpy(dtype="float64", na_value=np.nan).copy()
            present = raw.notna()
        else:
            text = _text(raw)
            values, _ = _numbers(text)
            present = text.notna()
        # Epochs too large for a nanosecond timestamp would overflow: leave them unparsed.
        values[~(np.abs(values) < _EPOCH_SECONDS_LIMIT * per_second)] = np.nan
        utc = pd.Series(pd.to_datetime(values, unit=unit, utc=True), index=index)
    elif pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw):
        raise ValueError(
            "event_timestamp holds numbers: set timestamp_format to epoch_s or epoch_ms"
        )
    else:
        text = _text(raw)
        present = text.notna()
        if fmt is None:
            utc = pd.Series(pd.NaT, index=index, dtype="datetime64[ns, UTC]")
            aware = text.str.contains(_HAS_OFFSET, regex=True).fillna(False).astype(bool)
            if aware.any():
                utc[aware] = pd.to_datetime(
                    text[aware], format="ISO8601", errors="coerce", utc=True
                )
            if (~aware).any():
                local, dst = _localize(_parse_naive_iso(text[~aware]), mapping.timezone)
                utc[~aware] = local
                problem[~aware] = dst
        elif "%z" in fmt or "%Z" in fmt:
            utc = pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
        else:
            naive = pd.to_datetime(text, format=fmt, errors="coerce")
            utc, problem = _localize(naive.astype("datetime64[ns]"), mapping.timezone)
    problem = problem.mask(~present.to_numpy(dtype=bool), MISSING_TIMESTAMP)
    unparsed = present.to_numpy(dtype=bool) & utc.isna().to_numpy() & problem.isna().to_numpy()
    problem = problem.mask(unparsed, UNPARSEABLE_TIMESTAMP)
    return utc.dt.round("us"), problem


def _recode(text: pd.Series, table: dict[str, str]) -> pd.Series:
    """Apply a value map, matching keys case-insensitively; unmapped values pass through."""
    if not table:
        return text
    lookup = {str(k).strip().lower(): str(v) for k, v in table.items()}
    lowered = text.str.lower()
    hit = lowered.isin(list(lookup)).to_numpy(dtype=bool)
    if not hit.any():
        return text
    codes, uniques = pd.factorize(lowered[hit])
    out = text.copy()
    out[hit] = np.array([lookup[u] for u in uniques], dtype=object)[codes]
    return out


def normalise(
    frame: pd.DataFrame, mapping: IngestMapping, source: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a source frame into (canonical events, quarantined rows with reasons).

    Pure and vectorised. The canonical frame has the columns of
    :data:`data_layer.schema.REQUIRED_COLUMNS` and ``OPTIONAL_COLUMNS`` (ready for
    ``schema.to_canonical_table``); its ``attrs["notes"]`` counts the value normalisations
    that were applied (unknown event types stored as ``other``, return signs). The quarantine
    frame has ``source_file``, ``source_row`` (1-based position in the file), ``reason`` and
    then every source column with its original value as a string. A file that lacks a
    required column altogether raises ValueError instead.
    """
    mapping.validate()
    raw = frame.reset_index(drop=True)
    raw.columns = [str(c).strip() for c in raw.columns]
    repeated = sorted({c for c in raw.columns if list(raw.columns).count(c) > 1})
    if repeated:
        raise ValueError(f"the file has several columns named {', '.join(map(repr, repeated))}")
    sources = _resolve_columns(list(raw.columns), mapping)
    n = len(raw)
    index = raw.index

    def column(name: str) -> pd.Series | None:
        return raw[sources[name]] if name in sources else None

    def constant(value: str | None) -> pd.Series:
        return pd.Series(value, index=index, dtype="string")

    reason = pd.Series(pd.NA, index=index, dtype="string")

    def flag(mask: pd.Series | np.ndarray, text: str, value: pd.Series | None = None) -> None:
        """Give ``text`` (+ the row's ``value``) to flagged rows that have no reason yet."""
        take = np.asarray(mask, dtype=bool) & reason.isna().to_numpy()
        if take.any():
            reason[take] = text if value is None else text + value[take].fillna("")

    source_ids = None
    if mapping.event_id_column is not None:
        source_ids = _id_text(raw[mapping.event_id_column])
        flag(source_ids.isna(), MISSING_EVENT_ID)

    customer_id = _id_text(column("customer_id"))
    flag(customer_id.isna(), MISSING_CUSTOMER_ID)

    timestamps, ts_problem = _parse_timestamps(column("event_timestamp"), mapping)
    flag(ts_problem.notna(), "", ts_problem)

    values = mapping.values
    channel_raw = column("channel")
    if channel_raw is None:
        channel = constant(mapping.default_channel)
    else:
        ch_text = _text(channel_raw)
        if mapping.default_channel is not None:
            ch_text = ch_text.fillna(mapping.default_channel)
        recoded = _recode(ch_text, values.get("channel", {})).str.lower()
        channel = recoded.where(recoded.isin(set(mapping.channels)))
        flag(ch_text.isna(), MISSING_CHANNEL)
        flag(channel.isna(), "unknown channel: ", ch_text)

    notes: Counter[str] = Counter()
    type_raw = column("event_type")
    if type_raw is None:
        event_type = constant(mapping.default_event_type)
    else:
        et_text = _text(type_raw)
        if mapping.default_event_type is not None:
            et_text = et_text.fillna(mapping.default_event_type)
        recoded = _recode(et_text, values.get("event_type", {})).str.lower()
        event_type = recoded.where(recoded.isin(set(EVENT_TYPES)))
        flag(et_text.isna(), MISSING_EVENT_TYPE)
        unknown = event_type.isna() & et_text.notna()
        if mapping.unknown_to_other:
            event_type = event_type.mask(unknown, "other")
        else:
            flag(unknown, "unknown event_type: ", et_text)

    is_purchase = (event_type == "purchase").fillna(False).to_numpy(dtype=bool)
    amount_raw = column("amount")
    if mapping.amounts == "none":
        amount = np.full(n, np.nan)
    elif amount_raw is None:
        if is_purchase.any():
            raise _missing_column_error(
                "amount",
                f"{int(is_purchase.sum())} purchase rows need an amount; map the amount column "
                "under `columns:`, or set `amounts: none` for a log without revenue",
            )
        amount = np.full(n, np.nan)
    else:
        amount_text = _text(amount_raw)
        amount, non_numeric = _numbers(amount_text)
        flag(non_numeric, "non-numeric amount: ", amount_text)
        if mapping.currency_column is not None:
            currency = _text(raw[mapping.currency_column]).str.upper()
            rates = {str(k).strip().upper(): float(v) for k, v in mapping.currency_rates.items()}
            rates.setdefault(mapping.base_currency.strip().upper(), 1.0)
            rate = currency.map(rates).astype("float64").to_numpy()
            has_amount = ~np.isnan(amount)
            flag(has_amount & currency.isna().to_numpy(), MISSING_CURRENCY)
            flag(has_amount & np.isnan(rate), "unknown currency: ", currency)
            amount = amount * rate
        amount = amount + 0.0  # -0 is 0: one content, one id
        flag(is_purchase & np.isnan(amount), MISSING_PURCHASE_AMOUNT)
        flag(is_purchase & (amount < 0), NEGATIVE_PURCHASE_AMOUNT)

    rating_raw = column("rating")
    if rating_raw is None:
        rating = np.full(n, np.nan)
    else:
        rating, rating_bad = _numbers(_text(rating_raw))
        out_of_range = rating_bad | (rating < 1) | (rating > 5)
        flag(out_of_range, RATING_OUT_OF_RANGE)

    if source_ids is not None:
        _flag_conflicting_ids(
            source_ids, customer_id, timestamps, channel, event_type, amount, rating, reason
        )
    good = reason.isna().to_numpy()
    if mapping.amounts == "none" and (good & is_purchase).any():
        notes[NOTE_NO_AMOUNTS] += int((good & is_purchase).sum())
    accepted = pd.DataFrame(
        {
            "customer_id": customer_id[good],
            "event_timestamp": timestamps[good],
            "channel": channel[good],
            "event_type": event_type[good],
            "amount": amount[good],
        }
    )
    if type_raw is not None and mapping.unknown_to_other:
        became_other = unknown.to_numpy() & good
        for value, count in et_text[became_other].value_counts().items():
            notes[NOTE_UNKNOWN_AS_OTHER.format(value=value)] += int(count)
    negative_return = (accepted["event_type"] == "return").to_numpy() & (
        accepted["amount"].to_numpy() < 0
    )
    if negative_return.any():
        notes[NOTE_RETURN_SIGN] += int(negative_return.sum())
        accepted["amount"] = np.where(
            negative_return, -accepted["amount"].to_numpy(), accepted["amount"].to_numpy()
        )
    for name in OPTIONAL_COLUMNS:
        if name == "rating":
            accepted[name] = rating[good]
            continue
        raw_col = column(name)
        if raw_col is None:
            accepted[name] = pd.Series(pd.NA, index=accepted.index, dtype="string")
        elif name == "device":
            accepted[name] = _recode(_text(raw_col), values.get("device", {}))[good]
        else:
            accepted[name] = _id_text(raw_col)[good]
    if source_ids is not None:
        accepted["event_id"] = event_ids_of(source_id_hashes(source_ids[good]))
    accepted = accepted.reset_index(drop=True)
    accepted.attrs["notes"] = dict(notes)
    return accepted, quarantine_rows(raw, reason, source)


def _flag_conflicting_ids(
    source_ids: pd.Series,
    customer_id: pd.Series,
    timestamps: pd.Series,
    channel: pd.Series,
    event_type: pd.Series,
    amount: np.ndarray,
    rating: np.ndarray,
    reason: pd.Series,
) -> None:
    """Quarantine a row whose source id an earlier valid row of the file has, with other
    content: it is not a re-sent copy of that event, and keeping either silently would lose
    one. Exact copies stay valid and count as duplicates."""
    good = reason.isna().to_numpy()
    if not good.any():
        return
    content = pd.DataFrame(
        {
            "customer_id": customer_id[good],
            "event_timestamp": timestamps[good],
            "channel": channel[good],
            "event_type": event_type[good],
            "amount": amount[good],
            "rating": rating[good],
        }
    )
    hashes = event_id_hashes(content)[:, 0]
    ids = source_ids[good].reset_index(drop=True)
    first = pd.Series(hashes).groupby(ids.to_numpy(), sort=False).transform("first")
    conflict = np.zeros(len(reason), dtype=bool)
    conflict[np.flatnonzero(good)] = first.to_numpy(dtype=np.uint64) != hashes
    if conflict.any():
        reason[conflict] = "event_id " + source_ids[conflict] + " repeated with different content"


def assign_event_ids(accepted: pd.DataFrame) -> int:
    """Give a normalised file's rows their ``event_id`` (in place); the repeats ranked.

    Rows with a source id (``event_id_column``) already have one. Otherwise identical rows
    of the file get distinct ids by rank (:func:`data_layer.schema.ranked_repeats`); returns
    how many rows were such repeats.
    """
    if "event_id" in accepted or not len(accepted):
        return 0
    hashes = event_id_hashes(accepted)
    ranked = ranked_repeats(hashes)
    accepted["event_id"] = event_ids_of(ranked)
    return int((ranked != hashes).any(axis=1).sum())


def quarantine_rows(raw: pd.DataFrame, reason: pd.Series, source: str) -> pd.DataFrame:
    """Rejected rows with their original values (as strings), file name, row number, reason."""
    bad = reason.notna().to_numpy()
    rows = raw[bad]
    out = pd.DataFrame(
        {
            "source_file": pd.Series(source, index=rows.index, dtype="string"),
            "source_row": (rows.index.to_numpy() + 1).astype("int64"),
            "reason": reason[bad].astype("string"),
        },
        index=rows.index,
    )
    for name in rows.columns:
        target = f"original_{name}" if name in QUARANTINE_META else name
        out[target] = rows[name].astype("string")
    return out.reset_index(drop=True)


# --- running (I/O) ----------------------------------------------------------------------------
@dataclass(frozen=True)
class IngestReport:
    """What one ingest did. ``rows_read == accepted + duplicates + quarantined``."""

    source: Path
    rows_read: int
    accepted: int
    """Valid rows newly written to the store."""
    duplicates: int
    """Valid rows whose event was already stored: a re-ingested row (or, with a source
    ``event_id_column``, an exact copy of an earlier row of the file)."""
    quarantined: int
    quarantine_path: Path | None
    reasons: Counter[str] = field(default_factory=Counter)
    """Quarantine reason → number of rows."""
    notes: Counter[str] = field(default_factory=Counter)
    """Normalisation applied to accepted rows → number of rows (nothing is changed silently)."""
    events_path: Path | None = None

    @property
    def valid(self) -> int:
        """Rows that passed validation: newly written plus duplicates."""
        return self.accepted + self.duplicates

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        notes = [f"  normalised  {count:>8}  {text}" for text, count in self.notes.most_common()]
        return _summary(self, after_reasons=notes)


def _summary(report, before_reasons: Sequence[str] = (), after_reasons: Sequence[str] = ()) -> str:
    """The CLI lines of an ingest report: counts, then the quarantine reasons and file."""
    lines = [
        f"{report.source.name}: {report.rows_read} rows read → {report.accepted} accepted, "
        f"{report.duplicates} duplicates, {report.quarantined} quarantined",
        *before_reasons,
    ]
    lines += [f"  quarantined {count:>8}  {text}" for text, count in report.reasons.most_common()]
    lines += after_reasons
    if report.quarantine_path is not None:
        lines.append(f"  quarantine file: {report.quarantine_path}")
    return "\n".join(lines)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_quarantine(
    settings: Settings, quarantined: pd.DataFrame, source: Path, mapping: IngestMapping
) -> Path:
    """Write rejected rows to ``quarantine_dir``; the name is stable per file and mapping."""
    key = hashlib.sha256(f"{_file_digest(source)}:{mapping.fingerprint()}".encode()).hexdigest()
    return store_quarantine(settings, quarantined, f"{source.name}-{key[:12]}")


def store_quarantine(settings: Settings, quarantined: pd.DataFrame, name: str) -> Path:
    """Write quarantined rows to ``quarantine_dir/<name>.parquet`` (atomically, fsync'd).

    ``name`` is made file-safe; ingest and the live path (:mod:`data_layer.live_ingest`)
    both write their rejected rows through here.
    """
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    path = settings.quarantine_dir / f"{stem}.parquet"
    table = pa.Table.from_pandas(quarantined, preserve_index=False)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        pq.write_table(table, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.rename(path)
    return path


def ingest_file(
    settings: Settings,
    path: str | Path,
    mapping: IngestMapping,
    file_format: str | None = None,
) -> IngestReport:
    """Read, normalise and store one source file; quarantine what fails validation."""
    path = Path(path)
    frame = read_source(path, file_format)
    accepted, quarantined = normalise(frame, mapping, source=path.name)
    # Events of erased customers are quarantined as "erased customer", holding no raw id.
    accepted, quarantined = withhold_events(settings, frame, accepted, quarantined, path.name)
    notes = Counter(accepted.attrs.get("notes", {}))
    repeats = assign_event_ids(accepted)
    if repeats:
        notes[NOTE_IDENTICAL_LINES] += repeats
    quarantine_path = None
    # Quarantine first: if writing events then fails, no rejected row has been lost and a
    # re-run is idempotent for the accepted ones.
    if len(quarantined):
        quarantine_path = write_quarantine(settings, quarantined, path, mapping)
    result = WriteResult(written=0, duplicates=0, path=None)
    if len(accepted):
        result = write_events(settings, to_canonical_table(accepted))
    report = IngestReport(
        source=path,
        rows_read=len(frame),
        accepted=result.written,
        duplicates=result.duplicates,
        quarantined=len(quarantined),
        quarantine_path=quarantine_path,
        reasons=Counter(quarantined["reason"].value_counts().to_dict()),
        notes=notes,
        events_path=result.path,
    )
    if report.rows_read != report.valid + report.quarantined:  # pragma: no cover - invariant
        raise RuntimeError(f"ingest lost rows: {report}")
    return report


# --- customers (profile tables) -----------------------------------------------------------------
CUSTOMER_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "signup_date",
    "region",
    "age_band",
    "loyalty_tier",
    "preferred_device",
    "valid_from",
)
"""Canonical columns a customers file's columns can be mapped to."""

UNPARSEABLE_DATE = "unparseable {column}"
MISSING_VALID_FROM = "missing valid_from"
NON_NUMERIC_PROFILE = "non-numeric {column}: {value}"
CONFLICTING_PROFILE = "another row of this file has this customer_id and valid_from"
CUSTOMER_REASON_ORDER: tuple[str, ...] = (
    MISSING_CUSTOMER_ID,
    UNPARSEABLE_DATE,
    MISSING_VALID_FROM,
    NON_NUMERIC_PROFILE,
    CONFLICTING_PROFILE,
)
"""Quarantine reasons of a customers file, in checking order (``unparseable {column}`` also
covers a DST-ambiguous or nonexistent local time)."""


@dataclass(frozen=True)
class CustomerMapping:
    """How a customers (profile) file maps onto the profile table."""

    columns: dict[str, str] = field(default_factory=dict)
    """Source column → canonical column or declared extra (``client: customer_id``)."""
    extras: dict[str, str] = field(default_factory=dict)
    """Extra profile features: name → ``categorical`` or ``numeric``. They join the profile
    feature view and the models (``feature_repo.catalog.use_profile_extras``)."""
    timestamp_format: str | None = None
    """Format of ``signup_date`` and ``valid_from``: ``epoch_s``, ``epoch_ms``, a strptime
    format, or None for ISO-8601."""
    timezone: str = "UTC"
    """IANA zone of naive dates and times."""
    static: bool = False
    """Without a ``valid_from`` column: True declares the attributes valid since before any
    snapshot (attributes that never change); False (default) makes them valid from the time of
    this ingest, so no past snapshot sees a value it could not have known."""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CustomerMapping:
        """A mapping from plain data (a parsed YAML document); unknown keys are an error."""
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown mapping key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        for key in ("columns", "extras"):
            if isinstance(data.get(key), dict):
                data[key] = {str(k).strip(): str(v).strip() for k, v in data[key].items()}
        mapping = cls(**data)
        mapping.validate()
        return mapping

    @classmethod
    def from_yaml(cls, path: str | Path) -> CustomerMapping:
        """Load a customers mapping file (see ``docs/ingest.md``)."""
        return cls.from_dict(_read_mapping_file(path))

    def fingerprint(self) -> str:
        """A short stable hash of the mapping (names quarantine files of a run)."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(f"customers:{blob}".encode()).hexdigest()[:12]

    def validate(self) -> None:
        """Raise ValueError when the mapping itself is inconsistent."""
        problems: list[str] = []
        targets = [*CUSTOMER_COLUMNS, *self.extras]
        for source, target in self.columns.items():
            if target not in targets:
                problems.append(
                    f"columns: {source!r} maps to {target!r}, which is neither a profile column "
                    f"({', '.join(CUSTOMER_COLUMNS)}) nor a declared extra"
                )
        mapped = list(self.columns.values())
        for target in sorted({t for t in mapped if mapped.count(t) > 1}):
            problems.append(f"columns: several source columns map to {target!r}")
        for name in self.extras:
            if name in CUSTOMER_COLUMNS:
                problems.append(f"extras: {name!r} is a profile column, not an extra")
        try:
            profile_extra_features(
                {k: v for k, v in self.extras.items() if k not in CUSTOMER_COLUMNS}
            )
        except ValueError as error:
            problems.append(f"extras: {error}")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            problems.append(f"timezone {self.timezone!r} is not an IANA time zone")
        if problems:
            raise ValueError("invalid customers mapping:\n  " + "\n  ".join(problems))


def normalise_customers(
    frame: pd.DataFrame, mapping: CustomerMapping, source: str, now: pd.Timestamp
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a customers file into (profile rows, quarantined rows with reasons).

    Profile rows have the canonical columns, ``valid_from`` (``now`` when the file has no such
    column, null with ``static``) and the declared extras; ``attrs["provided"]`` names the
    columns the file had (the others are filled from the stored profile when merged). Pure
    and vectorised.
    """
    mapping.validate()
    raw = frame.reset_index(drop=True)
    raw.columns = [str(c).strip() for c in raw.columns]
    available = list(raw.columns)
    sources: dict[str, str] = {t: s for s, t in mapping.columns.items() if s in available}
    for name in (*CUSTOMER_COLUMNS, *mapping.extras):
        if name not in sources and name in available and name not in mapping.columns:
            sources[name] = name
    listing = ", ".join(available) or "none"
    for name in ("customer_id", *mapping.extras):
        if name not in sources:
            raise _missing_column_error(
                name, f"map one of the file's columns to it under `columns:`; file has: {listing}"
            )
    index = raw.index
    reason = pd.Series(pd.NA, index=index, dtype="string")

    def flag(mask: np.ndarray, text: pd.Series | str) -> None:
        take = np.asarray(mask, dtype=bool) & reason.isna().to_numpy()
        if take.any():
            reason[take] = text if isinstance(text, str) else text[take]

    out = pd.DataFrame(index=index)
    out["customer_id"] = _id_text(raw[sources["customer_id"]])
    flag(out["customer_id"].isna().to_numpy(), MISSING_CUSTOMER_ID)
    for column in ("signup_date", "valid_from"):
        if column not in sources:
            continue
        stamps, problem = _parse_timestamps(raw[sources[column]], mapping)
        missing = problem == MISSING_TIMESTAMP
        if column == "valid_from":
            flag(missing.fillna(False).to_numpy(), MISSING_VALID_FROM)
        bad = problem.notna().to_numpy() & ~missing.fillna(False).to_numpy()
        flag(bad, UNPARSEABLE_DATE.format(column=column))
        out[column] = stamps
    if "signup_date" not in out:
        out["signup_date"] = pd.Series(pd.NaT, index=index, dtype="datetime64[ns, UTC]")
    if "valid_from" not in out:
        stamp = pd.NaT if mapping.static else pd.Timestamp(now).tz_convert("UTC").round("us")
        out["valid_from"] = pd.Series(stamp, index=index, dtype="datetime64[ns, UTC]")
    for column in ("region", "age_band", "loyalty_tier", "preferred_device"):
        values = _text(raw[sources[column]]) if column in sources else None
        out[column] = (
            values.astype(object).where(values.notna(), None) if values is not None else None
        )
    for name, kind in mapping.extras.items():
        text = _text(raw[sources[name]])
        if kind == "numeric":
            numbers, non_numeric = _numbers(text)
            flag(non_numeric, "non-numeric " + name + ": " + text.fillna(""))
            out[name] = numbers
        else:
            out[name] = text.astype(object).where(text.notna(), None)
    good = reason.isna().to_numpy()
    if good.any():
        # Two different rows for one customer and instant: which is true is unknowable.
        key = out.loc[good, ["customer_id", "valid_from"]].astype(str).agg("|".join, axis=1)
        content = out.loc[good].astype(str).agg("|".join, axis=1)
        first = content.groupby(key.to_numpy()).transform("first")
        conflict = np.zeros(len(out), dtype=bool)
        conflict[np.flatnonzero(good)] = (first != content).to_numpy()
        flag(conflict, CONFLICTING_PROFILE)
    good = reason.isna().to_numpy()
    accepted = out[good].reset_index(drop=True)
    accepted.attrs["provided"] = sorted(sources)
    return accepted, quarantine_rows(raw, reason, source)


@dataclass(frozen=True)
class CustomerIngestReport:
    """What one customers ingest did. ``rows_read == accepted + duplicates + quarantined``."""

    source: Path
    rows_read: int
    accepted: int
    """Profile rows new to the table (a new customer, or a new version of one)."""
    duplicates: int
    """Rows already stored (same customer, ``valid_from`` and values): a re-ingest."""
    quarantined: int
    quarantine_path: Path | None
    extras: dict[str, str] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        extras = [f"  profile feature  {name} ({kind})" for name, kind in self.extras.items()]
        return _summary(self, before_reasons=extras)


def ingest_customers_file(
    settings: Settings,
    path: str | Path,
    mapping: CustomerMapping,
    file_format: str | None = None,
    now: pd.Timestamp | None = None,
) -> CustomerIngestReport:
    """Read, validate and add one customers file to the profile table; quarantine the rest.

    Declared extras are recorded in the home (``profile_features.json``), so the catalog of
    every later command includes them; run ``omniscore features apply`` and ``features
    build`` for them to reach the Feast views and the models.
    """
    path = Path(path)
    frame = read_source(path, file_format)
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    accepted, quarantined = normalise_customers(frame, mapping, path.name, now)
    accepted, quarantined = withhold_events(settings, frame, accepted, quarantined, path.name)
    quarantine_path = None
    if len(quarantined):
        quarantine_path = write_quarantine(settings, quarantined, path, mapping)
    provided = list(accepted.attrs.get("provided", []))
    added, duplicates = merge_customers(settings, accepted, dict(mapping.extras), provided)
    use_profile_extras(read_profile_extras(settings))
    report = CustomerIngestReport(
        source=path,
        rows_read=len(frame),
        accepted=added,
        duplicates=duplicates,
        quarantined=len(quarantined),
        quarantine_path=quarantine_path,
        extras=dict(mapping.extras),
        reasons=Counter(quarantined["reason"].value_counts().to_dict()),
    )
    if report.rows_read != added + duplicates + report.quarantined:  # pragma: no cover
        raise RuntimeError(f"customers ingest lost rows: {report}")
    return report
