"""Stage 1, reading: stdin lines -> the messages a sync acts on.

A RECORD becomes a lean `SourceRecord`. A STATE keeps the JSON it came with, whole: the platform matches the
destination's echo to the state it sent by fields the CDK's models do not know (its `id`), so a state is
never rebuilt from a model. A line that is not a usable message becomes a `BadLine`: its number and a
fixed description travel on, never its content.

Lines are read as bytes from the file descriptor: `select` lets the reader notice a source that has gone
quiet, so that acknowledged states need not wait for its next message.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson
from airbyte_cdk.models import AirbyteMessage, AirbyteMessageSerializer, Type

PAUSE_SECONDS = 1.0  # this long without input and the source counts as quiet
READ_SIZE = 1 << 16
IGNORED_TYPES = frozenset(member.value for member in Type) - {"RECORD", "STATE"}
SURROGATE = re.compile("[\ud800-\udfff]")  # a code point UTF-8 cannot carry: a lone surrogate from a \u escape


@dataclass(slots=True)
class SourceRecord:
    """One RECORD message's content: what the writer needs of it, nothing validated beyond that."""

    stream: str
    namespace: str | None
    data: Any
    emitted_at: int


@dataclass(slots=True)
class SourceState:
    """One STATE message exactly as it came; the writer adds `destinationStats` and nothing else.
    `descriptor`: the (name, namespace) a STREAM state names; None for a GLOBAL or LEGACY state."""

    message: dict[str, Any]
    descriptor: tuple[str, str | None] | None = None


@dataclass(slots=True)
class BadLine:
    """A line that is not a usable Airbyte message. `record`: it was meant as a RECORD (an invalid record,
    counted as one); otherwise it is counted as an unreadable line. `problem` is a fixed phrase."""

    problem: str
    record: bool = False
    number: int = 0  # the line's number on stdin, from 1; 0 when not read from stdin


Message = SourceRecord | SourceState | BadLine | None  # None: the source is quiet


def read_lines(stdin: BinaryIO) -> Iterator[bytes | None]:
    """Stdin's lines, and None each time no input has come for PAUSE_SECONDS. Reads the file descriptor
    itself: a buffered reader blocks in readline and cannot say that nothing is coming."""
    descriptor = stdin.fileno()
    pending: list[bytes] = []  # the start of a line that a later read ends, read by read (a line may be long)
    while True:
        if not select.select([descriptor], [], [], PAUSE_SECONDS)[0]:
            yield None
            continue
        chunk = os.read(descriptor, READ_SIZE)
        if not chunk:
            break
        if b"\n" not in chunk:
            pending.append(chunk)
            continue
        lines = chunk.split(b"\n")
        if pending:
            lines[0] = b"".join((*pending, lines[0]))
        last = lines.pop()  # empty when the read ended with a newline
        pending = [last] if last else []
        yield from lines
    if pending:
        yield b"".join(pending)


def parse_lines(lines: Iterable[bytes | None]) -> Iterator[Message]:
    """Each line parsed (numbered from 1 for BadLine); the pauses (None) passed on."""
    number = 0
    for line in lines:
        if line is None:
            yield None
            continue
        number += 1
        message = parse_line(line)
        if message.__class__ is BadLine:
            message.number = number
        if message is not None:
            yield message


def parse_line(line: bytes) -> SourceRecord | SourceState | BadLine | None:
    """One stdin line -> a message to act on, a BadLine, or None for a blank line or a message a destination
    ignores (LOG, TRACE, ...)."""
    try:
        raw = orjson.loads(line)
    except orjson.JSONDecodeError:
        raw = _parse_leniently(line)
        if raw is None:
            return None if not line.strip() else BadLine("not JSON", record=b'"RECORD"' in line)
    if not isinstance(raw, dict):
        return BadLine("not an Airbyte message")
    kind = raw.get("type")
    if kind == "RECORD":
        return _record(raw.get("record"))
    if kind == "STATE":
        return _state(raw)
    return None if kind in IGNORED_TYPES else BadLine("not an Airbyte message")


def from_airbyte_messages(messages: Iterable[AirbyteMessage]) -> Iterator[SourceRecord | SourceState | BadLine]:
    """The CDK's in-process form (AirbyteMessage objects) -> the same messages stdin gives."""
    for message in messages:
        if message.type == Type.RECORD and message.record is not None:
            record = message.record
            yield SourceRecord(record.stream, record.namespace or None, record.data, int(record.emitted_at or 0))
        elif message.type == Type.STATE and message.state is not None:
            yield _state(AirbyteMessageSerializer.dump(message))


def _record(record: Any) -> SourceRecord | BadLine:
    if not isinstance(record, dict) or not isinstance(record.get("stream"), str):
        return BadLine("RECORD without a stream", record=True)
    if "data" not in record:
        return BadLine("RECORD without data", record=True)
    namespace = record.get("namespace") or None
    if namespace is not None and not isinstance(namespace, str):
        return BadLine("RECORD whose namespace is not text", record=True)
    emitted_at = record.get("emitted_at")
    emitted_at = int(emitted_at) if isinstance(emitted_at, (int, float)) and math.isfinite(emitted_at) else 0
    return SourceRecord(record["stream"], namespace, record["data"], emitted_at)


def _state(raw: dict[str, Any]) -> SourceState | BadLine:
    """A STATE whose parts the destination reads (its stream's descriptor, destinationStats) have the
    protocol's shape; anything else is no usable state (skipped: a later state covers its records)."""
    body = raw.get("state")
    if not isinstance(body, dict):
        return BadLine("STATE without a state body")
    if not isinstance(body.get("destinationStats") or {}, dict):
        return BadLine("STATE whose destinationStats is not an object")
    if body.get("type") != "STREAM":
        return SourceState(raw)
    # without a descriptor naming its stream, a STREAM state is not one the platform could take back
    stream = body.get("stream")
    descriptor = stream.get("stream_descriptor") if isinstance(stream, dict) else None
    if not isinstance(descriptor, dict) or descriptor.get("name") is None:
        return BadLine("STREAM state without a stream descriptor")
    name, namespace = descriptor["name"], descriptor.get("namespace") or None
    if not isinstance(name, str) or not (namespace is None or isinstance(namespace, str)):
        return BadLine("STREAM state whose stream name or namespace is not text")
    return SourceState(raw, (name, namespace))


def _parse_leniently(line: bytes) -> Any:
    """What the standard library reads where orjson refuses: NaN and infinities (as Python's json writes
    them), numbers beyond a double, lone surrogates (replaced by U+FFFD). The mapping then leaves non-finite
    numbers out and counts them. None if the line is not JSON in UTF-8 at all."""
    try:
        return _without_lone_surrogates(json.loads(line.decode("utf-8")))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace") if SURROGATE.search(value) else value
    if isinstance(value, dict):
        return {_without_lone_surrogates(key): _without_lone_surrogates(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_without_lone_surrogates(inner) for inner in value]
    return value
