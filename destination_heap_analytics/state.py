"""The one place that decides when a STATE message may be emitted.

Airbyte's promise: every record before an emitted STATE is in Heap. Records travel in numbered batches, each
of one stream, that Heap may acknowledge in any order. A stream's STATE waits until every batch of that
stream opened before it was acknowledged, whatever the other streams do; a state for the whole source
(GLOBAL, LEGACY: `stream` None) waits for every batch opened before it. The states of one stream, and the
states for the whole source, leave in the order they came.

Each state also says what became of the records of its interval (those since the previous state of its stream,
or of every stream), as Airbyte 1.8+ counts them: those that reached Heap and those rejected (skipped as invalid
or refused by Heap), together the records received. A record counts toward the next state of its own stream and
the next state for every stream; one whose stream cannot be read (an unreadable line), toward the latter only.
Heap's refusals come with the batch's acknowledgement, so a state's figures are final when it may leave.

A STREAM state names its stream by a descriptor that need not match the catalog's key exactly (no namespace
where the catalog has one): `CatalogStreams` says which stream's records it covers, and where that is not
certain, it covers them all. A state never leaves before records it may cover.

Each operation costs constant time (amortized), however many streams, states and batches a sync has.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from destination_heap_analytics.config import StreamKey

State = TypeVar("State")
EVERY_STREAM = None  # the stream of a state that covers them all


class CatalogStreams:
    """Which catalog stream a STREAM state covers, from the descriptor it came with."""

    def __init__(self, catalog: Iterable[StreamKey]) -> None:
        self._catalog = frozenset(catalog)
        names = Counter(name for name, _ in self._catalog)
        self._by_unique_name = {key[0]: key for key in self._catalog if names[key[0]] == 1}

    def covered_by(self, descriptor: StreamKey | None) -> StreamKey | None:
        """The stream the descriptor names exactly; else the one catalog stream of its name (a descriptor
        without the namespace, say); else EVERY_STREAM: a state that matches no one stream waits for all."""
        if descriptor is None:
            return EVERY_STREAM
        if descriptor in self._catalog:
            return descriptor
        return self._by_unique_name.get(descriptor[0], EVERY_STREAM)


@dataclass(slots=True)
class Interval:
    """The records of a stream (or of every stream) between two of its states."""

    received: int = 0
    rejected: int = 0  # skipped as invalid, or refused by Heap

    def destination_stats(self) -> dict[str, float]:
        """A state's destinationStats: the records that reached Heap, and the rejected ones."""
        return {"recordCount": float(self.received - self.rejected), "rejectedRecordCount": float(self.rejected)}


Intervals = tuple[Interval, ...]  # the intervals one record counts toward


class StateLedger(Generic[State]):
    def __init__(self) -> None:
        self._last_opened = 0  # batches are numbered 1, 2, ... in the order their first record arrived
        self._last_opened_of: dict[Hashable, int] = {}  # stream -> the number of its latest batch
        self._stream_of: dict[int, Hashable] = {}  # unacknowledged batch -> its stream
        # Batches in the order opened, of each stream and of all; acknowledged ones leave from the front only,
        # so the front is the oldest batch still awaiting Heap once the acknowledged are dropped from it.
        self._opened_of: dict[Hashable, deque[int]] = {}
        self._opened: deque[int] = deque()
        # stream -> its states waiting, in arrival order: (last batch it covers, arrival number, state, interval)
        self._waiting: dict[Hashable, deque[tuple[int, int, State, Interval]]] = {}
        self._changed: set[Hashable] = set()  # streams whose waiting states may have become releasable
        self._arrivals = 0
        self.pending = 0  # states received and not yet released
        self._filling: defaultdict[Hashable, Interval] = defaultdict(Interval)  # stream -> since its last state
        self._intervals_of: dict[Hashable, Intervals] = {}  # stream -> what its records count toward now
        self._items_of: defaultdict[int, list[Intervals]] = defaultdict(list)  # batch -> each item's intervals
        # batch -> item -> the intervals of the later records merged into it (updates of the same key)
        self._merged_of: defaultdict[int, dict[int, list[Intervals]]] = defaultdict(dict)

    def open_batch(self, stream: Hashable = EVERY_STREAM) -> int:
        """Number a new batch of `stream`; it holds records that came after every STATE already received."""
        self._last_opened += 1
        self._last_opened_of[stream] = self._last_opened
        self._stream_of[self._last_opened] = stream
        self._opened_of.setdefault(stream, deque()).append(self._last_opened)
        self._opened.append(self._last_opened)
        return self._last_opened

    def record_received(self, stream: Hashable = EVERY_STREAM) -> Intervals:
        """A record of `stream` arrived (EVERY_STREAM: a record whose stream is unknown); the intervals it counts
        toward, to pass to record_rejected or record_batched."""
        intervals = self._intervals_of.get(stream)
        if intervals is None:  # the first record since a state: a record counts toward the two next states
            filling = self._filling
            both = (filling[stream],) if stream is EVERY_STREAM else (filling[stream], filling[EVERY_STREAM])
            intervals = self._intervals_of[stream] = both
        for interval in intervals:
            interval.received += 1
        return intervals

    @staticmethod
    def record_rejected(intervals: Intervals) -> None:
        """The record was skipped as invalid before it was sent."""
        for interval in intervals:
            interval.rejected += 1

    def record_batched(self, batch: int, intervals: Intervals) -> None:
        """The record is the next item of `batch`: its fate is known when the batch is acknowledged."""
        self._items_of[batch].append(intervals)

    def record_merged(self, batch: int, position: int, intervals: Intervals) -> None:
        """The record merged into the item at `position` of `batch`: its fate is that item's."""
        self._merged_of[batch].setdefault(position, []).append(intervals)

    def state_received(self, state: State, stream: Hashable = EVERY_STREAM) -> None:
        """A STATE covers every record of its stream received so far (of every stream, for EVERY_STREAM),
        including those in a batch still being filled."""
        last = self._last_opened if stream is EVERY_STREAM else self._last_opened_of.get(stream, 0)
        self._arrivals += 1
        self._waiting.setdefault(stream, deque()).append(
            (last, self._arrivals, state, self._filling.pop(stream, Interval()))
        )
        self._changed.add(stream)
        self.pending += 1
        if stream is EVERY_STREAM:  # every stream's records now count toward the next such state
            self._intervals_of.clear()
        else:
            self._intervals_of.pop(stream, None)

    def acknowledged(self, batch: int, refused: Iterable[int] = ()) -> None:
        """Heap holds every record of this batch but those of the items at the positions `refused`, which it
        refused (each record merged into one of those too)."""
        if batch in self._stream_of:
            self._changed.add(self._stream_of.pop(batch))
            self._changed.add(EVERY_STREAM)
        items = self._items_of.pop(batch, [])
        merged = self._merged_of.pop(batch, {})
        for position in refused:
            self.record_rejected(items[position])
            for intervals in merged.get(position, ()):
                self.record_rejected(intervals)

    def releasable(self) -> list[tuple[State, Interval]]:
        """The states, in arrival order, whose records are all acknowledged, each with its interval's figures;
        each is returned once."""
        released: list[tuple[int, State, Interval]] = []
        for stream in self._changed:
            waiting = self._waiting.get(stream)
            while waiting and self._oldest_unacknowledged(stream) > waiting[0][0]:
                _, arrival, state, interval = waiting.popleft()
                released.append((arrival, state, interval))
            if waiting is not None and not waiting:
                del self._waiting[stream]
        self._changed.clear()
        self.pending -= len(released)
        released.sort(key=lambda entry: entry[0])
        return [(state, interval) for _, state, interval in released]

    def _oldest_unacknowledged(self, stream: Hashable) -> float:
        """The number of the oldest batch (of `stream`, of any for EVERY_STREAM) awaiting Heap; inf if none."""
        opened = self._opened if stream is EVERY_STREAM else self._opened_of.get(stream)
        while opened and opened[0] not in self._stream_of:
            opened.popleft()
        if opened:
            return opened[0]
        if stream is not EVERY_STREAM:
            self._opened_of.pop(stream, None)
        return float("inf")
