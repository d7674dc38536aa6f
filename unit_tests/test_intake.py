"""The intake's encoding: what each input message becomes on its way to a batch, in input order."""

from __future__ import annotations

import orjson
import pytest
from airbyte_cdk.models import AirbyteMessage, Type

from destination_heap_analytics.config import parse_config
from destination_heap_analytics.intake import RecordEncoder
from destination_heap_analytics.mapping import Mapping, Rejection
from destination_heap_analytics.messages import SourceRecord, UnparsableLine, parse_line

USERS = {"api_type": "add_user_properties", "identity_column": "email", "property_columns": "plan,bio"}


def encoder(api: dict = USERS, namespace: str | None = None) -> RecordEncoder:
    config = parse_config({"app_id": "11", "base_url": "http://127.0.0.1:1", "api": api})
    return RecordEncoder(Mapping(config.mapping), "users", namespace)


def user(data: dict, stream: str = "users", namespace: str | None = None) -> SourceRecord:
    return SourceRecord(stream, namespace, data, 1_700_000_000_000)


def test_a_record_becomes_its_heap_items_json_and_the_identity_it_counts_against() -> None:
    [(body, identity, notes)] = encoder().encode([user({"email": "a@x.io", "plan": "pro", "extra": 1})])
    assert orjson.loads(body) == {"identity": "a@x.io", "properties": {"plan": "pro"}}
    assert identity == "a@x.io"
    assert notes is None


def test_notes_on_adjusted_values_travel_with_the_record() -> None:
    [(body, _, notes)] = encoder().encode([user({"email": "a@x.io", "bio": "x" * 2000})])
    assert len(orjson.loads(body)["properties"]["bio"]) == 1023
    assert notes == [("truncated", "bio")]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (user({"plan": "pro"}), "missing_identity"),
        (user({"email": "a@x.io"}), "no_properties"),
        (user({"email": "a@x.io", "plan": "pro"}, stream="orders"), "stream_not_in_catalog"),
        (user({"email": "a@x.io", "plan": "pro"}, namespace="crm"), "stream_not_in_catalog"),
        (user(["not", "an", "object"]), "record_not_an_object"),
    ],
)
def test_a_record_that_cannot_be_loaded_becomes_its_rejection(message: SourceRecord, reason: str) -> None:
    [rejection] = encoder().encode([message])
    assert isinstance(rejection, Rejection)
    assert rejection.reason == reason


def test_other_messages_pass_through_in_input_order() -> None:
    state = parse_line(b'{"type":"STATE","state":{"type":"LEGACY","data":{"at":1}}}')
    log = AirbyteMessage(type=Type.LOG)
    unparsable = UnparsableLine(7)
    ok = user({"email": "a@x.io", "plan": "pro"})
    entries = encoder().encode([ok, state, log, user({}), unparsable, ok])
    kinds = [type(entry).__name__ for entry in entries]
    assert kinds == ["tuple", "AirbyteMessage", "AirbyteMessage", "Rejection", "UnparsableLine", "tuple"]
    assert entries[1] is state and entries[4] is unparsable


def test_the_catalogs_namespace_must_match() -> None:
    [entry] = encoder(namespace="crm").encode([user({"email": "a@x.io", "plan": "pro"}, namespace="crm")])
    assert isinstance(entry, tuple)
