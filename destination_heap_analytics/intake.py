"""Stages 1 and 2 together: stdin lines -> messages -> Heap items, encoded as JSON and ready to batch.

Parsing and mapping are most of a record's CPU. With two cores or more they run in worker processes forked
for the sync: the main process reads stdin and deals each read's block of lines to the least busy worker, and
takes their results back in input order. The writer (batching, delivery, the state ledger) stays in the main
process, so states are still decided in one place, and a worker holds two reads at most (the one it encodes
and the next): memory stays bounded and back-pressure still reaches the source.

Workers write nothing to stdout or stderr (messages leave in order, from one process) and log nothing: what
the writer must know (a line that is not a message) travels in the results. A worker whose input pipe closes
(the sync is over, or the main process was killed) exits. Set DESTINATION_HEAP_MAPPING_WORKER=off to parse
and map in the main process instead.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import traceback
from collections import deque
from collections.abc import Iterator
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path

import orjson
from airbyte_cdk.models import AirbyteMessage, FailureType
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

from destination_heap_analytics.mapping import Mapping, Rejection
from destination_heap_analytics.messages import SourceRecord, UnparsableLine, parse_line, split_lines

logger = logging.getLogger("airbyte")

WORKER_SWITCH = "DESTINATION_HEAP_MAPPING_WORKER"
PIPE_BYTES = 1 << 20  # more than two reads (messages.READ_SIZE): a worker's next read waits in its pipe
READS_HELD = 2  # by a worker at a time: the one it works on and the next, so it never waits for the writer
MESSAGE_HEADER_BYTES = 12  # the most a Connection adds to the bytes it sends (a length of up to 8 bytes and more)
MAX_WORKERS = 4  # past this the writer's own core and Heap's rate limits bound a sync, not mapping
# A container's CPU limit: cgroup v2's "<quota µs> <period µs>" (quota "max": none), or v1's two files
CPU_MAX_FILE = "/sys/fs/cgroup/cpu.max"
CFS_FILES = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")

# A record ready for a batch: (the Heap item's JSON, the identity it counts against in Heap's per-identity
# rate limits, notes on adjusted values or None). A plain tuple: it crosses a pipe at half the pickling cost
# of an object with the same fields (measured).
EncodedRecord = tuple[bytes, str | None, list[tuple[str, str]] | None]
Entry = EncodedRecord | Rejection | AirbyteMessage | UnparsableLine
Encoded = tuple[int, list[Entry]]  # a read's number of lines, and its entries in input order
Chunk = tuple[int, list[Entry]]  # the number of a read's first line, and its entries in input order

STREAM_NOT_IN_CATALOG = Rejection("stream_not_in_catalog")


class RecordEncoder:
    """One read's block of lines -> entries: each record of the catalog's stream mapped and encoded, other messages
    as they are, and a line that is not a message by its number in the block only (counted from 0)."""

    def __init__(self, mapping: Mapping, stream: str, namespace: str | None) -> None:
        self._mapping = mapping
        self._stream = stream
        self._namespace = namespace

    def encode(self, block: bytes) -> Encoded:
        lines = split_lines(block)
        entries: list[Entry] = []
        for number, line in enumerate(lines):
            message = parse_line(line)
            if message.__class__ is not SourceRecord:
                if message is not None:
                    entries.append(message)
                elif line.strip():
                    entries.append(UnparsableLine(number))
            elif message.stream != self._stream or message.namespace != self._namespace:
                entries.append(STREAM_NOT_IN_CATALOG)
            else:
                item = self._mapping.map(message.data, message.emitted_at)
                if item.__class__ is Rejection:
                    entries.append(item)
                else:
                    entries.append((orjson.dumps(item.body), item.identity, item.notes or None))
        return len(lines), entries


class Intake:
    """The writer's input: each read's entries in input order, encoded here or by worker processes."""

    def __init__(self, reads: Iterator[bytes | None], encoder: RecordEncoder) -> None:
        self._reads = reads
        self._encoder = encoder
        self._pool: _WorkerPool | None = None
        cores = usable_cores()
        if cores > 1 and os.environ.get(WORKER_SWITCH, "on") != "off":
            try:
                self._pool = _WorkerPool(encoder, min(cores, MAX_WORKERS))
            except OSError as error:  # no process to spare (a container's pid limit): slower, not wrong
                logger.warning(f"Could not start worker processes ({error}); parsing and mapping in this one.")

    def __iter__(self) -> Iterator[Chunk | None]:  # None: the source has been silent
        if self._pool is not None:
            encoded_reads = self._pool.results(self._reads)
        else:
            encoded_reads = (None if block is None else self._encoder.encode(block) for block in self._reads)
        first_line = 1
        for encoded in encoded_reads:
            if encoded is None:
                yield None
                continue
            lines, entries = encoded
            yield first_line, entries
            first_line += lines

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


def usable_cores() -> int:
    """The cores this process may run on, and no more than its container's CPU limit allows: a container
    limited to one CPU on a 16-core host would only slow down under 16 workers."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open(CPU_MAX_FILE) as cpu_max:
            quota, period = cpu_max.read().split()
    except (OSError, ValueError):
        try:
            quota, period = (Path(name).read_text() for name in CFS_FILES)
        except OSError:
            return cores
    limit = cpus_allowed(quota, period)
    return cores if limit is None else min(cores, limit)


def cpus_allowed(quota: str, period: str) -> int | None:
    """A CPU quota per period as whole CPUs, rounded up; None when there is no limit."""
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max"
        return None
    return max(1, -(-quota_us // period_us)) if quota_us > 0 and period_us > 0 else None


class _Worker:
    """The main process's side of a worker: its pid, where its reads go and where their entries come from, and
    the reads it holds (sent, not yet answered)."""

    def __init__(self, pid: int, reads: Connection, results: Connection, pipe_bytes: int) -> None:
        self.pid = pid
        self.reads = reads
        self.results = results
        self.pipe_bytes = pipe_bytes  # what its reads pipe holds; 0 if unknown
        self.held: deque[int] = deque()  # the sizes of the reads it holds, oldest first (two at most)

    @property
    def held_bytes(self) -> int:
        return sum(self.held)

    def takes_without_waiting(self, size: int) -> bool:
        """Whether a read of `size` bytes can be sent without the send ever waiting. A worker holding no read is
        waiting for one, so it takes any size; one that holds a read may not have taken it out of its pipe yet,
        and it may itself be waiting for the writer to take its results: the pipe must hold both."""
        if not self.held:
            return True
        return len(self.held) < READS_HELD and self.held_bytes + size + 2 * MESSAGE_HEADER_BYTES <= self.pipe_bytes


class _WorkerPool:
    def __init__(self, encoder: RecordEncoder, size: int) -> None:
        # per worker: (reads to it: receiving end, sending end), (its results: receiving end, sending end)
        pipes = [(Pipe(duplex=False), Pipe(duplex=False)) for _ in range(size)]
        read_pipe_bytes = [_widen(ends[0][1]) for ends in pipes]
        for ends in pipes:
            _widen(ends[1][1])
        self._workers: list[_Worker] = []
        for index, ((reads_in, reads_out), (results_in, results_out)) in enumerate(pipes):
            try:
                pid = os.fork()
            except OSError:
                self.close()
                _close_ends(pipes)
                raise
            if pid == 0:
                # Only its own two ends stay open: a sibling's would keep that sibling's input from closing.
                _close_ends(pipes[:index] + pipes[index + 1 :])
                reads_out.close()
                results_in.close()
                _serve(encoder, reads_in, results_out)  # never returns
            self._workers.append(_Worker(pid, reads_out, results_in, read_pipe_bytes[index]))
        for (reads_in, _), (_, results_out) in pipes:
            reads_in.close()
            results_out.close()

    def results(self, reads: Iterator[bytes | None]) -> Iterator[Encoded | None]:
        """Deal reads to the workers, the least busy first; yield what they encoded in input order. A send never
        waits on a worker that may be waiting to send its results (see _Worker.takes_without_waiting)."""
        order: deque[_Worker] = deque()  # the worker of each read sent and not yet answered, in input order
        for block in reads:
            if block is None:  # the source is silent: everything read so far, then the pause
                while order:
                    yield self._take_oldest(order)
                yield None
                continue
            taken = []
            while (worker := self._worker_for(len(block))) is None:
                taken.append(self._take_oldest(order))
            self._send(worker, block, order)  # it starts on the read while the writer takes what was taken
            yield from taken
            while order and order[0].results.poll():  # finished already: not held until the next read
                yield self._take_oldest(order)
        while order:
            yield self._take_oldest(order)

    def _worker_for(self, size: int) -> _Worker | None:
        worker = min(self._workers, key=lambda candidate: candidate.held_bytes)
        return worker if worker.takes_without_waiting(size) else None

    def _take_oldest(self, order: deque[_Worker]) -> Encoded:
        """What the oldest read became, waiting for it if need be."""
        worker = order.popleft()
        try:
            encoded = worker.results.recv()
        except (EOFError, OSError):  # OSError: it died halfway through sending
            self._fail("ended unexpectedly (it was killed, or ran out of memory)")
        if encoded.__class__ is _Failed:
            self._fail(f"failed: {encoded.problem}")
        worker.held.popleft()
        return encoded

    def _send(self, worker: _Worker, block: bytes, order: deque[_Worker]) -> None:
        try:
            worker.reads.send_bytes(block)  # the bytes as they are: no pickling, no copy
        except OSError:
            self._fail("ended unexpectedly (it was killed, or ran out of memory)")
        worker.held.append(len(block))
        order.append(worker)

    def close(self) -> None:
        """Stop the workers (at the end of input they are waiting for the next read) and reap them."""
        for worker in self._workers:
            worker.reads.close()
            try:
                os.kill(worker.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(worker.pid, 0)
        self._workers = []

    def _fail(self, problem: str) -> None:
        self.close()
        raise AirbyteTracedException(
            message=f"A process parsing and mapping the input {problem}. Run the sync again: it resumes from "
            "the last state.",
            failure_type=FailureType.system_error,
        )


def _close_ends(pipes: list[tuple[tuple[Connection, Connection], tuple[Connection, Connection]]]) -> None:
    for reads, results in pipes:
        for end in (*reads, *results):
            end.close()


def _widen(pipe: Connection) -> int:
    """A pipe holds 64 kB by default: a read would cross it in several turns, each one a wait for the other
    side, and no second read could wait in it. Linux lets a pipe hold a megabyte without privileges. Returns
    what the pipe holds now, 0 where that cannot be known."""
    try:
        return fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (OSError, AttributeError):  # not Linux, or a lower limit: the pipe works, in more turns
        try:
            return fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ)
        except (OSError, AttributeError):
            return 0


class _Failed:
    """A worker's last result when encoding raised: where in the code, never what the data was."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _serve(encoder: RecordEncoder, reads: Connection, results: Connection) -> None:
    """A worker's whole life: encode each read it is given and send the entries back, until its input pipe
    closes; then exit without running the main process's exit handlers."""
    code = 0
    try:
        # A SIGTERM or Ctrl-C sent to the whole process group is the writer's to handle: it drains, then
        # closes the workers.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        silent = os.open(os.devnull, os.O_RDWR)  # holding stdout open would keep the sync's output open
        for descriptor in (0, 1, 2):
            os.dup2(silent, descriptor)
        while True:
            try:
                block = reads.recv_bytes()
            except EOFError:  # no more input, or the main process is gone
                return
            results.send(encoder.encode(block))
    except OSError:  # the main process is gone
        code = 1
    except BaseException as error:
        code = 1
        where = traceback.extract_tb(error.__traceback__)[-1]
        try:
            results.send(_Failed(f"{type(error).__name__} at {os.path.basename(where.filename)}:{where.lineno}"))
        except OSError:
            pass
    finally:
        os._exit(code)
