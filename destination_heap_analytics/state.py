"""The one place that decides when a STATE message may be emitted.

Airbyte's promise: every record before an emitted STATE is in Heap. Records travel in numbered batches
that Heap may acknowledge in any order; a STATE waits until every batch opened before it was acknowledged,
and states leave in the order they came.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

State = TypeVar("State")


class StateLedger(Generic[State]):
    def __init__(self) -> None:
        self._last_opened = 0  # batches are numbered 1, 2, ... in the order their first record arrived
        self._acknowledged_through = 0  # every batch up to this number is acknowledged
        self._acknowledged_beyond: set[int] = set()
        self._waiting: deque[tuple[int, State]] = deque()

    def open_batch(self) -> int:
        """Number a new batch; it holds records that came after every STATE already received."""
        self._last_opened += 1
        return self._last_opened

    def state_received(self, state: State) -> None:
        """A STATE covers every record received so far, including those in the batch still being filled."""
        self._waiting.append((self._last_opened, state))

    def acknowledged(self, batch: int) -> None:
        """Heap holds every record of this batch (or it was counted as rejected)."""
        self._acknowledged_beyond.add(batch)
        while self._acknowledged_through + 1 in self._acknowledged_beyond:
            self._acknowledged_through += 1
            self._acknowledged_beyond.remove(self._acknowledged_through)

    def releasable(self) -> list[State]:
        """The states, in arrival order, whose records are all acknowledged; each is returned once."""
        released = []
        while self._waiting and self._waiting[0][0] <= self._acknowledged_through:
            released.append(self._waiting.popleft()[1])
        return released

    @property
    def pending(self) -> int:
        return len(self._waiting)
