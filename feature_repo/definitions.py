"""Every Feast object of the repository, built for one explicit OmniScore home.

The definition modules (``entities.py``, ``data_sources.py``, ``feature_views.py``,
``feature_services.py``) expose module-level objects for the home named by
``$OMNISCORE_HOME``, which is what ``feast apply`` run inside ``feature_repo/`` registers.
Code that works on a given home (the CLI, tests, benchmarks) calls :func:`build_definitions`
instead: the same builders, fresh objects, paths under that home only.
"""

from __future__ import annotations

from feast import Entity, FeatureService, FeatureView, FileSource

from feature_repo.config import Settings
from feature_repo.data_sources import build_sources
from feature_repo.entities import build_customer
from feature_repo.feature_services import build_feature_services
from feature_repo.feature_views import build_feature_views

FeastObject = Entity | FileSource | FeatureView | FeatureService


def build_definitions(settings: Settings) -> list[FeastObject]:
    """Entities, data sources, feature views and feature services for ``settings.home``."""
    entity = build_customer()
    sources = build_sources(settings)
    views = build_feature_views(sources, entity)
    services = build_feature_services(views)
    return [entity, *sources.values(), *views.values(), *services.values()]
