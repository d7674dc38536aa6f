"""Mapping rules, one by one: each row is a record, a mapping and what Heap must receive."""

import ast
import json
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from xxhash import xxh3_128_hexdigest

from destination_heap_analytics.config import ConfigError, MappingConfig
from destination_heap_analytics.mapping import (
    ColumnPath,
    HeapItem,
    Mapping,
    Rejection,
    idempotency_key,
    normalize_timestamp,
)

SAMPLES = Path(__file__).resolve().parent.parent / "sample_files"
EMITTED_AT = 1666325394622  # 2022-10-21T04:09:54.622+00:00


def auth0_user() -> dict:
    first_line = (SAMPLES / "messages.jsonl").read_text().splitlines()[0]
    return json.loads(first_line)["record"]["data"]


def mapped(api: dict, record: dict, emitted_at: int = EMITTED_AT) -> HeapItem | Rejection:
    return Mapping(MappingConfig(**api)).map(record, emitted_at)


def track(**columns) -> dict:
    return {"api_type": "track", "identity_column": "who", "event_column": "what", **columns}


def users(columns: tuple[str, ...] | None) -> dict:
    return {"api_type": "add_user_properties", "identity_column": "who", "property_columns": columns}


# The three seed examples, key for key.


def test_track_seed_example():
    item = mapped(
        {
            "api_type": "track",
            "property_columns": ("blocked", "created_at", "name"),
            "event_column": "identities.connection",
            "identity_column": "email",
            "timestamp_column": "updated_at",
        },
        auth0_user(),
    )
    assert isinstance(item, HeapItem)
    key = item.body.pop("idempotency_key")
    assert len(key) == 32 and int(key, 16) >= 0
    assert item.body == {
        "identity": "jamie.tillman0@example.com",
        "event": "Username-Password-Authentication",
        "timestamp": "2022-10-21T00:09:54.622+00:00",
        "properties": {"blocked": "false", "created_at": "2022-10-21T04:09:54.622Z", "name": "Jamie Tillman"},
    }
    assert item.notes == []


def test_user_properties_seed_example():
    item = mapped(
        {
            "api_type": "add_user_properties",
            "property_columns": ("identities.provider", "created_at", "nickname"),
            "identity_column": "user_id",
        },
        auth0_user(),
    )
    assert item.body == {
        "identity": "auth0|815ff3c3-84fa-4f63-b959-ac2d11efc63c",
        "properties": {"identities.provider": "auth0", "created_at": "2022-10-21T04:09:54.622Z", "nickname": "jamie0"},
    }


def test_account_properties_seed_example():
    item = mapped(
        {
            "api_type": "add_account_properties",
            "property_columns": ("family_name", "email_verified", "blocked"),
            "account_id_column": "identities.user_id",
        },
        auth0_user(),
    )
    assert item.body == {
        "account_id": "815ff3c3-84fa-4f63-b959-ac2d11efc63c",
        "properties": {"family_name": "Tillman", "email_verified": "false", "blocked": "false"},
    }


# Column paths.


@pytest.mark.parametrize(
    "api, key",
    [
        (track(), None),  # events carry their own time: no order to keep
        (users(("plan",)), "u1"),
        ({"api_type": "add_account_properties", "account_id_column": "account", "property_columns": ("plan",)}, "a1"),
        ({"api_type": "identify", "user_id_column": "uid", "identity_column": "who"}, "42"),
        ({"api_type": "delete_users", "user_id_column": "uid"}, "42"),
        ({"api_type": "delete_users", "identity_column": "who"}, "u1"),
    ],
)
def test_each_item_names_the_key_whose_updates_keep_input_order(api, key):
    record = {"who": "u1", "what": "Clicked", "account": "a1", "uid": 42, "plan": "pro"}
    assert mapped(api, record).key == key


@pytest.mark.parametrize(
    "column, record, expected",
    [
        ("email", {"email": "a@b.c"}, "a@b.c"),
        ("address.city", {"address": {"city": "Oslo"}}, "Oslo"),
        ("address.city", {"address.city": "flat key wins"}, "flat key wins"),
        ("items.0.sku", {"items": [{"sku": "A1"}, {"sku": "B2"}]}, "A1"),
        ("items.1.sku", {"items": [{"sku": "A1"}, {"sku": "B2"}]}, "B2"),
        ("items.5.sku", {"items": [{"sku": "A1"}]}, None),
        ("identities.connection", {"identities": [{"x": 1}, {"connection": "c2"}]}, "c2"),
        ("a.b.c", {"a": {"b": None}}, None),
        ("a.b", {"a": "not an object"}, None),
        ("missing", {}, None),
        ("$.items[1].sku", {"items": [{"sku": "A1"}, {"sku": "B2"}]}, "B2"),
        ("items[0].tags", {"items": [{"tags": ["x", "y"]}]}, ["x", "y"]),
        # a record key that is exactly the column wins over the path, as for dotted keys
        ("tags[0]", {"tags[0]": "the field itself", "tags": ["first"]}, "the field itself"),
        ("tags[0]", {"tags": ["first"]}, "first"),
        ("$.a", {"$.a": "the field itself", "a": 1}, "the field itself"),
        # in backquotes: the field of that name, never a path
        ("`$city`", {"$city": "Oslo"}, "Oslo"),
        ("`tags[0]`", {"tags": ["first"]}, None),
        ("`address.city`", {"address": {"city": "Oslo"}}, None),
        ("`a``b`", {"a`b": 1}, 1),
        ("`a,b`", {"a,b": 2}, 2),
    ],
)
def test_column_paths(column, record, expected):
    assert ColumnPath(column).resolve(record) == expected


def test_invalid_jsonpath_is_a_config_error():
    with pytest.raises(ConfigError, match="not a valid path"):
        ColumnPath("$.items[?(@.x ==")


def test_a_column_that_is_no_path_says_how_to_name_the_field_as_it_is():
    with pytest.raises(ConfigError, match=r"Column '\$city' is not a valid path .* write it in backquotes: `\$city`"):
        ColumnPath("$city")


def test_backquoted_columns_give_properties_the_fields_own_names():
    record = {"who": "u", "$city": "Oslo", "tags[0]": "t", "a,b": 1, "tags": ["x"]}
    item = mapped(users(("`$city`", "tags[0]", "`a,b`")), record)
    assert item.body["properties"] == {"$city": "Oslo", "tags[0]": "t", "a,b": 1}
    star = mapped({**users(None), "excluded_columns": frozenset({"`$city`", "tags"})}, record)
    assert star.body["properties"] == {"who": "u", "tags[0]": "t", "a,b": 1}


# Property values.


@pytest.mark.parametrize(
    "value, expected",
    [
        ("text", "text"),
        (42, 42),
        (-1.5, -1.5),
        (True, "true"),  # Heap takes a number or a string: booleans go as Heap's own clients send them
        (False, "false"),
        (2**53 - 1, 2**53 - 1),
        (2**53, str(2**53)),  # past 2^53 a number loses digits: sent as text
        (-(2**60), str(-(2**60))),
        (["a", "b", 3, True], "a||b||3||true"),
        ([1, None, 2], "1||2"),
        ([{"k": 1}], '{"k":1}'),
        ("", ""),
    ],
)
def test_property_values(value, expected):
    item = mapped(users(("p",)), {"who": "u1", "p": value})
    assert item.body["properties"] == {"p": expected}


def test_booleans_go_as_text_wherever_they_are():
    """Under "*", nested, and in a merge's later update alike: Heap's documented types are numbers and strings."""
    record = {"who": "u", "what": "e", "ok": True, "flags": {"beta": False, "on": True}, "list": [True]}
    item = mapped(track(property_columns=None), record)
    assert item.body["properties"] == {
        "who": "u", "what": "e", "ok": "true", "flags.beta": "false", "flags.on": "true", "list": "true"
    }
    explicit = mapped(users(("ok", "flags.beta")), {"who": "u", "ok": False, "flags": {"beta": True}})
    assert explicit.body["properties"] == {"ok": "false", "flags.beta": "true"}


@pytest.mark.parametrize("value", [None, [], [None], float("nan"), float("inf")])
def test_values_heap_cannot_hold_are_left_out(value):
    item = mapped(track(property_columns=("p", "q")), {"who": "u", "what": "e", "p": value, "q": 1})
    assert item.body["properties"] == {"q": 1}


def test_null_never_wipes_a_property():
    item = mapped(users(("plan", "seats")), {"who": "u1", "plan": None, "seats": 3})
    assert item.body["properties"] == {"seats": 3}


def test_long_strings_are_cut_to_fit_and_counted():
    item = mapped(users(("bio",)), {"who": "u1", "bio": "x" * 5000})
    assert item.body["properties"]["bio"] == "x" * 1023
    assert item.notes == [("truncated", "bio")]


def test_long_array_join_is_cut_to_fit():
    item = mapped(users(("tags",)), {"who": "u1", "tags": ["abcdefghij"] * 200})
    assert len(item.body["properties"]["tags"]) == 1023
    assert item.notes == [("truncated", "tags")]


def test_string_of_1023_characters_passes_whole():
    item = mapped(users(("bio",)), {"who": "u1", "bio": "y" * 1023})
    assert item.body["properties"]["bio"] == "y" * 1023 and item.notes == []


@pytest.mark.parametrize("name", ["id", "ID", "Id", "iD"])
def test_user_property_named_id_is_left_out_and_reported(name):
    item = mapped(users(None), {"who": "u1", name: 7, "plan": "pro"})
    assert item.body["properties"] == {"who": "u1", "plan": "pro"}
    assert item.notes == [("forbidden_property_name", "*")]  # under *, a key may be data: never named
    item = mapped(users((name, "plan")), {"who": "u1", name: 7, "plan": "pro"})
    assert item.body["properties"] == {"plan": "pro"}
    assert item.notes == [("forbidden_property_name", name)]  # a configured column: named


def test_track_and_account_properties_may_be_named_id():
    event = mapped(track(property_columns=None), {"who": "u", "what": "e", "id": 7})
    assert event.body["properties"]["id"] == 7
    account = mapped({"api_type": "add_account_properties", "account_id_column": "a", "property_columns": None},
                     {"a": "acc", "id": 9})
    assert account.body["properties"] == {"a": "acc", "id": 9}


def test_star_flattens_nested_objects_to_dotted_keys():
    record = {"who": "u1", "address": {"city": "Oslo", "geo": {"lat": 59.9}}, "empty": {}, "n": None}
    item = mapped(users(None), record)
    assert item.body["properties"] == {"who": "u1", "address.city": "Oslo", "address.geo.lat": 59.9}


def test_explicit_object_column_flattens_under_its_name():
    item = mapped(users(("address",)), {"who": "u1", "address": {"city": "Oslo", "zip": "0150"}})
    assert item.body["properties"] == {"address.city": "Oslo", "address.zip": "0150"}


def test_property_keys_are_the_columns_as_written():
    item = mapped(users(("identities.provider", "items.0.sku")),
                  {"who": "u", "identities": [{"provider": "auth0"}], "items": [{"sku": "S"}]})
    assert list(item.body["properties"]) == ["identities.provider", "items.0.sku"]


def test_empty_and_overlong_property_names_are_left_out():
    item = mapped(users(None), {"who": "u", "": 1, "k" * 1024: 2})
    assert item.body["properties"] == {"who": "u"}
    assert item.notes == [("invalid_property_name", "*"), ("invalid_property_name", "*")]


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"who": "u", "a.b": 1, "a": {"b": 2}}, 1),  # the first in the record's order is kept
        ({"who": "u", "a": {"b": 2}, "a.b": 1}, 2),
        ({"who": "u", "a": {"b.c": 1, "b": {"c": 2}}}, 1),
    ],
)
def test_keys_that_flatten_to_one_keep_the_first_value_and_are_counted(record, expected):
    item = mapped(users(None), record)
    flat = "a.b.c" if "b.c" in record["a"] else "a.b"
    assert item.body["properties"] == {"who": "u", flat: expected}
    assert item.notes == [("key_collision", "*")]


def test_configured_columns_that_flatten_to_one_key_keep_the_first_written():
    item = mapped(users(("a.b", "a")), {"who": "u", "a": {"b": 2, "c": 3}})
    assert item.body["properties"] == {"a.b": 2, "a.c": 3}
    assert item.notes == [("key_collision", "a")]


def test_a_null_leaves_the_key_to_the_other_value():
    item = mapped(users(None), {"who": "u", "a.b": None, "a": {"b": 2}})
    assert item.body["properties"] == {"who": "u", "a.b": 2} and item.notes == []


def test_notes_never_name_a_key_found_in_the_record():
    """Under *, every key may be data (a map keyed by e-mail address): notes name no key at all."""
    secret = "ann@example.com"
    record = {"who": "u", secret: "x" * 2000, "m": {secret: float("nan")}, "c": {secret: 1}, "c." + secret: 2,
              "l": [None], "n": {secret: {secret: "y" * 2000}}, "k" * 1024: 1}
    item = mapped(users(None), record)
    assert item.notes and all(name == "*" for _, name in item.notes)
    assert {kind for kind, _ in item.notes} == {"truncated", "unsupported_value", "key_collision",
                                                "invalid_property_name"}


# Identities, account ids, event names.


@pytest.mark.parametrize(
    "identity, expected",
    [
        ("User@Example.com", "User@Example.com"),  # case-sensitive: kept as is
        (12345, "12345"),
        ("x" * 255, "x" * 255),
        (None, Rejection("missing_identity", "who")),
        ("", Rejection("missing_identity", "who")),
        ("   ", Rejection("missing_identity", "who")),
        ("x" * 256, Rejection("identity_too_long", "who")),
        (True, Rejection("invalid_identity_type", "who")),
        (1.5, Rejection("invalid_identity_type", "who")),
        ({"a": 1}, Rejection("invalid_identity_type", "who")),
        (["a"], Rejection("invalid_identity_type", "who")),
    ],
)
def test_identity_rules(identity, expected):
    result = mapped(users(("p",)), {"who": identity, "p": 1})
    if isinstance(expected, Rejection):
        assert result == expected
    else:
        assert result.body["identity"] == expected and result.identity == expected


@pytest.mark.parametrize(
    "account_id, expected",
    [("acme", "acme"), (77, "77"), (None, Rejection("missing_account_id", "acct")),
     ("a" * 256, Rejection("account_id_too_long", "acct"))],
)
def test_account_id_rules(account_id, expected):
    api = {"api_type": "add_account_properties", "account_id_column": "acct", "property_columns": ("p",)}
    result = mapped(api, {"acct": account_id, "p": 1})
    assert result == expected if isinstance(expected, Rejection) else result.body["account_id"] == expected


@pytest.mark.parametrize(
    "event, expected",
    [
        ("Signed Up", "Signed Up"),
        (404, "404"),
        ("e" * 1023, "e" * 1023),
        ("e" * 1024, Rejection("event_too_long", "what")),
        ("", Rejection("missing_event", "what")),
        (None, Rejection("missing_event", "what")),
        (False, Rejection("invalid_event_type", "what")),
    ],
)
def test_event_rules(event, expected):
    result = mapped(track(), {"who": "u", "what": event})
    assert result == expected if isinstance(expected, Rejection) else result.body["event"] == expected


def test_user_properties_with_nothing_to_set_is_rejected():
    assert mapped(users(("plan",)), {"who": "u", "plan": None}) == Rejection("no_properties", "property_columns")


def test_track_without_properties_has_no_properties_key():
    item = mapped(track(), {"who": "u", "what": "e", "extra": 1})
    assert set(item.body) == {"identity", "event", "timestamp", "idempotency_key"}


@pytest.mark.parametrize("record", [[1, 2], "text", 3, None])
def test_non_object_records_are_rejected(record):
    assert mapped(track(), record) == Rejection("record_not_an_object")


# Timestamps.


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2017-03-10T22:21:56+00:00", "2017-03-10T22:21:56+00:00"),
        ("2017-03-10T22:21:56Z", "2017-03-10T22:21:56+00:00"),
        ("2017-03-10T22:21:56.123+02:00", "2017-03-10T22:21:56.123+02:00"),
        ("2017-03-10T22:21:56.123456Z", "2017-03-10T22:21:56.123456+00:00"),
        ("2017-03-10T22:21:56-00:60", "2017-03-10T22:21:56-01:00"),  # 60 minutes of offset are an hour
        ("2017-03-10T22:21:56.120+05:30", "2017-03-10T22:21:56.120+05:30"),
        ("2017-03-10T22:21:56-24:00", None),  # no such offset (pendulum reads it; a datetime cannot hold it)
        ("2017-03-10T22:21:56.001-30:00", None),
        ("2017-03-10 22:21:56", "2017-03-10T22:21:56+00:00"),  # no offset: UTC
        ("2017-03-10", "2017-03-10T00:00:00+00:00"),
        (1489184516, "2017-03-10T22:21:56+00:00"),  # epoch seconds
        (1489184516.5, "2017-03-10T22:21:56.500+00:00"),
        (1489184516123, "2017-03-10T22:21:56.123+00:00"),  # epoch milliseconds
        ("1489184516", "2017-03-10T22:21:56+00:00"),
        ("1489184516123", "2017-03-10T22:21:56.123+00:00"),
        # an ISO 8601 year or basic date, not seconds since 1970
        ("2024", "2024-01-01T00:00:00+00:00"),
        (" 2024 ", "2024-01-01T00:00:00+00:00"),
        ("0000", None),  # no year 0
        ("20221021", "2022-10-21T00:00:00+00:00"),
        ("2024-03", "2024-03-01T00:00:00+00:00"),
        (2024, "1970-01-01T00:33:44+00:00"),  # a number is epoch seconds, as always
        # RFC 3339 allows a lowercase z (and t)
        ("2024-03-01T00:00:00z", "2024-03-01T00:00:00+00:00"),
        ("2024-03-01T00:00:00.123z", "2024-03-01T00:00:00.123+00:00"),
        ("2024-03-01t00:00:00z", "2024-03-01T00:00:00+00:00"),
        ("2024-03-01 00:00:00.5z", "2024-03-01T00:00:00.500+00:00"),
        ("z", None),
        # a string in JSON's number syntax is that number
        ("1e10", "2286-11-20T17:46:40+00:00"),
        ("1E10", "2286-11-20T17:46:40+00:00"),
        ("1.489184516123e12", "2017-03-10T22:21:56.123+00:00"),
        ("1489184516.5", "2017-03-10T22:21:56.500+00:00"),
        ("1234.567", "1970-01-01T00:20:34.567+00:00"),  # eight characters, but no date
        ("-1.5e3", "1969-12-31T23:35:00+00:00"),
        ("-2024", "1969-12-31T23:26:16+00:00"),
        ("1e400", None),  # no finite number
        ("nan", None),
        ("inf", None),
        ("not a time", None),
        ("2017-13-40", None),
        (True, None),
        ({"t": 1}, None),
        (float("nan"), None),
        (10**30, None),
    ],
)
def test_timestamp_normalisation(value, expected):
    assert normalize_timestamp(value) == expected


@pytest.mark.parametrize("empty", [None, ""])
def test_empty_timestamp_falls_back_to_emitted_at(empty):
    item = mapped(track(timestamp_column="at"), {"who": "u", "what": "e", "at": empty})
    assert item.body["timestamp"] == "2022-10-21T04:09:54.622+00:00"


def test_unparseable_timestamp_rejects_the_record():
    assert mapped(track(timestamp_column="at"), {"who": "u", "what": "e", "at": "soon"}) == Rejection(
        "invalid_timestamp", "at"
    )


# Idempotency.


def test_idempotency_key_is_a_function_of_the_record_not_of_when_it_was_read():
    record = {"who": "u", "what": "e", "n": 1, "nested": {"b": 2, "a": 1}}
    first = mapped(track(), record, emitted_at=1)
    replay = mapped(track(), dict(reversed(list(record.items()))), emitted_at=999)
    other = mapped(track(), {**record, "n": 2})
    assert first.body["idempotency_key"] == replay.body["idempotency_key"]
    assert first.body["idempotency_key"] != other.body["idempotency_key"]


STORED_RECORD = {"who": "ann@example.com", "what": "Signed Up", "n": 1, "x": 1.5, "ok": True, "none": None,
                 "l": [1, {"b": 2, "a": "é"}]}


def test_idempotency_key_recipe_is_stored():
    """Keys must not change between builds: a sync resumed under a new build would send replays twice. These
    literals were computed once; a test failing here means the recipe changed, which needs a release note."""
    assert idempotency_key(STORED_RECORD, "signups", "Signed Up") == "8b4fc355fcf2eb064dd34838572597a2"
    item = Mapping(MappingConfig(**track(property_columns=None)), "signups").map(STORED_RECORD, EMITTED_AT)
    assert item.body["idempotency_key"] == "8b4fc355fcf2eb064dd34838572597a2"
    assert idempotency_key({"event_id": 77}, "pageviews", "pageviews", 77) == "2476bb58e183c17bbfdace6352d2fb8d"


def test_idempotency_key_of_a_parsed_record_is_the_same_by_either_serialisation():
    """The fast serialisation of parsed JSON gives the same bytes as the tolerant one, so the same key."""
    tolerant = orjson.dumps(["record", "signups", "Signed Up", STORED_RECORD], default=str,
                            option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    assert idempotency_key(STORED_RECORD, "signups", "Signed Up") == xxh3_128_hexdigest(tolerant)


def test_the_same_row_in_two_streams_is_two_events_and_a_replay_is_one():
    """Heap Connect repeats an event's event_id, user_id and time across its per-event tables."""
    row = {"event_id": 77, "user_id": 5, "time": "2024-03-01 12:00:00", "type": None, "identity": "ann@x.org"}
    pageview = preset_item("heap_events", row, "pageviews")
    pricing = preset_item("heap_events", row, "view_pricing_page")
    replay = preset_item("heap_events", dict(reversed(list(row.items()))), "pageviews")
    assert pageview.body["idempotency_key"] != pricing.body["idempotency_key"]
    assert pageview.body["idempotency_key"] == replay.body["idempotency_key"]
    # the same event name too (the row's own type): the stream still tells the two apart
    typed = {**row, "type": "view"}
    keys = {preset_item("heap_events", typed, stream).body["idempotency_key"] for stream in ("a", "b", "a")}
    assert len(keys) == 2


def test_same_record_in_two_streams_under_any_mapping_is_two_events():
    record = {"who": "u", "what": "e", "n": 1}
    first, replay = (Mapping(MappingConfig(**track()), "a").map(record, t) for t in (1, 2))
    other_stream = Mapping(MappingConfig(**track()), "b").map(record, 1)
    assert first.body["idempotency_key"] == replay.body["idempotency_key"]
    assert first.body["idempotency_key"] != other_stream.body["idempotency_key"]


def test_the_event_name_is_part_of_the_key():
    record = {"who": "u", "n": 1}
    named = [Mapping(MappingConfig(**track(event_column="e"), default_event=name), "s").map(record, 1)
             for name in ("signup", "login")]
    assert named[0].body["idempotency_key"] != named[1].body["idempotency_key"]


def test_heap_events_key_is_the_events_own_id_where_the_row_has_one():
    row = {"event_id": 77, "user_id": 5, "time": "2024-03-01 12:00:00", "type": "click", "identity": "ann@x.org"}
    key = preset_item("heap_events", row, "all_events").body["idempotency_key"]
    assert key == idempotency_key({}, "all_events", "click", 77)
    # the same event with a column re-exported differently is still the same event
    assert preset_item("heap_events", {**row, "country": "NO"}, "all_events").body["idempotency_key"] == key
    assert preset_item("heap_events", {**row, "event_id": "77"}, "all_events").body["idempotency_key"] == key
    # another event in the same table, or the same id under another event name, is another event
    assert preset_item("heap_events", {**row, "event_id": 78}, "all_events").body["idempotency_key"] != key
    assert preset_item("heap_events", {**row, "type": "view"}, "all_events").body["idempotency_key"] != key


@pytest.mark.parametrize("event_id", [None, "", "  ", True, 1.5, {"a": 1}])
def test_heap_events_rows_without_a_usable_event_id_are_keyed_by_the_whole_row(event_id):
    row = {"event_id": event_id, "user_id": 5, "time": "2024-03-01 12:00:00", "type": "click", "identity": "a"}
    key = preset_item("heap_events", row, "all_events").body["idempotency_key"]
    assert key == idempotency_key(row, "all_events", "click")
    assert preset_item("heap_events", {**row, "user_id": 6}, "all_events").body["idempotency_key"] != key


def test_event_id_is_only_used_where_the_config_names_it():
    row = {"who": "u", "what": "e", "event_id": 77}
    assert mapped(track(), row).body["idempotency_key"] == idempotency_key(row, "", "e")
    assert mapped(track(), {**row, "n": 1}).body["idempotency_key"] != idempotency_key(row, "", "e")


def test_idempotency_key_also_takes_what_json_cannot_hold():
    """Mapping is a plain function: a dict with other keys or values still gets a stable key."""
    record = {1: "int key", "when": datetime(2024, 1, 1, tzinfo=UTC)}
    assert idempotency_key(record) == idempotency_key(dict(reversed(list(record.items()))))


def test_integers_past_64_bits_are_not_mistaken_for_deep_nesting():
    """orjson cannot write them (records read from stdin never hold one); the mapping still takes them."""
    record = {"who": "u", "what": "e", "big": 2**70, "l": [{"k": -(2**70)}]}
    item = mapped(track(property_columns=("big", "l")), record)
    assert item.body["properties"] == {"big": str(2**70), "l": f'{{"k":"{-(2**70)}"}}'}
    assert item.body["idempotency_key"] == idempotency_key(dict(reversed(list(record.items()))), "", "e")
    assert item.body["idempotency_key"] != idempotency_key({**record, "big": 2**70 + 1}, "", "e")


def test_rejections_never_carry_values():
    secret = "person-secret@example.com" + "x" * 300
    rejection = mapped(users(("p",)), {"who": secret, "p": 1})
    assert secret not in rejection.describe() and "who" in rejection.describe()


# Identify.


def identify(**columns) -> dict:
    return {"api_type": "identify", "user_id_column": "uid", "identity_column": "who", **columns}


@pytest.mark.parametrize(
    "user_id, expected",
    [
        ("8765", "8765"),
        (8765, "8765"),
        (" 42 ", "42"),
        (0, "0"),
        (2**53 - 1, str(2**53 - 1)),
        (2**53, Rejection("invalid_user_id", "uid")),
        (-1, Rejection("invalid_user_id", "uid")),
        ("abc", Rejection("invalid_user_id", "uid")),
        (1.5, Rejection("invalid_user_id", "uid")),
        (True, Rejection("invalid_user_id", "uid")),
        (None, Rejection("missing_user_id", "uid")),
        ("", Rejection("missing_user_id", "uid")),
    ],
)
def test_identify_user_id_rules(user_id, expected):
    result = mapped(identify(), {"uid": user_id, "who": "alice"})
    assert result == expected if isinstance(expected, Rejection) else result.body == {
        "user_id": expected,
        "identity": "alice",
    }


@pytest.mark.parametrize(
    "identity", ["null", "NULL", " Null ", "undefined", "UNDEFINED", "user", "User", "", "   ", "\t"]
)
def test_identify_never_sends_an_identity_many_users_share(identity):
    """Heap: identify with null, undefined, user (or any shared value) merges every anonymous user into one."""
    result = mapped(identify(), {"uid": "1", "who": identity})
    assert isinstance(result, Rejection) and result.column == "who"
    assert result.reason == ("missing_identity" if not identity.strip() else "non_unique_identity")


@pytest.mark.parametrize("identity", ["nullable@example.com", "users", "user-1", "Undefined Corp"])
def test_identify_sends_identities_that_only_look_like_shared_ones(identity):
    assert mapped(identify(), {"uid": "1", "who": identity}).body["identity"] == identity


def test_identify_with_timestamp_and_missing_identity():
    item = mapped(identify(timestamp_column="time"), {"uid": "1", "who": "alice", "time": 1489184516})
    assert item.body == {"user_id": "1", "identity": "alice", "timestamp": "2017-03-10T22:21:56+00:00"}
    assert mapped(identify(), {"uid": "1"}) == Rejection("missing_identity", "who")


@pytest.mark.parametrize(
    "columns, record, expected",
    [
        ({"identity_column": "who"}, {"who": "alice"}, {"identity": "alice"}),
        ({"user_id_column": "uid"}, {"uid": 77}, {"user_id": "77"}),
        ({"identity_column": "who"}, {"who": ""}, Rejection("missing_identity", "who")),
        ({"user_id_column": "uid"}, {"uid": "x"}, Rejection("invalid_user_id", "uid")),
    ],
)
def test_delete_users_items(columns, record, expected):
    result = mapped({"api_type": "delete_users", **columns}, record)
    assert result == expected if isinstance(expected, Rejection) else result.body == expected


# Presets for Heap Connect's own tables.


def preset_item(preset: str, row: dict, stream: str = "table", **api):
    from destination_heap_analytics.config import parse_config, streams_for_catalog

    config = parse_config({"app_id": "11", "api": {"api_type": preset, **api}})
    return Mapping(streams_for_catalog(config, [(stream, None)])[(stream, None)].mapping, stream).map(row, EMITTED_AT)


def test_heap_users_preset():
    row = {"user_id": 8093349209, "identity": "ann@example.com", "handle": "ann", "email": "ann@example.com",
           "joindate": "2023-01-05T10:00:00Z", "last_modified": "2024-02-01T00:00:00Z", "plan": "pro"}
    item = preset_item("heap_users", row)
    assert item.body == {"identity": "ann@example.com", "properties": {
        "handle": "ann", "email": "ann@example.com", "joindate": "2023-01-05T10:00:00Z", "plan": "pro"}}


def test_heap_users_preset_skips_anonymous_users():
    assert preset_item("heap_users", {"user_id": 1, "identity": None, "plan": "x"}) == Rejection(
        "missing_identity", "identity")


@pytest.mark.parametrize(
    "row_type, stream, event",
    [("click", "all_events", "click"), (None, "checkout_completed", "checkout_completed"),
     (None, "pageviews", "pageviews")],
)
def test_heap_events_preset(row_type, stream, event):
    row = {"event_id": 77, "user_id": 5, "session_id": 9, "time": "2024-03-01 12:00:00", "type": row_type,
           "identity": "ann@example.com", "path": "/cart", "country": "NO", "utm_source": "mail"}
    item = preset_item("heap_events", row, stream)
    assert item.body["event"] == event
    assert item.body["timestamp"] == "2024-03-01T12:00:00+00:00"
    assert item.body["properties"] == {"session_id": 9, "path": "/cart", "country": "NO", "utm_source": "mail"}


def test_heap_user_migrations_preset_identifies():
    row = {"from_user_id": 123, "to_user_id": 456, "time": 1489184516, "identity": "ann@example.com"}
    item = preset_item("heap_user_migrations", row)
    assert item.body == {"user_id": "123", "identity": "ann@example.com", "timestamp": "2017-03-10T22:21:56+00:00"}


def test_preset_columns_can_be_overridden():
    item = preset_item("heap_users", {"email": "ann@example.com", "identity": None, "plan": "x"},
                       identity_column="email")
    assert item.body["identity"] == "ann@example.com"


def test_notes_inside_nested_objects_name_the_column_not_the_keys():
    record = {"who": "u", "votes": {"ann@example.com": "x" * 2000, "bob@example.com": None}}
    item = mapped(users(None), record)
    assert item.body["properties"]["votes.ann@example.com"] == "x" * 1023
    assert item.notes == [("truncated", "*")]
    item = mapped(users(("votes",)), record)
    assert item.body["properties"]["votes.ann@example.com"] == "x" * 1023
    assert item.notes == [("truncated", "votes")]


def test_an_eight_digit_timestamp_is_a_basic_iso_date():
    assert normalize_timestamp("20221021") == "2022-10-21T00:00:00+00:00"


def test_columns_airbyte_adds_are_neither_properties_nor_identity():
    record = {"who": "u", "what": "e", "plan": "pro"}
    copied = {**record, "_airbyte_raw_id": "r-1", "_airbyte_extracted_at": "2024-01-01T00:00:00", "_airbyte_meta": {}}
    original, cached = mapped(track(property_columns=None), record), mapped(track(property_columns=None), copied)
    assert cached.body["properties"] == {"who": "u", "what": "e", "plan": "pro"}
    assert cached.body["idempotency_key"] == original.body["idempotency_key"]


def nested(depth: int, leaf: object = 1) -> dict:
    deep: dict = {"leaf": leaf}
    for _ in range(depth):
        deep = {"d": deep}
    return deep


@pytest.mark.parametrize("depth", [300, 600])
def test_a_field_nested_too_deep_to_walk_is_refused_only_where_the_mapping_uses_it(depth):
    record = {"who": "u", "what": "e", "deep": [nested(depth)]}  # an array's objects go to Heap as JSON text
    assert mapped(track(property_columns=("deep",)), record) == Rejection("too_deeply_nested")
    item = mapped(track(property_columns=("who",)), record)
    assert item.body["properties"] == {"who": "u"}
    replay = mapped(track(property_columns=("who",)), {"deep": [nested(depth)], "what": "e", "who": "u"})
    other = mapped(track(property_columns=("who",)), {**record, "deep": [nested(depth, leaf=2)]})
    assert item.body["idempotency_key"] == replay.body["idempotency_key"] != other.body["idempotency_key"]


@pytest.mark.parametrize(
    "first, second",
    [
        ({"a": ["b", "c"]}, {"a": "b", "c": []}),  # keys, values and markers cannot be mistaken for each other
        ({"a": [[1], 2]}, {"a": [[1, 2]]}),
        ({"a": {"b": 1}}, {"a": [{"b": 1}]}),
        ({"a": [0]}, {"a": [[]]}),
    ],
)
def test_deep_records_that_differ_get_different_keys(first, second):
    assert idempotency_key({**first, "deep": nested(300)}) != idempotency_key({**second, "deep": nested(300)})


def _reasons_in(source: str) -> set[str]:
    """Every reason a `Rejection(...)` call in the source can carry: its first argument, a literal, an
    f-string over `field_name` (expanded for each field `_identifier` is called with) or a choice of those."""
    tree = ast.parse(source)
    fields = {node.args[2].value for node in ast.walk(tree) if isinstance(node, ast.Call)
              and getattr(node.func, "id", None) == "_identifier" and isinstance(node.args[2], ast.Constant)}

    def texts(node: ast.expr) -> set[str]:
        if isinstance(node, ast.IfExp):
            return texts(node.body) | texts(node.orelse)
        if isinstance(node, ast.Constant):
            return {node.value}
        assert isinstance(node, ast.JoinedStr), ast.dump(node)
        return {"".join(part.value if isinstance(part, ast.Constant) else field for part in node.values)
                for field in fields}

    return {reason for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "Rejection" for reason in texts(node.args[0])}


def test_every_reason_mapping_gives_is_listed_in_the_readme():
    """The README's list of reasons is what users read to understand a skipped record: it must be complete."""
    root = Path(__file__).resolve().parent.parent
    reasons = _reasons_in((root / "destination_heap_analytics" / "mapping.py").read_text())
    assert {"too_deeply_nested", "record_not_an_object", "missing_identity", "invalid_account_id_type",
            "missing_user_id", "invalid_timestamp", "no_properties"} <= reasons
    listed = (root / "README.md").read_text().split("**Invalid records**", 1)[1].split("\n\n", 1)[0]
    assert {reason for reason in reasons if f"`{reason}`" not in listed} == set()
