"""Records that cannot go to Heap: skipped and counted (on_invalid_record=skip) or the sync stops (fail);
items Heap itself refuses inside a bulk request, isolated by halving. Never a record value in the logs."""

from __future__ import annotations

import math

from integration_tests.support import (
    TRACK_API,
    USER_API,
    StateWatcher,
    assert_no_leaks,
    catalog,
    config,
    interleave,
    people,
    person,
    record,
    run_connector,
    state,
    states_of,
)


def _without(data: dict, key: str) -> dict:
    return {k: v for k, v in data.items() if k != key}


def test_invalid_records_are_skipped_and_counted_by_reason_and_column(heap):
    good = people(12)
    exactly_255 = person(200, email="secret-" + "b" * 248)
    assert len(exactly_255["email"]) == 255
    invalid = {
        "missing_identity (column email)": record(_without(person(100), "email")),
        "identity_too_long (column email)": record(person(101, email="secret-" + "a" * 249)),
        "invalid_timestamp (column updated_at)": record(person(102, updated_at="secret-not-a-time")),
        "missing_event (column action)": record(person(103, action=None)),
        "record_not_an_object": record("secret-a-row-that-is-text"),
    }
    messages = interleave(good[:6], every=3)
    messages += list(invalid.values())
    messages += interleave(good[6:] + [exactly_255], every=3)
    valid_emails = {row["email"] for row in good} | {exactly_255["email"]}
    watcher = StateWatcher(heap, "track", lambda d: d["email"])
    cfg = config(heap, TRACK_API, batch_size=4)
    result = run_connector("write", cfg, catalog(), messages, on_message=watcher.on_message)

    assert result.returncode == 0, result.describe()
    assert result.errors == []
    assert result.skipped == dict.fromkeys(invalid, 1)
    summary = result.summary
    assert (summary["outcome"], summary["read"], summary["sent"], summary["skipped"]) == ("succeeded", 18, 13, 5)
    assert {e["identity"] for e in heap.events} == valid_emails
    assert len(heap.events) == 13
    assert result.states == states_of(messages)
    # the third state's interval holds the invalid records: rejected
    assert result.destination_stats == [
        {"recordCount": count, "rejectedRecordCount": rejected}
        for count, rejected in ((3.0, 0.0), (3.0, 0.0), (3.0, 5.0), (3.0, 0.0), (1.0, 0.0))
    ]

    def valid(message: dict) -> bool:
        data = message["record"]["data"]
        return isinstance(data, dict) and data.get("email") in valid_emails

    watcher.assert_safe(messages, valid=valid)


def test_user_properties_record_with_none_of_the_property_columns_is_skipped(heap):
    rows = people(5)
    bare = {"email": "secret-person-bare@example.com", "other": "secret-unmapped-value"}
    messages = interleave(rows[:2] + [bare] + rows[2:], every=2)
    result = run_connector("write", config(heap, USER_API), catalog(), messages)
    assert result.returncode == 0, result.describe()
    assert result.skipped == {"no_properties (column property_columns)": 1}
    assert sorted(u["identity"] for u in heap.users) == sorted(r["email"] for r in rows)
    assert result.states == states_of(messages)


def test_on_invalid_record_fail_ends_the_sync_with_a_config_error_naming_reason_and_column(heap):
    before, after = people(40), people(40, start=40)
    messages = interleave(before, every=10) + [record(_without(person(999), "email"))] + interleave(after, every=10)
    watcher = StateWatcher(heap, "track", lambda d: d["email"])
    cfg = config(heap, TRACK_API, batch_size=10, on_invalid_record="fail")
    result = run_connector("write", cfg, catalog(), messages, on_message=watcher.on_message)

    assert result.returncode != 0, result.describe()
    assert len(result.errors) == 1, result.describe()
    error = result.errors[0]
    assert error["failure_type"] == "config_error"
    assert "missing_identity" in error["message"] and "column email" in error["message"]
    assert "on_invalid_record" in error["message"]
    assert result.summary["outcome"] == "failed"
    watcher.assert_safe(messages, valid=lambda m: "email" in m["record"]["data"])
    # Nothing after the invalid record was sent, and no STATE that covers it was emitted.
    assert not {e["identity"] for e in heap.events} & {r["email"] for r in after}
    assert len(result.states) <= 4


def test_items_heap_rejects_in_a_bulk_request_are_isolated_by_halving(heap):
    """1000 events in one bulk request, one of which Heap refuses: 999 arrive, the bad one is counted, and the
    bad item is found with about 2*log2(1000) extra requests."""
    rows = people(1000)
    bad = rows[637]["email"]
    heap.reject_when(lambda item: "postBody.events[0].properties should be object" if item["identity"] == bad else None)
    messages = interleave(rows, every=250)
    result = run_connector("write", config(heap, TRACK_API), catalog(), messages, timeout=90)

    assert result.returncode == 0, result.describe()
    assert result.skipped == {"rejected_by_heap: postBody.events[n].properties should be object": 1}
    identities = [e["identity"] for e in heap.events]
    assert len(identities) == 999 and bad not in identities
    assert set(identities) == {r["email"] for r in rows} - {bad}
    summary = result.summary
    assert (summary["sent"], summary["skipped"], summary["states"]) == (999, 1, 4)
    extra = heap.stats()["requests"] - 1
    assert 0 < extra <= 2 * math.ceil(math.log2(1000)) + 2, f"{extra} extra requests to isolate one bad item"
    assert result.states == states_of(messages)
    # the refused event is rejected on the state after it (records 501 to 750), not loaded
    assert [(s["recordCount"], s["rejectedRecordCount"]) for s in result.destination_stats] == [
        (250.0, 0.0), (250.0, 0.0), (249.0, 1.0), (250.0, 0.0)
    ]


def test_several_rejected_items_across_batches_and_in_single_mode(heap):
    rows = people(30)
    bad = {rows[i]["email"] for i in (0, 13, 29)}
    heap.reject_when(lambda item: "postBody.properties.plan is not allowed" if item["identity"] in bad else None)
    messages = interleave(rows, every=7)
    result = run_connector("write", config(heap, USER_API, bulk=False), catalog(), messages)

    assert result.returncode == 0, result.describe()
    wording = "refused (Heap's wording is not logged: it may quote record values)"
    assert result.skipped == {f"rejected_by_heap: postBody.properties.<property> {wording}": 3}
    assert {u["identity"] for u in heap.users} == {r["email"] for r in rows} - bad
    assert heap.stats()["requests"] == 30  # one request per record, a refused one is not retried
    assert result.states == states_of(messages)
    assert [(s["recordCount"], s["rejectedRecordCount"]) for s in result.destination_stats] == [
        (6.0, 1.0), (6.0, 1.0), (7.0, 0.0), (7.0, 0.0), (1.0, 1.0)  # records 1, 14 and 30 refused
    ]


def test_a_rejected_item_with_on_invalid_record_fail_ends_the_sync(heap):
    rows = people(20)
    bad = rows[5]["email"]
    heap.reject_when(lambda item: "postBody.events[0].event should be string" if item["identity"] == bad else None)
    cfg = config(heap, TRACK_API, batch_size=5, on_invalid_record="fail", max_concurrent_requests=1)
    result = run_connector("write", cfg, catalog(), interleave(rows, every=5))
    assert result.returncode != 0, result.describe()
    assert [e["failure_type"] for e in result.errors] == ["config_error"]
    assert "rejected_by_heap" in result.errors[0]["message"]
    assert bad not in {e["identity"] for e in heap.events}
    # The batch holding the refused record was not acknowledged: the state after it must not be out.
    assert len(result.states) <= 1


def test_heap_error_text_that_quotes_a_value_is_masked_in_the_logs(heap):
    rows = people(8)
    bad = rows[3]["email"]
    text = f'postBody.events[0].identity should not be "{bad}"'
    heap.reject_when(lambda item: text if item["identity"] == bad else None)
    result = run_connector("write", config(heap, TRACK_API), catalog(), interleave(rows, every=4))
    assert result.returncode == 0, result.describe()
    assert result.skipped == {"rejected_by_heap: postBody.events[n].identity should not be …": 1}
    assert len(heap.events) == 7


def test_heap_error_text_that_echoes_a_value_unquoted_never_reaches_the_logs(heap):
    rows = people(8)
    bad = rows[3]["email"]
    heap.reject_when(lambda item: f"identity {bad} is blocked" if item["identity"] == bad else None)
    result = run_connector("write", config(heap, TRACK_API), catalog(), interleave(rows, every=4), check_leaks=False)
    assert result.returncode == 0, result.describe()
    assert len(heap.events) == 7
    assert sum(result.skipped.values()) == 1
    assert_no_leaks(result, [bad])


def test_property_names_built_from_record_data_never_reach_the_logs(heap):
    api = {"api_type": "add_account_properties", "account_id_column": "account", "property_columns": "*"}
    key = "secret-voter-77@example.com"
    data = {"account": "secret-account-77", "votes": {key: "secret-comment-" + "y" * 1500}}
    result = run_connector("write", config(heap, api), catalog(), [record(data), state(1)], private=[key])
    assert result.returncode == 0, result.describe()
    assert heap.accounts[0]["properties"][f"votes.{key}"] == data["votes"][key][:1023]
