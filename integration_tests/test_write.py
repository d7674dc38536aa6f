"""write, the happy paths: what arrives in Heap, in which shape, and when STATE messages come out."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest

from heap_standin import HeapStandin
from integration_tests.support import (
    HEX32,
    TRACK_API,
    USER_API,
    StateWatcher,
    catalog,
    config,
    in_flight_together,
    interleave,
    people,
    person,
    record,
    records_of,
    run_connector,
    sample_catalog,
    sample_config,
    sample_messages,
    state,
    states_of,
    stored,
    without_app_id,
)

SAMPLE_KIND = {
    "track": "track",
    "add_user_properties": "user_properties",
    "add_account_properties": "account_properties",
}

# The first record of sample_files/messages.jsonl, mapped by each sample config: the exact bodies Heap must hold.
FIRST_SAMPLE_ITEM = {
    "track": {
        "identity": "jamie.tillman0@example.com",
        "event": "Username-Password-Authentication",
        "timestamp": "2022-10-21T00:09:54.622+00:00",
        "properties": {"blocked": "false", "created_at": "2022-10-21T04:09:54.622Z", "name": "Jamie Tillman"},
    },
    "add_user_properties": {
        "identity": "auth0|815ff3c3-84fa-4f63-b959-ac2d11efc63c",
        "properties": {"identities.provider": "auth0", "created_at": "2022-10-21T04:09:54.622Z", "nickname": "jamie0"},
    },
    "add_account_properties": {
        "account_id": "815ff3c3-84fa-4f63-b959-ac2d11efc63c",
        "properties": {"family_name": "Tillman", "email_verified": "false", "blocked": "false"},
    },
}


def as_text(flag: bool) -> str:
    """A boolean as Heap takes it (a number or a string, never a JSON boolean)."""
    return "true" if flag else "false"


def expected_sample_item(api_type: str, data: dict) -> dict:
    """The sample configs' mappings, written out independently of the connector's code."""
    identity = data["identities"][0]
    if api_type == "track":
        return {
            "identity": data["email"],
            "event": identity["connection"],
            "timestamp": data["updated_at"].replace("Z", "+00:00"),
            "properties": {"blocked": as_text(data["blocked"]), "created_at": data["created_at"], "name": data["name"]},
        }
    if api_type == "add_user_properties":
        return {
            "identity": data["user_id"],
            "properties": {
                "identities.provider": identity["provider"],
                "created_at": data["created_at"],
                "nickname": data["nickname"],
            },
        }
    return {
        "account_id": identity["user_id"],
        "properties": {
            "family_name": data["family_name"],
            "email_verified": as_text(data["email_verified"]),
            "blocked": as_text(data["blocked"]),
        },
    }


SAMPLE_KEY = {
    "track": lambda d: d["email"],
    "add_user_properties": lambda d: d["user_id"],
    "add_account_properties": lambda d: d["identities"][0]["user_id"],
}


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "single"])
@pytest.mark.parametrize("api_type", ["track", "add_user_properties", "add_account_properties"])
def test_sample_records_arrive_mapped_exactly_with_states_in_order(heap, api_type, bulk):
    """The sample files, as a user ships them (default pacing), through every API in bulk and single mode."""
    heap.set_latency(20)  # so a STATE that left too early would be caught before its records land
    messages = sample_messages()
    cfg = sample_config(SAMPLE_KIND[api_type], heap, bulk=bulk, batch_size=3)
    del cfg["track_events_per_minute"]  # the default (15000) pacing: small syncs must not be slowed by it
    watcher = StateWatcher(heap, api_type, SAMPLE_KEY[api_type])
    result = run_connector("write", cfg, sample_catalog(), messages, on_message=watcher.on_message)

    assert result.returncode == 0, result.describe()
    assert result.errors == []
    assert result.states == states_of(messages)  # all 4, in input order, unchanged
    assert result.destination_record_counts == [5.0, 5.0, 5.0, 5.0]  # the records each state covers
    watcher.assert_safe(messages)
    summary = result.summary
    assert (summary["outcome"], summary["read"], summary["sent"], summary["skipped"], summary["states"]) == (
        "succeeded",
        20,
        20,
        0,
        4,
    )
    assert result.skipped == {}

    items = [without_app_id(item) for item in stored(heap, api_type)]
    assert len(items) == 20
    if api_type == "track":
        keys = [item.pop("idempotency_key") for item in items]
        assert all(HEX32.match(key) for key in keys), keys[:3]
        assert len(set(keys)) == 20
    assert FIRST_SAMPLE_ITEM[api_type] in items
    expected = [expected_sample_item(api_type, data) for data in records_of(messages)]
    id_field = "account_id" if api_type == "add_account_properties" else "identity"
    assert sorted(items, key=lambda i: i[id_field]) == sorted(expected, key=lambda i: i[id_field])

    stats = heap.stats()
    if bulk:
        assert (stats["bulk_requests"], stats["single_requests"]) == (math.ceil(20 / 3), 0)
    else:
        assert (stats["bulk_requests"], stats["single_requests"]) == (0, 20)
    assert stats["requests"] == summary["requests"]
    assert stats["events_deduplicated"] == 0


def test_states_wait_for_every_earlier_batch_even_when_later_batches_finish_first(heap):
    """Heap takes 2.5 s over batch 2 (records 21-40, holding record 30, the last before STATE 1) while batch 1
    and later batches are acknowledged at once; the source goes quiet after the record before STATE 2 until
    batch 2 is in Heap, so the connector, idle, sees batches 1 and 3 acknowledged first. STATE 1 must still wait
    for batch 2; every STATE for every record before it; states keep their input order."""
    rows = people(400)
    slow_identity = rows[29]["email"]
    slowed = threading.Event()

    def slow_once(item: dict) -> None:
        if item["identity"] == slow_identity and not slowed.is_set():
            slowed.set()
            time.sleep(2.5)  # accepted, but late
        return None

    def quiet_until_batch_2_is_in_heap() -> None:
        deadline = time.monotonic() + 60  # only a stuck batch 2 takes this long: it answers after 2.5 s
        while time.monotonic() < deadline and slow_identity not in {event["identity"] for event in heap.events}:
            time.sleep(0.01)

    heap.reject_when(slow_once)
    messages = interleave(rows, every=30)
    state_2_line = [i for i, m in enumerate(messages) if m["type"] == "STATE"][1]
    cfg = config(heap, TRACK_API, batch_size=20, max_concurrent_requests=4)
    watcher = StateWatcher(heap, "track", lambda d: d["email"])
    result = run_connector(
        "write",
        cfg,
        catalog(),
        messages,
        on_message=watcher.on_message,
        pauses={state_2_line - 1: quiet_until_batch_2_is_in_heap},
    )

    assert result.returncode == 0, result.describe()
    assert slowed.is_set()
    # Observed, not assumed: batches 1 and 3 reached Heap before batch 2 did.
    arrival = {event["identity"]: position for position, event in enumerate(heap.events)}
    assert arrival[rows[19]["email"]] < arrival[slow_identity] and arrival[rows[59]["email"]] < arrival[slow_identity]
    assert result.states == states_of(messages)
    watcher.assert_safe(messages)
    assert sorted(e["identity"] for e in heap.events) == sorted(r["email"] for r in rows)
    assert heap.stats()["events_deduplicated"] == 0
    assert result.summary["sent"] == 400


def test_replaying_the_same_input_adds_no_event_in_heap(heap):
    """The idempotency key is a hash of the record: a second run of the same input is fully deduplicated."""
    messages = interleave(people(60), every=25)
    cfg = config(heap, TRACK_API, batch_size=25)
    first = run_connector("write", cfg, catalog(), messages)
    assert first.returncode == 0, first.describe()
    events_after_first = heap.events
    assert len(events_after_first) == 60
    assert len({e["idempotency_key"] for e in events_after_first}) == 60

    second = run_connector("write", cfg, catalog(), messages)
    assert second.returncode == 0, second.describe()
    assert second.states == states_of(messages)
    assert heap.events == events_after_first
    stats = heap.stats()
    assert (stats["events_stored"], stats["events_deduplicated"]) == (60, 60)


def test_a_sync_of_states_only_echoes_every_state_and_sends_nothing(heap):
    messages = [state(1), state(2), state(3)]
    result = run_connector("write", config(heap, TRACK_API), catalog(), messages)
    assert result.returncode == 0, result.describe()
    assert result.states == states_of(messages)
    assert heap.stats()["requests"] == 0
    summary = result.summary
    assert (summary["read"], summary["sent"], summary["states"]) == (0, 0, 3)


def test_star_properties_flatten_objects_join_arrays_and_fit_heap_rules(heap):
    """property_columns "*" for user properties: nested objects become dotted keys, arrays ||-joined, nulls and
    empty arrays left out, a property named id dropped (Heap refuses it), long text cut to 1023 characters,
    integers past 2^53 sent as text. Adjustments are logged by property name only."""
    data = {
        "email": "secret-person-star@example.com",
        "address": {"city": "Secret City Zeta", "geo": {"zip": 40210}},
        "tags": ["secret-tag-alpha", "secret-tag-beta", 3, True],
        "nothing": None,
        "empty": [],
        "id": 42,
        "bio": "secret-bio-" + "x" * 2000,
        "big": 2**60,
        "ratio": 0.25,
        "vip": False,
    }
    api = {"api_type": "add_user_properties", "identity_column": "email", "property_columns": "*"}
    result = run_connector("write", config(heap, api), catalog(), [record(data), state(1)])
    assert result.returncode == 0, result.describe()
    assert [without_app_id(u) for u in heap.users] == [
        {
            "identity": "secret-person-star@example.com",
            "properties": {
                "email": "secret-person-star@example.com",
                "address.city": "Secret City Zeta",
                "address.geo.zip": 40210,
                "tags": "secret-tag-alpha||secret-tag-beta||3||true",
                "bio": ("secret-bio-" + "x" * 2000)[:1023],
                "big": str(2**60),
                "ratio": 0.25,
                "vip": "false",
            },
        }
    ]
    adjusted = [line for line in result.log_lines("WARN") if line.startswith("Property values adjusted")]
    assert len(adjusted) == 1, result.describe()
    # under * property names may be data: the summary counts them under "*", never by name
    assert "forbidden_property_name *: 1" in adjusted[0] and "truncated *: 1" in adjusted[0]


def test_timestamps_are_normalised_to_iso_8601_with_offset(heap):
    """Epoch milliseconds, epoch seconds, ISO with an offset, naive ISO (taken as UTC), and no timestamp at all
    (the record's emitted_at) all reach Heap as ISO 8601 with an offset."""
    cases = [
        (1666325394622, "2022-10-21T04:09:54.622+00:00"),
        (1666325394, "2022-10-21T04:09:54+00:00"),
        ("2022-10-21T06:09:54+02:00", "2022-10-21T06:09:54+02:00"),
        ("2022-10-21T04:09:54", "2022-10-21T04:09:54+00:00"),
        ("2022-10-21T04:09:54.5Z", "2022-10-21T04:09:54.500+00:00"),
        (None, "2023-11-14T22:13:20+00:00"),  # emitted_at 1_700_000_000_000
    ]
    rows = [person(i, updated_at=value) for i, (value, _) in enumerate(cases)]
    result = run_connector("write", config(heap, TRACK_API), catalog(), interleave(rows, every=10))
    assert result.returncode == 0, result.describe()
    by_identity = {e["identity"]: e["timestamp"] for e in heap.events}
    assert by_identity == {row["email"]: expected for row, (_, expected) in zip(rows, cases, strict=True)}


def test_overwrite_sync_mode_warns_that_heap_keeps_existing_data_and_appends(heap):
    messages = interleave(people(5), every=5)
    result = run_connector("write", config(heap, USER_API), catalog(destination_sync_mode="overwrite"), messages)
    assert result.returncode == 0, result.describe()
    assert any("overwrite" in line for line in result.log_lines("WARN")), result.describe()
    assert len(heap.users) == 5
    assert result.states == states_of(messages)


def test_concurrent_requests_never_exceed_max_concurrent_requests(heap):
    """Concurrency is used (the stand-in holds the first requests until 3 are in flight together) and never
    exceeds the setting."""
    heap.set_latency(40)
    together = in_flight_together(heap, 3)
    rows = people(200)
    cfg = config(heap, TRACK_API, batch_size=10, max_concurrent_requests=3)
    result = run_connector("write", cfg, catalog(), interleave(rows, every=50))
    assert result.returncode == 0, result.describe()
    stats = heap.stats()
    assert not together.broken, "the connector never had 3 requests in flight at once"
    assert stats["max_in_flight"] == 3, stats
    assert stats["bulk_requests"] == 20
    assert len({e["identity"] for e in heap.events}) == 200


def test_lines_that_are_not_airbyte_messages_are_skipped_without_logging_their_content(heap):
    junk = "this line holds secret-junk-value-991@example.com and is not JSON"
    rows = people(4)
    lines = [
        '{"type": "RECORD", "record": {"stream": "users", "data": ' + json.dumps(rows[0]) + ', "emitted_at": 1}}',
        junk,
        '{"type": "RECORD", "record": {"stream": "users", "data": ' + json.dumps(rows[1]) + ', "emitted_at": 1}}',
        '{"type": "STATE", "state": {"type": "STREAM", "stream": {"stream_descriptor": {"name": "users"}, '
        '"stream_state": {"position": 1}}}}',
        "",
        '{"type": "RECORD", "record": {"stream": "users", "data": ' + json.dumps(rows[2]) + ', "emitted_at": 1}}',
        '{"type": "RECORD", "record": {"stream": "users", "data": ' + json.dumps(rows[3]) + ', "emitted_at": 1}}',
    ]
    result = run_connector(
        "write",
        config(heap, TRACK_API),
        catalog(),
        [record(r) for r in rows],  # only used for the leak check
        stdin_lines=lines,
        private=[junk, "secret-junk-value-991@example.com"],
    )
    assert result.returncode == 0, result.describe()
    assert len(heap.events) == 4
    assert len(result.states) == 1
    assert any("Input line 2: not JSON" in line for line in result.log_lines("WARN"))



@pytest.mark.parametrize("acknowledgement", ["empty", "no-content", "json", "ok", "event-accepted"])
@pytest.mark.parametrize("api", [TRACK_API, USER_API], ids=["track", "user_properties"])
def test_every_way_heap_may_answer_success_counts_as_delivered(acknowledgement, api):
    """Heap documents its success only as "200 Event accepted"; its own clients' tests mock it as an empty 200
    and a 204. Whatever the body (but an HTML page), a 2xx is Heap's acknowledgement."""
    rows = people(30)
    messages = interleave(rows, every=10)
    with HeapStandin(acknowledgement=acknowledgement) as heap:
        result = run_connector("write", config(heap, api, batch_size=7), catalog(), messages)
        held = stored(heap, api["api_type"])
    result.assert_clean()
    assert result.states == states_of(messages)
    assert sorted(item["identity"] for item in held) == sorted(row["email"] for row in rows)


def test_a_2xx_whose_json_names_an_error_is_delivered_and_said_once_without_its_wording():
    """A wrong app_id may be answered 200 {"error": "invalid app_id"} (one integration reports that Heap takes
    it silently): still Heap's acknowledgement, as Heap's own clients take any 2xx, but said once in the log,
    by the field's name only."""
    rows = people(30)
    messages = interleave(rows, every=10)
    with HeapStandin(acknowledgement="json-error") as heap:
        result = run_connector("write", config(heap, USER_API, batch_size=7), catalog(), messages)
        held = len(heap.users)
    result.assert_clean()
    assert result.states == states_of(messages) and held == 30
    said = [line for line in result.log_lines("WARN") if "says something went wrong" in line]
    assert len(said) == 1, result.describe()
    assert "HTTP 200 at /api/add_user_properties" in said[0] and "'error' field" in said[0]
    assert "invalid app_id" not in result.stdout + result.stderr
