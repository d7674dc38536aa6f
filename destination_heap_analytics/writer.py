"""One write, end to end: message -> record -> Heap item (mapping) -> lane (delivery) -> fate -> STATE.

The main thread reads the source's messages. Each record gets its entry in the StateLedger's book, is mapped, and
either is rejected at once (its fate booked) or goes as a Heap item to its endpoint's lane, where sender threads take
it into a request (delivery.py). Reading pauses while the window (records whose fate is open) is full. A STATE is
noted in the ledger, which alone says when it may leave; rejected records are in the store, where one is configured,
before a state counting them leaves.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from airbyte_cdk.models import FailureType
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

from destination_heap_analytics.client import DeliveryCounters, DeliveryError, HeapClient
from destination_heap_analytics.config import HeapConfig, StreamConfig, StreamKey, stream_label
from destination_heap_analytics.delivery import MAX_REQUEST_BYTES, Dispatcher, Route
from destination_heap_analytics.lanes import Item, encoded
from destination_heap_analytics.mapping import Mapping, Rejection
from destination_heap_analytics.messages import BadLine, Message, SourceRecord, SourceState
from destination_heap_analytics.pacing import Pacer
from destination_heap_analytics.preflight import ColumnWatch
from destination_heap_analytics.rejected import RejectedRecord, RejectedStore, StorageError, explain
from destination_heap_analytics.report import SyncReport
from destination_heap_analytics.state import EVERY_STREAM, CatalogStreams, Entry, Fate, StateLedger

logger = logging.getLogger("airbyte")

TERMINATION_GRACE_SECONDS = 10.0  # after SIGTERM, how long requests in flight may still finish
LOOK_AROUND_SECONDS = 0.1  # how often the loop looks at acknowledged states, failures and progress
WAIT_SECONDS = 0.25  # how long one wait for Heap lasts before the loop looks around again
MAX_WINDOW_BYTES = 32 * 1024 * 1024  # records' JSON whose fate is open, whatever their number
ITEM_TOO_LARGE = Fate("item_too_large")  # a request of its own would pass the byte cap
UNREADABLE_RECORD = Fate("unreadable_record")


class StreamLoad:
    """One catalog stream's part of a sync: its mapping, its route to Heap, and its first records' watch."""

    def __init__(self, key: StreamKey, stream: StreamConfig, route: Route, schema: Any = None) -> None:
        self.mapping = Mapping(stream.mapping, key[0])
        self.watch = ColumnWatch(stream, key, schema)  # its first records, for a column none of them has
        self.route = route


class SyncWriter:
    def __init__(
        self,
        config: HeapConfig,
        streams: dict[StreamKey, StreamConfig],
        schemas: dict[StreamKey, Any] | None = None,
        store: RejectedStore | None = None,
    ) -> None:
        """`schemas`: each stream's json_schema in the configured catalog (ColumnWatch tells by it whether a column
        a record lacks is data or a mistake); `store`: where rejected records are kept for the user, if anywhere."""
        self._config = config
        self._stop = threading.Event()
        self._store = store
        self._ledger: StateLedger[SourceState] = StateLedger(keep_rejected=store is not None)
        counters = DeliveryCounters()
        routes: dict[tuple[Any, ...], Route] = {}  # streams with the same settings share a route
        pacers: dict[tuple[str, bool], Pacer | None] = {}  # one per limit: streams of one kind share it
        self._loads: dict[StreamKey, StreamLoad] = {}
        for key, stream in streams.items():
            kind = (stream.mapping.api_type, stream.bulk)
            if kind not in pacers:
                pacers[kind] = Pacer.for_api(*kind, config.track_events_per_minute, stream.batch_size, self._stop.wait)
            api_key = stream.api_key if not config.dry_run else None  # a dry run fetches no token
            settings = (*kind, stream.batch_size, api_key)
            if settings not in routes:
                client = HeapClient(config, pacers[kind], self._stop, counters, api_key)
                routes[settings] = Route(config, *kind, stream.batch_size, client)
            self._loads[key] = StreamLoad(key, stream, routes[settings], (schemas or {}).get(key))
        # the window: what may wait for Heap at once, queued as well as in flight, so that no sender idles
        batch_size = max((stream.batch_size for stream in streams.values()), default=1)
        self._window_records = 2 * config.max_concurrent_requests * batch_size
        self._dispatcher = Dispatcher(config, self._ledger, self._stop)
        self._catalog = CatalogStreams(self._loads)
        labels = {key: stream_label(key) for key in self._loads}
        self.report = SyncReport(self._ledger, counters, labels, config.dry_run)
        self._terminated_at: float | None = None  # when SIGTERM arrived
        self._next_look = 0.0  # see _look_around

    def write(self, messages: Iterable[Message], handle_sigterm: bool = False) -> Iterator[SourceState]:
        """Consume the source's messages (None when it is quiet), yielding each STATE once every record before it
        has its fate. `handle_sigterm`: the process is a command-line sync, which SIGTERM ends gracefully."""
        previous_handler = signal.signal(signal.SIGTERM, self._terminate) if handle_sigterm else None
        outcome = "failed"
        try:
            for message in messages:
                if self._terminated_at is not None:
                    break
                self._dispatcher.flush(message is None)  # a quiet source sends what it has
                if message is not None:
                    yield from self._process_message(message)
                if message is None or time.monotonic() >= self._next_look:  # a few times a second, not per record
                    yield from self._look_around()
            yield from self._finish()
            if self._terminated_at is None:
                self._store_rejected(persist=True)  # those after the last state too
            outcome = "terminated" if self._terminated_at is not None else "succeeded"
        finally:
            if handle_sigterm:
                signal.signal(signal.SIGTERM, previous_handler)
            self._dispatcher.close()
            self.report.log_summary(outcome)
        if self._terminated_at is not None:
            raise AirbyteTracedException(
                message="The sync was terminated (SIGTERM) before all records were loaded; "
                "states were emitted up to the last record Heap acknowledged. Run it again to resume.",
                failure_type=FailureType.transient_error,
            )
        if self._ledger.pending:
            raise AssertionError("states left unreleased after every record had its fate")

    def _process_message(self, message: Message) -> Iterator[SourceState]:
        kind = message.__class__
        if kind is SourceRecord:
            self.process_record(message)
        elif kind is SourceState:
            stream = self._catalog.covered_by(message.descriptor)
            self._refuse_absent_columns(stream)
            self._ledger.state_received(message, stream)
            yield from self._release()
        elif message.record:  # its stream cannot be read: it counts toward states for every stream only
            self.report.unreadable_record(message.number, message.problem)
            self._reject(self._ledger.received(EVERY_STREAM), UNREADABLE_RECORD, message)
        else:
            self.report.unparsable(message.number, message.problem)

    def process_record(self, record: SourceRecord) -> None:
        """Map one record into its endpoint's lane, or book it as rejected."""
        key = (record.stream, record.namespace)
        load = self._loads.get(key)
        if load is None:
            self._refuse_unknown_stream(key)
        entry = self._ledger.received(key, record)
        item = load.mapping.map(record.data, record.emitted_at)
        refusal = load.watch.saw(record.data, item) if load.watch.watching else None
        if item.__class__ is Rejection:
            self._reject(entry, Fate(item.reason, item.column))
            self._refuse_config(refusal)
            return
        if item.notes:
            self.report.adjust(item.notes)
        body = encoded(item.body)
        if len(body) >= MAX_REQUEST_BYTES:
            self._reject(entry, ITEM_TOO_LARGE)
            return
        self._ledger.hold(entry, body)
        fields = item.body if load.route.merges else None
        key = item.key if item.key is not None else entry  # an event is its own key: events carry their own time
        self._dispatcher.add(Item(key, load.route, item.identity, [entry], fields, len(body)))
        if self._ledger.open_records >= self._window_records or self._ledger.open_bytes >= MAX_WINDOW_BYTES:
            self._wait_for_room()

    def _wait_for_room(self) -> None:
        """The window is full: everything ready goes now, and reading waits until fates free some room."""
        self._dispatcher.flush()
        while not self._ledger.wait_for_room(self._window_records, MAX_WINDOW_BYTES, WAIT_SECONDS):
            self._raise_failure()
            self.report.maybe_log_progress()
            if self._terminated_at is not None:
                return

    def _finish(self) -> Iterator[SourceState]:
        """Send everything, releasing states as records get their fate; after SIGTERM, only for the grace period."""
        self._dispatcher.flush()
        while self._ledger.open_records:
            if self._terminated_at is not None and (
                not self._dispatcher.in_flight or time.monotonic() - self._terminated_at > TERMINATION_GRACE_SECONDS
            ):
                break
            self._ledger.wait_for_room(self._ledger.open_records, float("inf"), WAIT_SECONDS)  # until one more fate
            yield from self._look_around()
        yield from self._look_around()

    def _look_around(self) -> Iterator[SourceState]:
        """What time, not input, calls for: a failure stops the sync; states whose records all have their fate
        leave now, not at the next message; rejected records go to the store; progress is logged."""
        self._next_look = time.monotonic() + LOOK_AROUND_SECONDS
        self._raise_failure()
        yield from self._release()
        self.report.maybe_log_progress()

    def _release(self) -> Iterator[SourceState]:
        released = self._ledger.releasable()
        self._store_rejected(persist=bool(released))
        for release in released:
            state = release.state
            if self._config.dry_run:
                self.report.state_withheld()
                continue
            # what became of the records since the previous state, as Airbyte 1.8+ counts them (state.py)
            body = state.message["state"]
            body["destinationStats"] = {**(body.get("destinationStats") or {}), **release.destination_stats()}
            self.report.states_emitted += 1
            yield state

    def _store_rejected(self, persist: bool) -> None:
        """Rejected records into the store; `persist`: all of them are in the bucket before a state leaves. An
        unreadable line has no stream to file it under: it is counted, not stored."""
        if self._store is None:
            return
        try:
            for entry, fate in self._ledger.take_rejected():
                if entry.record is not None:
                    self._store.add(_rejected_record(entry.record, fate))
            if persist:
                self._store.persist()
        except StorageError as failure:
            self._stop.set()
            failure_type = FailureType.transient_error if failure.transient else FailureType.config_error
            raise AirbyteTracedException(message=str(failure), failure_type=failure_type) from None

    def _raise_failure(self) -> None:
        failure = self._dispatcher.failure
        if failure is None:
            return
        if not isinstance(failure, DeliveryError):
            raise failure  # a bug, not Heap's answer
        raise AirbyteTracedException(
            message=str(failure),
            failure_type=FailureType.transient_error if failure.transient else FailureType.config_error,
        )

    def _terminate(self, signum: int, frame: object) -> None:
        """SIGTERM: no new input, no new attempts. Only flags are set here, so that whatever the main thread
        was doing (mapping, printing a STATE) completes; stdin is swapped for /dev/null so that a read
        blocked on a quiet source returns at once, as end of input."""
        self._terminated_at = time.monotonic()
        self._stop.set()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)

    def _refuse_unknown_stream(self, key: StreamKey) -> None:
        """A record of a stream the catalog lacks: its mapping is unknown, and a state must not pass it."""
        self._stop.set()
        streams = ", ".join(sorted(stream_label(stream) for stream in self._loads)) or "none"
        raise AirbyteTracedException(
            message=f"A record of stream {stream_label(key)} arrived, but the configured catalog has no such stream "
            f"(it has: {streams}). Add the stream to the connection's catalog, or check the source's stream names.",
            failure_type=FailureType.config_error,
        )

    def _refuse_absent_columns(self, stream: StreamKey | None) -> None:
        """Before a STATE is noted, and so before it can leave: a stream it covers whose every record so far
        lacked the same required column stops the sync (a config mistake must not move the cursor)."""
        loads = self._loads.values() if stream is EVERY_STREAM else [self._loads.get(stream)]
        for load in loads:
            if load is not None and load.watch.watching:
                self._refuse_config(load.watch.at_state())

    def _refuse_config(self, message: str | None) -> None:
        """A config mistake the records revealed (ColumnWatch's refusal): the sync stops."""
        if message is not None:
            self._stop.set()
            raise AirbyteTracedException(message=message, failure_type=FailureType.config_error)

    def _reject(self, entry: Entry, fate: Fate, line: BadLine | None = None) -> None:
        """A record that will not reach Heap; under on_invalid_record "fail", the sync stops instead."""
        if self._config.on_invalid_record == "fail":
            self._stop.set()
            where = f" on input line {line.number} ({line.problem})" if line and line.number else ""
            raise AirbyteTracedException(
                message=f"Record {self.report.totals().read} is invalid{where}: {fate.describe()}. Fix the source "
                "data or the column mapping, or set on_invalid_record to skip to count and skip such records.",
                failure_type=FailureType.config_error,
            )
        self._ledger.rejected([entry], fate)


def _rejected_record(record: SourceRecord, fate: Fate) -> RejectedRecord:
    message = explain(fate.reason) + (f" Heap's answer: {fate.refusal}." if fate.refusal else "")
    return RejectedRecord(
        record.stream, record.namespace, record.data, record.emitted_at, fate.reason, fate.column, message
    )
