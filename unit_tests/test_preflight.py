"""Columns a mapping names that the stream does not have: the schema check before a sync, the watch over its
first records. Tables of rules; the protocol end to end is in integration_tests/test_mapping_columns.py."""

from __future__ import annotations

from typing import Any

import pytest

from destination_heap_analytics.config import ConfigError, parse_config, streams_for_catalog
from destination_heap_analytics.mapping import Mapping
from destination_heap_analytics.preflight import RECORDS_WATCHED, ColumnWatch, check_columns, first_field

TRACK = {"api_type": "track", "identity_column": "email", "event_column": "action"}
USERS = {"api_type": "add_user_properties", "identity_column": "email", "property_columns": "plan"}
DECLARED = {name: {} for name in ("email", "action", "plan", "name", "created_at", "address", "Items", "account")}


def schema(closed: bool = False, properties: dict | None = None) -> dict:
    body: dict[str, Any] = {"type": "object", "properties": DECLARED if properties is None else properties}
    if closed:
        body["additionalProperties"] = False
    return body


def streams(api: dict, name: str = "users") -> dict:
    return streams_for_catalog(parse_config({"app_id": "11", "api": api}), [(name, None)])


def check(api: dict, json_schema: Any) -> list[str]:
    return check_columns(streams(api), {("users", None): json_schema})


# ------------------------------------------------------------------------------------------------------------
# Before a sync: the mapping against the stream's schema


@pytest.mark.parametrize(
    "api, closed, closest",
    [
        (dict(TRACK, identity_column="emial"), False, "identity_column 'emial' is not declared by the stream, "
         "whose closest columns are email"),
        (dict(TRACK, property_columns="plna,name"), False, "property_columns 'plna' is not declared by the stream, "
         "whose closest columns are plan"),
        (dict(TRACK, identity_column="Email"), False, "closest columns are email"),  # a case slip is a near miss
        (dict(TRACK, timestamp_column="created"), False, "timestamp_column 'created'"),
        (dict(TRACK, event_column="actoin.name"), False, "event_column 'actoin.name'"),  # a path: its first part
        (dict(TRACK, identity_column="$.emial"), False, "identity_column '$.emial'"),  # JSONPath: its first field
        (dict(TRACK, event_id_column="event_id"), True, "its schema allows no other fields; its closest columns"),
        ({"api_type": "identify", "user_id_column": "uid", "identity_column": "email"}, True, "user_id_column 'uid'"),
        ({"api_type": "add_account_properties", "account_id_column": "acount", "property_columns": "plan"}, False,
         "account_id_column 'acount'"),
        ({"api_type": "heap_users", "identity_column": "emails"}, False, "identity_column 'emails'"),
        # a typo in what "*" leaves out would send the very column the user meant to keep out of Heap
        (dict(USERS, property_columns="*", excluded_columns="nme"), False, "excluded_columns 'nme'"),
    ],
)
def test_an_undeclared_column_near_a_declared_one_or_ruled_out_is_refused(api, closed, closest):
    with pytest.raises(ConfigError) as refused:
        check(api, schema(closed))
    message = str(refused.value)
    assert "stream users" in message and closest in message and "Nothing was sent" in message, message


@pytest.mark.parametrize(
    "api, json_schema",
    [
        (dict(TRACK, property_columns="plan,address.city"), schema(closed=True)),  # a path: its first part
        (dict(TRACK, property_columns="address.city"), schema(properties={**DECLARED, "address.city": {}})),
        (dict(TRACK, property_columns="*"), schema(closed=True)),  # * names no column
        (dict(TRACK, identity_column="Items[0].email"), schema(closed=True)),
        (dict(TRACK, identity_column="$..emial"), schema(closed=True)),  # starts anywhere: not checked
        # as PyAirbyte's cache path sends them: the source's schema, records with lowercased top-level keys
        (dict(TRACK, identity_column="e_mail", property_columns="first_name"),
         schema(closed=True, properties={**DECLARED, "E-Mail": {}, "First Name": {}})),
        (dict(TRACK, identity_column="emial"), {}),  # a schema that declares nothing is not checked
        (dict(TRACK, identity_column="emial"), {"type": "object"}),
        (dict(TRACK, identity_column="emial"), {"type": "object", "properties": {}, "additionalProperties": False}),
        # heap_events' type, time and event_id are optional: per-event tables have no type, the event is the table
        ({"api_type": "heap_events"}, schema(closed=True, properties={"identity": {}, "user_id": {}})),
        # a preset's own exclusions are not the user's words
        ({"api_type": "heap_users"}, schema(closed=True, properties={"identity": {}, "user_id": {}})),
        # fields whose names hold $ or [: in backquotes, or written as they are
        (dict(TRACK, property_columns="`$city`,tags[0]"), schema(closed=True, properties={**DECLARED, "$city": {},
                                                                                           "tags[0]": {}})),
    ],
)
def test_declared_or_uncheckable_columns_pass_silently(api, json_schema):
    assert check(api, json_schema) == []


@pytest.mark.parametrize(
    "api, column",
    [
        (dict(TRACK, identity_column="user_email"), "identity_column 'user_email'"),
        (dict(TRACK, property_columns="plan,updated_at"), "property_columns 'updated_at'"),  # 0.7 to created_at
        ({"api_type": "heap_events"}, "identity_column 'identity'"),  # a preset's required column is checked
        # leaving out a column the stream lacks costs nothing: a warning only (under a closed schema too)
        (dict(USERS, property_columns="*", excluded_columns="password_hash"), "excluded_columns 'password_hash'"),
    ],
)
def test_other_undeclared_columns_are_warned_about_by_name(api, column):
    warnings = check(api, schema())
    assert len(warnings) == 1 and column in warnings[0] and "users" in warnings[0], warnings


def test_every_refused_column_of_every_stream_is_named_at_once():
    config = parse_config({"app_id": "11", "streams": [
        {"stream": "users", "api": dict(USERS, identity_column="emial")},
        {"stream": "orders", "namespace": "shop", "api": dict(TRACK, property_columns="plna")},
    ]})
    chosen = streams_for_catalog(config, [("users", None), ("orders", "shop")])
    with pytest.raises(ConfigError) as refused:
        check_columns(chosen, {("users", None): schema(), ("orders", "shop"): schema()})
    assert "stream users: identity_column 'emial'" in str(refused.value)
    assert "stream orders (namespace shop): property_columns 'plna'" in str(refused.value)


@pytest.mark.parametrize(
    "column, first",
    [
        ("email", "email"),
        ("address.city", "address"),
        ("items.0.sku", "items"),
        ("items[0].sku", "items"),
        ("$.email", "email"),
        ("$['email']", "email"),
        ("$.identities[*].connection", "identities"),
        ("$..email", None),
        ("$[*]", None),
        ("$", None),
        ("$.[", None),
        ("`$city`", "$city"),
        ("`a.b`", "a.b"),
    ],
)
def test_the_first_field_of_a_column(column, first):
    assert first_field(column) == first


# ------------------------------------------------------------------------------------------------------------
# Once records flow: a required column none of the stream's first records has


def watch_records(
    api: dict, records: list[Any], json_schema: Any = None
) -> tuple[ColumnWatch, list[str | None]]:
    stream = streams(api)[("users", None)]
    mapping = Mapping(stream.mapping, "users")
    watch = ColumnWatch(stream, ("users", None), json_schema)
    return watch, [watch.saw(record, mapping.map(record, 1_700_000_000_000)) for record in records]


WITHOUT_EMAIL = {"mail": "x@example.com", "action": "Signed Up", "plan": "pro"}
WITH_EMAIL = {"email": "x@example.com", "action": "Signed Up", "plan": "pro"}


@pytest.mark.parametrize(
    "api, records, refused",
    [
        (TRACK, [WITHOUT_EMAIL] * 3, "every one of its first 3 records was skipped as missing_identity (column email)"),
        (USERS, [{"email": "x@example.com", "plna": "pro"}] * 2, "no_properties (property_columns plan)"),
        ({"api_type": "identify", "user_id_column": "uid", "identity_column": "email"}, [WITH_EMAIL],
         "missing_user_id (column uid)"),
        (TRACK, [WITH_EMAIL, WITHOUT_EMAIL], None),  # a record had it: skipping the others is data, not config
        (TRACK, [WITHOUT_EMAIL, WITH_EMAIL], None),
        (TRACK, [{**WITH_EMAIL, "email": None}] * 3, None),  # present but empty (anonymous rows): data
        (TRACK, [WITHOUT_EMAIL, {"email": "x@example.com"}], None),  # another reason (missing_event): not the same
        (TRACK, [WITHOUT_EMAIL, ["not", "an", "object"]], None),
        (dict(TRACK, timestamp_column="at"), [{**WITH_EMAIL, "at": "not a time"}] * 2, None),  # not a missing column
        (dict(USERS, property_columns="*"), [{"email": "x@example.com"}] * 2, None),  # * names no column
    ],
)
def test_the_watch_refuses_at_the_first_state_only_a_column_every_record_lacks(api, records, refused):
    watch, verdicts = watch_records(api, records)
    assert verdicts == [None] * len(records)
    verdict = watch.at_state()
    assert (verdict is None) if refused is None else (refused in verdict and "cursor has not moved" in verdict)
    assert not watch.watching and watch.at_state() is None  # one verdict, at the first state


def test_a_state_before_any_record_of_the_stream_leaves_the_verdict_to_the_next():
    watch, _ = watch_records(TRACK, [])
    assert watch.at_state() is None and watch.watching


def test_the_verdict_comes_at_the_thousandth_record_if_no_state_came_first():
    _, verdicts = watch_records(TRACK, [WITHOUT_EMAIL] * RECORDS_WATCHED)
    assert verdicts[:-1] == [None] * (RECORDS_WATCHED - 1)
    assert f"every one of its first {RECORDS_WATCHED} records" in verdicts[-1]


@pytest.mark.parametrize(
    "api, records",
    [
        (TRACK, [WITHOUT_EMAIL] * 3),  # the source left out a null identity: skipped and counted, never a stop
        (USERS, [{"email": "x@example.com"}] * 2),  # a CDC update that changed no property column: no_properties
        (dict(USERS, property_columns="plan,plna"), [{"email": "x@example.com"}] * 2),  # one of them declared
        (TRACK, [WITHOUT_EMAIL] * RECORDS_WATCHED),
    ],
    ids=["identity", "properties", "some_properties_declared", "thousand"],
)
def test_a_declared_column_the_records_lack_is_data_not_a_mistake(api, records):
    watch, verdicts = watch_records(api, records, schema())
    assert verdicts == [None] * len(records) and watch.at_state() is None


def test_an_undeclared_required_column_the_records_lack_is_still_refused_where_the_schema_declares_others():
    watch, _ = watch_records(dict(TRACK, identity_column="mail_address"), [WITH_EMAIL] * 2, schema())
    assert "missing_identity (column mail_address)" in watch.at_state()


def test_a_property_column_no_record_has_is_named_at_the_first_state_of_a_schemaless_stream(caplog):
    api = dict(TRACK, property_columns="plan,plna,address.city,referrer")
    records = [WITH_EMAIL, {**WITH_EMAIL, "referrer": None}, {**WITH_EMAIL, "address": {}}]
    watch, verdicts = watch_records(api, records, {"type": "object"})
    assert verdicts == [None] * 3 and watch.watching
    assert watch.at_state() is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    # plan, address (for address.city) and referrer (null) are in some record: only plna is named
    assert warnings[0].startswith("Stream users: none of its first 3 records has the property column(s) plna, so ")
    assert not watch.watching and watch.at_state() is None and len(caplog.records) == 1  # said once


def test_property_columns_every_record_has_or_a_declared_schema_give_no_warning(caplog):
    api = dict(TRACK, property_columns="plan")
    for json_schema, records in (({"type": "object"}, [WITH_EMAIL]), (schema(), [{"email": "x", "action": "a"}])):
        watch, _ = watch_records(api, records, json_schema)
        assert watch.at_state() is None and not watch.watching
    assert caplog.records == []
