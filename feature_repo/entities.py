"""Feast entities: whom the features describe.

One entity, ``customer``, joined on ``customer_id`` (a string, as in the canonical event schema).
"""

from __future__ import annotations

from feast import Entity
from feast.value_type import ValueType

OWNER = "omniscore"
"""Owner recorded on every Feast object of the repository."""


def build_customer() -> Entity:
    """The ``customer`` entity every feature view is keyed on."""
    return Entity(
        name="customer",
        join_keys=["customer_id"],
        value_type=ValueType.STRING,
        description=(
            "A customer of the business, identified across every channel by one customer_id "
            "(integer ids from a source are kept as their decimal string)."
        ),
        owner=OWNER,
        tags={"domain": "customer", "pii": "pseudonymous-id"},
    )
