"""Config rules: what parses, what it means, and what the user is told when it does not."""

import json
import re
from pathlib import Path

import pytest

from destination_heap_analytics.config import SETTINGS, ConfigError, parse_config, streams_for_catalog

SAMPLES = Path(__file__).resolve().parent.parent / "sample_files"

TRACK = {"api_type": "track", "identity_column": "email", "event_column": "event"}


def config(**overrides) -> dict:
    return {"app_id": "11", "api": dict(TRACK), **overrides}


@pytest.mark.parametrize("name", ["config_track.json", "config_user_properties.json", "config_account_properties.json"])
def test_sample_configs_parse(name):
    parsed = parse_config(json.loads((SAMPLES / name).read_text()))
    assert parsed.app_id == "11"


def test_a_0_1_0_config_parses_unchanged_with_defaults():
    legacy = {
        "app_id": "11",
        "base_url": "https://heapanalytics.com",
        "api": {
            "api_type": "track",
            "property_columns": "blocked,created_at,name",
            "event_column": "identities.connection",
            "identity_column": "email",
            "timestamp_column": "updated_at",
        },
        "some_field_0_1_0_had": "ignored",
    }
    parsed = parse_config(legacy)
    assert parsed.base_url == "https://heapanalytics.com"
    assert parsed.streams[0].mapping.property_columns == ("blocked", "created_at", "name")
    assert parsed.streams[0].mapping.timestamp_column == "updated_at"
    assert (parsed.streams[0].bulk, parsed.streams[0].batch_size, parsed.on_invalid_record) == (True, 1000, "skip")
    assert parsed.max_concurrent_requests == 8 and parsed.track_events_per_minute == 15000


@pytest.mark.parametrize(
    "value, expected",
    [
        (" a , b,c ", ("a", "b", "c")),
        ("identities.provider", ("identities.provider",)),
        ("`a,b`, c, `x``,y`", ("`a,b`", "c", "`x``,y`")),  # a comma inside backquotes is part of the name
        ("*", None),
        ("", ()),
    ],
)
def test_property_columns(value, expected):
    api = dict(TRACK, property_columns=value)
    assert parse_config(config(api=api)).streams[0].mapping.property_columns == expected


def test_a_null_column_is_refused_as_the_spec_refuses_it():
    with pytest.raises(ConfigError, match="api.property_columns must be a column name"):
        parse_config(config(api=dict(TRACK, property_columns=None)))


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://heapanalytics.com/", "https://heapanalytics.com"),
        ("https://c.eu.heap-api.com", "https://c.eu.heap-api.com"),
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("http://localhost:9000", "http://localhost:9000"),
        ("http://[::1]:9000", "http://[::1]:9000"),
    ],
)
def test_accepted_base_urls(url, expected):
    assert parse_config(config(base_url=url)).base_url == expected


@pytest.mark.parametrize("app_id", [11, " 11", "11 ", "eleven"])
def test_app_id_is_digits_as_text_as_the_spec_says(app_id):
    with pytest.raises(ConfigError, match="app_id must be your Heap environment ID as text, digits only"):
        parse_config(config(app_id=app_id))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"app_id": None}, "app_id is missing"),
        ({"app_id": "my-app"}, "digits only"),
        ({"base_url": "http://heapanalytics.com"}, "must use https"),
        ({"base_url": "http://10.0.0.5"}, "must use https"),
        ({"base_url": "ftp://x"}, "is not a URL"),
        ({"base_url": ""}, "base_url must be a URL"),
        ({"api": None}, "api is missing"),
        ({"api": {"api_type": "identify_users"}}, "api.api_type is 'identify_users'"),
        ({"api": {"api_type": "track", "event_column": "e"}}, "api.identity_column is required for api_type track"),
        ({"api": {"api_type": "track", "identity_column": "i"}}, "exactly one of api.event_column or api.event_name"),
        ({"api": {"api_type": "add_user_properties", "identity_column": "i"}}, "api.property_columns is required"),
        ({"api": {"api_type": "add_account_properties", "property_columns": "*"}}, "api.account_id_column is required"),
        ({"api": dict(TRACK, identity_column=5)}, "must be a column name"),
        ({"api": dict(TRACK, property_columns="a,,b")}, "empty name"),
        ({"api": dict(TRACK, property_columns="a,*")}, "use * alone"),
        ({"batch_size": 0}, "batch_size must be a whole number from 1 to 1000"),
        ({"batch_size": 1001}, "batch_size must be a whole number from 1 to 1000"),
        ({"batch_size": "100"}, "batch_size must be a whole number"),
        ({"bulk": "yes"}, "bulk must be true or false"),
        ({"on_invalid_record": "ignore"}, "on_invalid_record must be one of skip, fail"),
        ({"max_concurrent_requests": 0}, "max_concurrent_requests must be a whole number from 1 to 64"),
        ({"track_events_per_minute": -1}, "track_events_per_minute must be a whole number"),
    ],
)
def test_config_errors_say_what_to_fix(overrides, message):
    with pytest.raises(ConfigError) as error:
        parse_config(config(**overrides))
    assert message in str(error.value)


@pytest.mark.parametrize(
    "url, shown",
    [
        ("ftp://admin:pw@host", "'ftp://…@host'"),
        ("htps://admin:pw@host/path", "'htps://…@host/path'"),
        ("htps:admin:pw@host", "'…@host'"),
        ("ftp://admin:p/w@host", "'ftp://…@host'"),
        ("ftp://admin:p?w#x@host", "'ftp://…@host'"),
        ("gopher://host/?token=pw", "'gopher://host/'"),
        ("https://admin:pw@", "'https://…@'"),
    ],
)
def test_a_refused_base_url_is_never_printed_with_its_credentials(url, shown):
    with pytest.raises(ConfigError) as error:
        parse_config(config(base_url=url))
    assert shown in str(error.value) and "pw" not in str(error.value)


def test_config_must_be_an_object():
    with pytest.raises(ConfigError, match="JSON object"):
        parse_config(["app_id"])


def test_identify_and_dry_run():
    parsed = parse_config(config(api={"api_type": "identify", "user_id_column": "u", "identity_column": "i"},
                                 dry_run=True))
    assert parsed.streams[0].mapping.user_id_column == "u" and parsed.dry_run is True
    with pytest.raises(ConfigError, match="api.user_id_column is required for api_type identify"):
        parse_config(config(api={"api_type": "identify", "identity_column": "i"}))


@pytest.mark.parametrize(
    "api, message",
    [
        ({"api_type": "delete_users", "identity_column": "e"}, "api.api_key is required for delete_users"),
        ({"api_type": "delete_users", "api_key": "k"}, "exactly one of api.identity_column or api.user_id_column"),
        ({"api_type": "delete_users", "api_key": "k", "identity_column": "e", "user_id_column": "u"}, "exactly one"),
    ],
)
def test_delete_users_config_errors(api, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(config(api=api))


def test_delete_users_batches_up_to_ten_thousand_and_hides_the_key():
    parsed = parse_config(config(api={"api_type": "delete_users", "api_key": "s3cret", "user_id_column": "u"}))
    deletion = parsed.streams[0]
    assert deletion.batch_size == 10_000 and deletion.api_key == "s3cret" and "s3cret" not in repr(parsed)
    with pytest.raises(ConfigError, match="from 1 to 1000"):
        parse_config(config(batch_size=10_000))


def test_an_unknown_preset_names_the_presets():
    with pytest.raises(ConfigError, match="or a preset for Heap Connect's tables: heap_users, heap_events"):
        parse_config({"app_id": "11", "api": {"api_type": "heap_accounts"}})


# ------------------------------------------------------------------------------------------------------------
# Several streams in one connection

USERS = {"api_type": "add_user_properties", "identity_column": "email", "property_columns": "*"}
ORDERS = {"api_type": "track", "identity_column": "email", "event_name": "Order Placed"}


def test_each_stream_gets_its_own_mapping_and_the_top_level_api_maps_the_one_left():
    parsed = parse_config(
        {
            "app_id": "11",
            "api": TRACK,
            "streams": [{"stream": "users", "api": USERS}, {"stream": "orders", "api": ORDERS}],
        }
    )
    chosen = streams_for_catalog(parsed, [("users", None), ("orders", "shop"), ("events", None)])
    assert chosen[("users", None)].mapping.api_type == "add_user_properties"
    assert chosen[("orders", "shop")].mapping.event_name == "Order Placed"
    assert chosen[("events", None)].mapping.event_column == "event"  # the top-level api


def test_streams_alone_need_no_top_level_api():
    parsed = parse_config({"app_id": "11", "streams": [{"stream": "users", "api": USERS}]})
    assert [stream.stream for stream in parsed.streams] == ["users"]


def test_a_config_without_api_or_streams_maps_in_airbytes_ui_only():
    """A data-activation connection's config: every stream is mapped in Airbyte's Mappings tab; a stream that
    is not is refused, with where to map it."""
    parsed = parse_config({"app_id": "11", "api_key": " heap-delete-key "})
    assert (parsed.streams, parsed.api_key, parsed.bulk, parsed.batch_size) == ((), "heap-delete-key", True, None)
    with pytest.raises(ConfigError, match="Mappings tab"):
        streams_for_catalog(parsed, [("users", None)])


def test_a_namespace_narrows_an_entry_to_that_namespace():
    parsed = parse_config({"app_id": "11", "streams": [{"stream": "users", "namespace": "crm", "api": USERS}]})
    assert streams_for_catalog(parsed, [("users", "crm")])
    with pytest.raises(ConfigError, match="No Heap mapping for the stream"):
        streams_for_catalog(parsed, [("users", "billing")])


@pytest.mark.parametrize(
    "entries, stream",
    [
        ([{"stream": "users", "api": TRACK}, {"stream": "users", "namespace": "crm", "api": USERS}], ("users", "crm")),
        ([{"stream": "users", "namespace": "crm", "api": USERS}, {"stream": "users", "api": TRACK}], ("users", "crm")),
        ([{"stream": "users", "api": TRACK}, {"stream": "users", "namespace": "crm", "api": USERS}], ("users", "web")),
    ],
)
def test_the_entry_naming_the_namespace_wins_whatever_the_order(entries, stream):
    parsed = parse_config({"app_id": "11", "streams": entries})
    chosen = streams_for_catalog(parsed, [("users", "crm"), ("users", "web")])
    expected = "add_user_properties" if stream[1] == "crm" else "track"
    assert chosen[stream].mapping.api_type == expected


@pytest.mark.parametrize(
    "entries, catalog_name, api_type",
    [
        ([{"stream": " users ", "api": USERS}], " users ", "add_user_properties"),  # named exactly
        ([{"stream": "users ", "api": USERS}], "users", "add_user_properties"),  # spaces around, as before
        ([{"stream": "users", "api": TRACK}, {"stream": " users", "api": USERS}], " users", "add_user_properties"),
        ([{"stream": " users", "api": USERS}, {"stream": "users", "api": TRACK}], "users", "track"),
    ],
)
def test_a_stream_name_matches_as_written_else_trimmed(entries, catalog_name, api_type):
    chosen = streams_for_catalog(parse_config({"app_id": "11", "streams": entries}), [(catalog_name, None)])
    assert chosen[(catalog_name, None)].mapping.api_type == api_type


def test_an_unmapped_stream_with_spaces_is_shown_the_entry_that_maps_it():
    parsed = parse_config({"app_id": "11", "streams": [{"stream": "orders", "api": ORDERS}]})
    with pytest.raises(ConfigError) as refused:
        streams_for_catalog(parsed, [("orders", None), (" users ", None), ('say "hi"', "x")])
    shown = '[{"stream": " users ", "api": {"api_type": ...}}, {"stream": "say \\"hi\\"", "namespace": "x", "api"'
    assert shown in str(refused.value)


@pytest.mark.parametrize(
    "raw, catalog, message",
    [
        ({"api": TRACK}, [("users", None), ("orders", None)], "No Heap mapping for the stream(s) users, orders"),
        ({"streams": [{"stream": "users", "api": USERS}]}, [("users", None), ("orders", "shop")],
         'orders (namespace shop). Map each stream of the connection to a Heap object in Airbyte\'s Mappings tab, '
         'or in streams, for example "streams": [{"stream": "orders", "namespace": "shop", "api"'),
        ({"streams": [{"stream": "users", "api": USERS}]}, [("users", None), ("a.b", None), ("b", "a")],
         'stream(s) a.b, b (namespace a). Map'),  # two streams, named apart
    ],
)
def test_unmapped_streams_are_refused_by_name_with_the_way_to_map_them(raw, catalog, message):
    with pytest.raises(ConfigError) as refused:
        streams_for_catalog(parse_config({"app_id": "11", **raw}), catalog)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"api": None}, "api is missing"),
        ({"api_key": " "}, "api_key is not a key"),
        ({"api_key": 5}, "api_key is not a key"),
        ({"api_key": "key\u00e9"}, "api_key holds characters that are not printable ASCII"),
        ({"streams": "users"}, "streams must be a list"),
        ({"streams": [{"api": USERS}]}, "streams[0].stream is required"),
        ({"streams": [{"stream": "u", "api": {"api_type": "track", "identity_column": "e"}}]},
         "exactly one of streams[0].api.event_column or streams[0].api.event_name"),
        ({"streams": [{"stream": "u", "api": USERS}, {"stream": "u", "api": USERS}]}, "maps the stream u twice"),
        ({"streams": [{"stream": "u", "api": {"api_type": "delete_users", "identity_column": "e"}}]},
         "streams[0].api.api_key is required"),
    ],
)
def test_stream_entry_errors_name_the_entry_and_the_field(raw, message):
    with pytest.raises(ConfigError) as refused:
        parse_config({"app_id": "11", **raw})
    assert message in str(refused.value)


@pytest.mark.parametrize(
    "api, expected",
    [
        ({"api_type": "track", "identity_column": "e", "event_name": "Order Placed"}, ("Order Placed", None)),
        ({"api_type": "track", "identity_column": "e", "event_column": "kind"}, (None, "kind")),
        ({"api_type": "heap_events", "event_name": "Viewed Pricing"}, ("Viewed Pricing", None)),
        ({"api_type": "heap_events"}, (None, "type")),
    ],
)
def test_a_fixed_event_name_or_an_event_column(api, expected):
    mapping = parse_config({"app_id": "11", "api": api}).streams[0].mapping
    assert (mapping.event_name, mapping.event_column) == expected


def test_track_with_both_an_event_name_and_an_event_column_is_refused():
    with pytest.raises(ConfigError, match="exactly one of api.event_column or api.event_name"):
        parse_config(config(api=dict(TRACK, event_name="Signed Up")))


def test_the_heap_events_preset_names_events_after_each_stream():
    parsed = parse_config({"app_id": "11", "api": {"api_type": "heap_events"}})
    chosen = streams_for_catalog(parsed, [("pageviews", None)])
    assert chosen[("pageviews", None)].mapping.default_event == "pageviews"


# ------------------------------------------------------------------------------------------------------------
# A field the rules do not know, inside api or a streams entry, is a mistake: a misspelled option is refused


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"api": dict(TRACK, timestamp_colum="at")},
         "api.timestamp_colum is not an option; did you mean timestamp_column?"),
        ({"api": {"api_type": "track", "identity_colum": "e", "event_column": "x"}},
         "api.identity_colum is not an option; did you mean identity_column?"),  # before "identity_column is required"
        ({"api": {"api_type": "heap_users", "exclude_columns": "a"}},
         "api.exclude_columns is not an option; did you mean excluded_columns?"),
        ({"api": dict(USERS, timestamp_column="at")},
         "api.timestamp_column is not an option of api_type add_user_properties; its options are: identity_column, "
         "property_columns, excluded_columns."),  # an option of another api_type
        ({"api": dict(TRACK, api_key="k")}, "api.api_key is not an option of api_type track"),
        ({"api": dict(TRACK, colour="blue")}, "api.colour is not an option of api_type track; its options are: "),
        ({"streams": [{"stream": "users", "namspace": "crm", "api": USERS}]},
         "streams[0].namspace is not an option; did you mean namespace?"),
        ({"streams": [{"stream": "users", "api": dict(USERS, property_column="*")}]},
         "streams[0].api.property_column is not an option; did you mean property_columns?"),
    ],
)
def test_an_unknown_field_in_api_or_a_streams_entry_is_refused_with_the_closest_option(raw, message):
    with pytest.raises(ConfigError) as refused:
        parse_config({"app_id": "11", **raw})
    assert message in str(refused.value)


def test_unknown_top_level_fields_stay_ignored_as_0_1_0_did():
    parsed = parse_config(config(batch_sise=5, preset="heap_users"))
    assert parsed.streams[0].batch_size == 1000


@pytest.mark.parametrize(
    "setting, key, value, raw, expected",
    [
        ("max_retries", "maximum", 3, {"max_retries": 4}, "max_retries must be a whole number from 0 to 3, got 4"),
        ("request_timeout_seconds", "minimum", 5, {"request_timeout_seconds": 4}, "from 5 to 600"),
        ("on_invalid_record", "enum", ["skip"], {"on_invalid_record": "fail"}, "must be one of skip, got 'fail'"),
        ("max_retries", "default", 2, {}, 2),
        ("track_events_per_minute", "default", 900, {}, 900),
        ("dry_run", "default", True, {}, True),
    ],
)
def test_a_bound_default_or_choice_changes_in_the_spec_alone(monkeypatch, setting, key, value, raw, expected):
    """spec.yaml is the one place for the settings' bounds, defaults and choices: changed there, the rules follow."""
    monkeypatch.setitem(SETTINGS[setting], key, value)
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            parse_config(config(**raw))
    else:
        assert getattr(parse_config(config(**raw)), setting) == expected
