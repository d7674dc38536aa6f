"""One write, end to end: message -> record -> Heap item (mapping) -> batch -> Heap (delivery) ->
acknowledgement -> STATE.

`process_record` maps one record into the open batch; `process_batch` hands a full batch (by items or by
bytes) to the sender, with each item's ordering key: the sender keeps each key's updates in input order.
A user or account property update whose key has an unsent item merges into it (merging.py); such a batch
that would wait for an earlier one still in flight is held back, still merging, until that one is done.
The StateLedger alone decides when a STATE may leave.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from airbyte_cdk.models import FailureType
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

from destination_heap_analytics.client import DeliveryCounters, DeliveryStopped, HeapClient
from destination_heap_analytics.config import HeapConfig, StreamConfig, StreamKey, stream_label
from destination_heap_analytics.delivery import (
    MAX_BATCH_BYTES,
    STOP_CHECK_SECONDS,
    Batch,
    BatchResult,
    BatchSender,
    Route,
)
from destination_heap_analytics.mapping import HeapItem, Mapping, Rejection
from destination_heap_analytics.merging import MERGING_APIS, MergeSlots, merged
from destination_heap_analytics.messages import BadLine, Message, SourceRecord, SourceState
from destination_heap_analytics.pacing import Pacer
from destination_heap_analytics.preflight import ColumnWatch
from destination_heap_analytics.report import StreamFigures, SyncReport
from destination_heap_analytics.state import EVERY_STREAM, CatalogStreams, Intervals, StateLedger

logger = logging.getLogger("airbyte")

TERMINATION_GRACE_SECONDS = 10.0  # after SIGTERM, how long requests in flight may still finish
# A batch open this long goes out with the next message, full or not: a slow source's states keep flowing.
MAX_BATCH_AGE_SECONDS = 1.0
LOOK_AROUND_SECONDS = 0.1  # how often the loop looks at batch ages, acknowledged states and progress
STREAM_NOT_IN_CATALOG = Rejection("stream_not_in_catalog")
ITEM_TOO_LARGE = Rejection("item_too_large")  # a request of its own would pass the batch's byte cap


class StreamLoad:
    """One catalog stream's part of a sync: its mapping, its route to Heap, the batch it is filling and its
    figures."""

    def __init__(self, key: StreamKey, stream: StreamConfig, route: Route, schema: Any = None) -> None:
        self.key = key
        self.figures = StreamFigures()
        self.mapping = Mapping(stream.mapping, key[0])
        self.watch = ColumnWatch(stream, key, schema)  # its first records, for a column none of them has
        self.route = route
        # In single mode every record is its own request: one record a batch lets them all run concurrently.
        self.batch_size = stream.batch_size if stream.bulk else 1
        self.open: Batch | None = None
        self.opened_at = 0.0
        # when its updates merge: its unsent items by key, and its batches held back (closed, not yet sent)
        self.slots: MergeSlots[Batch] | None = MergeSlots() if stream.mapping.api_type in MERGING_APIS else None
        self.held: list[Batch] = []


class SyncWriter:
    def __init__(
        self,
        config: HeapConfig,
        streams: dict[StreamKey, StreamConfig],
        schemas: dict[StreamKey, Any] | None = None,
    ) -> None:
        """`schemas`: each stream's json_schema in the configured catalog (ColumnWatch tells by it whether a
        column a record lacks is data or a mistake)."""
        self._config = config
        self._stop = threading.Event()
        counters = DeliveryCounters()
        pacers: dict[tuple[str, bool], Pacer | None] = {}  # one per limit: streams of one kind share it
        self._loads: dict[StreamKey, StreamLoad] = {}
        for key, stream in streams.items():
            kind = (stream.mapping.api_type, stream.bulk)
            if kind not in pacers:
                pacers[kind] = Pacer.for_api(*kind, config.track_events_per_minute, stream.batch_size, self._stop.wait)
            api_key = stream.api_key if not config.dry_run else None  # a dry run fetches no token
            client = HeapClient(config, pacers[kind], self._stop, counters, api_key)
            self._loads[key] = StreamLoad(key, stream, Route(config, stream, client), (schemas or {}).get(key))
        self._sender = BatchSender(config, self._stop)
        self._ledger: StateLedger[SourceState] = StateLedger()
        self._catalog = CatalogStreams(self._loads)
        self._load_of_batch: dict[int, tuple[StreamLoad, Batch]] = {}  # until acknowledged
        figures = tuple((stream_label(key), load.figures) for key, load in self._loads.items())
        self.report = SyncReport(counters, config.dry_run, streams=figures)
        self._terminated_at: float | None = None  # when SIGTERM arrived
        self._next_look = 0.0  # see _look_around

    def write(self, messages: Iterable[Message], handle_sigterm: bool = False) -> Iterator[SourceState]:
        """Consume the source's messages (None when it is quiet), yielding each STATE once everything before it
        is in Heap. `handle_sigterm`: the process is a command-line sync, which SIGTERM ends gracefully."""
        previous_handler = signal.signal(signal.SIGTERM, self._terminate) if handle_sigterm else None
        outcome = "failed"
        try:
            for message in messages:
                if self._terminated_at is not None:
                    break
                if message is not None:
                    yield from self._process_message(message)
                # a quiet source sends what it has; a slow one, each batch once it has been filling a while
                if message is None or time.monotonic() >= self._next_look:  # a few times a second, not per record
                    yield from self._look_around(quiet=message is None)
            if self._terminated_at is None:
                self._submit_old_batches(max_age=0.0, final=True)
            yield from self._finish()
            outcome = "terminated" if self._terminated_at is not None else "succeeded"
        finally:
            if handle_sigterm:
                signal.signal(signal.SIGTERM, previous_handler)
            self._sender.close()
            self.report.log_summary(outcome)
        if self._terminated_at is not None:
            raise AirbyteTracedException(
                message="The sync was terminated (SIGTERM) before all records were loaded; "
                "states were emitted up to the last record Heap acknowledged. Run it again to resume.",
                failure_type=FailureType.transient_error,
            )
        if self._ledger.pending:
            raise AssertionError("states left unreleased after every batch was acknowledged")

    def _process_message(self, message: Message) -> Iterator[SourceState]:
        kind = message.__class__
        if kind is SourceRecord:
            self.process_record(message)
        elif kind is SourceState:
            stream = self._catalog.covered_by(message.descriptor)
            self._refuse_absent_columns(stream)
            self._ledger.state_received(message, stream)
            yield from self._release(self._sender.collect())
        elif message.record:  # its stream cannot be read: it counts toward states for every stream only
            self.report.read()
            self._ledger.record_rejected(self._ledger.record_received(EVERY_STREAM))
            self.report.unreadable_record(message.number, message.problem)
            self._stop_on_invalid(Rejection("unreadable_record"), message)
        else:
            self.report.unparsable(message.number, message.problem)

    def process_record(self, record: SourceRecord) -> None:
        """Map one record into its stream's open batch; a full batch goes out."""
        key = (record.stream, record.namespace)
        load = self._loads.get(key)
        intervals = self._ledger.record_received(key)
        if load is None:
            self.report.read()
            self._ledger.record_rejected(intervals)
            self._skip(STREAM_NOT_IN_CATALOG)
            return
        self.report.read(load.figures)
        item = load.mapping.map(record.data, record.emitted_at)
        refusal = load.watch.saw(record.data, item) if load.watch.watching else None
        if item.__class__ is Rejection:
            self._ledger.record_rejected(intervals)
            self._skip(item, load)
            self._refuse_config(refusal)
            return
        if item.notes:
            self.report.adjust(item.notes)
        body = _encoded(item.body)
        if len(body) >= MAX_BATCH_BYTES:
            self._ledger.record_rejected(intervals)
            self._skip(ITEM_TOO_LARGE, load)
            return
        if load.slots is not None and self._merged(load, item, len(body), intervals):
            return
        if load.open is not None and load.open.size + len(body) >= MAX_BATCH_BYTES:
            self.process_batch(load)  # full by bytes: it goes without this item
        if load.open is None:
            load.open = Batch(self._ledger.open_batch(load.key), load.route)
            load.opened_at = time.monotonic()
            self._load_of_batch[load.open.number] = (load, load.open)
        batch = load.open
        self._ledger.record_batched(batch.number, intervals)
        if load.slots is not None:
            load.slots.put(item.key, batch, len(batch.bodies), item.body)
        batch.bodies.append(body)
        batch.size += len(body) + 1  # and its comma
        batch.identities.append(item.identity)
        if item.key is not None:
            batch.keys.append(item.key)
        if len(batch.bodies) >= load.batch_size:
            self.process_batch(load)

    def process_batch(self, load: StreamLoad, may_hold: bool = True) -> None:
        """Hand a stream's open batch to the sender (blocking while its window is full), note what finished.
        A batch of merging updates that would wait for an earlier batch still in flight is held back instead,
        unless `may_hold` is False (the end of input: nothing more can merge)."""
        batch, load.open = load.open, None
        if may_hold and load.slots is not None and self._sender.behind(batch):
            load.held.append(batch)
        else:
            self._submit(load, batch)

    def _submit(self, load: StreamLoad, batch: Batch) -> None:
        if load.slots is not None:
            load.slots.sent(batch, batch.keys)
        self._acknowledge(self._sender.submit(batch, while_waiting=self.report.maybe_log_progress))

    def _merged(self, load: StreamLoad, item: HeapItem, size: int, intervals: Intervals) -> bool:
        """Merge a property update into its key's unsent item, if there is one: True if it did. If that would
        pass the byte cap, the batch holding the item goes now, and the update comes after it."""
        slot = load.slots.get(item.key)
        if slot is None:
            return False
        batch, position, earlier = slot
        if batch.size + size >= MAX_BATCH_BYTES:
            if batch is load.open:
                load.open = None
            else:
                load.held.remove(batch)
            self._submit(load, batch)
            return False
        body = merged(earlier, item.body)
        _replace(batch, position, body)
        self._ledger.record_merged(batch.number, position, intervals)
        load.slots.put(item.key, batch, position, body)
        return True

    def _finish(self) -> Iterator[SourceState]:
        """Wait for the batches in flight, releasing states as they are acknowledged; after SIGTERM, only
        for the grace period."""
        while self._sender.in_flight:
            yield from self._release(self._sender.collect(timeout=STOP_CHECK_SECONDS))
            self.report.maybe_log_progress()
            if self._terminated_at is not None and time.monotonic() - self._terminated_at > TERMINATION_GRACE_SECONDS:
                return

    def _terminate(self, signum: int, frame: object) -> None:
        """SIGTERM: no new input, no new attempts. Only flags are set here, so that whatever the main thread
        was doing (mapping, printing a STATE) completes; stdin is swapped for /dev/null so that a read
        blocked on a quiet source returns at once, as end of input."""
        self._terminated_at = time.monotonic()
        self._stop.set()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)

    def _look_around(self, quiet: bool) -> Iterator[SourceState]:
        """What time, not input, calls for: a quiet source sends what it has, a slow one each batch filling for a
        while; states acknowledged meanwhile leave now, not at the next message; progress is logged."""
        self._next_look = time.monotonic() + LOOK_AROUND_SECONDS
        self._submit_old_batches(max_age=0.0 if quiet else MAX_BATCH_AGE_SECONDS)
        if self._ledger.pending:
            yield from self._release(self._sender.collect())
        self.report.maybe_log_progress()

    def _submit_old_batches(self, max_age: float = MAX_BATCH_AGE_SECONDS, final: bool = False) -> None:
        """Send each stream's open batch that has been filling for `max_age` seconds (0: every open batch), and
        the held-back batches no longer behind an unfinished one; at the end of input (`final`), every batch."""
        now = time.monotonic()
        for load in self._loads.values():
            for batch in [batch for batch in load.held if final or not self._sender.behind(batch)]:
                load.held.remove(batch)
                self._submit(load, batch)
            if load.open is not None and now - load.opened_at >= max_age:
                self.process_batch(load, may_hold=not final)

    def _acknowledge(self, results: list[BatchResult]) -> None:
        failure = None
        for result in results:
            if isinstance(result.failure, DeliveryStopped):
                continue  # abandoned because the sync is stopping: never acknowledged, nothing to report
            if result.failure is not None:
                failure = failure or result.failure
                continue
            load, batch = self._load_of_batch.pop(result.number)
            # in records: a merged item stands for each record merged into it, delivered or refused together
            refused = [1 + batch.merged.get(position, 0) for position in result.refused_at]
            merged = sum(batch.merged.values()) - sum(refused) + len(refused)  # into items Heap took
            self.report.sent(batch.records - sum(refused), load.figures, merged)
            for reason, records in zip(result.rejected, refused, strict=True):
                for _ in range(records):
                    self._skip(Rejection(f"rejected_by_heap: {reason}"), load)
            self._ledger.acknowledged(result.number, result.refused_at)
        if failure is not None:
            self._stop.set()
            raise AirbyteTracedException(
                message=str(failure),
                failure_type=FailureType.transient_error if failure.transient else FailureType.config_error,
            )

    def _release(self, results: list[BatchResult]) -> Iterator[SourceState]:
        self._acknowledge(results)
        for state, interval in self._ledger.releasable():
            if self._config.dry_run:
                self.report.state_withheld()
                continue
            # what became of the records since the previous state, as Airbyte 1.8+ counts them (state.py); the
            # platform checks the two together against the source's count
            body = state.message["state"]
            body["destinationStats"] = {**(body.get("destinationStats") or {}), **interval.destination_stats()}
            self.report.states_emitted += 1
            yield state

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

    def _skip(self, rejection: Rejection, load: StreamLoad | None = None) -> None:
        self.report.skip(rejection.describe(), load.figures if load else None)
        self._stop_on_invalid(rejection)

    def _stop_on_invalid(self, rejection: Rejection, line: BadLine | None = None) -> None:
        if self._config.on_invalid_record == "fail":
            self._stop.set()
            where = f"on input line {line.number} ({line.problem})" if line and line.number else ""
            raise AirbyteTracedException(
                message=f"Record {self.report.records_read} is invalid{where and ' ' + where}: "
                f"{rejection.describe()}. Fix the source data or the column mapping, or set on_invalid_record "
                "to skip to count and skip such records.",
                failure_type=FailureType.config_error,
            )


def _replace(batch: Batch, position: int, body: dict[str, Any]) -> None:
    """The batch's item at `position` becomes `body`, one more record merged into it."""
    encoded = _encoded(body)
    batch.size += len(encoded) - len(batch.bodies[position])
    batch.bodies[position] = encoded
    batch.merged[position] = batch.merged.get(position, 0) + 1


def _encoded(body: dict[str, Any]) -> bytes:
    # orjson hands back its whole write buffer (4 kB or more) as the bytes: a window of batches holds
    # thousands of bodies, so each is kept as a right-sized copy
    return bytes(memoryview(orjson.dumps(body)))
