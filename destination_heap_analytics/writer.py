"""One write, end to end: encoded record (intake) -> Batch -> Heap (delivery) -> acknowledgement -> STATE.

`process_record` adds one mapped record to the open batch; `process_batch` hands a full batch to the sender.
The StateLedger alone decides when a STATE may leave.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator

from airbyte_cdk.models import AirbyteMessage, AirbyteStateStats, FailureType, Type
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

from destination_heap_analytics.config import HeapConfig
from destination_heap_analytics.delivery import (
    STOP_CHECK_SECONDS,
    Batch,
    BatchResult,
    BatchSender,
    DeliveryError,
    DeliveryStopped,
    HeapClient,
)
from destination_heap_analytics.intake import Chunk, EncodedRecord, Intake, RecordEncoder
from destination_heap_analytics.mapping import Mapping, Rejection
from destination_heap_analytics.messages import UnparsableLine
from destination_heap_analytics.pacing import Pacer
from destination_heap_analytics.report import SyncReport
from destination_heap_analytics.state import StateLedger

logger = logging.getLogger("airbyte")

TERMINATION_GRACE_SECONDS = 10.0  # after SIGTERM, how long requests in flight may still finish
# A batch open this long goes out with the next read, full or not: a slow source's states keep flowing.
MAX_BATCH_AGE_SECONDS = 1.0


class SyncWriter:
    def __init__(self, config: HeapConfig, stream: str, namespace: str | None = None) -> None:
        self._config = config
        self._encoder = RecordEncoder(Mapping(config.mapping), stream, namespace or None)
        self._intake: Intake | None = None
        self._stop = threading.Event()
        pacer = Pacer.for_api(
            config.mapping.api_type, config.bulk, config.track_events_per_minute, config.batch_size, self._stop.wait
        )
        self._client = HeapClient(config, pacer, self._stop)
        self._sender = BatchSender(config, self._client, self._stop)
        self._ledger: StateLedger[AirbyteMessage] = StateLedger()
        self.report = SyncReport(self._client.counters, config.dry_run)
        self._open: Batch | None = None
        self._opened_at = 0.0
        self._read_at_last_state = 0
        self._terminated_at: float | None = None  # when SIGTERM arrived
        # In single mode every record is its own request: one record a batch lets them all run concurrently.
        self._batch_size = config.batch_size if config.bulk else 1

    def write(self, reads: Iterator[bytes | None]) -> Iterator[AirbyteMessage]:
        """Consume stdin (a block of lines a read, None when the source is silent), yielding each STATE once
        everything before it is in Heap."""
        self._intake = Intake(reads, self._encoder)  # before the sender's threads exist: it may fork
        previous_handler = signal.signal(signal.SIGTERM, self._terminate)
        outcome = "failed"
        try:
            for chunk in self._intake:
                if self._terminated_at is not None:
                    break
                if chunk is not None:
                    yield from self._process_chunk(chunk)
                if chunk is None or self._open_batch_is_old():  # a silent source, or a slow one
                    self._submit_open_batch()
                    yield from self._release(self._sender.collect())
            if self._terminated_at is None:
                self._submit_open_batch()
            yield from self._finish()
            outcome = "terminated" if self._terminated_at is not None else "succeeded"
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            self._intake.close()
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

    def _finish(self) -> Iterator[AirbyteMessage]:
        """Wait for the batches in flight, releasing states as they are acknowledged; after SIGTERM, only
        for the grace period."""
        while self._sender.in_flight:
            yield from self._release(self._sender.collect(timeout=STOP_CHECK_SECONDS))
            if self._terminated_at is not None and time.monotonic() - self._terminated_at > TERMINATION_GRACE_SECONDS:
                return

    def _terminate(self, signum: int, frame: object) -> None:
        """SIGTERM: no new input, no new attempts. Only flags are set here, so that whatever the main thread
        was doing (parsing, printing a STATE) completes; stdin is swapped for /dev/null so that a read
        blocked on a stalled source returns at once, as end of input."""
        self._terminated_at = time.monotonic()
        self._stop.set()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)

    def _process_chunk(self, chunk: Chunk) -> Iterator[AirbyteMessage]:
        first_line, entries = chunk
        for entry in entries:
            if self._terminated_at is not None:
                return
            kind = entry.__class__
            if kind is tuple:
                self.process_record(entry)
            elif kind is Rejection:
                self.report.records_read += 1
                self._skip(entry)
            elif kind is UnparsableLine:
                self.report.unparsable(first_line + entry.number)
            elif entry.type == Type.STATE:
                self._count_records_behind(entry)
                self._ledger.state_received(entry)
                yield from self._release(self._sender.collect())

    def process_record(self, record: EncodedRecord) -> None:
        """Add one mapped record to the open batch; a full batch goes out."""
        self.report.records_read += 1
        body, identity, notes = record
        if notes:
            self.report.adjust(notes)
        if self._open is None:
            self._open = Batch(self._ledger.open_batch())
            self._opened_at = time.monotonic()
        self._open.bodies.append(body)
        self._open.identities.append(identity)
        if len(self._open.bodies) >= self._batch_size:
            self.process_batch()

    def process_batch(self) -> None:
        """Hand the open batch to the sender (blocking while its window is full) and note what finished."""
        batch, self._open = self._open, None
        self._acknowledge(self._sender.submit(batch))
        self.report.maybe_log_progress()

    def _count_records_behind(self, state: AirbyteMessage) -> None:
        """destinationStats.recordCount: the records since the previous STATE, each in Heap or counted as
        skipped by the time this state is emitted. Airbyte and PyAirbyte report it as committed."""
        behind = self.report.records_read - self._read_at_last_state
        self._read_at_last_state = self.report.records_read
        state.state.destinationStats = AirbyteStateStats(recordCount=float(behind))

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

    def _release(self, results: list[BatchResult]) -> Iterator[AirbyteMessage]:
        self._acknowledge(results)
        for state in self._ledger.releasable():
            self.report.states_emitted += 1
            yield state

    def _skip(self, rejection: Rejection) -> None:
        self.report.skip(rejection.describe())
        if self._config.on_invalid_record == "fail":
            self._stop.set()
            raise AirbyteTracedException(
                message=f"Record {self.report.records_read} is invalid: {rejection.describe()}. Fix the source "
                "data or the column mapping, or set on_invalid_record to skip to count and skip such records.",
                failure_type=FailureType.config_error,
            )

    def _fail_delivery(self, failure: Exception) -> None:
        self._stop.set()
        transient = isinstance(failure, DeliveryError) and failure.transient
        raise AirbyteTracedException(
            message=str(failure),
            failure_type=FailureType.transient_error if transient else FailureType.config_error,
        )
