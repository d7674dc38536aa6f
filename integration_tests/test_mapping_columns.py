"""A mapping that names a column the stream does not have: refused before it costs data.

- Before anything is sent, `write` holds each stream's mapping against the stream's json_schema in the catalog:
  a column that is a near miss of a declared one (emial for email, plna for plan), or that a closed schema
  (additionalProperties false) rules out, fails the sync with a config_error naming the stream, the column and
  the closest declared columns: nothing sent, no STATE. Another undeclared column is named in a warning and
  the sync goes on.
- A field inside `api` or a `streams` entry that is not an option fails `check` and `write`, naming the
  closest option; unknown top-level fields stay ignored, as in 0.1.0.
- Every record of a stream skipped for the same required column that none of them has, a column the schema
  does not declare (or a schema that declares nothing), ends the sync with a config_error before the stream's
  first STATE leaves (or at its 1000th record): a config mistake never moves the cursor. A declared column a
  record lacks is data (a null the source left out, a CDC update): counted, never a stop. Invalid records
  among valid ones are skipped as before.
- Where the schema declares nothing, a property column no record has had by the stream's first STATE is named
  in a warning.
"""

from __future__ import annotations

import pytest

from integration_tests.support import (
    STREAM,
    TRACK_API,
    USER_API,
    assert_check_failed,
    assert_no_traceback,
    catalog,
    config,
    interleave,
    people,
    person,
    record,
    run_connector,
    state,
)

# The columns of support.person, as a source's schema declares them
PERSON_SCHEMA = {
    "type": "object",
    "properties": {name: {"type": ["null", "string"]} for name in person(0)},
}


def catalog_with_schema(json_schema: dict, *streams: str) -> dict:
    built = catalog(*streams)
    for configured in built["streams"]:
        configured["stream"]["json_schema"] = json_schema
    return built


def assert_refused_before_anything_left(result, heap, *words: str) -> str:
    """A config_error naming every word, no STATE, nothing at the stand-in; the error's message."""
    assert result.returncode != 0, result.describe()
    assert result.errors and result.errors[-1]["failure_type"] == "config_error", result.describe()
    message = result.errors[-1]["message"]
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert not result.states, f"a STATE left after a config mistake: {result.states}"
    assert heap.stats()["requests"] == 0 and heap.events == heap.users == heap.accounts == []
    assert_no_traceback(result)
    return message


# ------------------------------------------------------------------------------------------------------------
# Before anything is sent: the mapping against the catalog's schema


@pytest.mark.parametrize(
    "api, json_schema, words",
    [
        ({**TRACK_API, "identity_column": "emial"}, PERSON_SCHEMA,
         ["stream users", "identity_column 'emial'", "closest columns are email", "Nothing was sent"]),
        ({**USER_API, "property_columns": "plna,name"}, PERSON_SCHEMA,
         ["stream users", "property_columns 'plna'", "closest columns are plan"]),
        ({**TRACK_API, "property_columns": "plan,referrer"}, {**PERSON_SCHEMA, "additionalProperties": False},
         ["stream users", "property_columns 'referrer'", "allows no other fields"]),
    ],
    ids=["identity_near_miss", "property_near_miss", "closed_schema"],
)
def test_a_column_the_schema_rules_out_fails_the_sync_before_anything_is_sent(heap, api, json_schema, words):
    messages = interleave(people(30), every=10)
    result = run_connector("write", config(heap, api), catalog_with_schema(json_schema), messages)
    assert_refused_before_anything_left(result, heap, *words)


def test_another_undeclared_column_is_named_in_a_warning_and_the_sync_goes_on(heap):
    """Some sources send fields their schema does not declare: such a column loads where records have it."""
    api = {**TRACK_API, "property_columns": "plan,referrer"}
    rows = [person(i, referrer=f"secret-ref-{i}") for i in range(20)]
    result = run_connector("write", config(heap, api), catalog_with_schema(PERSON_SCHEMA), interleave(rows, every=10))
    assert result.returncode == 0, result.describe()
    warnings = [line for line in result.log_lines("WARN") if "'referrer'" in line]
    assert len(warnings) == 1 and "Stream users: property_columns 'referrer' is not declared" in warnings[0]
    assert len(result.states) == 2 and len(heap.events) == 20
    assert all("referrer" in event["properties"] for event in heap.events)


# ------------------------------------------------------------------------------------------------------------
# An option that is not one: refused by check and write alike


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"api": {**TRACK_API, "timestamp_colum": "updated_at"}},
         "api.timestamp_colum is not an option; did you mean timestamp_column?"),
        ({"streams": [{"stream": STREAM, "namspace": "crm", "api": USER_API}]},
         "streams[0].namspace is not an option; did you mean namespace?"),
    ],
    ids=["api_field", "streams_entry_field"],
)
def test_an_unknown_option_fails_check_and_write_naming_the_closest_option(heap, raw, message):
    bad = {**config(heap, TRACK_API), **raw}
    if "streams" in raw:
        del bad["api"]
    check = run_connector("check", bad)
    assert_check_failed(check, [message])
    write = run_connector("write", bad, catalog(), interleave(people(5), every=5))
    assert_refused_before_anything_left(write, heap, message)


def test_unknown_top_level_fields_stay_ignored(heap):
    result = run_connector("check", config(heap, TRACK_API, some_future_setting={"anything": 1}))
    assert result.statuses == [{"status": "SUCCEEDED"}], result.describe()


# ------------------------------------------------------------------------------------------------------------
# While records flow: a required column none of a stream's first records has


def global_state(n: int) -> dict:
    """A GLOBAL state, as a CDC source sends it, with the `id` the platform gives every state."""
    stream_states = [{"stream_descriptor": {"name": STREAM}, "stream_state": {"position": n}}]
    body = {"type": "GLOBAL", "id": 5000 + n, "global": {"shared_state": {"lsn": n}, "stream_states": stream_states}}
    return {"type": "STATE", "state": body}


@pytest.mark.parametrize("make_state", [lambda n: state(n, state_id=n), global_state], ids=["STREAM", "GLOBAL"])
def test_a_required_column_no_record_has_stops_the_sync_before_the_first_state(heap, make_state):
    """The schema declares nothing, so only the records can tell: every one is missing_identity for lack of
    the column emial. Before this, all were skipped and every STATE left: the cursor moved past them."""
    api = {**TRACK_API, "identity_column": "emial"}
    messages = [record(row) for row in people(10)] + [make_state(1)] + [record(row) for row in people(15, 10)]
    result = run_connector("write", config(heap, api), catalog(), messages + [make_state(2)])
    message = assert_refused_before_anything_left(
        result, heap, "Stream users", "first 10 records", "missing_identity (column emial)", "cursor has not moved"
    )
    assert "secret" not in message


def test_the_verdict_comes_at_the_thousandth_record_when_no_state_comes_first(heap):
    api = {**USER_API, "property_columns": "plna"}
    messages = [record(row) for row in people(1500)] + [state(1)]
    result = run_connector("write", config(heap, api), catalog(), messages)
    assert_refused_before_anything_left(result, heap, "first 1000 records", "no_properties (property_columns plna)")


def test_one_streams_mistake_stops_the_sync_at_that_streams_first_state(heap):
    """users loads; orders names a column its records lack, and its first state never leaves. A users state
    may have left before (once Heap held its records); nothing of orders was sent."""
    orders_api = {"api_type": "track", "identity_column": "emial", "event_name": "Order Placed"}
    raw = {**config(heap, USER_API), "streams": [{"stream": "orders", "api": orders_api}]}
    messages = [record(row) for row in people(10)] + [state(1)]
    messages += [record(row, stream="orders") for row in people(10, start=10)] + [state(1, stream="orders")]
    result = run_connector("write", raw, catalog(STREAM, "orders"), messages)
    assert result.errors and result.errors[-1]["failure_type"] == "config_error", result.describe()
    assert "Stream orders" in result.errors[-1]["message"]
    assert [s["stream"]["stream_descriptor"]["name"] for s in result.states] in ([], [STREAM])
    assert heap.events == []


def test_invalid_records_among_valid_ones_are_still_skipped_and_the_sync_succeeds(heap):
    rows = [person(i) if i % 3 else {k: v for k, v in person(i).items() if k != "email"} for i in range(30)]
    result = run_connector("write", config(heap, TRACK_API), catalog(), interleave(rows, every=10))
    assert result.returncode == 0, result.describe()
    assert len(result.states) == 3 and len(heap.events) == 20
    assert result.skipped == {"missing_identity (column email)": 10}


# ------------------------------------------------------------------------------------------------------------
# A declared column a record lacks is data


def test_a_declared_identity_column_the_only_record_lacks_is_counted_and_the_cursor_moves(heap):
    """The source left out a null: the schema declares email, the incremental sync's one record has no email
    key. Before, a config_error on every retry, and the cursor never moved."""
    row = {key: value for key, value in person(1).items() if key != "email"}
    messages = [record(row), state(1, state_id=1)]
    result = run_connector("write", config(heap, TRACK_API), catalog_with_schema(PERSON_SCHEMA), messages)
    result.assert_clean()
    assert result.skipped == {"missing_identity (column email)": 1}
    assert result.destination_stats == [{"recordCount": 0, "rejectedRecordCount": 1}]
    assert heap.stats()["requests"] == 0


def test_partial_updates_of_a_cdc_source_are_counted_as_records_not_a_config_error(heap):
    """A CDC source's updates carry what changed: every update so far changed a column the mapping does not
    load, so each is no_properties; the states leave and the later full rows load."""
    partial = [{"email": f"secret-person-{i}@example.com", "updated_at": "2023-03-01T10:00:00Z"} for i in range(5)]
    messages = [record(row) for row in partial] + [global_state(1)]
    messages += [record(row) for row in people(3)] + [global_state(2)]
    result = run_connector("write", config(heap, USER_API), catalog_with_schema(PERSON_SCHEMA), messages)
    result.assert_clean()
    assert result.skipped == {"no_properties (column property_columns)": 5}
    assert result.destination_stats == [
        {"recordCount": 0, "rejectedRecordCount": 5},
        {"recordCount": 3, "rejectedRecordCount": 0},
    ]
    assert len(heap.users) == 3


def test_a_property_column_no_record_of_a_schemaless_stream_has_is_named_at_its_first_state(heap):
    """The catalog declares nothing, so nothing could be checked before the sync: a misspelled optional column
    (plna) would never reach Heap without a word. It is named once, at the first state; the sync goes on."""
    api = {**TRACK_API, "property_columns": "plan,plna,name"}
    result = run_connector("write", config(heap, api), catalog(), interleave(people(20), every=10))
    result.assert_clean()
    warned = [line for line in result.log_lines("WARN") if "property column" in line]
    assert len(warned) == 1, result.describe()
    assert "Stream users: none of its first 10 records has the property column(s) plna, so" in warned[0]
    assert len(result.states) == 2 and len(heap.events) == 20


# ------------------------------------------------------------------------------------------------------------
# Any field a record can have can be named


def test_a_column_that_is_no_path_fails_check_and_write_saying_how_to_name_the_field(heap):
    """$city is not JSONPath: before, check succeeded and write ended in a traceback at its first record."""
    api = {**USER_API, "property_columns": "plan,$city"}
    checked = run_connector("check", config(heap, api))
    assert_check_failed(checked, ["api: Column '$city' is not a valid path", "write it in backquotes: `$city`"])
    assert_no_traceback(checked)
    written = run_connector("write", config(heap, api), catalog(), interleave(people(3), every=3))
    assert_refused_before_anything_left(written, heap, "Column '$city' is not a valid path")


def test_fields_named_with_dollar_signs_and_brackets_load_under_their_own_names(heap):
    """A field literally named tags[0] is matched as it is (a record key exactly the column wins over the path);
    $city, which is no path at all, is named in backquotes."""
    api = {**USER_API, "property_columns": "plan,`$city`,tags[0],`a,b`"}
    rows = [person(i, **{"$city": f"secret-city-{i}", "tags[0]": f"secret-tag-{i}", "a,b": i}) for i in range(3)]
    declared = {**PERSON_SCHEMA["properties"], "$city": {}, "tags[0]": {}, "a,b": {}}
    json_schema = {**PERSON_SCHEMA, "properties": declared}
    result = run_connector("write", config(heap, api), catalog_with_schema(json_schema), interleave(rows, every=3))
    result.assert_clean()
    assert [user["properties"] for user in heap.users] == [
        {"plan": row["plan"], "$city": row["$city"], "tags[0]": row["tags[0]"], "a,b": row["a,b"]} for row in rows
    ]
