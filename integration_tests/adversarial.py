"""Inputs and checks shared by the adversarial integration tests: fault storms, hostile stdin, kill/resume,
secrets and config.

Their source is the one stream `events`, whose STATE cursor is the index of the last record before it
(`Result.cursors()` reads them back). They run the connector with support.run_connector like every other test,
often with raw stdin bytes (invalid UTF-8, 50 MB lines, junk that is not a message at all), an `on_start` that
breaks the stand-in while the process runs, or in parallel threads each watched by a recording proxy of its own.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from heap_standin import HeapStandin
from integration_tests import reliability
from integration_tests.support import Result, catalog, config, record, state

STREAM = "events"
EMITTED_AT = 1_700_000_000_000
# The track mapping every adversarial test starts from: who did what, every column a property.
EVENT_API = {"api_type": "track", "identity_column": "user", "event_column": "event", "property_columns": "*"}


# ------------------------------------------------------------------------------------------------------------
# Input: messages whose STATE carries the index of the last record before it, configs and catalogs


def state_message(last: int, stream: str = STREAM) -> dict:
    return state(last, stream, cursor="last")


def record_line(data: Any, stream: str = STREAM, emitted_at: int = EMITTED_AT, ascii_only: bool = True) -> str:
    return json.dumps(record(data, stream, emitted_at), ensure_ascii=ascii_only)


def state_line(last: int) -> str:
    return json.dumps(state_message(last))


def lines(*items: str | bytes) -> bytes:
    """Stdin bytes: each item (text, or bytes as they are) on a line of its own."""
    return b"".join((item if isinstance(item, bytes) else item.encode()) + b"\n" for item in items)


def event_config(heap: HeapStandin | str, api: dict | None = None, **overrides: Any) -> dict:
    """support.config with EVENT_API (its fields replaced by `api`) for the stand-in or a base_url given as text."""
    return config(heap, {**EVENT_API, **(api or {})}, **overrides)


def events_catalog(*names: str) -> dict:
    """A catalog of `names` (default: the events stream), each incremental only, appended."""
    return catalog(*(names or (STREAM,)), supported_sync_modes=("incremental",))


# ------------------------------------------------------------------------------------------------------------
# Checks


def assert_no_record_values(result: Result, records: Iterable[dict], keys: Iterable[str] | None = None) -> None:
    """No text value of `records` (of their `keys` only, when given) in the output, STATE lines excepted."""
    output = result.output_without_states
    wanted = None if keys is None else set(keys)
    values = {v for r in records for k, v in r.items() if isinstance(v, str) and (wanted is None or k in wanted)}
    leaked = sorted(value for value in values if value in output)
    assert not leaked, f"record values in the connector's output: {leaked[:5]}\n{result.describe()}"


def event_indices(heap: HeapStandin) -> Counter:
    """How many times the stand-in holds the event of each record index (the `i` property)."""
    return Counter(event["properties"]["i"] for event in heap.events)


def assert_loaded_once(heap: HeapStandin, expected: set[int], replays: int = 0) -> None:
    """The stand-in holds the event of every expected record index exactly once, and nothing else; and nothing
    was SENT twice that no observed cause explains.

    Held twice is what Heap keeps after dropping repeated idempotency keys; sent twice is what the stand-in saw
    come again (heap.sent_twice). A resend is legitimate only when the connector could not know the first copy
    had landed: the stand-in stored it but its acknowledgement was lost (heap.unconfirmed: a fault after
    storing, an answer that raced stop() or a client that had timed out), or a killed run's records after its
    last state were replayed on resume (`replays`, counted by the caller from what the stand-in held then).
    """
    held = event_indices(heap)
    lost = len(expected - set(held))
    doubled = sum(count - 1 for count in held.values() if count > 1)
    sent_twice, unconfirmed = heap.sent_twice, heap.unconfirmed
    unexplained = max(0, sent_twice - unconfirmed - replays)
    assert lost == 0, f"{lost} records never reached Heap: {sorted(expected - set(held))[:10]}"
    assert doubled == 0, f"{doubled} records were stored twice"
    assert unexplained == 0, (
        f"{sent_twice} records were sent twice, but only {unconfirmed} stored items lost their acknowledgement "
        f"and {replays} were replayed after a kill: the connector sent what Heap had already acknowledged"
    )
    assert set(held) == expected, f"unexpected records in Heap: {sorted(set(held) - expected)[:10]}"
    assert heap.stats()["events_stored"] == len(expected) == len(heap.events)
    # Recorded once the checks above passed, as every figure is: lost, held twice and unexplained are 0 here.
    reliability.record("records_lost", lost)
    reliability.record("records_held_twice", doubled)
    reliability.record("records_sent_twice", sent_twice)
    reliability.record("records_sent_twice_unexplained", unexplained)
    reliability.record("acknowledgements_lost", unconfirmed)
    reliability.record("records_loaded", len(expected))


def assert_each_key_in_order(items: Mapping[str, list[int]], last: Mapping[str, int]) -> None:
    """Each key's property items as the stand-in holds them, in arrival order, each given by the position (in
    that key's updates in the input, from 0) of the last update it carries: they ascend and end on the key's
    last update (`last`), and every key is there. Records the items, and the updates they carry: an item
    carries its key's updates since the key's previous item, so the positions say how many each holds."""
    assert set(items) == set(last), f"{len(set(last) - set(items))} keys missing, {len(set(items) - set(last))} extra"
    out_of_order = [key for key, seen in items.items() if seen[-1] != last[key] or seen != sorted(set(seen))]
    assert out_of_order == [], f"{len(out_of_order)} keys' updates arrived out of order"
    reliability.record("property_items_in_order", sum(len(seen) for seen in items.values()))
    reliability.record("property_updates_carried", sum(position + 1 for position in last.values()))


def record_faults_served(served: dict[str, int]) -> None:
    """Record the faults a stand-in actually served (its `faults_served`, by kind), not the ones queued; once the
    test's checks passed."""
    for kind, count in served.items():
        reliability.record(f"faults_served_{kind}", count)
