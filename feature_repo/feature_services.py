"""Feast feature services: versioned feature contracts.

Training and serving fetch features by service name, so a model is tied to one service
version; changing a service's features means a new ``_vN`` name, never an edit in place.
Which model reads which service is said once, in the model contract
(``training/contract.py``); the Feast repository names no model.
"""

from __future__ import annotations

from feast import FeatureService, FeatureView

from feature_repo.catalog import FEATURE_SERVICES, service_features
from feature_repo.entities import OWNER


def build_feature_service(name: str, views: dict[str, FeatureView]) -> FeatureService:
    """One feature service: the catalog's features for ``name``, projected view by view."""
    wanted = set(service_features(name))
    projections = []
    for view in views.values():
        names = [f.name for f in view.features if f.name in wanted]
        if len(names) == len(view.features):
            projections.append(view)
        elif names:
            projections.append(view[names])
    return FeatureService(
        name=name,
        features=projections,
        description=FEATURE_SERVICES[name],
        owner=OWNER,
        tags={"contract": name.rsplit("_", 1)[-1]},
    )


def build_feature_services(views: dict[str, FeatureView]) -> dict[str, FeatureService]:
    """The three feature services of the catalog, keyed by name."""
    return {name: build_feature_service(name, views) for name in FEATURE_SERVICES}
