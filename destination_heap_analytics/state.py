"""The book of record fates, and the one place that decides when a STATE may leave.

Every record the sync receives gets an `Entry` here, and its fate is booked once: delivered (Heap acknowledged the
item holding it) or rejected (with its reason: skipped by the mapping, refused by Heap, too large). Every figure is
derived from these bookings: each STATE's `destinationStats`, each stream's figures, the sync's totals, and the
window (the records received whose fate is still open, and their bytes: reading pauses while it is full).

A STATE covers the records of its stream received before it (of every stream, for a GLOBAL or LEGACY state, or a
STREAM state `CatalogStreams` cannot pin on one catalog stream). It leaves once every one of them has its fate,
with the figures of its interval: the records it is the first state to cover, so that each record counts in
exactly one state's figures (`recordCount` delivered, `rejectedRecordCount` rejected: together, the records
received, as Airbyte 1.8+ checks them). States of one stream, and states for every stream, leave in arrival order.

Records arrive on the main thread; fates are booked by sender threads: everything here runs under one lock.
Each operation costs constant time (amortized), however many streams, states and records a sync has.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from destination_heap_analytics.config import StreamKey

State = TypeVar("State")
EVERY_STREAM = None  # the stream of a state that covers them all, and of a record whose stream is unknown


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


@dataclass(slots=True, eq=False)
class Interval:
    """The records of one stream received between two states covering it; the later state reports them."""

    received: int = 0
    delivered: int = 0
    rejected: int = 0
    closed_at: int = 0  # the arrival number of the state that closed it; 0 while it is filling

    @property
    def settled(self) -> bool:
        return self.delivered + self.rejected == self.received


@dataclass(slots=True, eq=False)
class Entry:
    """One record in the book: where its fate counts, its Heap item's JSON while it is in the window, and the
    record as received (only where rejected records are stored)."""

    stream: Hashable
    interval: Interval
    record: Any = None
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Fate:
    """Why a record was rejected: a reason from a fixed list, the config column at fault if one, and Heap's refusal
    (its field path and rule) if Heap refused it. Never holds the record's values."""

    reason: str
    column: str | None = None
    refusal: str | None = None

    def describe(self) -> str:
        """The reason as figures count it: `missing_identity (column email)`, `rejected_by_heap: <path> <rule>`."""
        if self.refusal:
            return f"{self.reason}: {self.refusal}"
        return f"{self.reason} (column {self.column})" if self.column else self.reason


@dataclass
class StreamFigures:
    """What became of one stream's records (EVERY_STREAM: the lines whose stream is unknown)."""

    read: int = 0
    delivered: int = 0
    items: int = 0  # Heap items delivered: fewer than the records delivered where updates of a key merged
    rejected: Counter[str] = field(default_factory=Counter)  # by Fate.describe()


@dataclass(slots=True)
class Release(Generic[State]):
    state: State
    delivered: int
    rejected: int

    def destination_stats(self) -> dict[str, float]:
        return {"recordCount": float(self.delivered), "rejectedRecordCount": float(self.rejected)}


class StateLedger(Generic[State]):
    def __init__(self, keep_rejected: bool = False) -> None:
        self._lock = threading.Condition()
        self.figures: dict[Hashable, StreamFigures] = {}
        self.open_records = 0  # received, fate not yet booked: the window
        self.open_bytes = 0  # their items' JSON
        self._keep_rejected = keep_rejected
        self._rejected: list[tuple[Entry, Fate]] = []  # for the store of rejected records, until taken
        self._filling: dict[Hashable, Interval] = {}  # stream -> its interval no state has closed yet
        self._closed_of: dict[Hashable, deque[Interval]] = {}  # stream -> its closed intervals, oldest first
        self._closed: deque[Interval] = deque()  # every stream's closed intervals, oldest first
        # stream (EVERY_STREAM: the states covering all) -> its states waiting: (arrival, state, intervals)
        self._waiting: dict[Hashable, deque[tuple[int, State, list[Interval]]]] = {}
        self._changed: set[Hashable] = set()  # streams whose waiting states may have become releasable
        self._arrivals = 0
        self.pending = 0  # states received and not yet released

    # -- records ------------------------------------------------------------------------------------------------

    def received(self, stream: Hashable, record: Any = None) -> Entry:
        """A record of `stream` arrived (EVERY_STREAM: one whose stream cannot be read)."""
        with self._lock:
            interval = self._filling.get(stream)
            if interval is None:
                interval = self._filling[stream] = Interval()
            interval.received += 1
            self._figures(stream).read += 1
            self.open_records += 1
            return Entry(stream, interval, record if self._keep_rejected else None)

    def hold(self, entry: Entry, body: bytes) -> None:
        """The record is on its way to Heap as `body`: its bytes count in the window until its fate is booked."""
        entry.body = body
        with self._lock:
            self.open_bytes += len(body)

    def delivered(self, entries: list[Entry]) -> None:
        """Heap acknowledged one item holding these records."""
        with self._lock:
            for entry in entries:
                entry.interval.delivered += 1
                self._figures(entry.stream).delivered += 1
                self._settle(entry)
            self._figures(entries[0].stream).items += 1
            self._lock.notify_all()

    def rejected(self, entries: list[Entry], fate: Fate) -> None:
        """These records will not reach Heap, for `fate`'s reason."""
        with self._lock:
            for entry in entries:
                entry.interval.rejected += 1
                self._figures(entry.stream).rejected[fate.describe()] += 1
                if self._keep_rejected:
                    self._rejected.append((entry, fate))
                self._settle(entry)
            self._lock.notify_all()

    def snapshot(self) -> dict[Hashable, StreamFigures]:
        """Each stream's figures as they stand (copies: sender threads go on booking)."""
        with self._lock:
            return {
                stream: StreamFigures(figures.read, figures.delivered, figures.items, Counter(figures.rejected))
                for stream, figures in self.figures.items()
            }

    def take_rejected(self) -> list[tuple[Entry, Fate]]:
        """The rejected records booked since the last call, for the store."""
        with self._lock:
            taken, self._rejected = self._rejected, []
            return taken

    def wait_for_room(self, records: int, size: int, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the window to be under `records` and `size` bytes; True if it is."""
        with self._lock:
            return self._lock.wait_for(lambda: self.open_records < records and self.open_bytes < size, timeout)

    def _settle(self, entry: Entry) -> None:
        self.open_records -= 1
        self.open_bytes -= len(entry.body)
        entry.body = b""
        if entry.interval.closed_at and entry.interval.settled:
            self._changed.add(entry.stream)
            self._changed.add(EVERY_STREAM)

    def _figures(self, stream: Hashable) -> StreamFigures:
        figures = self.figures.get(stream)
        if figures is None:
            figures = self.figures[stream] = StreamFigures()
        return figures

    # -- states -------------------------------------------------------------------------------------------------

    def state_received(self, state: State, stream: Hashable = EVERY_STREAM) -> None:
        """A STATE covering every record of `stream` received so far (of every stream, for EVERY_STREAM)."""
        with self._lock:
            self._arrivals += 1
            streams = list(self._filling) if stream is EVERY_STREAM else [stream]
            intervals = []
            for closing in streams:
                interval = self._filling.pop(closing, None)
                if interval is not None:
                    interval.closed_at = self._arrivals
                    if closing is not EVERY_STREAM:  # unreadable lines': only states for every stream wait for them
                        self._closed_of.setdefault(closing, deque()).append(interval)
                    self._closed.append(interval)
                    intervals.append(interval)
                    self._changed.add(closing)
            self._waiting.setdefault(stream, deque()).append((self._arrivals, state, intervals))
            self._changed.add(stream)
            self.pending += 1

    def releasable(self) -> list[Release[State]]:
        """The states, in arrival order, whose records all have their fate, each with its interval's figures;
        each is returned once."""
        with self._lock:
            released: list[tuple[int, Release[State]]] = []
            for stream in self._changed:
                settled_through = self._settled_through(stream)  # and the settled intervals dropped, waited for or not
                waiting = self._waiting.get(stream)
                while waiting and settled_through > waiting[0][0]:
                    arrival, state, intervals = waiting.popleft()
                    delivered = sum(interval.delivered for interval in intervals)
                    rejected = sum(interval.rejected for interval in intervals)
                    released.append((arrival, Release(state, delivered, rejected)))
                if waiting is not None and not waiting:
                    del self._waiting[stream]
            self._changed.clear()
            self.pending -= len(released)
            released.sort(key=lambda entry: entry[0])
            return [release for _, release in released]

    def _settled_through(self, stream: Hashable) -> float:
        """The arrival number of the state that closed the oldest interval of `stream` (of any, for EVERY_STREAM)
        still open; inf if none: every state of it arrived before that may leave."""
        closed = self._closed if stream is EVERY_STREAM else self._closed_of.get(stream)
        while closed and closed[0].settled:
            closed.popleft()
        if closed:
            return closed[0].closed_at
        if stream is not EVERY_STREAM:
            self._closed_of.pop(stream, None)
        return float("inf")
