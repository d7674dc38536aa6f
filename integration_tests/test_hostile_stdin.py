"""Hostile stdin: what a broken or malicious source can put on the connector's input.

Lines that are not Airbyte messages are skipped and reported by line number, never by content, and the sync
still succeeds; records for other streams and records whose data is not an object are counted by reason; a
STATE before any record is emitted; empty input is a successful, summarised sync; 50 MB records, depth-500
data, unicode, integers past 2^53 and invalid UTF-8 each get a defined outcome: delivered, or counted and
explained. Never a crash, never a silent drop, never a record value in the output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from heap_standin import HeapStandin
from integration_tests import reliability
from integration_tests.adversarial import event_config, events_catalog, lines
from integration_tests.adversarial import record_line as rec
from integration_tests.adversarial import state_line as state
from integration_tests.support import Result, run_connector

# ------------------------------------------------------------------------------------------------------------
# Helpers


def event(i: int, **extra: object) -> dict:
    return {"user": f"hostile-user-{i}", "event": "Hostile Probe", "i": i, **extra}


def run_write(tmp_path: Path, heap: HeapStandin, stdin: bytes, timeout: float = 120.0, **api: str) -> Result:
    config = event_config(heap, api, max_retries=2)
    return run_connector("write", config, events_catalog(), stdin=stdin, directory=tmp_path, timeout=timeout)


def counts(result: Result) -> dict[str, int]:
    """Records read, sent and skipped, from the Sync summary line."""
    return {key: result.summary[key] for key in ("read", "sent", "skipped")}


def by_index(heap: HeapStandin) -> dict[int, dict]:
    return {e["properties"]["i"]: e for e in heap.events if isinstance(e.get("properties", {}).get("i"), int)}


# ------------------------------------------------------------------------------------------------------------
# A stream of everything a broken source might send


GARBAGE = [
    "this is not json SECRET-GARBAGE-plain",
    '{"type": "RECORD", "record": {"stream": "events", "data": {"user": "SECRET-GARBAGE-cut"',
    '["SECRET-GARBAGE-array", 1, 2]',
    "null",
    '"SECRET-GARBAGE-bare-string"',
    '{"type": "NOT_A_TYPE", "payload": "SECRET-GARBAGE-type"}',
    '{"type": "RECORD", "note": "SECRET-GARBAGE-no-record"}',
    '{"type": "RECORD", "record": {"stream": "events", "note": "SECRET-GARBAGE-no-data"}}',
    '{"type":"RECORD","record":{"stream":"events","data":{"user":"SECRET-GARBAGE-surrogate\\ud800"},"emitted_at":1}}',
    "\x00\x01\x02 SECRET-GARBAGE-control-bytes \x7f",
]
# What each GARBAGE line is, for the count of distinct hostile inputs.
GARBAGE_KINDS = [
    "line that is not JSON",
    "RECORD cut mid-line",
    "JSON array line",
    "JSON null line",
    "bare JSON string line",
    "unknown message type",
    "RECORD without a record body",
    "RECORD without data",
    "lone surrogate escape in a record",
    "control bytes line",
]
UNICODE = {
    "user": "用户-ß-🚀-\u200d-SECRET-UNI",
    "event": "Ünïcödé 🎉 évènement",
    "rtl": "مرحبا بالعالم",
    "combining": "e\u0301\u0308 a\u030a",
    "family": "👩\u200d👩\u200d👧",
    "separators": "line\u2028para\u2029nel\u0085end",
    "astral": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈",
}


def test_hostile_lines_are_skipped_by_line_number_and_the_sync_succeeds(heap: HeapStandin, tmp_path: Path) -> None:
    good = [event(i, secret=f"SECRET-GOOD-{i}") for i in range(5)]
    stream = [
        state(-1),  # line 1: a STATE before any record
        *GARBAGE,  # lines 2..11
        rec(good[0]),
        "",
        "   \t ",
        rec(good[1]).encode() + b"\r",  # CRLF line ending
        state(1),
        rec(["SECRET-LIST", 1]),
        rec("SECRET-STRING-DATA"),
        rec(42),
        rec(None),
        rec(True),
        rec({**UNICODE, "i": 2}, ascii_only=False),
        rec(good[3]),
        "x" * (10 * 1024 * 1024),  # a 10 MB line of nothing
        rec(good[4]),
        state(4),
        *(f"SECRET-GARBAGE-FLOOD-{n}" for n in range(2000)),  # a flood of junk: the log must stay short
    ]
    tried = [
        *GARBAGE_KINDS,
        "STATE before any record",
        "empty line",
        "whitespace-only line",
        "CRLF line ending",
        *(f"record data not an object: {kind}" for kind in ("list", "string", "number", "null", "boolean")),
        "unicode: astral, RTL, combining marks, ZWJ sequences, line separators",
        "10 MB line of nothing",
        "flood of 2,000 junk lines",
    ]
    result = run_write(tmp_path, heap, lines(*stream))
    secrets = re.findall(r"SECRET-[A-Za-z0-9-]+", "\n".join(GARBAGE))
    secrets += ["SECRET-GARBAGE-FLOOD-7", "SECRET-LIST", "SECRET-STRING-DATA"]
    secrets += ["SECRET-GOOD-0", "SECRET-UNI", "xxxxxxxxxxxxxxxx"]
    assert len(secrets) >= 14
    result.assert_clean(*secrets)

    assert result.cursors() == [-1, 1, 4], "every STATE, the first one before any record included, comes out in order"
    # Lines meant as records (lines 3, 8 and 9: cut, no record body, no data) are invalid records; the one with a
    # lone surrogate (line 10) is read by the lenient parser and mapped (it has no event); the rest are not
    # Airbyte messages at all, and only the first ten of those are logged by number.
    not_messages = [2, 4, 5, 6, 7, 11]
    reported = result.unparsable_lines
    assert reported[: len(not_messages)] == not_messages, f"line numbers reported: {reported}"
    assert len(reported) <= 20, f"{len(reported)} per-line warnings: a flood of junk must not flood the log"
    total = [text for text in result.log_lines("WARN") if "input lines were not usable Airbyte messages" in text]
    assert total and total[-1].startswith(f"{len(not_messages) + 1 + 2000} "), total
    assert result.skipped == {
        "record_not_an_object": 5,
        "unreadable_record": 3,
        "missing_event (column event)": 1,
    }, result.describe()
    assert counts(result) == {"read": 14, "sent": 5, "skipped": 9}

    held = by_index(heap)
    assert sorted(held) == [0, 1, 2, 3, 4], sorted(held)
    unicode_event = held[2]
    assert unicode_event["identity"] == UNICODE["user"] and unicode_event["event"] == UNICODE["event"]
    for key in ("rtl", "combining", "family", "separators", "astral"):
        assert unicode_event["properties"][key] == UNICODE[key], key
    assert heap.stats()["events_stored"] == 5
    reliability.note("hostile_inputs", *tried)


def test_empty_input_is_a_successful_summarised_sync(heap: HeapStandin, tmp_path: Path) -> None:
    for stdin in (b"", b"\n\n   \n\t\n"):
        result = run_write(tmp_path, heap, stdin)
        result.assert_clean()
        assert result.cursors() == []
        assert counts(result) == {"read": 0, "sent": 0, "skipped": 0}
    assert heap.stats()["requests"] == 0
    reliability.note("hostile_inputs", "empty input", "input of blank lines only")


def test_state_only_input_emits_every_state(heap: HeapStandin, tmp_path: Path) -> None:
    result = run_write(tmp_path, heap, lines(state(-1), state(-1), state(0)))
    result.assert_clean()
    assert result.cursors() == [-1, -1, 0]
    assert heap.stats()["requests"] == 0
    reliability.note("hostile_inputs", "STATE-only input, a STATE repeated")


# ------------------------------------------------------------------------------------------------------------
# Size, depth, numbers, bytes


MB50 = 50 * 1024 * 1024


def test_50mb_records_have_a_defined_outcome(heap: HeapStandin, tmp_path: Path) -> None:
    """Outcome observed: a 50 MB value is delivered cut to 1023 characters (counted as adjusted); a record of
    50,000 properties (50 MB) is skipped as item_too_large (an item alone over the 4 MB a request carries); a
    50 MB identity or event name is skipped by reason. Nothing crashes; every record is accounted."""
    many = {f"p{k:05d}": "v" * 1000 for k in range(MB50 // 1000 // 1024 * 1024)}
    stream = [
        rec(event(0)),
        rec(event(1, blob="B" * MB50)),
        rec(event(2, **many)),
        rec(event(3, user="U" * MB50)),
        rec(event(4, event="E" * MB50)),
        rec(event(5)),
        state(5),
    ]
    result = run_write(tmp_path, heap, lines(*stream), timeout=180)
    result.assert_clean("BBBBBBBBBBBBBBBBBBBBBBBB", "UUUUUUUUUUUUUUUUUUUUUUUUUU", "EEEEEEEEEEEEEEEEEEEEEEEE")
    assert result.cursors() == [5]
    assert result.skipped == {
        "identity_too_long (column user)": 1,
        "event_too_long (column event)": 1,
        "item_too_large": 1,
    }
    assert counts(result) == {"read": 6, "sent": 3, "skipped": 3}
    held = by_index(heap)
    assert sorted(held) == [0, 1, 5]
    assert held[1]["properties"]["blob"] == "B" * 1023
    assert any("truncated *: 1" in text for text in result.log_lines("WARN")), result.describe()
    reliability.note(
        "hostile_inputs",
        "50 MB property value",
        "50 MB record of 50,000 properties",
        "50 MB identity",
        "50 MB event name",
    )


@pytest.mark.parametrize(
    "depth",
    [
        200,
        500,
        2000,  # deeper than orjson.loads allows: the line is reported as not an Airbyte message
    ],
)
def test_deeply_nested_data_has_a_defined_outcome(depth: int, heap: HeapStandin, tmp_path: Path) -> None:
    nested = '{"n": ' * depth + '{"leaf": "SECRET-DEEP-LEAF"}' + "}" * depth  # json.dumps itself stops at ~1000
    line = '{"type":"RECORD","record":{"stream":"events","emitted_at":1,"data":'
    line += json.dumps(event(1, deep="x"))[:-1] + ', "nest": ' + nested + "}}}"
    result = run_write(tmp_path, heap, lines(rec(event(0)), line, rec(event(2)), state(2)))
    result.assert_clean("SECRET-DEEP-LEAF")
    assert result.cursors() == [2]
    held = by_index(heap)
    assert {0, 2} <= set(held)
    accounted = 1 in held or sum(result.skipped.values()) == 1 or result.unparsable_lines == [2]
    assert accounted, f"the depth-{depth} record vanished without a word\n{result.describe()}"
    reliability.note("hostile_inputs", f"record data nested {depth} deep")


IN_RANGE = [2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63), 2**64 - 1]
BEYOND_64_BITS = [2**64, -(2**63) - 1, 10**30, -(10**40)]


def _big_integer_run(values: list[int], heap: HeapStandin, tmp_path: Path) -> dict:
    data = event(0, **{f"n{k}": value for k, value in enumerate(values)})
    result = run_write(tmp_path, heap, lines(rec(data), state(0)))
    result.assert_clean()
    assert result.cursors() == [0]
    return by_index(heap)[0]["properties"]


def test_integers_past_2_53_are_sent_as_exact_text(heap: HeapStandin, tmp_path: Path) -> None:
    properties = _big_integer_run(IN_RANGE, heap, tmp_path)
    for k, value in enumerate(IN_RANGE):
        expected = str(value) if abs(value) > 2**53 - 1 else value
        assert properties[f"n{k}"] == expected, (value, properties[f"n{k}"])
    # Counted here only: the expected failure beyond 64 bits below adds nothing to the figure.
    reliability.note("hostile_inputs", *(f"integer {value} (past 2^53, within 64 bits)" for value in IN_RANGE))


@pytest.mark.xfail(
    reason="KNOWN LIMITATION (README): integers outside the 64-bit range lose digits: messages.parse_line "
    "decodes stdin with orjson.loads, which turns integers beyond int64/uint64 into floats before the mapping can "
    "send them as text",
    strict=True,
)
def test_integers_beyond_64_bits_are_sent_as_exact_text(heap: HeapStandin, tmp_path: Path) -> None:
    properties = _big_integer_run(BEYOND_64_BITS, heap, tmp_path)
    for k, value in enumerate(BEYOND_64_BITS):
        assert properties[f"n{k}"] == str(value), (value, properties[f"n{k}"])


def test_invalid_utf8_lines_are_counted_by_line_number(heap: HeapStandin, tmp_path: Path) -> None:
    bad = [
        rec(event(10, user="SECRET-UTF8-A")).encode().replace(b"SECRET-UTF8-A", b"SECRET-UTF8-A\xff\xfe"),
        b"\xc0\xaf overlong SECRET-UTF8-B",
        rec(event(11)).encode()[:-3] + b"\xe2\x82",  # cut inside a multi-byte character
    ]
    result = run_write(tmp_path, heap, lines(rec(event(0)), *bad, rec(event(1)), state(1)))
    result.assert_clean("SECRET-UTF8-A", "SECRET-UTF8-B")
    assert result.cursors() == [1]
    held, reported = by_index(heap), set(result.unparsable_lines)
    assert sorted(held) == [0, 1]
    # Lines 2 and 4 were meant as records: invalid records, counted by the platform's figures; line 3 is no
    # message at all.
    assert result.skipped == {"unreadable_record": 2}, result.describe()
    assert reported == {3}, result.describe()
    invalid = [text for text in result.log_lines("WARN") if "an invalid record" in text]
    assert [text.split(" (")[0] for text in invalid] == ["Input line 2", "Input line 4"], invalid
    reliability.note(
        "hostile_inputs",
        "invalid UTF-8 inside a record",
        "overlong UTF-8 sequence line",
        "record cut inside a multi-byte character",
    )


# Valid JSON that is not a valid message: each is counted as the README says, and the sync goes on.
MALFORMED = {  # what each line is -> the line
    "STATE whose stream is text": {"type": "STREAM", "stream": "events"},
    "STREAM state without a descriptor": {"type": "STREAM", "stream": {"stream_state": {"last": 9}}},
    "STATE whose stream_descriptor is text": {"type": "STREAM", "stream": {"stream_descriptor": "events"}},
    "STATE whose stream name is not text": {"type": "STREAM", "stream": {"stream_descriptor": {"name": ["events"]}}},
    "STATE whose namespace is not text": {
        "type": "STREAM",
        "stream": {"stream_descriptor": {"name": "events", "namespace": {"SECRET-NS": 1}}},
    },
    "STATE whose destinationStats is not an object": {"type": "LEGACY", "data": {}, "destinationStats": "SECRET-DS"},
}


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_state_is_an_unusable_line_and_the_states_around_it_leave(
    kind: str, heap: HeapStandin, tmp_path: Path
) -> None:
    heap.set_latency(50)
    malformed = json.dumps({"type": "STATE", "state": {**MALFORMED[kind], "id": 7}})
    stdin = lines(rec(event(0)), rec(event(1)), state(1), malformed, rec(event(2)), state(2))
    result = run_write(tmp_path, heap, stdin)
    result.assert_clean("SECRET-NS", "SECRET-DS")
    assert result.cursors() == [1, 2]
    assert sorted(by_index(heap)) == [0, 1, 2]
    assert result.unparsable_lines == [4], result.describe()
    reliability.note("hostile_inputs", kind)


def test_a_record_whose_namespace_is_not_text_is_an_invalid_record(heap: HeapStandin, tmp_path: Path) -> None:
    bad = {"type": "RECORD", "record": {"stream": "events", "namespace": ["SECRET-NS-1"], "data": event(1)}}
    result = run_write(tmp_path, heap, lines(rec(event(0)), json.dumps(bad), rec(event(2)), state(2)))
    result.assert_clean("SECRET-NS-1")
    assert result.cursors() == [2] and sorted(by_index(heap)) == [0, 2]
    assert result.skipped == {"unreadable_record": 1}
    assert counts(result) == {"read": 3, "sent": 2, "skipped": 1}
    reliability.note("hostile_inputs", "RECORD whose namespace is not text")


def test_a_deep_field_the_mapping_does_not_use_costs_no_record(heap: HeapStandin, tmp_path: Path) -> None:
    deep: object = "SECRET-DEEP-LEAF"
    for _ in range(300):
        deep = {"n": deep}
    stdin = lines(rec(event(0, nest=deep)), rec(event(1)), state(1), rec(event(0, nest=deep)), state(2))
    result = run_write(tmp_path, heap, stdin, property_columns="i")
    result.assert_clean("SECRET-DEEP-LEAF")
    assert result.cursors() == [1, 2] and not result.skipped
    assert sorted(by_index(heap)) == [0, 1]  # the replay of record 0 is the same event, not a second one
    assert heap.duplicates_dropped == 1
