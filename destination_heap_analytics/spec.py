"""The spec, built from the config's own tables (config.py), so that the form Airbyte draws and the rules the
connector applies name the same fields, requirements and bounds.

Airbyte's form rules: each `oneOf` option is an object with a title and a `const` api_type that tells it
from the others; `order` sorts the fields; `airbyte_secret` masks one.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import orjson

from destination_heap_analytics.config import (
    INVALID_RECORD_POLICIES,
    PRESETS,
    REQUIRED_COLUMNS,
    US_BASE_URL,
    WHOLE_NUMBER_BOUNDS,
    option_columns,
)

if TYPE_CHECKING:
    from airbyte_cdk.models import ConnectorSpecification

DOCUMENTATION_URL = "https://docs.airbyte.com/integrations/destinations/heap-analytics"
COLUMN_HELP = "A dotted path into the record, such as identities.connection or items.0.sku."

# title, description, examples: every column field of every option
COLUMNS: dict[str, tuple[str, str, list[str]]] = {
    "identity_column": (
        "Identity Column",
        "The column holding the user's identity (a string or integer, at most 255 characters).",
        ["email"],
    ),
    "event_column": ("Event Column", "The column holding the event name.", ["event_name", "type"]),
    "timestamp_column": (
        "Timestamp Column",
        "The column holding the time: ISO 8601, a date, or epoch seconds or milliseconds. Empty or absent: the "
        "record's emitted_at.",
        ["updated_at"],
    ),
    "event_name": (
        "Event Name",
        "Instead of Event Column: one event name for every record of the stream (a table of orders is all "
        "\"Order Placed\").",
        ["Order Placed"],
    ),
    "event_id_column": (
        "Event ID Column",
        "Optional: a column holding an ID unique to each event (Heap Connect's event_id). When a record has one, "
        "it alone (with the stream and event name) makes the event's idempotency key; otherwise the whole record "
        "does.",
        ["event_id"],
    ),
    "account_id_column": (
        "Account ID Column",
        "The column holding the account ID. Heap applies account properties once its Account ID setting is "
        "configured.",
        ["account_id"],
    ),
    "user_id_column": (
        "User ID Column",
        "The column holding Heap's user_id (an integer 0 to 2^53-1, as a number or digits).",
        ["user_id", "from_user_id"],
    ),
    "property_columns": (
        "Property Columns",
        "Columns sent as properties, comma-separated, or * for every field. A user property named id is left "
        "out (Heap refuses it).",
        ["*", "name,plan,address.city"],
    ),
    "excluded_columns": (
        "Excluded Columns",
        "With Property Columns *: fields to leave out, comma-separated.",
        ["password_hash,internal_notes"],
    ),
}
API_TITLES = {
    "track": "Track Events",
    "add_user_properties": "Add User Properties",
    "add_account_properties": "Add Account Properties",
    "identify": "Identify Users",
    "delete_users": "Delete Users (GDPR)",
}
PRESET_TITLES = {
    "heap_users": (
        "Heap Connect: users table",
        "Rows of Heap Connect's users table as user properties by identity: every column but user_id, "
        "identity and last_modified. Set a column below to override the preset's.",
    ),
    "heap_events": (
        "Heap Connect: sessions, pageviews and event tables",
        "Rows of Heap Connect's event tables as track events: identity, the event from type (or the table's "
        "name), time as the timestamp, the other columns as properties. Rows need an identity column joined "
        "from users. Set a column below to override the preset's.",
    ),
    "heap_user_migrations": (
        "Heap Connect: user_migrations table",
        "Rows of Heap Connect's user_migrations table as identify calls: from_user_id with identity (joined "
        "from users). Set a column below to override the preset's.",
    ),
}
API_KEY = {
    "type": "string",
    "title": "API Key",
    "airbyte_secret": True,
    "description": "Heap's user deletion API key (Account > Manage > Privacy & Security). The Environment ID "
    "must be your Main Production environment's.",
}
DELETE_USERS_HELP = "Set Identity Column or User ID Column, not both: the column naming the users to delete."


@cache
def connection_specification() -> dict[str, Any]:
    properties = {
        "app_id": {
            "type": "string",
            "title": "Environment ID",
            # Digits only, as parse_config checks with a message naming app_id. No `pattern` here: the 0.1.0
            # spec took any string, and a pattern would make saved 0.1.0 configs invalid (a breaking change).
            "description": "The ID of the Heap environment to load into, digits only (Heap: Account > Manage > "
            "Projects).",
            "examples": ["11"],
        },
        "base_url": {
            "type": "string",
            "title": "Base URL",
            "description": "Heap's API host: https://heapanalytics.com for US data, https://c.eu.heap-api.com for "
            "EU data.",
            "default": US_BASE_URL,
            "examples": [US_BASE_URL, "https://c.eu.heap-api.com"],
        },
        "api": _api("Which Heap API the records of the connection's stream load through, and which columns feed it."),
        "streams": {
            "type": "array",
            "title": "Stream Mappings",
            "description": "To load several streams in one connection: a Heap mapping for each stream. API Type "
            "above then maps the one stream no entry names, if any.",
            "items": {
                "type": "object",
                "title": "Stream Mapping",
                "required": ["stream", "api"],
                "properties": {
                    "stream": {
                        "type": "string",
                        "title": "Stream",
                        "description": "The name of the stream, as the source calls it.",
                        "examples": ["users", "orders"],
                        "order": 0,
                    },
                    "namespace": {
                        "type": "string",
                        "title": "Namespace",
                        "description": "Optional: the stream's namespace (a schema, say), where two streams share a "
                        "name.",
                        "order": 1,
                    },
                    "api": _api("How this stream's records load into Heap.") | {"order": 2},
                },
            },
        },
        "dry_run": {
            "type": "boolean",
            "title": "Dry Run",
            "description": "Map and validate every record and report what would be sent, without sending "
            "anything and without emitting any state, so the source's cursor does not move.",
            "default": False,
        },
        "on_invalid_record": {
            "type": "string",
            "title": "On Invalid Record",
            "description": "skip: count invalid records by reason, report them and go on. fail: stop the sync at "
            "the first invalid record.",
            "enum": list(INVALID_RECORD_POLICIES),
            "default": "skip",
        },
        "bulk": {
            "type": "boolean",
            "title": "Bulk Requests",
            "description": "Send up to Batch Size records a request through Heap's bulk endpoints. Off: one "
            "request a record.",
            "default": True,
        },
        "batch_size": _whole_number(
            "batch_size",
            "Batch Size",
            "Records per bulk request: at most 1000 for the ingestion APIs (the default), at most 10000 for "
            "user deletion (its default).",
        ),
        "max_concurrent_requests": _whole_number(
            "max_concurrent_requests",
            "Concurrent Requests",
            "Requests in flight at once. Default: 8 for bulk requests, 32 for single ones (bulk off, identify).",
        ),
        "track_events_per_minute": _whole_number(
            "track_events_per_minute",
            "Track Events per Minute",
            "The pace of bulk track, kept on purpose to avoid throttling: Heap's published limit is 15000 per "
            "environment. Raise it only if Heap raised yours; 0 turns pacing off.",
            default=15_000,
        ),
        "request_timeout_seconds": _whole_number(
            "request_timeout_seconds",
            "Request Timeout (seconds)",
            "How long one request, its answer included, may take before it is retried.",
            default=30,
        ),
        "max_retries": _whole_number(
            "max_retries",
            "Retries",
            "How often a request is retried after throttling, a server error, a timeout or a dropped "
            "connection, with exponential backoff.",
            default=6,
        ),
    }
    for order, field in enumerate(properties.values()):
        field["order"] = order
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Heap Analytics Destination Spec",
        "type": "object",
        "required": ["app_id"],  # and api or streams: parse_config says which is missing
        "additionalProperties": True,
        "properties": properties,
    }


def specification() -> dict[str, Any]:
    """The whole spec, as the SPEC message carries it."""
    return {
        "documentationUrl": DOCUMENTATION_URL,
        "supportsIncremental": True,
        "supported_destination_sync_modes": ["append", "append_dedup"],
        "supportsNormalization": False,
        "supportsDBT": False,
        "connectionSpecification": connection_specification(),
    }


def spec_message() -> str:
    """The `spec` command's one line. It needs no CDK: importing the CDK is most of a cold start, and the
    platform asks for the spec whenever it loads the connector."""
    return orjson.dumps({"type": "SPEC", "spec": specification()}).decode()


@cache
def connector_specification() -> ConnectorSpecification:
    from airbyte_cdk.models import ConnectorSpecificationSerializer

    return ConnectorSpecificationSerializer.load(specification())


def _api(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "title": "API Type",
        "description": f"{description} {COLUMN_HELP}",
        "oneOf": [_api_option(api_type) for api_type in API_TITLES] + [_preset_option(p) for p in PRESETS],
    }


def _api_option(api_type: str) -> dict[str, Any]:
    names = option_columns(api_type)
    fields = {"api_key": dict(API_KEY)} if api_type == "delete_users" else {}
    fields |= {name: _column(name, DELETE_USERS_HELP if api_type == "delete_users" else None) for name in names}
    required = ["api_type", *REQUIRED_COLUMNS[api_type], *(["api_key"] if api_type == "delete_users" else [])]
    return _option(api_type, API_TITLES[api_type], None, fields, required)


def _preset_option(preset: str) -> dict[str, Any]:
    api_type = PRESETS[preset]["api_type"]
    fields = {name: _column(name) for name in option_columns(api_type)}
    title, description = PRESET_TITLES[preset]
    return _option(preset, title, description, fields, ["api_type"])


def _option(
    api_type: str, title: str, description: str | None, fields: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    discriminator = {
        "type": "string",
        "const": api_type,
        "default": api_type,
        "title": "API Type",
        "description": f"{api_type}: {title}.",
    }
    properties = {"api_type": discriminator} | fields
    for order, field in enumerate(properties.values()):
        field["order"] = order
    option = {"type": "object", "title": title, "required": required, "properties": properties}
    if description:
        option["description"] = description
    return option


def _column(name: str, help_text: str | None = None) -> dict[str, Any]:
    title, description, examples = COLUMNS[name]
    return {
        "type": "string",
        "title": title,
        "description": f"{description} {help_text}" if help_text and name.endswith("_column") else description,
        "examples": examples,
    }


def _whole_number(name: str, title: str, description: str, default: int | None = None) -> dict[str, Any]:
    low, high = WHOLE_NUMBER_BOUNDS[name]
    field = {"type": "integer", "title": title, "description": description, "minimum": low, "maximum": high}
    if default is not None:
        field["default"] = default
    return field
