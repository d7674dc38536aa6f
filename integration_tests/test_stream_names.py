"""Streams by name and namespace, as the platform sends them: which mapping a stream gets, which records a
STREAM state covers when its descriptor does not name a catalog stream exactly, and streams whose names
would read the same once joined (`a.b`, and `b` in namespace `a`) kept apart."""

from __future__ import annotations

import pytest

from heap_standin import HeapStandin
from integration_tests.support import (
    APP_ID,
    TRACK_API,
    USER_API,
    StateWatcher,
    person,
    run_connector,
)


def catalog(*streams: tuple[str, str | None]) -> dict:
    """A configured catalog of (name, namespace) streams, as the platform writes it."""
    configured = []
    for name, namespace in streams:
        stream = {"name": name, "json_schema": {"type": "object"}, "supported_sync_modes": ["incremental"]}
        if namespace is not None:
            stream["namespace"] = namespace
        configured.append({"stream": stream, "sync_mode": "incremental", "destination_sync_mode": "append"})
    return {"streams": configured}


def record(data: dict, name: str, namespace: str | None) -> dict:
    body = {"stream": name, "data": data, "emitted_at": 1_700_000_000_000}
    if namespace is not None:
        body["namespace"] = namespace
    return {"type": "RECORD", "record": body}


def stream_state(descriptor: dict | None, position: int, state_id: int) -> dict:
    stream = {"stream_state": {"position": position}}
    if descriptor is not None:
        stream["stream_descriptor"] = descriptor
    return {"type": "STATE", "state": {"type": "STREAM", "stream": stream, "id": state_id}}


def stream_config(heap: HeapStandin, streams: list[dict]) -> dict:
    return {"app_id": APP_ID, "base_url": heap.url, "streams": streams, "track_events_per_minute": 0}


@pytest.mark.parametrize(
    "streams",
    [
        [("users", "public")],  # the one stream of that name: the state covers it
        [("users", "public"), ("users", "crm")],  # two: it may cover either, so it waits for both
    ],
)
def test_a_state_without_the_namespace_waits_for_the_records_it_may_cover(heap, streams):
    heap.set_latency(300)  # the records are still on their way when the state arrives
    messages = [record(person(i), "users", streams[i % len(streams)][1]) for i in range(50)]
    messages.append(stream_state({"name": "users"}, 50, state_id=1))
    watcher = StateWatcher(heap, "add_user_properties", key=lambda row: row["email"])
    entries = [{"stream": name, "namespace": namespace, "api": USER_API} for name, namespace in streams]
    result = run_connector(
        "write", stream_config(heap, entries), catalog(*streams), messages, on_message=watcher.on_message
    )
    result.assert_clean()
    assert result.states == [messages[-1]["state"]]
    watcher.assert_safe(messages)


def test_the_entry_naming_the_namespace_wins_whatever_the_order(heap):
    config = stream_config(
        heap,
        [
            {"stream": "users", "api": TRACK_API},
            {"stream": "users", "namespace": "crm", "api": USER_API},
        ],
    )
    messages = [
        record(person(1), "users", "crm"),
        record(person(2), "users", "web"),
        stream_state({"name": "users", "namespace": "crm"}, 1, state_id=1),
        stream_state({"name": "users", "namespace": "web"}, 1, state_id=2),
    ]
    result = run_connector("write", config, catalog(("users", "crm"), ("users", "web")), messages)
    result.assert_clean()
    assert [user["identity"] for user in heap.users] == [person(1)["email"]]
    assert [event["identity"] for event in heap.events] == [person(2)["email"]]


def test_a_stream_named_with_spaces_around_loads_through_the_entry_naming_it(heap):
    config = stream_config(heap, [{"stream": " users ", "api": USER_API}])
    messages = [record(person(1), " users ", None), stream_state({"name": " users "}, 1, state_id=1)]
    result = run_connector("write", config, catalog((" users ", None)), messages)
    result.assert_clean()
    assert [user["identity"] for user in heap.users] == [person(1)["email"]]
    assert result.destination_record_counts == [1.0]


def test_streams_whose_names_would_read_the_same_are_counted_apart(heap):
    """`a.b` without a namespace and `b` in namespace `a`: each its own figures and recordCount."""
    config = stream_config(
        heap,
        [
            {"stream": "a.b", "api": USER_API},
            {"stream": "b", "namespace": "a", "api": USER_API},
        ],
    )
    messages = [record(person(i), "a.b", None) for i in range(5)]
    messages += [record(person(i), "b", "a") for i in range(100, 120)]
    messages += [
        stream_state({"name": "a.b"}, 5, state_id=1),
        stream_state({"name": "b", "namespace": "a"}, 20, state_id=2),
    ]
    result = run_connector("write", config, catalog(("a.b", None), ("b", "a")), messages)
    result.assert_clean()
    counts = {m["state"]["id"]: m["state"]["destinationStats"]["recordCount"] for m in result.messages
              if m["type"] == "STATE"}  # two streams' states: each stream's in order, not one after the other
    assert counts == {1: 5.0, 2: 20.0}
    assert "By stream: a.b: 5 read, 5 sent, 0 skipped; b (namespace a): 20 read, 20 sent, 0 skipped" in (
        result.summary_line
    )
