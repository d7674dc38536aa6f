"""The one place that decides when a STATE message may be emitted.

Airbyte's promise: every record before an emitted STATE is in Heap. Records travel in numbered batches, each
of one stream, that Heap may acknowledge in any order. A stream's STATE waits until every batch of that
stream opened before it was acknowledged, whatever the other streams do; a state for the whole source
(GLOBAL, LEGACY: `stream` None) waits for every batch opened before it. The states of one stream, and the
states for the whole source, leave in the order they came.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Hashable
from typing import Generic, TypeVar

State = TypeVar("State")
EVERY_STREAM = None  # the stream of a state that covers them all


class StateLedger(Generic[State]):
    def __init__(self) -> None:
        self._last_opened = 0  # batches are numbered 1, 2, ... in the order their first record arrived
        self._last_opened_of: dict[Hashable, int] = {}  # stream -> the number of its latest batch
        self._stream_of: dict[int, Hashable] = {}  # unacknowledged batch -> its stream
        # stream -> its states waiting, in arrival order: (last batch it covers, arrival number, state)
        self._waiting: defaultdict[Hashable, deque[tuple[int, int, State]]] = defaultdict(deque)
        self._arrivals = 0

    def open_batch(self, stream: Hashable = EVERY_STREAM) -> int:
        """Number a new batch of `stream`; it holds records that came after every STATE already received."""
        self._last_opened += 1
        self._last_opened_of[stream] = self._last_opened
        self._stream_of[self._last_opened] = stream
        return self._last_opened

    def state_received(self, state: State, stream: Hashable = EVERY_STREAM) -> None:
        """A STATE covers every record of its stream received so far (of every stream, for EVERY_STREAM),
        including those in a batch still being filled."""
        last = self._last_opened if stream is EVERY_STREAM else self._last_opened_of.get(stream, 0)
        self._arrivals += 1
        self._waiting[stream].append((last, self._arrivals, state))

    def acknowledged(self, batch: int) -> None:
        """Heap holds every record of this batch (or it was counted as rejected)."""
        self._stream_of.pop(batch, None)

    def releasable(self) -> list[State]:
        """The states, in arrival order, whose records are all acknowledged; each is returned once."""
        released: list[tuple[int, State]] = []
        for stream, waiting in self._waiting.items():
            while waiting and self._covered(stream, waiting[0][0]):
                _, arrival, state = waiting.popleft()
                released.append((arrival, state))
        return [state for _, state in sorted(released, key=lambda pair: pair[0])]

    @property
    def pending(self) -> int:
        return sum(len(waiting) for waiting in self._waiting.values())

    def _covered(self, stream: Hashable, last: int) -> bool:
        """No batch numbered up to `last` (of `stream`, or of any stream for EVERY_STREAM) awaits Heap."""
        return not any(
            number <= last and (stream is EVERY_STREAM or of == stream) for number, of in self._stream_of.items()
        )
