"""Heap items -> requests: each Heap endpoint's one ordering point, whatever stream its records come from.

Heap keeps the last write of user and account properties, and identify and user deletion depend on order, so the
items of one key (an identity, account ID or user_id: `HeapItem.key`) must reach Heap in input order, across every
stream sent to the same endpoint. A `Lane` owns each key's queue there: a key has at most one item in a request at a
time, and its next item becomes ready only when that request is done. Items of different keys go out together and
in any order; track events have no key (they carry their own time), so each is its own.

Merging. Heap sets properties by name and never removes one on an update, so consecutive updates of one user or
account are one update with the union of their properties, later values winning: Heap ends in the same state, with
one item instead of many. An update merges into its key's last item still waiting here (never into one already in a
request). The item keeps each record (`Entry`) it was built from: if Heap refuses it, `halves` splits the records
into two items, sent one after the other, until only the records Heap refuses on their own are left out.

A Lane is a plain data structure: the `Dispatcher` (delivery.py) calls it under its one lock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import orjson

from destination_heap_analytics.state import Entry

MERGING_APIS = frozenset({"add_user_properties", "add_account_properties"})


def merged(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """Two property updates of one key as one item body: the union of their properties, the later's values
    winning (a dict keeps the earlier's key order, which Heap ignores)."""
    return {**earlier, **later, "properties": {**earlier["properties"], **later["properties"]}}


def encoded(body: dict[str, Any]) -> bytes:
    # orjson hands back its whole write buffer (4 kB or more) as the bytes: a window holds thousands of
    # bodies, so each is kept as a right-sized copy
    return bytes(memoryview(orjson.dumps(body)))


@dataclass(slots=True, eq=False)
class Item:
    """One Heap item on its way: the records it was built from (several where updates merged), where it goes
    (`route`: the stream's Route, see delivery.py), and what refusals have shown about it so far."""

    key: Hashable
    route: Any
    identity: str | None
    entries: list[Entry]
    fields: dict[str, Any] | None = None  # a merging lane's body, while it may take more updates
    size: int = 0  # its records' JSON: at least the item's own
    born: float = field(default_factory=time.monotonic)
    lone_refusals: int = 0  # refused alone, without Heap naming it
    refused_at: int | None = None  # the endpoint's acceptances when a request holding it was first refused

    def body(self) -> bytes:
        """The item's JSON, as Heap receives it."""
        if len(self.entries) == 1:
            return self.entries[0].body
        return encoded(self.fields)

    def halves(self) -> tuple[Item, Item]:
        """A merged item as two, each of half its records merged, in input order."""
        middle = len(self.entries) // 2
        return self._of(self.entries[:middle]), self._of(self.entries[middle:])

    def _of(self, entries: list[Entry]) -> Item:
        bodies = [orjson.loads(entry.body) for entry in entries]
        fields = bodies[0]
        for body in bodies[1:]:
            fields = merged(fields, body)
        return Item(
            self.key, self.route, self.identity, entries, fields, sum(len(entry.body) for entry in entries),
            self.born, refused_at=self.refused_at,
        )


class Lane:
    """One endpoint's keys: the items of each waiting (in input order), which keys have an item in a request,
    and the keys whose next item may go now, by route, oldest first."""

    def __init__(self, merges: bool, max_item_bytes: int) -> None:
        self._merges = merges
        self._max_item_bytes = max_item_bytes
        self._waiting: dict[Hashable, deque[Item]] = {}  # key -> its items not yet in a request
        self._busy: set[Hashable] = set()  # keys with an item in a request
        self.ready: dict[Any, dict[Hashable, None]] = {}  # route -> keys whose first waiting item may go

    def add(self, item: Item) -> bool:
        """Queue an item behind its key's earlier ones; True if it merged into the last of them instead."""
        waiting = self._waiting.get(item.key)
        if waiting is None:
            self._waiting[item.key] = deque((item,))
            if item.key not in self._busy:
                self.ready.setdefault(item.route, {})[item.key] = None
            return False
        last = waiting[-1]
        if self._merges and last.size + item.size < self._max_item_bytes:
            last.fields = merged(last.fields, item.fields)
            last.entries.extend(item.entries)
            last.size += item.size
            return True
        waiting.append(item)
        return False

    def oldest(self, route: Any) -> float:
        """When the first ready item of `route` was queued (inf if none)."""
        keys = self.ready.get(route)
        if not keys:
            return float("inf")
        return self._waiting[next(iter(keys))][0].born

    def take(self, route: Any, items: int, size: int) -> list[Item]:
        """Up to `items` ready items of `route` (oldest first) for one request of at most `size` bytes; their
        keys are busy until `done`."""
        keys = self.ready.get(route, {})
        taken: list[Item] = []
        total = 0
        while keys and len(taken) < items:
            key = next(iter(keys))
            waiting = self._waiting[key]
            if taken and total + waiting[0].size + 1 > size:
                break
            del keys[key]
            item = waiting.popleft()
            if not waiting:
                del self._waiting[key]
            self._busy.add(key)
            taken.append(item)
            total += item.size + 1
        if not keys:
            self.ready.pop(route, None)
        return taken

    def done(self, items: list[Item]) -> None:
        """The request holding these items is over: their keys' next items may go."""
        for item in items:
            self._busy.discard(item.key)
            waiting = self._waiting.get(item.key)
            if waiting:
                self.ready.setdefault(waiting[0].route, {})[item.key] = None
