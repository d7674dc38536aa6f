"""Stages 1 and 2 together: stdin -> messages -> Heap items, encoded as JSON and ready to batch.

Reading and mapping are most of a record's CPU. With two cores or more they run in a worker process forked
for the sync, which sends the writer each read's results through a pipe: the writer (batching, delivery,
the state ledger) keeps the main process's core to itself, and states are still decided in one place. A
full pipe blocks the worker, which stops reading stdin: back-pressure reaches the source as before.

The worker writes nothing to stdout or stderr (messages leave in order, from one process) and logs nothing:
what the writer must know (a line that is not a message) travels in the results. Set
DESTINATION_HEAP_MAPPING_WORKER=off to read and map in the main process instead.
"""

from __future__ import annotations

import os
import signal
import traceback
from collections.abc import Iterator
from multiprocessing import Pipe
from multiprocessing.connection import Connection

import orjson
from airbyte_cdk.models import AirbyteMessage, FailureType
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

from destination_heap_analytics.mapping import Mapping, Rejection
from destination_heap_analytics.messages import Message, SourceRecord, UnparsableLine

WORKER_SWITCH = "DESTINATION_HEAP_MAPPING_WORKER"

# A record ready for a batch: (the Heap item's JSON, the identity it counts against in Heap's per-identity
# rate limits, notes on adjusted values or None). A plain tuple: it crosses the pipe at half the pickling
# cost of an object with the same fields (measured).
EncodedRecord = tuple[bytes, str | None, list[tuple[str, str]] | None]
Entry = EncodedRecord | Rejection | AirbyteMessage | UnparsableLine
Chunk = list[Entry] | None  # one read's entries, in input order; None: the source has been silent

STREAM_NOT_IN_CATALOG = Rejection("stream_not_in_catalog")


class RecordEncoder:
    """One read's messages -> entries: each record of the catalog's stream mapped and encoded."""

    def __init__(self, mapping: Mapping, stream: str, namespace: str | None) -> None:
        self._mapping = mapping
        self._stream = stream
        self._namespace = namespace

    def encode(self, messages: list[Message]) -> list[Entry]:
        entries: list[Entry] = []
        for message in messages:
            if message.__class__ is not SourceRecord:
                entries.append(message)
            elif message.stream != self._stream or message.namespace != self._namespace:
                entries.append(STREAM_NOT_IN_CATALOG)
            else:
                item = self._mapping.map(message.data, message.emitted_at)
                if item.__class__ is Rejection:
                    entries.append(item)
                else:
                    entries.append((orjson.dumps(item.body), item.identity, item.notes or None))
        return entries


class Intake:
    """The writer's input: chunks of entries, encoded in this process or in a worker."""

    def __init__(self, chunks: Iterator[list[Message] | None], encoder: RecordEncoder) -> None:
        self._chunks = chunks
        self._encoder = encoder
        self._worker: _Worker | None = None
        if os.environ.get(WORKER_SWITCH, "on") != "off" and len(os.sched_getaffinity(0)) > 1:
            self._worker = _Worker(chunks, encoder)

    def __iter__(self) -> Iterator[Chunk]:
        if self._worker is not None:
            yield from self._worker.results()
            return
        for chunk in self._chunks:
            yield None if chunk is None else self._encoder.encode(chunk)

    def stop(self) -> None:
        """No more input (SIGTERM): safe in a signal handler. In this process, the writer's swap of stdin
        for /dev/null already ends a blocked read."""
        if self._worker is not None:
            self._worker.stop()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()


class _Finished:
    """The worker's last result: the end of input, or why it could not go on (no record values)."""

    def __init__(self, failure: str | None = None) -> None:
        self.failure = failure


class _Worker:
    def __init__(self, chunks: Iterator[list[Message] | None], encoder: RecordEncoder) -> None:
        receiver, sender = Pipe(duplex=False)
        self._pid = os.fork()
        if self._pid == 0:
            receiver.close()
            _serve(chunks, encoder, sender)  # never returns
        sender.close()
        self._receiver = receiver
        self._stopped = False

    def results(self) -> Iterator[Chunk]:
        while True:
            try:
                chunk = self._receiver.recv()
            except EOFError:
                if self._stopped:
                    return
                self._fail("ended unexpectedly (it was killed, or ran out of memory)")
            if chunk.__class__ is _Finished:
                if chunk.failure:
                    self._fail(f"failed: {chunk.failure}")
                self.close()
                return
            yield chunk

    def stop(self) -> None:
        self._stopped = True
        self._kill()

    def close(self) -> None:
        self._kill()
        try:
            os.waitpid(self._pid, 0)
        except ChildProcessError:  # already reaped
            pass

    def _kill(self) -> None:
        try:
            os.kill(self._pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _fail(self, problem: str) -> None:
        self.close()
        raise AirbyteTracedException(
            message=f"The process reading and mapping the input {problem}. Run the sync again: it resumes from "
            "the last state.",
            failure_type=FailureType.system_error,
        )


def _serve(chunks: Iterator[list[Message] | None], encoder: RecordEncoder, sender: Connection) -> None:
    """The worker's whole life: encode every read and send it on, then exit without running the parent's
    exit handlers (they belong to the parent)."""
    code = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # SIGTERM is the writer's to handle
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        silent = os.open(os.devnull, os.O_WRONLY)  # holding stdout open would keep the sync's output open
        os.dup2(silent, 1)
        os.dup2(silent, 2)
        for chunk in chunks:
            sender.send(None if chunk is None else encoder.encode(chunk))
        sender.send(_Finished())
    except OSError:  # the writer is gone (stopping, or killed): a silent source still sends a pause a second
        code = 1
    except BaseException as error:  # a bug: the writer reports where, never what the data was
        code = 1
        where = traceback.extract_tb(error.__traceback__)[-1]
        failure = f"{type(error).__name__} at {os.path.basename(where.filename)}:{where.lineno}"
        try:
            sender.send(_Finished(failure))
        except OSError:
            pass
    finally:
        os._exit(code)
