"""identify, delete_users, presets for Heap's own tables, and dry run: end to end through the console script."""

from __future__ import annotations

import re
import threading
import time

import pytest

from heap_standin import HeapStandin
from integration_tests.support import (
    catalog,
    config,
    interleave,
    people,
    record,
    run_connector,
    state,
    states_of,
)

IDENTIFY_API = {"api_type": "identify", "user_id_column": "visits", "identity_column": "email",
                "timestamp_column": "updated_at"}


def test_identify_sends_one_request_per_record_even_when_bulk_is_asked(heap):
    rows = people(12)
    messages = interleave(rows, every=5)
    result = run_connector("write", config(heap, IDENTIFY_API, bulk=True), catalog(), messages)
    assert result.returncode == 0, result.describe()
    assert result.states == states_of(messages)
    held = sorted(heap.identifies, key=lambda item: int(item["user_id"]))
    assert [(item["user_id"], item["identity"]) for item in held] == [(str(r["visits"]), r["email"]) for r in rows]
    assert held[3]["timestamp"] == "2023-03-04T10:03:03+00:00"
    assert heap.stats()["requests"] == 12


def test_identify_counts_records_without_a_valid_user_id(heap):
    rows = [*people(3), {"email": "secret-anon@example.com", "visits": "not-a-number"}]
    result = run_connector("write", config(heap, IDENTIFY_API), catalog(), interleave(rows, every=10))
    assert result.returncode == 0, result.describe()
    assert result.skipped == {"invalid_user_id (column visits)": 1}
    assert len(heap.identifies) == 3


def deletion_api(**columns) -> dict:
    return {"api_type": "delete_users", "api_key": "s3cret-deletion-key", **columns}


def test_delete_users_by_identity_in_requests_of_up_to_ten_thousand():
    with HeapStandin(api_key="s3cret-deletion-key") as heap:
        rows = people(10_050)
        messages = interleave(rows, every=4000)
        result = run_connector(
            "write", config(heap, deletion_api(identity_column="email")), catalog(), messages, timeout=120
        )
        assert result.returncode == 0, result.describe()
        assert result.states == states_of(messages)
        assert sorted(user["identity"] for user in heap.deleted_users) == sorted(r["email"] for r in rows)
        accepted = [line for line in result.log_lines("INFO") if "deletion_request_id" in line]
        assert len(accepted) == 2  # 10,000 + 50 users
        assert heap.tokens_issued == 1  # one token serves the whole (short) sync
        assert "s3cret-deletion-key" not in result.stdout + result.stderr


def test_delete_users_renews_an_expired_token():
    with HeapStandin(api_key="k", token_ttl_seconds=0.5, latency_ms=300) as heap:
        api = {"api_type": "delete_users", "api_key": "k", "user_id_column": "visits"}
        rows = people(6)
        result = run_connector("write", config(heap, api, batch_size=2, max_concurrent_requests=1), catalog(),
                               interleave(rows, every=2))
        assert result.returncode == 0, result.describe()
        assert sorted(int(user["user_id"]) for user in heap.deleted_users) == [r["visits"] for r in rows]
        assert heap.tokens_issued >= 2


def test_delete_users_check_proves_the_key_without_deleting():
    with HeapStandin(api_key="right-key") as heap:
        good = run_connector("check", config(heap, {**deletion_api(identity_column="email"), "api_key": "right-key"}))
        assert good.statuses[0]["status"] == "SUCCEEDED", good.describe()
        bad = run_connector("check", config(heap, deletion_api(identity_column="email")))
        assert bad.statuses[0]["status"] == "FAILED"
        assert "api_key" in bad.statuses[0]["message"]
        assert "s3cret-deletion-key" not in bad.stdout + bad.stderr
        assert heap.deleted_users == []


def test_delete_users_with_a_refused_key_fails_as_a_config_error():
    with HeapStandin(api_key="right-key") as heap:
        result = run_connector("write", config(heap, deletion_api(identity_column="email")), catalog(),
                               interleave(people(3), every=3))
        assert result.returncode != 0
        assert [error["failure_type"] for error in result.errors] == ["config_error"]
        assert result.states == []
        assert "s3cret-deletion-key" not in result.stdout + result.stderr


def test_dry_run_sends_nothing_emits_no_state_and_shows_masked_bodies(heap):
    api = {"api_type": "track", "identity_column": "email", "event_column": "action", "property_columns": "*"}
    messages = interleave(people(30), every=10)
    result = run_connector("write", config(heap, api, dry_run=True, batch_size=10), catalog(), messages)
    assert result.returncode == 0, result.describe()  # run_connector also asserts no record value was logged
    assert result.states == []  # a state would move the source's cursor past records that were never sent
    assert heap.stats()["requests"] == 0
    samples = [line for line in result.log_lines("INFO") if line.startswith("Dry run: Heap would receive")]
    assert 1 <= len(samples) <= 3
    assert re.search(r'"identity":"<text, 2[78] chars>"', samples[0]) and '"app_id":"11"' in samples[0]
    # property names may be data (under *): only their number is shown
    assert '"properties":"<7 properties>"' in samples[0] and "plan" not in samples[0], samples[0]
    assert any("30 would have been sent (dry run: nothing sent)" in line for line in result.log_lines("INFO"))


HEAP_USERS = [
    {"user_id": 8093349209 + i, "identity": f"secret-user-{i}@example.com" if i % 4 else None,
     "handle": f"handle-{i}", "joindate": "2023-01-05T10:00:00Z", "last_modified": "2024-01-01T00:00:00Z",
     "plan": "pro"}
    for i in range(8)
]


def test_heap_users_preset_loads_identified_users_and_counts_anonymous_ones(heap):
    messages = [record(row, "users") for row in HEAP_USERS] + [state(1, "users")]
    result = run_connector("write", {"app_id": "11", "base_url": heap.url, "api": {"api_type": "heap_users"}},
                           catalog("users"), messages)
    assert result.returncode == 0, result.describe()
    assert result.skipped == {"missing_identity (column identity)": 2}
    assert {user["identity"] for user in heap.users} == {r["identity"] for r in HEAP_USERS if r["identity"]}
    assert set(heap.users[0]["properties"]) == {"handle", "joindate", "plan"}


@pytest.mark.parametrize("table, expected_event", [("checkout_completed", "checkout_completed"),
                                                   ("pageviews", "pageviews")])
def test_heap_events_preset_names_events_after_the_table(heap, table, expected_event):
    rows = [{"event_id": i, "user_id": 5, "session_id": 77, "time": f"2024-03-01 12:00:0{i}", "type": None,
             "identity": "secret-user@example.com", "path": "/cart", "country": "NO"} for i in range(5)]
    messages = [record(row, table) for row in rows] + [state(1, table)]
    result = run_connector("write", {"app_id": "11", "base_url": heap.url, "api": {"api_type": "heap_events"},
                                     "track_events_per_minute": 0}, catalog(table), messages)
    assert result.returncode == 0, result.describe()
    assert [event["event"] for event in heap.events] == [expected_event] * 5
    assert heap.events[0]["properties"] == {"session_id": 77, "path": "/cart", "country": "NO"}
    assert heap.events[2]["timestamp"] == "2024-03-01T12:00:02+00:00"


def test_heap_user_migrations_preset_identifies(heap):
    rows = [{"from_user_id": 100 + i, "to_user_id": 900 + i, "time": 1489184516, "identity": f"secret-{i}@x.com"}
            for i in range(3)]
    messages = [record(row, "user_migrations") for row in rows] + [state(1, "user_migrations")]
    result = run_connector("write", {"app_id": "11", "base_url": heap.url, "api": {"api_type": "heap_user_migrations"}},
                           catalog("user_migrations"), messages)
    assert result.returncode == 0, result.describe()
    assert sorted(item["user_id"] for item in heap.identifies) == ["100", "101", "102"]


def _write_user_plans(heap, messages: list[dict], pauses: dict, on_state) -> None:
    """A user-properties write fed with `pauses` (the source's silences), which must succeed with every STATE
    echoed; `on_state()` runs as each STATE comes out."""
    result = run_connector(
        "write",
        config(heap, {"api_type": "add_user_properties", "identity_column": "email", "property_columns": "plan"}),
        catalog(),
        messages,
        pauses=pauses,
        on_message=lambda message: on_state() if message["type"] == "STATE" else None,
        timeout=180,
    )
    assert result.returncode == 0, result.describe()
    assert result.states == states_of(messages)


# The source's patience: how long it stays quiet waiting for a STATE that should come out within about a second
# (the connector sends what it has once the source has been quiet for a second). Only a connector that holds
# states until the source speaks again waits this out: start-up and a slow machine take a few seconds at most.
SOURCE_PATIENCE_SECONDS = 60


def test_a_stalled_source_does_not_hold_back_acknowledged_states(heap):
    """The first 8 records and a STATE arrive, then the source goes quiet until a STATE comes back: the records
    must go out and the STATE come back during the silence, not when the source speaks again."""
    messages = interleave(people(14), every=7)
    first_state = threading.Event()
    silence: dict[str, bool] = {}

    def stay_quiet_until_a_state() -> None:
        silence["ended_by_a_state"] = first_state.wait(SOURCE_PATIENCE_SECONDS)

    _write_user_plans(heap, messages, {8: stay_quiet_until_a_state}, first_state.set)  # after STATE 1 and a record
    assert silence["ended_by_a_state"], "the first STATE waited for the source's next message"


def test_a_trickling_source_gets_its_states_while_it_is_still_sending(heap):
    """A source that is never quiet for a second (a line every 0.1 s) must not have its states held until a
    batch of 1000 fills, nor until its end: a batch open for a second goes out, and its STATE comes back while
    the source is still trickling. The trickle lasts until 3 states came back (or SOURCE_PATIENCE_SECONDS)."""
    messages = interleave(people(SOURCE_PATIENCE_SECONDS * 5), every=1)  # 10 lines a second
    written = [0]  # lines the source has written
    written_at_state: list[int] = []  # lines written when each STATE came out

    def trickle() -> None:
        written[0] += 1
        if len(written_at_state) < 3:
            time.sleep(0.1)

    _write_user_plans(
        heap, messages, dict.fromkeys(range(len(messages)), trickle), lambda: written_at_state.append(written[0])
    )
    assert written_at_state[2] < len(messages), (
        f"no 3 states came back while the source trickled ({len(messages)} lines): {written_at_state[:3]}"
    )
