"""Heap ends exactly where ordered delivery leaves it, and each record's fate is counted once: the cases of
issue 24 as it reproduced them. A record Heap refuses on its own is rejected alone (an item merged from it and
good records is split back into its records), updates of one user from two streams reach Heap in input order,
and a STATE that may cover two catalog streams counts no record a second time."""

from __future__ import annotations

import random

import pytest

from heap_standin import HeapStandin
from integration_tests.ordered_model import (
    REFUSED_PROPERTY,
    assert_states_echoed_with_their_ids,
    expected_destination_stats,
    heap_end_state,
    input_end_state,
    refuse_the_bad_property,
    refused,
)
from integration_tests.support import APP_ID, catalog, record, run_connector
from integration_tests.support import state as stream_state

USERS = {"api_type": "add_user_properties", "identity_column": "email", "property_columns": "seq,plan,seats,city,k,bad"}

def stream_config(heap: HeapStandin, streams: list[str], **settings: object) -> dict:
    entries = [{"stream": name, "api": USERS} for name in streams]
    return {"app_id": APP_ID, "base_url": heap.url, "streams": entries, "track_events_per_minute": 0, **settings}


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "single"])
def test_a_record_heap_refuses_takes_none_of_its_users_other_updates_with_it(bulk):
    """User u1 gets {plan:a}, {seats:5}, a record Heap refuses, then {plan:c, city:Oslo}: Heap ends on
    plan=c, seats=5, city=Oslo (ordered delivery without the refused record, whatever merged), and the STATE
    counts 3 delivered and 1 rejected. On d108963 the item the refused record merged into is refused whole:
    Heap holds nothing for u1 (bulk) or only plan=a (single, the first update already sent), and every record
    of that item is rejected."""
    user = "secret-u1@example.com"
    rows = [
        {"email": user, "plan": "a"},
        {"email": user, "seats": 5},
        {"email": user, "seats": 7, "bad": "yes"},
        {"email": user, "plan": "c", "city": "Oslo"},
    ]
    messages = [record(row, "users") for row in rows] + [stream_state(1, "users", state_id=1)]
    with HeapStandin(latency_ms=50) as heap:  # single mode: the later updates wait (and merge) behind the first
        refuse_the_bad_property(heap)
        result = run_connector("write", stream_config(heap, ["users"], bulk=bulk), catalog("users"), messages)
        assert result.returncode == 0, result.describe()
        assert heap_end_state(heap.users, "identity") == {user: {"plan": "c", "seats": 5, "city": "Oslo"}}
    assert result.destination_stats == [{"recordCount": 3.0, "rejectedRecordCount": 1.0}]
    assert_states_echoed_with_their_ids([m["state"] for m in result.messages if m["type"] == "STATE"], messages)


def test_one_bad_record_among_4000_updates_of_20_users_rejects_that_record_alone():
    """4,000 updates of 20 users in random order, one of them carrying a property Heap refuses: 3999 loaded and
    1 rejected, in the summary and the STATEs' counts, and each user ends where ordered delivery leaves it. On
    d108963 every record of that user, all merged into one item Heap refuses, is rejected: 3783 loaded + 217
    rejected (the issue's load: 3800 + 200), every state counting 17 to 33 rejected, and Heap holds nothing for
    the user."""
    chooser = random.Random(24)
    rows = [{"email": f"secret-user-{chooser.randrange(20)}@example.com", "seq": seq} for seq in range(4000)]
    rows[2024][REFUSED_PROPERTY] = "yes"
    messages = []
    for seq, row in enumerate(rows, start=1):
        messages.append(record(row, "users"))
        if seq % 500 == 0:
            messages.append(stream_state(seq, "users", state_id=seq))
    with HeapStandin(latency_ms=10) as heap:
        refuse_the_bad_property(heap)
        result = run_connector("write", stream_config(heap, ["users"]), catalog("users"), messages, timeout=120)
        assert result.returncode == 0, result.describe()
        assert heap_end_state(heap.users, "identity") == input_end_state(messages, ["users"], "email", refused)
    summary = result.summary
    assert (summary["read"], summary["sent"], summary["skipped"]) == (4000, 3999, 1)
    states = [m["state"] for m in result.messages if m["type"] == "STATE"]
    assert_states_echoed_with_their_ids(states, messages)
    expected = expected_destination_stats(messages, refused)
    assert {state["id"]: state["destinationStats"] for state in states} == expected
    assert expected[2500] == {"recordCount": 499.0, "rejectedRecordCount": 1.0}  # the model's own sanity


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "single"])
def test_updates_of_one_user_from_two_streams_reach_heap_in_input_order(bulk):
    """Streams A and B both load add_user_properties: A sets k=1, B k=2, A k=3 on one user. Heap ends on k=3,
    as in input order across the streams. On d108963 each stream keeps its own queue: A's two updates merge
    into one item and B's goes after it, leaving k=2."""
    user = "secret-u1@example.com"
    messages = [
        record({"email": user, "k": 1}, "A"),
        record({"email": user, "k": 2}, "B"),
        record({"email": user, "k": 3}, "A"),
        stream_state(1, "A", state_id=1),
        stream_state(1, "B", state_id=2),
    ]
    with HeapStandin(latency_ms=20) as heap:
        result = run_connector("write", stream_config(heap, ["A", "B"], bulk=bulk), catalog("A", "B"), messages)
        assert result.returncode == 0, result.describe()
        assert heap_end_state(heap.users, "identity") == {user: {"k": 3}}
    assert_states_echoed_with_their_ids([m["state"] for m in result.messages if m["type"] == "STATE"], messages)


def test_a_state_naming_a_stream_two_catalog_streams_share_counts_each_record_once():
    """Catalog streams `users` in namespaces public and crm. A public state covers 2 records; a state naming
    `users` without a namespace may cover either stream, so it covers what no state has counted yet (2 crm
    records and 1 public); a crm state after it covers the 1 crm record since. The STATEs' counts add up to the 6
    records received: 2, 3 and 1. On d108963 the unnamed state counts records the others count too (6 reported
    as 10 here)."""

    def users_record(i: int, namespace: str) -> dict:
        body = {"stream": "users", "namespace": namespace, "emitted_at": 1_700_000_000_000}
        body["data"] = {"email": f"secret-{namespace}-{i}@example.com", "seq": i}
        return {"type": "RECORD", "record": body}

    def users_state(namespace: str | None, state_id: int) -> dict:
        descriptor = {"name": "users"} if namespace is None else {"name": "users", "namespace": namespace}
        stream = {"stream_descriptor": descriptor, "stream_state": {"position": state_id}}
        return {"type": "STATE", "state": {"type": "STREAM", "stream": stream, "id": state_id}}

    messages = [
        users_record(1, "public"),
        users_record(2, "public"),
        users_state("public", 1),
        users_record(3, "crm"),
        users_record(4, "crm"),
        users_record(5, "public"),
        users_state(None, 2),
        users_record(6, "crm"),
        users_state("crm", 3),
    ]
    namespaces = ("public", "crm")
    streams = [
        {"stream": {"name": "users", "namespace": namespace, "json_schema": {"type": "object"},
                    "supported_sync_modes": ["incremental"]},
         "sync_mode": "incremental", "destination_sync_mode": "append"}
        for namespace in namespaces
    ]
    entries = [{"stream": "users", "namespace": namespace, "api": USERS} for namespace in namespaces]
    with HeapStandin() as heap:
        config = {"app_id": APP_ID, "base_url": heap.url, "streams": entries, "track_events_per_minute": 0}
        result = run_connector("write", config, {"streams": streams}, messages)
        assert result.returncode == 0, result.describe()
        assert len(heap.users) == 6
    states = [m["state"] for m in result.messages if m["type"] == "STATE"]
    assert sorted(state["id"] for state in states) == [1, 2, 3]
    counts = {state["id"]: state["destinationStats"] for state in states}
    assert sum(stats["recordCount"] + stats["rejectedRecordCount"] for stats in counts.values()) == 6
    assert counts == {
        1: {"recordCount": 2.0, "rejectedRecordCount": 0.0},
        2: {"recordCount": 3.0, "rejectedRecordCount": 0.0},
        3: {"recordCount": 1.0, "rejectedRecordCount": 0.0},
    }
