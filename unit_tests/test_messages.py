"""Reading: stdin lines -> the messages a sync acts on."""

from __future__ import annotations

import math
import os
import threading

import pytest

from destination_heap_analytics.messages import (
    BadLine,
    SourceRecord,
    SourceState,
    parse_line,
    parse_lines,
    read_lines,
)

STATE = b'{"type":"STATE","state":{"type":"STREAM","id":3,"x":[1],"stream":{"stream_descriptor":{"name":"u"}}}}'


NOT_TEXT_NAMESPACE = BadLine("RECORD whose namespace is not text", record=True)
NO_DESCRIPTOR = BadLine("STREAM state without a stream descriptor")
NOT_TEXT = BadLine("STREAM state whose stream name or namespace is not text")
NOT_STATS = BadLine("STATE whose destinationStats is not an object")


class Anything(dict):
    def __eq__(self, other: object) -> bool:
        return True


ANY = Anything()  # a state's message: kept whole, see test_a_state_is_kept_exactly_as_it_came
STATE_OF_U = SourceState(ANY, ("u", None))


@pytest.mark.parametrize(
    "line, expected",
    [
        (
            b'{"type":"RECORD","record":{"stream":"u","data":{"a":1},"emitted_at":5}}',
            SourceRecord("u", None, {"a": 1}, 5),
        ),
        (
            b'{"type":"RECORD","record":{"stream":"u","namespace":"","data":[],"emitted_at":1.5}}',
            SourceRecord("u", None, [], 1),
        ),
        (b'{"type":"RECORD","record":{"stream":"u","data":null}}', SourceRecord("u", None, None, 0)),
        (b'{"type":"RECORD","record":{"stream":"u"}}', BadLine("RECORD without data", record=True)),
        (b'{"type":"RECORD","record":{"data":{}}}', BadLine("RECORD without a stream", record=True)),
        (b'{"type":"RECORD","record":"x"}', BadLine("RECORD without a stream", record=True)),
        (b'{"type":"RECORD","record":{"stream":"u","data":{', BadLine("not JSON", record=True)),
        (b'{"type":"STATE"}', BadLine("STATE without a state body")),
        (b'{"type":"STATE","state":[]}', BadLine("STATE without a state body")),
        (b'{"type":"RECORD","record":{"stream":"u","namespace":{"a":1},"data":{}}}', NOT_TEXT_NAMESPACE),
        (b'{"type":"RECORD","record":{"stream":"u","namespace":7,"data":{}}}', NOT_TEXT_NAMESPACE),
        (b'{"type":"STATE","state":{"type":"STREAM","stream":"users"}}', NO_DESCRIPTOR),
        (b'{"type":"STATE","state":{"type":"STREAM","stream":{"stream_descriptor":"users"}}}', NO_DESCRIPTOR),
        (b'{"type":"STATE","state":{"type":"STREAM","stream":{"stream_descriptor":{"name":["u"]}}}}', NOT_TEXT),
        (b'{"type":"STATE","state":{"type":"STREAM","stream":{"stream_descriptor":{"name":5}}}}', NOT_TEXT),
        (
            b'{"type":"STATE","state":{"type":"STREAM","stream":{"stream_descriptor":{"name":"u","namespace":{}}}}}',
            SourceState(ANY, ("u", None)),  # an empty namespace is none, as for a RECORD
        ),
        (
            b'{"type":"STATE","state":{"type":"STREAM","stream":{"stream_descriptor":{"name":"u","namespace":[1]}}}}',
            NOT_TEXT,
        ),
        (b'{"type":"STATE","state":{"type":"GLOBAL","destinationStats":"x"}}', NOT_STATS),
        (b'{"type":"STATE","state":{"type":"LEGACY","destinationStats":[1]}}', NOT_STATS),
        (b'{"type":"STATE","state":{"type":"STREAM","stream":{"stream_descriptor":{"name":"u"}}}}', STATE_OF_U),
        (
            b'{"type":"STATE","state":{"type":"STREAM","stream":{"stream_descriptor":{"name":"u","namespace":"n"}}}}',
            SourceState(ANY, ("u", "n")),
        ),
        (b'{"type":"STATE","state":{"type":"STREAM","stream":{"stream_state":{}}}}', NO_DESCRIPTOR),
        (b'{"type":"STATE","state":{"type":"STREAM","stream":{"stream_descriptor":{}}}}', NO_DESCRIPTOR),
        (b'{"type":"STATE","state":{"type":"STREAM"}}', NO_DESCRIPTOR),
        (b'{"type":"STATE","state":{"type":"GLOBAL","global":{}}}', SourceState(ANY, None)),
        (b'{"type":"STATE","state":{"type":"GLOBAL","global":{},"destinationStats":null}}', SourceState(ANY, None)),
        (b'{"type":"LOG","log":{"level":"INFO","message":"hi"}}', None),
        (b'{"type":"TRACE"}', None),
        (b'{"type":"SOMETHING"}', BadLine("not an Airbyte message")),
        (b"[1, 2]", BadLine("not an Airbyte message")),
        (b"not json", BadLine("not JSON")),
        (b"\xff\xfe", BadLine("not JSON")),
        (b"   ", None),
    ],
)
def test_parse_line(line, expected):
    assert parse_line(line) == expected


def test_a_state_is_kept_exactly_as_it_came():
    parsed = parse_line(STATE)
    assert isinstance(parsed, SourceState)
    assert parsed.message == {
        "type": "STATE",
        "state": {"type": "STREAM", "id": 3, "x": [1], "stream": {"stream_descriptor": {"name": "u"}}},
    }


@pytest.mark.parametrize(
    "data_json, check",
    [
        (b'{"v": NaN}', lambda v: math.isnan(v)),
        (b'{"v": -Infinity}', lambda v: v == -math.inf),
        (b'{"v": 1e400}', lambda v: v == math.inf),
        (b'{"v": "a\\ud800b"}', lambda v: v == "a\ufffdb"),
        (b'{"v": "\\ud83d\\ude00"}', lambda v: v == "\U0001f600"),
    ],
)
def test_values_only_the_standard_library_reads(data_json, check):
    parsed = parse_line(b'{"type":"RECORD","record":{"stream":"u","data":' + data_json + b"}}")
    assert isinstance(parsed, SourceRecord)
    assert check(parsed.data["v"])


def test_bad_lines_are_numbered_from_one_and_pauses_pass_through():
    lines = [b'{"type":"RECORD","record":{"stream":"u","data":{}}}', None, b"", b"junk", STATE]
    parsed = list(parse_lines(lines))
    assert parsed[1] is None
    assert parsed[2] == BadLine("not JSON", number=3)  # the pause is no line; the blank one is
    assert isinstance(parsed[3], SourceState)


def test_read_lines_splits_reads_into_whole_lines_whatever_their_length():
    read_end, write_end = os.pipe()
    data = b"a\nbb\n" + b"x" * 300_000 + b"\n\n" + b"y" * 70_000 + b"\nlast"

    def feed() -> None:
        for start in range(0, len(data), 4096):
            os.write(write_end, data[start : start + 4096])
        os.close(write_end)

    writer = threading.Thread(target=feed)
    writer.start()
    with os.fdopen(read_end, "rb") as stdin:
        lines = [line for line in read_lines(stdin) if line is not None]
    writer.join()
    assert lines == data.split(b"\n")
