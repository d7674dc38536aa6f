"""Which updates of one key may travel as one Heap item, and how they combine.

Heap sets user and account properties by name, keeps the last value written, and never removes a property on
an update. So consecutive updates of one identity or account ID are one update with the union of their
properties, later values winning: Heap ends in the same state, in one item instead of many. A stream of updates
to few keys (an orders table mapped to "last order total", a CDC stream of a users table) then takes a few
requests instead of one request after another, each waiting for the key's previous one.

Nothing else merges. Track events are events, each one kept. Identify and user deletion depend on order and
are rare; even an exact repeat is left as it came.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

MERGING_APIS = frozenset({"add_user_properties", "add_account_properties"})
Batch = TypeVar("Batch")


def merged(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """Two property updates of one key as one item body: the union of their properties, the later's values
    winning (a dict keeps the earlier's key order, which Heap ignores)."""
    return {**earlier, **later, "properties": {**earlier["properties"], **later["properties"]}}


class MergeSlots(Generic[Batch]):
    """A stream's unsent items by key: the batch holding each key's item (the one filling, or one held back
    behind an earlier batch still in flight), its position there, and its body. A key has at most one unsent
    item in its stream, so an update either merges into it or comes after every earlier one already sent."""

    def __init__(self) -> None:
        self._slots: dict[str, tuple[Batch, int, dict[str, Any]]] = {}

    def get(self, key: str) -> tuple[Batch, int, dict[str, Any]] | None:
        return self._slots.get(key)

    def put(self, key: str, batch: Batch, position: int, body: dict[str, Any]) -> None:
        self._slots[key] = (batch, position, body)

    def sent(self, batch: Batch, keys: list[str]) -> None:
        """The batch went to the sender: its items take no more updates."""
        for key in keys:
            slot = self._slots.get(key)
            if slot is not None and slot[0] is batch:
                del self._slots[key]
