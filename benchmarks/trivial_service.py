"""The smallest BentoML service: one JSON endpoint that echoes its input's length.

The serving benchmark times it next to OmniScore's ``/score`` so that every run also reports
what BentoML and the HTTP client cost on that machine before any feature read or model.
"""

from __future__ import annotations

import bentoml


@bentoml.service(name="omniscore-trivial", workers=1, http={"host": "127.0.0.1"})
class Trivial:
    """Echoes how many ids it was sent."""

    @bentoml.api(route="/echo")
    def echo(self, customer_ids: list[str]) -> dict:
        """Count of ids received."""
        return {"count": len(customer_ids)}
