"""Data activation: Heap's objects as Airbyte 1.8+ offers them in its "Mappings" tab, and a stream mapped there
as the very load a config mapping describes.

`discover` answers the operations: an object (event, user, account, identify), a sync mode, its fields and the
keys a user may match on. The user maps source fields onto an object's fields in the UI and picks a matching
key; the platform then hands the destination each record already renamed to the object's fields (the others
dropped), the catalog stream naming the object (`destination_object_name`) and the key (`primary_key`). Such a
stream becomes the `StreamConfig` the config's own mapping would give (event -> track, user -> add_user_properties,
...), so every rule of a config-mapped stream (Heap's field rules, per-key order, pacing, idempotency, deadlines)
holds for it unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from airbyte_cdk.models import ConfiguredAirbyteStream, DestinationSyncMode

from destination_heap_analytics.config import (
    ConfigError,
    HeapConfig,
    StreamConfig,
    StreamKey,
    stream_config,
    stream_label,
)
from destination_heap_analytics.mapping import AIRBYTE_COLUMN_PREFIX, QUOTE
from destination_heap_analytics.messages import Message, SourceRecord

logger = logging.getLogger("airbyte")
UNDECLARED_FIELDS_TOLD = 20  # per stream: past this many field names, the rest are left out without a word each

IDENTITY = {
    "type": "string",
    "title": "Identity",
    "description": "The user's identity in Heap, such as an e-mail address or your own user ID (text or a whole "
    "number, at most 255 characters).",
}
TIMESTAMP = {
    "type": "string",
    "format": "date-time",
    "title": "Timestamp",
    "description": "When it happened: ISO 8601, a date, or epoch seconds or milliseconds. Not mapped: the time "
    "Airbyte read the record.",
}
USER_ID = {
    "type": "integer",
    "title": "Heap User ID",
    "description": "Heap's own user_id of the user, a whole number from 0 to 2^53-1 (Heap Connect exports it).",
}


@dataclass(frozen=True)
class Operation:
    """One object and sync mode offered in the Mappings tab, and the Heap API and columns a stream mapped to it
    loads through. `fields`: the object's fields; `columns`: which config column each named field feeds;
    `key_columns`: the same for the fields of the matching key the user picks."""

    object_name: str
    sync_mode: str
    title: str
    description: str
    api_type: str
    fields: dict[str, dict[str, Any]]
    required: tuple[str, ...] = ()
    columns: tuple[tuple[str, str], ...] = ()  # (config column, object field)
    matching_keys: tuple[tuple[str, ...], ...] = ()
    key_columns: tuple[tuple[str, str], ...] = ()  # (object field, config column)
    free_properties: bool = False  # every field mapped beyond `fields` is a property (additionalProperties)
    needs_deletion_key: bool = False

    def describe(self) -> dict[str, Any]:
        """The operation as the protocol's DestinationOperation writes it."""
        schema = {
            "type": "object",
            "title": self.title,
            "description": self.description,
            "properties": self.fields,
            "required": list(self.required),
            "additionalProperties": self.free_properties,
        }
        described: dict[str, Any] = {"object_name": self.object_name, "sync_mode": self.sync_mode}
        described["json_schema"] = schema
        if self.matching_keys:
            described["matching_keys"] = [list(key) for key in self.matching_keys]
        return described

    def api(self, key: tuple[str, ...], declared: Collection[str] | None = None) -> dict[str, str]:
        """The config's api object this operation stands for, matching on `key` (fields of one of matching_keys).
        With free properties, each field the stream's schema `declares` beyond the object's is one (by its own
        name, whatever it holds: in backquotes); where the schema declares none, every field of the record."""
        key_columns = dict(self.key_columns)
        api = {"api_type": self.api_type} | dict(self.columns) | {key_columns[name]: name for name in key}
        if not self.free_properties:
            return api
        if declared is None:  # "*": every field of the renamed record but the object's own is a property
            return api | {"property_columns": "*", "excluded_columns": ",".join(self.fields)}
        properties = [_literal(name) for name in declared if name not in self.fields]
        return api | ({"property_columns": ",".join(properties)} if properties else {})


OPERATIONS = (
    Operation(
        "event",
        "append",
        "Event",
        "Each record is one event of a user, tracked in Heap. Every other field you map becomes an event property.",
        "track",
        {
            "identity": IDENTITY,
            "event": {
                "type": "string",
                "title": "Event Name",
                "description": "The event's name as Heap shows it, at most 1023 characters.",
            },
            "timestamp": TIMESTAMP,
            "idempotency_key": {
                "type": "string",
                "title": "Event ID",
                "description": "An ID unique to each event: with the event name it makes the event's idempotency key, "
                "so an event loaded twice counts once. Not mapped: the whole record makes the key.",
            },
        },
        required=("identity", "event"),
        columns=(
            ("identity_column", "identity"),
            ("event_column", "event"),
            ("timestamp_column", "timestamp"),
            ("event_id_column", "idempotency_key"),
        ),
        free_properties=True,
    ),
    Operation(
        "user",
        "append_dedup",
        "User",
        "User properties, set on the user with this identity (the latest value wins). Every field you map besides "
        "the identity becomes a user property.",
        "add_user_properties",
        {"identity": IDENTITY},
        required=("identity",),
        matching_keys=(("identity",),),
        key_columns=(("identity", "identity_column"),),
        free_properties=True,
    ),
    Operation(
        "account",
        "append_dedup",
        "Account",
        "Account properties, set on the account with this ID (the latest value wins; Heap applies them once its "
        "Account ID setting is configured). Every field you map besides the ID becomes an account property.",
        "add_account_properties",
        {
            "account_id": {
                "type": "string",
                "title": "Account ID",
                "description": "The account's ID, as Heap's Account ID setting reads it from your users.",
            }
        },
        required=("account_id",),
        matching_keys=(("account_id",),),
        key_columns=(("account_id", "account_id_column"),),
        free_properties=True,
    ),
    Operation(
        "identify",
        "append",
        "Identify",
        "Ties an anonymous Heap user (its user_id) to an identity, merging its history into the identified user.",
        "identify",
        {"identity": IDENTITY, "user_id": USER_ID, "timestamp": TIMESTAMP},
        required=("identity", "user_id"),
        columns=(("identity_column", "identity"), ("user_id_column", "user_id"), ("timestamp_column", "timestamp")),
    ),
    Operation(
        "user",
        "soft_delete",
        "User Deletion",
        "Deletes each user, by identity or by Heap user ID, with all its data, through Heap's user deletion API "
        "(offered when the destination's settings hold the deletion API key).",
        "delete_users",
        {"identity": IDENTITY, "user_id": USER_ID},
        matching_keys=(("identity",), ("user_id",)),
        key_columns=(("identity", "identity_column"), ("user_id", "user_id_column")),
        needs_deletion_key=True,
    ),
)


def destination_catalog(config: HeapConfig) -> dict[str, Any]:
    """discover's answer: one DESTINATION_CATALOG message with the operations this config can load."""
    operations = [op.describe() for op in OPERATIONS if config.api_key is not None or not op.needs_deletion_key]
    return {"type": "DESTINATION_CATALOG", "destination_catalog": {"operations": operations}}


def mapped_in_ui(config: HeapConfig, streams: Iterable[ConfiguredAirbyteStream]) -> dict[StreamKey, StreamConfig]:
    """Each catalog stream that names a destination object, as the load of that object."""
    return {(s.stream.name, s.stream.namespace or None): _stream_config(config, s) for s in streams}


def declared_fields(configured: ConfiguredAirbyteStream) -> tuple[str, ...] | None:
    """The fields the stream's configured json_schema declares (the platform writes it from the fields the user
    mapped); None where it declares none (a catalog written by hand)."""
    schema = configured.stream.json_schema
    declared = schema.get("properties") if isinstance(schema, dict) else None
    return tuple(str(name) for name in declared) if isinstance(declared, dict) and declared else None


def undeclared_fields_told(messages: Iterable[Message], declared: dict[StreamKey, frozenset[str]]) -> Iterator[Message]:
    """The messages as they come; each field a stream's records hold beyond what its schema `declared` (a column
    added at the source reaches the destination unmapped under schema propagation) is left out by its mapping,
    and said once a field in the log, counted, its name not shown (it comes from the source)."""
    told: dict[StreamKey, set[str]] = {key: set() for key in declared}
    for message in messages:
        if message.__class__ is SourceRecord and isinstance(message.data, dict):
            key = (message.stream, message.namespace)
            names = told.get(key)
            if names is not None and len(names) < UNDECLARED_FIELDS_TOLD:
                _tell_undeclared(key, message.data.keys() - declared[key], names)
        yield message


def _tell_undeclared(key: StreamKey, fields: Collection[str], told: set[str]) -> None:
    for field in fields:
        if field in told or field.startswith(AIRBYTE_COLUMN_PREFIX) or len(told) >= UNDECLARED_FIELDS_TOLD:
            continue
        told.add(field)
        last = len(told) == UNDECLARED_FIELDS_TOLD
        more = f"; any more are left out without a word, as the first {UNDECLARED_FIELDS_TOLD} are" if last else ""
        logger.warning(
            f"Stream {stream_label(key)}: its records hold a field its configured schema does not declare (field "
            f"{len(told)} so far{more}; names are not logged, they come from the source). It is left out of every "
            "record: only the fields mapped in Airbyte's Mappings tab reach Heap. Map it there to send it."
        )


def _literal(name: str) -> str:
    """A column naming the field `name` as it is, never as a path (mapping.literal_name)."""
    return QUOTE + name.replace(QUOTE, QUOTE * 2) + QUOTE


def _operation(configured: ConfiguredAirbyteStream) -> Operation | None:
    """The operation a stream stands for: its object's, in its sync mode. Overwrite, which no object offers, is
    how the platform clears a stream (Airbyte's Clear, or a refresh): Heap cannot remove what it holds
    (destination.py says so in the log), so the stream stands for its object's operation that its matching key
    fits, adding before deleting; a Clear brings no records."""
    same_object = [op for op in OPERATIONS if op.object_name == configured.destination_object_name]
    if configured.destination_sync_mode != DestinationSyncMode.overwrite:
        return next((op for op in same_object if op.sync_mode == configured.destination_sync_mode.value), None)
    key = tuple(".".join(path) for path in configured.primary_key or ())
    return next((op for op in same_object if not (key and op.matching_keys) or key in op.matching_keys), None)


def _stream_config(config: HeapConfig, configured: ConfiguredAirbyteStream) -> StreamConfig:
    name = configured.stream.name
    sync_mode = configured.destination_sync_mode.value
    operation = _operation(configured)
    if operation is None:
        offered = ", ".join(f"{op.object_name} ({op.sync_mode})" for op in OPERATIONS)
        raise ConfigError(
            f"Stream {name} is mapped to the Heap object {configured.destination_object_name!r} with sync mode "
            f"{sync_mode}, which Heap does not offer. Map it in Airbyte's Mappings tab to one of: {offered}."
        )
    if operation.needs_deletion_key and config.api_key is None:
        raise ConfigError(
            f"Stream {name} deletes users (object user, sync mode soft_delete), which needs Heap's user deletion "
            "key: set api_key in the destination's settings (Heap: Account > Manage > Privacy & Security), or map "
            "the stream with another sync mode."
        )
    api = operation.api(_matching_key(operation, configured.primary_key, name), declared_fields(configured))
    if operation.needs_deletion_key:
        api["api_key"] = config.api_key
    settings = {"bulk": config.bulk} | ({} if config.batch_size is None else {"batch_size": config.batch_size})
    entry = {"stream": name, "namespace": configured.stream.namespace, "api": api}
    return stream_config(entry, f"stream {name}", settings)


def _matching_key(operation: Operation, primary_key: list[list[str]] | None, stream: str) -> tuple[str, ...]:
    """The matching key the user picked (the stream's primary key, one field name a path), one of the operation's;
    an object with a single candidate key needs no pick."""
    if not operation.matching_keys:
        return ()
    if not primary_key:
        if len(operation.matching_keys) == 1:
            return operation.matching_keys[0]
        raise ConfigError(
            f"Stream {stream} ({operation.object_name}, {operation.sync_mode}) has no matching key: pick one of "
            f"{_keys(operation)} in Airbyte's Mappings tab."
        )
    key = tuple(".".join(path) for path in primary_key)
    if key not in operation.matching_keys:
        raise ConfigError(
            f"Stream {stream} matches {operation.object_name} records on {', '.join(key)}, which is not one of its "
            f"matching keys ({_keys(operation)}): pick one of them in Airbyte's Mappings tab."
        )
    return key


def _keys(operation: Operation) -> str:
    return " or ".join("+".join(key) for key in operation.matching_keys)
