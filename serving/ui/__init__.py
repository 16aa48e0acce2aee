"""The customer page: one static HTML file (``index.html``, inline CSS and JS, no build step,
no CDN) served at ``/ui``, and the one extra read it needs, the segments' profiles.

The page is served without the API key; it asks for the key once (kept in the browser's
local storage) and sends it as ``Authorization: Bearer <key>`` on every data call:
``GET /customers/{id}`` (polled every 1.5 s, so the page follows new events),
``POST /score`` with ``explain`` (reasons per channel) and ``GET /ui/api/segments``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

PAGE = Path(__file__).resolve().parent / "index.html"
PROFILE_FEATURES = 40
"""Features per segment profile sent to the page (the model's first inputs)."""


@cache
def page_bytes() -> bytes:
    """The page, read once."""
    return PAGE.read_bytes()


def segment_profiles(models) -> dict:
    """Every segment of the served segments model: id, name, share of the training
    population, and its median per input feature beside the population's (size-weighted)."""
    seg = models.segments.model.segments
    features = list(seg.features)
    sizes = [float(s) for s in seg.sizes]
    total = sum(sizes) or 1.0
    population = [
        sum(size * row[j] for size, row in zip(sizes, seg.centroids_raw, strict=True)) / total
        for j in range(len(features))
    ]
    segments = []
    for sid, name, size, row in zip(seg.ids, seg.names, sizes, seg.centroids_raw, strict=True):
        segments.append(
            {
                "id": int(sid),
                "name": str(name),
                "share": size / total,
                "profile": [
                    {"feature": f, "median": float(row[j]), "population": float(population[j])}
                    for j, f in enumerate(features[:PROFILE_FEATURES])
                ],
            }
        )
    return {"version": models.versions["segments"], "segments": segments}


def ui_app(current_service: Callable):
    """The ASGI app mounted at ``/ui``: the page at ``/ui/`` and ``GET /ui/api/segments``."""
    from fastapi import FastAPI
    from starlette.responses import JSONResponse, Response

    app = FastAPI(title="omniscore page", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(
            page_bytes(),
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    @app.get("/api/segments", include_in_schema=False)
    async def segments() -> JSONResponse:
        service = current_service()
        models = getattr(service, "models", None)
        if models is None:
            return JSONResponse(
                {"error": "not_ready", "message": "models not loaded"}, status_code=503
            )
        return JSONResponse(segment_profiles(models))

    return app
