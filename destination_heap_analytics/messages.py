"""Reading: stdin -> blocks of lines -> Airbyte messages, the first stage of every record (and, with
split_lines and parse_line, its parse-only floor).

Lines are read as bytes straight from the file descriptor: orjson decodes and checks UTF-8 itself (a text
layer would decode twice), and `select` lets the reader notice a stalled source. A RECORD becomes a lean
`SourceRecord`, not the CDK's AirbyteMessage + AirbyteRecordMessage: building those two objects cost as much
as parsing the line (measured). The rare other messages (STATE, LOG, ...) become CDK models.
"""

from __future__ import annotations

import io
import os
import select
from collections.abc import Iterator
from typing import Any

import orjson
from airbyte_cdk.models import AirbyteMessage, AirbyteMessageSerializer, Type

PAUSE_SECONDS = 1.0  # this long without input and the source counts as stalled
READ_SIZE = 3 << 17  # 384 kB: two reads and a line carried over fit a worker's pipe (intake.PIPE_BYTES)


class SourceRecord:
    """One RECORD message's content: what the writer needs of it, nothing validated beyond that."""

    __slots__ = ("stream", "namespace", "data", "emitted_at")

    def __init__(self, stream: str, namespace: str | None, data: Any, emitted_at: int) -> None:
        self.stream = stream
        self.namespace = namespace
        self.data = data
        self.emitted_at = emitted_at


class UnparsableLine:
    """A line that is not an Airbyte message: only its position travels on, never its content."""

    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        self.number = number


def parse_line(line: bytes | str) -> SourceRecord | AirbyteMessage | None:
    """One line -> a SourceRecord, another Airbyte message, or None when it is not a message."""
    try:
        raw = orjson.loads(line)
        kind = raw.get("type")
        if kind == "RECORD":
            record = raw["record"]
            return SourceRecord(
                record["stream"], record.get("namespace") or None, record["data"], int(record.get("emitted_at") or 0)
            )
        if kind == "STATE":
            return AirbyteMessageSerializer.load(raw)
        return AirbyteMessage(type=Type(kind)) if kind in Type.__members__ else None
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return None


def read_blocks(input_stream: io.TextIOWrapper) -> Iterator[bytes | None]:
    """Stdin in blocks of whole lines, a block a read (up to READ_SIZE), and None each time no input has come
    for PAUSE_SECONDS (a stalled source), so that acknowledged states need not wait for the source's next
    message. Reads the file descriptor itself: a buffered reader blocks in readline and cannot say that
    nothing is coming. Blocks, not lines: a block crosses to a worker process as one copy (see intake.py)."""
    try:
        descriptor = input_stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (an in-memory stream): no pauses to see
        for line in input_stream.buffer if isinstance(input_stream, io.TextIOWrapper) else input_stream:
            yield line if isinstance(line, bytes) else line.encode()
        return
    pending = bytearray()  # the start of a line a later read ends
    while True:
        if not select.select([descriptor], [], [], PAUSE_SECONDS)[0]:
            yield None
            continue
        chunk = os.read(descriptor, READ_SIZE)
        if not chunk:
            break
        end = chunk.rfind(b"\n") + 1
        if not end:
            pending += chunk  # in place: a line of many reads is not copied again at each of them
            continue
        # joined through a memoryview: the block is the one copy of the read's lines (a slice would be two)
        yield b"".join((pending, memoryview(chunk)[:end])) if pending else chunk[:end]
        pending[:] = memoryview(chunk)[end:]
    if pending:
        yield bytes(pending)


def split_lines(block: bytes) -> list[bytes]:
    """A block's lines, without the empty string after its final newline."""
    lines = block.split(b"\n")
    if not lines[-1]:
        lines.pop()
    return lines
