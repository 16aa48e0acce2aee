"""Feast feature views: one per view of the feature catalog.

Schemas come from :mod:`feature_repo.catalog` (``float`` → Float64, ``string`` → String), so the
DuckDB pipeline, the views and the models share one list of features.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource
from feast.types import Float64, String

from feature_repo.catalog import VIEWS, features_of_view
from feature_repo.entities import OWNER

FAMILIES: dict[str, str] = {
    "channel_activity": "behavioral",
    "transactions": "transactional",
    "engagement": "behavioral",
    "attitudinal": "attitudinal",
    "cross_channel": "cross_channel",
    "profile": "demographic",
}
"""Signal family of each view, recorded as the view's ``family`` tag."""

SNAPSHOT_TTL = timedelta(days=21)
# Snapshots are built weekly: 21 days tolerates two missed weekly builds and treats a value as
# stale once the third build is missed, instead of serving months-old behaviour as current.
PROFILE_TTL = timedelta(days=90)
# Profile attributes (region, age band, loyalty tier, device) change rarely, so an older
# profile snapshot is still a fair description; only tenure drifts, by at most the gap itself.

TTLS: dict[str, timedelta] = {view: SNAPSHOT_TTL for view in VIEWS} | {"profile": PROFILE_TTL}
"""How old a view's snapshot may be before point-in-time retrieval treats it as missing."""

_FEAST_TYPES = {"float": Float64, "string": String}


def build_feature_view(view: str, source: FileSource, entity: Entity) -> FeatureView:
    """The feature view over one catalog view, reading ``source``."""
    return FeatureView(
        name=view,
        entities=[entity],
        ttl=TTLS[view],
        schema=[Field(name="customer_id", dtype=String)]
        + [
            Field(name=f.name, dtype=_FEAST_TYPES[f.dtype], description=f.description)
            for f in features_of_view(view)
        ],
        source=source,
        online=True,
        description=VIEWS[view],
        owner=OWNER,
        tags={"family": FAMILIES[view]},
    )


def build_feature_views(sources: dict[str, FileSource], entity: Entity) -> dict[str, FeatureView]:
    """One feature view per catalog view, keyed by view name."""
    return {view: build_feature_view(view, sources[view], entity) for view in VIEWS}
