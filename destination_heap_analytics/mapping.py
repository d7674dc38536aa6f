"""Stage 2: one source record -> one Heap item, following Heap's field rules.

Pure functions over plain dicts: no HTTP, no Airbyte types, so every rule is easy to test and fuzz.
A record either becomes a `HeapItem` (possibly with `notes` on values that had to be adjusted) or a
`Rejection` that names the reason and the column, never the value (values are personal data). Notes and
rejections name only what the config names: a configured column, or `*` for every field, never a record's
own keys (a map keyed by e-mail address makes keys personal data too).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pendulum
from jsonpath_ng import parse as parse_jsonpath
from jsonpath_ng.exceptions import JsonPathParserError
from xxhash import xxh3_128_hexdigest

from destination_heap_analytics.config import ConfigError, MappingConfig

MAX_IDENTITY_LENGTH = 255
MAX_TEXT_LENGTH = 1023  # Heap: event names, property keys and values "under 1024 characters"
MAX_SAFE_INTEGER = 2**53 - 1  # past this a JSON number loses digits in Heap; such integers go as text
# Epoch numbers at or above this are milliseconds: as seconds they would lie past the year 5000.
EPOCH_MILLIS_THRESHOLD = 100_000_000_000
# A string in JSON's number syntax (leading zeros allowed) is read as that number: "1e10" as 1e10.
_JSON_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", re.ASCII)
ALL_FIELDS = "*"  # what notes call a property under property_columns "*": its key may be data
FORBIDDEN_USER_PROPERTY = "id"  # Heap refuses a user property named id, in any casing
ARRAY_SEPARATOR = "||"  # how Heap itself stores arrays
QUOTE = "`"  # a column in backquotes names a record key as it is, never a path
# Columns Airbyte tools add (PyAirbyte's cache: _airbyte_raw_id, _airbyte_extracted_at, _airbyte_meta). They
# describe the copy, not the record: never properties, and never part of a record's identity (idempotency).
AIRBYTE_COLUMN_PREFIX = "_airbyte_"
# Heap: identifying with a value many users share merges every anonymous user into one, irreversibly.
NON_UNIQUE_IDENTITIES = frozenset({"null", "undefined", "user"})


@dataclass(slots=True)
class HeapItem:
    """One element of a Heap bulk list (`events`, `users` or `accounts`), ready to send."""

    body: dict[str, Any]
    identity: str | None  # the user this item counts against in Heap's per-identity rate limits
    # What the item updates (an identity, account ID or user_id): Heap keeps the last write of user and account
    # properties, and identify and deletion depend on order, so one key's items must reach Heap in input order.
    # None for track: events carry their own time.
    key: str | None = None
    notes: list[tuple[str, str]] = field(default_factory=list)  # (adjustment, property) e.g. ("truncated", "bio")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record cannot become a Heap item. Never holds the record's values."""

    reason: str
    column: str | None = None

    def describe(self) -> str:
        return f"{self.reason} (column {self.column})" if self.column else self.reason


def literal_name(column: str) -> str | None:
    """The field a column written in backquotes names as it is, never as a path (`` `$city` `` is the field
    `$city`, `` `tags[0]` `` the field `tags[0]`; a doubled backquote stands for one); None for any other."""
    if len(column) >= 2 and column[0] == column[-1] == QUOTE:
        return column[1:-1].replace(QUOTE * 2, QUOTE)
    return None


class ColumnPath:
    """A configured column, compiled once: a record key, a dotted path (`identities.connection`, `items.0.sku`)
    or JSONPath; in backquotes, a record key whatever it holds.

    A record key that is exactly the column as written is matched first, whatever the column looks like
    (`address.city`, `tags[0]`), so a field whose name holds dots or brackets is found as it is. Dotted paths
    are resolved by a small loop over pre-split segments because they run for every column of every record,
    and jsonpath-ng's general `find` machinery is far heavier than a dict lookup. Anything written in JSONPath
    syntax (`$...`, brackets) is handed to jsonpath-ng, which also validates it once here.
    """

    def __init__(self, column: str) -> None:
        self.column = column  # as written in the config
        literal = literal_name(column)
        self.name = column if literal is None else literal  # the property key it gives: the field's own name
        self._key = self.name  # the record key matched before any path
        self._jsonpath: Any = None
        self._segments: tuple[tuple[str, int | None], ...] = ()
        if literal is not None:
            return
        if column.startswith("$") or "[" in column:
            try:
                self._jsonpath = parse_jsonpath(column)
            except (JsonPathParserError, Exception) as error:
                raise ConfigError(
                    f"Column {column!r} is not a valid path ({error}): a column that starts with $ or holds [ is "
                    f"read as JSONPath. To name a field called {column} as it is, write it in backquotes: "
                    f"`{column}`."
                ) from None
        elif "." in column:
            self._segments = tuple((part, int(part) if part.isdigit() else None) for part in column.split("."))

    def resolve(self, record: dict[str, Any]) -> Any:
        """The column's value in the record, or None when the record does not have it."""
        if not self._segments and self._jsonpath is None:
            return record.get(self._key)
        if self._key in record:  # a flat key such as "address.city" or "tags[0]" wins over the path
            return record[self._key]
        if self._jsonpath is not None:
            return next((match.value for match in self._jsonpath.find(record)), None)
        return _walk(record, self._segments)


def _walk(value: Any, segments: tuple[tuple[str, int | None], ...]) -> Any:
    """Follow (key, list index if the key is a number) segments through nested objects and lists."""
    for position, (key, index) in enumerate(segments):
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list):
            if index is not None:
                value = value[index] if index < len(value) else None
            else:  # a field of a list of objects: the first element that has it (identities.connection)
                rest = segments[position:]
                for element in value:
                    found = _walk(element, rest)
                    if found is not None:
                        return found
                return None
        else:
            return None
        if value is None:
            return None
    return value


class Mapping:
    """Maps one stream's records to Heap items for one api_type, with every column path compiled once.

    `stream` is the name of the stream the records come from: an event's idempotency key covers it, so the
    same row loaded from two streams (Heap Connect repeats an event in several tables) is two events."""

    def __init__(self, config: MappingConfig, stream: str = "") -> None:
        self._stream = stream
        self._identity = ColumnPath(config.identity_column) if config.identity_column else None
        self._event = ColumnPath(config.event_column) if config.event_column else None
        self._timestamp = ColumnPath(config.timestamp_column) if config.timestamp_column else None
        self._account_id = ColumnPath(config.account_id_column) if config.account_id_column else None
        self._user_id = ColumnPath(config.user_id_column) if config.user_id_column else None
        self._properties = None if config.property_columns is None else [ColumnPath(c) for c in config.property_columns]
        self._forbid_id = config.api_type == "add_user_properties"
        self._excluded = frozenset(literal_name(column) or column for column in config.excluded_columns)
        # a fixed event name (event_name) is the event of every record; else the column's, or the default
        self._default_event = config.event_name or config.default_event
        self._event_id = ColumnPath(config.event_id_column) if config.event_id_column else None
        builders: dict[str, Callable[[dict[str, Any], int], HeapItem | Rejection]] = {
            "track": self._track,
            "add_user_properties": self._user,
            "add_account_properties": self._account,
            "identify": self._identify,
            "delete_users": self._deletion,
        }
        self._build = builders[config.api_type]

    def map(self, record: Any, emitted_at_ms: int) -> HeapItem | Rejection:
        """One record (the Airbyte record's `data`) and its `emitted_at` -> a Heap item or a Rejection."""
        if not isinstance(record, dict):
            return Rejection("record_not_an_object")
        try:
            return self._build(record, emitted_at_ms)
        except (RecursionError, orjson.JSONEncodeError):  # nesting past what Python or orjson can walk
            return Rejection("too_deeply_nested")

    def _track(self, record: dict[str, Any], emitted_at_ms: int) -> HeapItem | Rejection:
        identity = _identifier(self._identity, record, "identity")
        if isinstance(identity, Rejection):
            return identity
        event = _event_name(self._event, record, self._default_event)
        if isinstance(event, Rejection):
            return event
        timestamp = _timestamp(self._timestamp, record, emitted_at_ms)
        if isinstance(timestamp, Rejection):
            return timestamp
        item = HeapItem({"identity": identity, "event": event, "timestamp": timestamp}, identity)
        properties = self._collect_properties(record, item.notes)
        if properties:
            item.body["properties"] = properties
        event_id = self._event_id.resolve(record) if self._event_id else None
        item.body["idempotency_key"] = idempotency_key(record, self._stream, event, event_id)
        return item

    def _user(self, record: dict[str, Any], emitted_at_ms: int) -> HeapItem | Rejection:
        identity = _identifier(self._identity, record, "identity")
        if isinstance(identity, Rejection):
            return identity
        item = HeapItem({"identity": identity}, identity, key=identity)
        return self._with_properties(item, record)

    def _account(self, record: dict[str, Any], emitted_at_ms: int) -> HeapItem | Rejection:
        account_id = _identifier(self._account_id, record, "account_id")
        if isinstance(account_id, Rejection):
            return account_id
        return self._with_properties(HeapItem({"account_id": account_id}, None, key=account_id), record)

    def _identify(self, record: dict[str, Any], emitted_at_ms: int) -> HeapItem | Rejection:
        user_id = _heap_user_id(self._user_id, record)
        if isinstance(user_id, Rejection):
            return user_id
        identity = _identifier(self._identity, record, "identity")
        if isinstance(identity, Rejection):
            return identity
        if identity.strip().lower() in NON_UNIQUE_IDENTITIES:
            return Rejection("non_unique_identity", self._identity.column)
        item = HeapItem({"user_id": user_id, "identity": identity}, identity, key=user_id)
        if self._timestamp:
            timestamp = _timestamp(self._timestamp, record, emitted_at_ms)
            if isinstance(timestamp, Rejection):
                return timestamp
            item.body["timestamp"] = timestamp
        return item

    def _deletion(self, record: dict[str, Any], emitted_at_ms: int) -> HeapItem | Rejection:
        if self._user_id:
            user_id = _heap_user_id(self._user_id, record)
            return user_id if isinstance(user_id, Rejection) else HeapItem({"user_id": user_id}, None, key=user_id)
        identity = _identifier(self._identity, record, "identity")
        return identity if isinstance(identity, Rejection) else HeapItem({"identity": identity}, identity, key=identity)

    def _with_properties(self, item: HeapItem, record: dict[str, Any]) -> HeapItem | Rejection:
        properties = self._collect_properties(record, item.notes)
        if not properties:
            return Rejection("no_properties", "property_columns")
        item.body["properties"] = properties
        return item

    def _collect_properties(self, record: dict[str, Any], notes: list[tuple[str, str]]) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        if self._properties is None:  # "*": every field but the excluded ones and the ones Airbyte tools add
            excluded = self._excluded
            if _is_airbyte_copy(record):
                excluded = excluded | {key for key in record if key.startswith(AIRBYTE_COLUMN_PREFIX)}
            self._put_fields(properties, "", record, notes, ALL_FIELDS, excluded)
        else:  # each top-level key is a configured column, so notes may name it
            self._put_fields(properties, "", {path.name: path.resolve(record) for path in self._properties}, notes)
        return properties

    def _put_fields(
        self,
        properties: dict[str, Any],
        prefix: str,
        fields: dict,
        notes: list[tuple[str, str]],
        column: str = "",
        excluded: frozenset[str] = frozenset(),
    ) -> None:
        """Every field of an object but the `excluded` ones, nested objects under dotted keys. The hot path of
        every load: plain short text and ordinary numbers under ordinary names are taken as they are, and only
        the rest (booleans among it: `bool` is a subclass of `int`, but not its class) goes through the full
        rules in _put.

        Notes name `column`: `*` under property_columns "*", where any key may be data (a map keyed by
        e-mail address, say), else the configured column a value came from (a top-level key here, when
        `column` is empty), never a key found inside the record. Logs never show data.

        Two fields that flatten to one key (`"a.b"` and `"a": {"b": ...}`) keep the first value in the
        record's order (the order written, for configured columns); the later one is noted as key_collision.
        """
        for key, value in fields.items():
            if key in excluded:
                continue
            if prefix:
                key = prefix + key
            if key in properties:
                notes.append(("key_collision", column or key))
                continue
            kind = value.__class__
            if (
                kind is str
                and len(value) <= MAX_TEXT_LENGTH
                or kind is int
                and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER
                or kind is float
                and value - value == 0.0  # finite: inf - inf and nan - nan are nan
            ) and 2 < len(key) <= MAX_TEXT_LENGTH:
                properties[key] = value
            elif kind is dict:
                self._put_fields(properties, key + ".", value, notes, column or key)
            else:
                self._put(properties, key, value, notes, column)

    def _put(
        self, properties: dict[str, Any], key: str, value: Any, notes: list[tuple[str, str]], column: str = ""
    ) -> None:
        """Add one value _put_fields did not take as it is (objects it flattens itself): arrays join, nulls
        stay out, names and values Heap cannot hold are noted."""
        if value is None or value == []:  # nothing to say; an empty value must not wipe the property in Heap
            return
        name = column or key  # what notes call this property: config-derived, see _put_fields
        length = len(key)
        if not length or length > MAX_TEXT_LENGTH:
            notes.append(("invalid_property_name", name[:40]))
            return
        if length == 2 and self._forbid_id and key.lower() == FORBIDDEN_USER_PROPERTY:
            notes.append(("forbidden_property_name", name))
            return
        value = property_value(value)
        if value is None:
            notes.append(("unsupported_value", name))
        elif isinstance(value, str) and len(value) > MAX_TEXT_LENGTH:
            properties[key] = value[:MAX_TEXT_LENGTH]
            notes.append(("truncated", name))
        else:
            properties[key] = value


def property_value(value: Any) -> str | int | float | None:
    """A string or number as it is; a boolean as the text "true" or "false" (Heap takes a number or a string,
    README: Values); arrays joined the way Heap joins them; None for what Heap can't hold."""
    if isinstance(value, bool):
        return _boolean_text(value)
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        parts = [_array_element_text(element) for element in value if element is not None]
        return ARRAY_SEPARATOR.join(parts) if parts else None
    return None


def _boolean_text(value: bool) -> str:
    """A boolean as Heap's own clients and its examples send it: "true" or "false"."""
    return "true" if value else "false"


def _array_element_text(element: Any) -> str:
    if isinstance(element, str):
        return element
    if isinstance(element, bool):
        return _boolean_text(element)
    if isinstance(element, (int, float)):
        return str(element)
    try:
        return orjson.dumps(element, default=str, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:  # an integer past 64 bits inside (see _writable); deeper than orjson goes
        return orjson.dumps(_writable(element), default=str, option=orjson.OPT_SORT_KEYS).decode()


def _writable(value: Any) -> Any:
    """`value` with integers past 64 bits, which orjson cannot write, as their digits. Records read from
    stdin never hold one (orjson reads such a number as a float), but the mapping is a plain function: its
    other callers may pass one, and it must not pass for nesting too deep (orjson raises the same error)."""
    if isinstance(value, dict):
        return {key: _writable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_writable(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)
    return value


OPEN_OBJECT, OPEN_ARRAY, CLOSE = [0], [1], [2]  # _flattened's markers: lists, which no flattened leaf is


def _flattened(value: Any) -> list[Any]:
    """`value` as one flat list, walked without recursion whatever its depth: each object as OPEN_OBJECT, its
    keys (sorted) each followed by its value, CLOSE; each array as OPEN_ARRAY, its elements, CLOSE; anything
    else as itself. Different values give different lists."""
    flat: list[Any] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if item is CLOSE:
            flat.append(CLOSE)
        elif isinstance(item, dict):
            flat.append(OPEN_OBJECT)
            stack.append(CLOSE)
            for key in sorted(item, key=str, reverse=True):
                stack.extend((item[key], _writable(key)))
        elif isinstance(item, (list, tuple)):
            flat.append(OPEN_ARRAY)
            stack.append(CLOSE)
            stack.extend(reversed(item))
        else:
            flat.append(_writable(item))
    return flat


def _identifier(path: ColumnPath | None, record: dict[str, Any], field_name: str) -> str | Rejection:
    value = path.resolve(record) if path else None
    if value.__class__ is str and 0 < len(value) <= MAX_IDENTITY_LENGTH and not value.isspace():
        return value  # the common case, decided without the checks of _text
    return _text(value, path.column if path else None, field_name, MAX_IDENTITY_LENGTH, (str, int))


def _text(
    value: Any, column: str | None, field_name: str, max_length: int, kinds: tuple[type, ...]
) -> str | Rejection:
    """A value Heap takes as text (an identity, an account ID, an event name), or why it cannot be one."""
    if isinstance(value, bool) or not isinstance(value, kinds):
        return Rejection(f"missing_{field_name}" if value is None else f"invalid_{field_name}_type", column)
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        return Rejection(f"missing_{field_name}", column)
    if len(text) > max_length:
        return Rejection(f"{field_name}_too_long", column)
    return text


def _heap_user_id(path: ColumnPath | None, record: dict[str, Any]) -> str | Rejection:
    """Heap's anonymous user_id: an integer 0 .. 2^53-1, sent as a string."""
    value = path.resolve(record) if path else None
    column = path.column if path else None
    if value is None or value == "":
        return Rejection("missing_user_id", column)
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.isascii() and text.isdigit():
        text = int(text)
    if isinstance(text, bool) or not isinstance(text, int) or not 0 <= text <= MAX_SAFE_INTEGER:
        return Rejection("invalid_user_id", column)
    return str(text)


def _event_name(path: ColumnPath | None, record: dict[str, Any], default: str | None) -> str | Rejection:
    value = path.resolve(record) if path else None
    if value is None or value == "":
        value = default
    return _text(value, path.column if path else None, "event", MAX_TEXT_LENGTH, (str, int, float))


def _timestamp(path: ColumnPath | None, record: dict[str, Any], emitted_at_ms: int) -> str | Rejection:
    value = path.resolve(record) if path else None
    if value is None or value == "":
        value = emitted_at_ms  # deterministic for a given record message, unlike Heap's "now"
    normalized = normalize_timestamp(value)
    return normalized if normalized is not None else Rejection("invalid_timestamp", path.column if path else None)


def normalize_timestamp(value: Any) -> str | None:
    """ISO 8601 with offset from an ISO string, a date, or epoch seconds/milliseconds; None if not a time.

    A string of four or eight digits is an ISO 8601 year (2024) or basic date (20221021), not seconds since
    1970; any other string in JSON's number syntax ("1489184516", "1e10") is read as that number would be."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if text[-1:] == "z":  # RFC 3339 allows a lowercase z for UTC; Python's parsers take only Z
            text = text[:-1] + "Z"
        digits = text.isascii() and text.isdigit()
        # "2022-..." is no number: no need to try it as one
        looks_like_date = (digits and len(text) in (4, 8)) or (len(text) > 4 and text[4] == "-")
        number = None if looks_like_date else _number(text)
        if number is None:
            parsed = _parse_time(text)
            return _iso(parsed) if parsed is not None else None
        value = number
    if isinstance(value, (int, float)) and math.isfinite(value):
        seconds = value / 1000 if abs(value) >= EPOCH_MILLIS_THRESHOLD else value
        try:
            return _iso(pendulum.from_timestamp(seconds, tz="UTC"))
        except (ValueError, OverflowError, OSError):
            return None
    return None


def _parse_time(text: str) -> datetime | None:
    """The stdlib's ISO 8601 parser first (the common case, and cheaper), pendulum for the forms it lacks."""
    try:
        parsed = datetime.fromisoformat(text)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    except ValueError:
        pass
    try:
        moment = pendulum.parse(text, tz="UTC")
        if not isinstance(moment, pendulum.DateTime):
            return None
        moment.utcoffset()  # pendulum takes offsets of a day or more (-24:00); a datetime cannot say them
    except (ValueError, TypeError, OverflowError):
        return None
    return moment


def _iso(moment: datetime) -> str:
    """Heap's form, 2017-03-10T22:21:56+00:00, keeping milliseconds (or microseconds) only when present."""
    if not moment.microsecond:
        return moment.isoformat(timespec="seconds")
    return moment.isoformat(timespec="microseconds" if moment.microsecond % 1000 else "milliseconds")


def _number(text: str) -> float | int | None:
    """The number a string spells: JSON's syntax, and the looser forms int() and plain decimals take."""
    try:
        return int(text)
    except ValueError:
        pass
    if not (_JSON_NUMBER.fullmatch(text) or text.replace(".", "", 1).lstrip("-").isdigit()):
        return None  # float() would also take "nan", "inf" and "infinity": no times
    try:
        return float(text)
    except ValueError:
        return None


def _is_airbyte_copy(record: dict[str, Any]) -> bool:
    """A row an Airbyte tool wrote (PyAirbyte's cache): two lookups, not a scan of every key."""
    return "_airbyte_raw_id" in record or "_airbyte_extracted_at" in record


def idempotency_key(record: dict[str, Any], stream: str = "", event: str = "", event_id: Any = None) -> str:
    """The key Heap deduplicates events by: the same event always gets the same key, however often it is
    replayed, and events that differ in stream, name or record get different keys.

    What makes an event distinct is the stream it was loaded from, its event name and its record: the same
    row in two streams (Heap Connect repeats event_id, user_id and time across its per-event tables) is two
    events. Where the config names an event_id column (the heap_events preset) and the record has one (a
    non-blank string or an integer), the key covers (stream, event, event_id) instead of the whole row, so
    the event keeps its key when other columns of the row change. The columns Airbyte tools add describe
    the copy, not the event, and are left out.

    The recipe is part of the connector's contract: a changed key makes a replay a second event in Heap.
    XXH3-128 of the canonical JSON array ["event_id", stream, event, event_id as text] or
    ["record", stream, event, record with keys sorted]. A record nested deeper than orjson writes (such
    records used to be skipped as too_deeply_nested, so no earlier key exists for them) gets the key of
    ["flattened", stream, event, _flattened(record)]: a field the mapping does not use costs no record.
    """
    if isinstance(event_id, str) and event_id.strip() or isinstance(event_id, int) and not isinstance(event_id, bool):
        return xxh3_128_hexdigest(orjson.dumps(["event_id", stream, event, str(event_id)]))
    if _is_airbyte_copy(record):
        record = {key: value for key, value in record.items() if not key.startswith(AIRBYTE_COLUMN_PREFIX)}
    parts = ["record", stream, event, record]
    try:  # what parsed JSON holds: string keys, JSON values
        canonical = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # anything else (a plain function's caller may pass any dict) as text
        options = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
        try:
            canonical = orjson.dumps(_writable(parts), default=str, option=options)
        except (orjson.JSONEncodeError, RecursionError):  # nested deeper than orjson writes (255 levels)
            canonical = orjson.dumps(["flattened", stream, event, _flattened(record)], default=str)
    # XXH3-128: for data nobody crafts against it, collisions as unlikely as with a cryptographic 128-bit
    # hash, and it is far cheaper, which matters as it runs once for every event
    return xxh3_128_hexdigest(canonical)
