"""Heap's request rules, as the stand-in enforces them: field types and sizes, bulk limits, the deletion API's body.

This is the stand-in's own reading of Heap's API documentation, written independently of the connector it
checks: nothing here comes from ``destination_heap_analytics`` (a shared mistake would then go unnoticed).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

MAX_BULK_ITEMS = 1000
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_STRING = 1023  # Heap: strings "under 1024 characters"
MAX_IDENTITY = 255
MAX_USER_ID = 2**53 - 1


MAX_DELETION_USERS = 10_000


def is_loopback_host(host: str) -> bool:
    """The stand-in only ever binds these: "localhost" or a loopback IP address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------------------
# Validation. Each checker returns None when valid, else the tail of a Heap-style message such as
# ".properties should be object"; the caller prefixes "postBody" or "postBody.events[3]". Messages are only
# built on failure so the happy path stays cheap (up to 100k items a second go through here).


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _unknown_key_error(body: dict, allowed: frozenset[str]) -> str | None:
    if body.keys() <= allowed:
        return None
    unknown = sorted(key for key in body if key not in allowed)
    return f' has unknown property "{_short(unknown[0])}"'


def string_error(body: dict, field: str, max_len: int, required: bool = True) -> str | None:
    """``field`` must be a string of 1..max_len characters (Heap wants strings, never numbers)."""
    value = body.get(field)
    if type(value) is str:
        return None if 0 < len(value) <= max_len else f".{field} should be 1..{max_len} characters"
    if field not in body:
        return f".{field} is required" if required else None
    return f".{field} should be string"


def user_id_error(value: Any) -> str | None:
    if type(value) is str and value.isascii() and value.isdigit() and int(value) <= MAX_USER_ID:
        return None
    return ".user_id should be a string holding an integer 0..2^53-1"


def _timestamp_error(value: Any) -> str | None:
    if type(value) is str:
        try:
            if datetime.fromisoformat(value).tzinfo is not None:
                return None
        except ValueError:
            pass
    return ".timestamp should be an ISO 8601 date-time with offset, e.g. 2017-03-10T22:21:56+00:00"


def _property_value_error(key: str, value: Any) -> str | None:
    kind = type(value)
    if kind is str:
        return (
            None if len(value) <= MAX_STRING else f".properties.{_short(key)} should be under 1024 characters"
        )
    if kind is float:
        return None if math.isfinite(value) else f".properties.{_short(key)} should be a finite number"
    if kind is int:
        return None
    # Heap documents "a number or string"; its own Node and Ruby clients raise on a boolean before sending
    return f".properties.{_short(key)} should be string or number"


def _properties_error(body: dict, required: bool, forbid_id: bool = False) -> str | None:
    props = body.get("properties")
    if type(props) is not dict:
        if props is None and "properties" not in body:
            return ".properties is required" if required else None
        return ".properties should be object"
    for key, value in props.items():
        if not 0 < len(key) <= MAX_STRING:
            return f'.properties key "{_short(key)}" should be 1..1023 characters'
        if (error := _property_value_error(key, value)) is not None:
            return error
        if forbid_id and len(key) == 2 and key.lower() == "id":
            return f'.properties.{key} is not allowed: "id" is reserved for user properties'
    return None


def _event_fields_error(body: dict) -> str | None:
    """The fields a track event has in both the single and the bulk form."""
    event = body.get("event")
    if type(event) is not str:
        return ".event is required" if "event" not in body else ".event should be string"
    if not 0 < len(event) <= MAX_STRING:
        return ".event should be 1..1023 characters"
    if "timestamp" in body and (error := _timestamp_error(body["timestamp"])):
        return error
    return _properties_error(body, required=False) or string_error(
        body, "idempotency_key", MAX_IDENTITY, required=False
    )


_TRACK_SINGLE_KEYS = frozenset(
    {"app_id", "identity", "user_id", "event", "timestamp", "properties", "idempotency_key", "session_id"}
)
_TRACK_ITEM_KEYS = frozenset({"identity", "event", "timestamp", "properties", "idempotency_key"})
_USER_SINGLE_KEYS = frozenset({"app_id", "identity", "properties"})
_USER_ITEM_KEYS = frozenset({"identity", "properties"})
_ACCOUNT_SINGLE_KEYS = frozenset({"app_id", "account_id", "properties"})
_ACCOUNT_ITEM_KEYS = frozenset({"account_id", "properties"})
_IDENTIFY_KEYS = frozenset({"app_id", "user_id", "identity", "timestamp"})


def _session_id_error(body: dict) -> str | None:
    # Heap does not document session_id's type; accept what its clients send (a string or an integer).
    value = body.get("session_id")
    if "session_id" not in body or (type(value) is int) or (type(value) is str and 0 < len(value) <= 255):
        return None
    return ".session_id should be a non-empty string or an integer"


def _track_single_error(body: dict) -> str | None:
    error = _unknown_key_error(body, _TRACK_SINGLE_KEYS)
    if error:
        return error
    if "user_id" in body:
        if "identity" in body:
            return " should have identity or user_id, not both"
        error = user_id_error(body["user_id"])
    elif "identity" not in body:
        return " should have identity or user_id"
    else:
        error = string_error(body, "identity", MAX_IDENTITY)
    return error or _event_fields_error(body) or _session_id_error(body)


def _track_item_error(item: Any) -> str | None:
    if type(item) is not dict:
        return " should be object"
    return (
        _unknown_key_error(item, _TRACK_ITEM_KEYS)
        or string_error(item, "identity", MAX_IDENTITY)
        or _event_fields_error(item)
    )


def _user_error(item: Any, allowed: frozenset[str]) -> str | None:
    if type(item) is not dict:
        return " should be object"
    return (
        _unknown_key_error(item, allowed)
        or string_error(item, "identity", MAX_IDENTITY)
        or _properties_error(item, required=True, forbid_id=True)
    )


def _account_error(item: Any, allowed: frozenset[str]) -> str | None:
    if type(item) is not dict:
        return " should be object"
    return (
        _unknown_key_error(item, allowed)
        or string_error(item, "account_id", MAX_IDENTITY)
        or _properties_error(item, required=True)
    )


def _identify_error(body: dict) -> str | None:
    if "user_id" not in body:
        return ".user_id is required"
    return (
        _unknown_key_error(body, _IDENTIFY_KEYS)
        or user_id_error(body["user_id"])
        or string_error(body, "identity", MAX_IDENTITY)
        or ("timestamp" in body and _timestamp_error(body["timestamp"]) or None)
    )


class Endpoint(NamedTuple):
    kind: str  # "track" | "user" | "account": which store accepted items go to
    list_key: str | None  # the bulk form's list: "events" | "users" | "accounts"; None: no bulk form
    single_error: Callable[[dict], str | None]
    item_error: Callable[[Any], str | None]


ENDPOINTS = {
    "/api/track": Endpoint("track", "events", _track_single_error, _track_item_error),
    "/api/add_user_properties": Endpoint(
        "user",
        "users",
        lambda b: _user_error(b, _USER_SINGLE_KEYS),
        lambda i: _user_error(i, _USER_ITEM_KEYS),
    ),
    "/api/add_account_properties": Endpoint(
        "account",
        "accounts",
        lambda b: _account_error(b, _ACCOUNT_SINGLE_KEYS),
        lambda i: _account_error(i, _ACCOUNT_ITEM_KEYS),
    ),
    "/api/v1/identify": Endpoint("identify", None, _identify_error, _identify_error),
}


def app_id_error(body: dict) -> str | None:
    app_id = body.get("app_id")
    if type(app_id) is str and app_id.isascii() and app_id.isdigit():
        return None
    return (
        "postBody.app_id is required"
        if "app_id" not in body
        else "postBody.app_id should be a numeric string"
    )


def bulk_error(body: dict, endpoint: Endpoint) -> str | None:
    """Validate a bulk body; one bad item rejects the whole request, as Heap documents no per-item errors."""
    list_key = endpoint.list_key
    if error := _unknown_key_error(body, frozenset({"app_id", list_key})):
        return "postBody" + error
    items = body[list_key]
    if type(items) is not list:
        return f"postBody.{list_key} should be array"
    if not 0 < len(items) <= MAX_BULK_ITEMS:
        return f"postBody.{list_key} should have 1..{MAX_BULK_ITEMS} items, got {len(items)}"
    item_error = endpoint.item_error
    for index, item in enumerate(items):
        if error := item_error(item):
            return f"postBody.{list_key}[{index}]{error}"
    return None


def prefixed(error: str | None) -> str | None:
    return None if error is None else "postBody" + error


def deletion_body_error(body: Any) -> str | None:
    if type(body) is not dict or set(body) != {"users"} or type(body["users"]) is not list:
        return " should be an object with only a users list"
    if not 0 < len(body["users"]) <= MAX_DELETION_USERS:
        return f".users should hold 1..{MAX_DELETION_USERS} users"
    for index, user in enumerate(body["users"]):
        if type(user) is not dict or len(user) != 1 or not set(user) <= {"user_id", "identity"}:
            return f".users[{index}] should have exactly one of user_id or identity"
        error = user_id_error(user["user_id"]) if "user_id" in user else string_error(user, "identity", MAX_IDENTITY)
        if error:
            return f".users[{index}]{error}"
    return None
