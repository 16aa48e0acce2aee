"""Feast data sources: the feature snapshots written by the feature pipeline.

Each feature view reads one Parquet file, ``$OMNISCORE_HOME/features/<view>.parquet``, holding
every snapshot of that view: ``customer_id``, ``event_timestamp`` (the snapshot time T),
``created_timestamp`` (when the snapshot was built) and the view's features.

The module-level sources follow ``$OMNISCORE_HOME`` at import time (nothing is created on
import); code that works on an explicit home calls :func:`build_sources` instead, so two homes
side by side never share a path.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from feast import FileSource

from feature_repo.catalog import VIEWS, features_of_view
from feature_repo.config import Settings

try:  # imported as feature_repo.data_sources, as everywhere in OmniScore
    from .entities import OWNER
except ImportError:  # imported as a top-level module by `feast apply` run inside feature_repo/
    from entities import OWNER

TIMESTAMP_FIELD = "event_timestamp"
CREATED_TIMESTAMP_COLUMN = "created_timestamp"


def snapshot_path(settings: Settings, view: str) -> Path:
    """The Parquet file holding every snapshot of one feature view."""
    return settings.features_dir / f"{view}.parquet"


def snapshot_schema(view: str) -> pa.Schema:
    """Arrow schema of a view's snapshot file: keys, timestamps, then the view's features."""
    fields = [
        pa.field("customer_id", pa.string()),
        pa.field(TIMESTAMP_FIELD, pa.timestamp("us", tz="UTC")),
        pa.field(CREATED_TIMESTAMP_COLUMN, pa.timestamp("us", tz="UTC")),
    ]
    fields += [
        pa.field(f.name, pa.string() if f.dtype == "string" else pa.float64())
        for f in features_of_view(view)
    ]
    return pa.schema(fields)


def source_name(view: str) -> str:
    """Registry name of a view's data source."""
    return f"{view}_snapshots"


def build_source(settings: Settings, view: str) -> FileSource:
    """The file source over one view's snapshot file in ``settings.home``."""
    return FileSource(
        name=source_name(view),
        path=str(snapshot_path(settings, view)),
        timestamp_field=TIMESTAMP_FIELD,
        created_timestamp_column=CREATED_TIMESTAMP_COLUMN,
        description=f"Point-in-time snapshots of the {view} view. {VIEWS[view]}",
        owner=OWNER,
        tags={"view": view, "format": "parquet"},
    )


def build_sources(settings: Settings) -> dict[str, FileSource]:
    """One file source per feature view of the catalog, keyed by view name."""
    return {view: build_source(settings, view) for view in VIEWS}


SOURCES = build_sources(Settings.from_env())
"""Sources of the home named by ``$OMNISCORE_HOME`` (what ``feast apply`` registers)."""

channel_activity_source = SOURCES["channel_activity"]
transactions_source = SOURCES["transactions"]
engagement_source = SOURCES["engagement"]
attitudinal_source = SOURCES["attitudinal"]
cross_channel_source = SOURCES["cross_channel"]
profile_source = SOURCES["profile"]
