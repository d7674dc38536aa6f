"""One write, end to end: message -> record -> Heap item (mapping) -> batch -> Heap (delivery) ->
acknowledgement -> STATE.

`process_record` maps one record into the open batch; `process_batch` hands a full batch (by items or by
bytes) to the sender, with each item's ordering key: the sender keeps each key's updates in input order.
The StateLedger alone decides when a STATE may leave.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator

import orjson
from airbyte_cdk.models import FailureType
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

from destination_heap_analytics.config import HeapConfig
from destination_heap_analytics.delivery import (
    MAX_BATCH_BYTES,
    STOP_CHECK_SECONDS,
    Batch,
    BatchResult,
    BatchSender,
    DeliveryError,
    DeliveryStopped,
    HeapClient,
)
from destination_heap_analytics.mapping import Mapping, Rejection
from destination_heap_analytics.messages import BadLine, Message, SourceRecord, SourceState
from destination_heap_analytics.pacing import Pacer
from destination_heap_analytics.report import SyncReport
from destination_heap_analytics.state import StateLedger

logger = logging.getLogger("airbyte")

TERMINATION_GRACE_SECONDS = 10.0  # after SIGTERM, how long requests in flight may still finish
# A batch open this long goes out with the next message, full or not: a slow source's states keep flowing.
MAX_BATCH_AGE_SECONDS = 1.0
STREAM_NOT_IN_CATALOG = Rejection("stream_not_in_catalog")
# The field of an item body whose updates must reach Heap in input order (last-write-wins properties, identify,
# deletion); the first one present. Track needs none: events carry their own time.
ORDER_KEY_FIELDS = {
    "add_user_properties": ("identity",),
    "add_account_properties": ("account_id",),
    "identify": ("user_id",),
    "delete_users": ("user_id", "identity"),
}


class SyncWriter:
    def __init__(self, config: HeapConfig, stream: str, namespace: str | None = None) -> None:
        self._config = config
        self._mapping = Mapping(config.mapping, stream)
        self._stream = stream
        self._namespace = namespace or None
        self._stop = threading.Event()
        pacer = Pacer.for_api(
            config.mapping.api_type, config.bulk, config.track_events_per_minute, config.batch_size, self._stop.wait
        )
        self._client = HeapClient(config, pacer, self._stop)
        self._sender = BatchSender(config, self._client, self._stop)
        self._ledger: StateLedger[SourceState] = StateLedger()
        self.report = SyncReport(self._client.counters, config.dry_run)
        self._open: Batch | None = None
        self._opened_at = 0.0
        self._read_at_last_state = 0
        self._terminated_at: float | None = None  # when SIGTERM arrived
        # In single mode every record is its own request: one record a batch lets them all run concurrently.
        self._batch_size = config.batch_size if config.bulk else 1
        self._order_fields = ORDER_KEY_FIELDS.get(config.mapping.api_type, ())

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
                if message is None or self._open_batch_is_old():  # a quiet source, or a slow one
                    self._submit_open_batch()
                    yield from self._release(self._sender.collect())
                self.report.maybe_log_progress()
            if self._terminated_at is None:
                self._submit_open_batch()
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
            self._count_records_behind(message)
            self._ledger.state_received(message)
            yield from self._release(self._sender.collect())
        elif message.record:
            self.report.records_read += 1
            self.report.unreadable_record(message.number, message.problem)
            self._stop_on_invalid(Rejection("unreadable_record"), message)
        else:
            self.report.unparsable(message.number, message.problem)

    def process_record(self, record: SourceRecord) -> None:
        """Map one record into the open batch; a full batch goes out."""
        self.report.records_read += 1
        if record.stream != self._stream or record.namespace != self._namespace:
            self._skip(STREAM_NOT_IN_CATALOG)
            return
        item = self._mapping.map(record.data, record.emitted_at)
        if item.__class__ is Rejection:
            self._skip(item)
            return
        if item.notes:
            self.report.adjust(item.notes)
        body = orjson.dumps(item.body)
        if self._open is not None and self._open.size + len(body) >= MAX_BATCH_BYTES:
            self.process_batch()  # full by bytes: it goes without this item
        if self._open is None:
            self._open = Batch(self._ledger.open_batch())
            self._opened_at = time.monotonic()
        self._open.bodies.append(body)
        self._open.size += len(body) + 1  # and its comma
        self._open.identities.append(item.identity)
        if self._order_fields:
            self._open.keys.append(next((item.body[f] for f in self._order_fields if f in item.body), None))
        if len(self._open.bodies) >= self._batch_size:
            self.process_batch()

    def process_batch(self) -> None:
        """Hand the open batch to the sender (blocking while its window is full) and note what finished."""
        batch, self._open = self._open, None
        self._acknowledge(self._sender.submit(batch, while_waiting=self.report.maybe_log_progress))

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

    def _count_records_behind(self, state: SourceState) -> None:
        """destinationStats.recordCount: the records received since the previous STATE (skipped ones included),
        as Airbyte's own destination framework counts them; the platform compares it with the source's count."""
        behind = self.report.records_read - self._read_at_last_state
        self._read_at_last_state = self.report.records_read
        body = state.message["state"]
        body["destinationStats"] = {**(body.get("destinationStats") or {}), "recordCount": float(behind)}

    def _open_batch_is_old(self) -> bool:
        return self._open is not None and time.monotonic() - self._opened_at >= MAX_BATCH_AGE_SECONDS

    def _submit_open_batch(self) -> None:
        if self._open is not None:
            self.process_batch()

    def _acknowledge(self, results: list[BatchResult]) -> None:
        failure = None
        for result in results:
            if isinstance(result.failure, DeliveryStopped):
                continue  # abandoned because the sync is stopping: never acknowledged, nothing to report
            if result.failure is not None:
                failure = failure or result.failure
                continue
            self.report.records_sent += result.delivered
            for reason in result.rejected:
                self._skip(Rejection(f"rejected_by_heap: {reason}"))
            self._ledger.acknowledged(result.number)
        if failure is not None:
            self._fail_delivery(failure)

    def _release(self, results: list[BatchResult]) -> Iterator[SourceState]:
        self._acknowledge(results)
        for state in self._ledger.releasable():
            if self._config.dry_run:
                self.report.state_withheld()
            else:
                self.report.states_emitted += 1
                yield state

    def _skip(self, rejection: Rejection) -> None:
        self.report.skip(rejection.describe())
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

    def _fail_delivery(self, failure: Exception) -> None:
        self._stop.set()
        transient = isinstance(failure, DeliveryError) and failure.transient
        raise AirbyteTracedException(
            message=str(failure),
            failure_type=FailureType.transient_error if transient else FailureType.config_error,
        )
