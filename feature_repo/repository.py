"""Every Feast object of the repository, built for one home's snapshot folder.

The definition modules (``entities.py``, ``data_sources.py``, ``feature_views.py``,
``feature_services.py``) only define builders: nothing is built, and no environment is read,
at import. ``omniscore features apply`` registers what :func:`build_definitions` returns.
"""

from __future__ import annotations

from pathlib import Path

from feast import Entity, FeatureService, FeatureView, FileSource

from feature_repo.data_sources import build_sources
from feature_repo.entities import build_customer
from feature_repo.feature_services import build_feature_services
from feature_repo.feature_views import build_feature_views

FeastObject = Entity | FileSource | FeatureView | FeatureService


def build_definitions(features_dir: Path) -> list[FeastObject]:
    """Entities, data sources, feature views and feature services over ``features_dir``."""
    entity = build_customer()
    sources = build_sources(features_dir)
    views = build_feature_views(sources, entity)
    services = build_feature_services(views)
    return [entity, *sources.values(), *views.values(), *services.values()]
