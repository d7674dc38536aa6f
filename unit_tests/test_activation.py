"""Data activation's rules, table by table: what discover offers, and which config mapping a stream mapped in
Airbyte's UI becomes (or why it is refused)."""

from __future__ import annotations

import pytest
import serpyco_rs
from airbyte_cdk.models import ConfiguredAirbyteCatalogSerializer
from airbyte_protocol_dataclasses.models import AirbyteMessage as ProtocolMessage

from destination_heap_analytics.activation import destination_catalog, mapped_in_ui
from destination_heap_analytics.config import ConfigError, parse_config
from destination_heap_analytics.mapping import Mapping

KEY = "heap-deletion-key-0123"
PROTOCOL_MESSAGE = serpyco_rs.Serializer(ProtocolMessage, omit_none=True)


def streams(
    object_name: str,
    sync_mode: str,
    primary_key: tuple[tuple[str, ...], ...] | None = None,
    json_schema: dict | None = None,
):
    configured = {
        "stream": {"name": "crm", "namespace": "sales", "json_schema": json_schema or {},
                   "supported_sync_modes": ["incremental"]},
        "sync_mode": "incremental",
        "destination_sync_mode": sync_mode,
        "destination_object_name": object_name,
        "sync_id": 12,
    }
    if primary_key is not None:
        configured["primary_key"] = [list(path) for path in primary_key]
    return ConfiguredAirbyteCatalogSerializer.load({"streams": [configured]}).streams


@pytest.mark.parametrize("api_key", [None, KEY])
def test_discovers_answer_is_the_protocols_destination_catalog_without_the_key(api_key):
    config = parse_config({"app_id": "11"} | ({"api_key": api_key} if api_key else {}))
    answer = destination_catalog(config)
    loaded = PROTOCOL_MESSAGE.load(answer)  # the protocol's own model: raises on anything it does not allow
    assert PROTOCOL_MESSAGE.dump(loaded) == answer  # and drops nothing
    modes = [(op.object_name, op.sync_mode.value) for op in loaded.destination_catalog.operations]
    assert (("user", "soft_delete") in modes) == (api_key is not None)
    assert KEY not in str(answer)


COLUMNS = ("identity_column", "event_column", "timestamp_column", "account_id_column", "user_id_column",
           "event_id_column")
CHOSEN = {
    # (object, sync mode, primary key): (api_type, {column: field}, properties "*" but these, bulk)
    ("event", "append", None): (
        "track",
        {"identity_column": "identity", "event_column": "event", "timestamp_column": "timestamp",
         "event_id_column": "idempotency_key"},
        {"identity", "event", "timestamp", "idempotency_key"},
        True,
    ),
    ("user", "append_dedup", (("identity",),)): ("add_user_properties", {"identity_column": "identity"}, {"identity"},
                                              True),
    ("user", "append_dedup", None): ("add_user_properties", {"identity_column": "identity"}, {"identity"}, True),
    ("account", "append_dedup", (("account_id",),)): (
        "add_account_properties", {"account_id_column": "account_id"}, {"account_id"}, True
    ),
    ("identify", "append", ()): (
        "identify",
        {"identity_column": "identity", "user_id_column": "user_id", "timestamp_column": "timestamp"},
        None,
        False,
    ),
    ("user", "soft_delete", (("identity",),)): ("delete_users", {"identity_column": "identity"}, None, True),
    ("user", "soft_delete", (("user_id",),)): ("delete_users", {"user_id_column": "user_id"}, None, True),
}


@pytest.mark.parametrize("chosen", list(CHOSEN), ids=lambda chosen: "-".join(map(str, chosen)))
def test_a_stream_mapped_in_the_ui_becomes_the_config_mapping_of_its_object(chosen):
    api_type, columns, free, bulk = CHOSEN[chosen]
    config = parse_config({"app_id": "11", "api_key": KEY})
    ((key, stream),) = mapped_in_ui(config, streams(*chosen)).items()
    assert key == ("crm", "sales") and (stream.stream, stream.namespace) == ("crm", "sales")
    mapping = stream.mapping
    assert mapping.api_type == api_type
    assert {name: getattr(mapping, name) for name in COLUMNS if getattr(mapping, name)} == columns
    if free is None:
        assert mapping.property_columns == ()
    else:  # every other field of the renamed record is a property, as under property_columns "*"
        assert (mapping.property_columns, mapping.excluded_columns) == (None, frozenset(free))
    assert stream.bulk is bulk
    assert stream.api_key == (KEY if api_type == "delete_users" else None)
    assert stream.batch_size == (10_000 if api_type == "delete_users" else 1000)


def test_a_stream_mapped_in_the_ui_is_the_stream_config_of_the_streams_entry_its_object_stands_for():
    """One constructor: a UI-mapped stream and the config entry a user would write for it load the same way."""
    settings = {"app_id": "11", "bulk": False, "batch_size": 300}
    api = {"api_type": "add_user_properties", "identity_column": "identity", "property_columns": "*",
           "excluded_columns": "identity"}
    written = parse_config(settings | {"streams": [{"stream": "crm", "namespace": "sales", "api": api}]})
    ((_, mapped),) = mapped_in_ui(parse_config(settings), streams("user", "append_dedup")).items()
    assert mapped == written.streams[0]


def test_the_top_level_request_settings_apply():
    config = parse_config({"app_id": "11", "bulk": False, "batch_size": 200})
    ((_, stream),) = mapped_in_ui(config, streams("user", "append_dedup")).items()
    assert (stream.bulk, stream.batch_size) == (False, 200)


REFUSED = {
    # (object, sync mode, primary key, config): words the error holds
    ("contact", "append", None, ""): ["crm", "'contact'", "event (append)", "Mappings tab"],
    ("event", "append_dedup", None, ""): ["crm", "append_dedup"],
    ("contact", "overwrite", None, ""): ["crm", "'contact'", "overwrite"],
    ("user", "update", (("identity",),), ""): ["update"],
    ("user", "append_dedup", (("email",),), ""): ["crm", "email", "identity"],
    ("user", "append_dedup", (("identity",), ("plan",)), ""): ["identity, plan"],
    ("user", "soft_delete", (("identity",),), "no key"): ["crm", "api_key", "soft_delete"],
    ("user", "soft_delete", None, ""): ["crm", "identity or user_id"],
    ("account", "append_dedup", None, "batch 5000"): ["batch_size", "1000"],
}


@pytest.mark.parametrize("refused", list(REFUSED), ids=lambda refused: "-".join(map(str, refused)))
def test_what_discover_does_not_offer_is_refused_naming_the_stream(refused):
    object_name, sync_mode, primary_key, setting = refused
    raw = {"app_id": "11"} | ({} if setting == "no key" else {"api_key": KEY})
    if setting == "batch 5000":
        raw["batch_size"] = 5000
    with pytest.raises(ConfigError) as error:
        mapped_in_ui(parse_config(raw), streams(object_name, sync_mode, primary_key))
    for word in REFUSED[refused]:
        assert word in str(error.value)
    assert KEY not in str(error.value)


@pytest.mark.parametrize(
    "object_name, primary_key, api_type",
    [
        ("event", None, "track"),
        ("user", None, "add_user_properties"),
        ("user", (("identity",),), "add_user_properties"),
        ("user", (("user_id",),), "delete_users"),  # only soft delete matches on user_id
        ("account", (("account_id",),), "add_account_properties"),
        ("identify", None, "identify"),
    ],
)
def test_a_clear_overwrite_stands_for_the_objects_operation_its_key_fits(object_name, primary_key, api_type):
    """Airbyte's Clear sends the stream with its object and sync mode overwrite, which no object offers: Heap
    cannot remove, so the stream is its object's operation (adding before deleting), and a Clear sends no record."""
    config = parse_config({"app_id": "11", "api_key": KEY})
    ((_, stream),) = mapped_in_ui(config, streams(object_name, "overwrite", primary_key)).items()
    assert stream.mapping.api_type == api_type


DECLARED = {"type": "object", "additionalProperties": True,
            "properties": {"identity": {}, "plan": {}, "$city": {}, "a.b": {}, "tick`s": {}}}


@pytest.mark.parametrize("object_name, sync_mode", [("user", "append_dedup"), ("event", "append")])
def test_an_activation_stream_sends_only_the_fields_its_schema_declares_each_by_its_own_name(object_name, sync_mode):
    config = parse_config({"app_id": "11"})
    ((_, stream),) = mapped_in_ui(config, streams(object_name, sync_mode, json_schema=DECLARED)).items()
    assert stream.mapping.property_columns == ("`plan`", "`$city`", "`a.b`", "`tick``s`")
    assert stream.mapping.excluded_columns == frozenset()
    item = Mapping(stream.mapping, "crm").map(
        {"identity": "u", "event": "e", "plan": "pro", "$city": "Oslo", "a.b": 1, "tick`s": 2, "new_column": "x"}, 1
    )
    assert item.body["properties"] == {"plan": "pro", "$city": "Oslo", "a.b": 1, "tick`s": 2}
