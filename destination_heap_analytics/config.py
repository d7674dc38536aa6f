"""Stage 1: the connector's configuration, parsed and validated once.

A config written for the 0.1.0 connector (app_id, base_url, api{api_type, ...columns}) parses unchanged;
the newer top-level fields are all optional. Every error names the field and says what to put there.
"""

from __future__ import annotations

import ipaddress
import json
import pkgutil
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from difflib import get_close_matches
from functools import cache
from typing import Any

import yaml
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url


@cache
def specification() -> dict[str, Any]:
    """spec.yaml: the spec Airbyte draws its form from and checks configs against, and the one source of the
    config's fields, defaults, bounds and choices, which the rules below read from it. Read once, with PyYAML's
    C parser where it has one: the platform asks for the spec on every command."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(pkgutil.get_data(__package__, "spec.yaml"), Loader=loader)


# The top-level settings as the spec describes them (type, default, minimum and maximum, enum), by name. Only
# the settings named in this module are read; the others are another module's (or ignored, as in 0.1.0).
SETTINGS: Mapping[str, Any] = specification()["connectionSpecification"]["properties"]
# Each api option (an api_type or a preset) by its api_type: its fields, in form order, and those it requires.
API_OPTIONS: Mapping[str, Any] = {
    option["properties"]["api_type"]["const"]: option for option in SETTINGS["api"]["oneOf"]
}
STREAM_ENTRY_FIELDS = tuple(SETTINGS["streams"]["items"]["properties"])

US_BASE_URL = SETTINGS["base_url"]["default"]
EU_BASE_URL = "https://c.eu.heap-api.com"

# The Heap APIs the mapping implements; every other api option is a preset standing for one of them.
API_TYPES = ("track", "add_user_properties", "add_account_properties", "identify", "delete_users")
NOT_COLUMNS = ("api_type", "api_key")


def api_fields(kind: str) -> tuple[str, ...]:
    """Every field an api object of this api_type (or preset) may hold: its spec option's properties."""
    return tuple(API_OPTIONS[kind]["properties"])


def option_columns(kind: str) -> tuple[str, ...]:
    """The column fields of an api option, in form order (excluded_columns among them, where property_columns is)."""
    return tuple(name for name in api_fields(kind) if name not in NOT_COLUMNS)


# Which column fields each api_type requires: its spec option's required list.
REQUIRED_COLUMNS = {
    api_type: tuple(name for name in option_columns(api_type) if name in API_OPTIONS[api_type]["required"])
    for api_type in API_TYPES
}
# Pairs of fields of which an api_type needs exactly one, which the spec cannot say: (first, second, what they say)
EXACTLY_ONE = {
    "track": (("event_column", "event_name", "the column holding the event name, or one event name for every record"),),
    "delete_users": (("identity_column", "user_id_column", "the column naming the users to delete"),),
}
MAX_EVENT_NAME = 1023  # Heap: event names under 1024 characters
# Heap's bulk maximum for the ingestion APIs; user deletion takes up to the spec's batch_size maximum (10000).
INGESTION_MAX_BATCH = 1000
BULK_FORM = {"identify": False, "delete_users": True}  # where Heap offers only one form, it is used
# Single requests are small and spend their time waiting on the network: more of them in flight. The spec's
# description says so; a default that depends on bulk is more than JSON Schema's `default` can say.
DEFAULT_CONCURRENCY = {True: 8, False: 32}


def max_batch(api_type: str) -> int:
    """The most items Heap takes in one bulk request of this api_type."""
    return SETTINGS["batch_size"]["maximum"] if api_type == "delete_users" else INGESTION_MAX_BATCH


# Mappings for the tables Heap Connect exports (users, sessions, pageviews, one per event, user_migrations).
# Heap's own user_id is internal to an environment: rows address users by identity (join users.identity
# onto event and migration rows in the warehouse; rows without one are skipped as missing_identity).
PRESETS: dict[str, dict[str, str]] = {
    "heap_users": {
        "api_type": "add_user_properties",
        "identity_column": "identity",
        "property_columns": "*",
        "excluded_columns": "user_id,identity,last_modified",
    },
    "heap_events": {  # sessions, pageviews and per-event tables; the event is `type`, else the table's name
        "api_type": "track",
        "identity_column": "identity",
        "event_column": "type",
        "timestamp_column": "time",
        "property_columns": "*",
        "excluded_columns": "event_id,user_id,identity,time,type",
        "event_id_column": "event_id",  # the event's own id: its idempotency key covers that, not the row
    },
    "heap_user_migrations": {
        "api_type": "identify",
        "user_id_column": "from_user_id",
        "identity_column": "identity",
        "timestamp_column": "time",
    },
}
ALL_PROPERTIES = "*"


class ConfigError(ValueError):
    """A config the connector cannot run with; the message tells the user what to change."""


@dataclass(frozen=True)
class MappingConfig:
    """Which record columns become which Heap fields. None means the column is not configured."""

    api_type: str
    identity_column: str | None = None
    event_column: str | None = None
    timestamp_column: str | None = None
    account_id_column: str | None = None
    user_id_column: str | None = None
    # None: every field of the record ("*"); otherwise the columns in the order written.
    property_columns: tuple[str, ...] | None = ()
    excluded_columns: frozenset[str] = frozenset()  # fields "*" leaves out
    event_name: str | None = None  # track: every record of the stream is this event (instead of event_column)
    default_event: str | None = None  # the event name where the event column is empty
    event_id_column: str | None = None  # track: the event's own id, which its idempotency key then covers


@dataclass(frozen=True)
class StreamConfig:
    """How the records of one stream load: its Heap mapping and the request settings that follow from it."""

    mapping: MappingConfig
    bulk: bool  # resolved: always False for identify, always True for delete_users
    batch_size: int
    preset: str | None = None
    api_key: str | None = field(default=None, repr=False)  # delete_users only; a secret, never logged
    stream: str | None = None  # the stream it maps; None: the top-level api, for the stream no entry names
    namespace: str | None = None


@dataclass(frozen=True)
class HeapConfig:
    """A whole sync's settings: Heap's environment and host, the limits, and a mapping per stream."""

    app_id: str
    base_url: str
    streams: tuple[StreamConfig, ...]
    on_invalid_record: str
    max_concurrent_requests: int
    track_events_per_minute: int
    request_timeout_seconds: float
    max_retries: int
    dry_run: bool
    # What a stream mapped in Airbyte's UI (activation.py) takes from the top level: the request form, the batch
    # size (None: each API's maximum) and Heap's user deletion key (soft delete)
    bulk: bool
    batch_size: int | None
    api_key: str | None = field(repr=False)


def parse_config(raw: Mapping[str, Any]) -> HeapConfig:
    """Validate a raw config (the JSON the user wrote) and return the typed config it describes."""
    if not isinstance(raw, Mapping):
        raise ConfigError("The config must be a JSON object.")
    entries = raw.get("streams")
    if entries is not None and not isinstance(entries, list):
        raise ConfigError("streams must be a list of {\"stream\": ..., \"api\": {...}} entries.")
    streams = [stream_config(entry, f"streams[{index}]", raw) for index, entry in enumerate(entries or ())]
    if "api" in raw:  # without api or streams: a connection mapped in Airbyte's UI only (activation.py)
        streams.insert(0, stream_config({"api": raw.get("api")}, "", raw))
    _no_stream_twice(streams)
    bulk = any(stream.bulk for stream in streams) if streams else _boolean(raw, "bulk")
    return HeapConfig(
        app_id=_app_id(raw.get("app_id")),
        base_url=_base_url(raw.get("base_url", US_BASE_URL)),
        streams=tuple(streams),
        on_invalid_record=_choice(raw, "on_invalid_record"),
        max_concurrent_requests=_integer(raw, "max_concurrent_requests", DEFAULT_CONCURRENCY[bulk]),
        track_events_per_minute=_integer(raw, "track_events_per_minute"),
        request_timeout_seconds=float(_integer(raw, "request_timeout_seconds")),
        max_retries=_integer(raw, "max_retries"),
        dry_run=_boolean(raw, "dry_run"),
        bulk=_boolean(raw, "bulk"),
        batch_size=_integer(raw, "batch_size") if "batch_size" in raw else None,
        api_key=_api_key(raw, "", required=False),
    )


StreamKey = tuple[str, str | None]  # a catalog stream's name and namespace


def stream_label(key: StreamKey) -> str:
    """A catalog stream as logs name it: `a.b` and `b` in namespace `a` are two streams, named apart."""
    name, namespace = key
    return name if namespace is None else f"{name} (namespace {namespace})"


def streams_for_catalog(config: HeapConfig, catalog: list[StreamKey]) -> dict[StreamKey, StreamConfig]:
    """The mapping of each (stream, namespace) of the catalog: the entry of `streams` that names it, the one
    naming its namespace before one for any namespace, whatever their order; else the top-level api, which maps
    the one stream no entry names. A name matches as written, or else with spaces around it trimmed. Streams
    left without a mapping are refused, by name."""
    entries: dict[StreamKey, StreamConfig] = {}  # by name as written, and trimmed where no entry is so written
    for stream in config.streams:
        if stream.stream is not None:
            entries[(stream.stream, stream.namespace)] = stream
    for stream in config.streams:
        if stream.stream is not None:
            entries.setdefault((stream.stream.strip(), stream.namespace), stream)
    top_level = next((stream for stream in config.streams if stream.stream is None), None)
    chosen: dict[StreamKey, StreamConfig] = {}
    unmapped = []
    for name, namespace in catalog:
        candidates = ((name, namespace), (name, None), (name.strip(), namespace), (name.strip(), None))
        entry = next((entries[key] for key in candidates if key in entries), None)
        if entry is None:
            unmapped.append((name, namespace))
        else:
            chosen[(name, namespace)] = entry
    if len(unmapped) == 1 and top_level is not None:
        chosen[unmapped.pop()] = top_level
    if unmapped:
        names = ", ".join(stream_label(key) for key in unmapped)
        example = ", ".join(_entry_example(key) for key in unmapped[:2])
        raise ConfigError(
            f"No Heap mapping for the stream(s) {names}. Map each stream of the connection to a Heap object in "
            f"Airbyte's Mappings tab, or in streams, for example \"streams\": [{example}]; the top-level api maps "
            "one stream only."
        )
    return {
        key: replace(stream, mapping=replace(stream.mapping, default_event=key[0]))
        if stream.preset == "heap_events"
        else stream
        for key, stream in chosen.items()
    }


def _entry_example(key: StreamKey) -> str:
    name, namespace = key
    named = json.dumps(name) + (f", \"namespace\": {json.dumps(namespace)}" if namespace is not None else "")
    return f'{{"stream": {named}, "api": {{"api_type": ...}}}}'


def stream_config(entry: Any, where: str, settings: Mapping[str, Any]) -> StreamConfig:
    """One stream's mapping from an entry {"stream", "namespace", "api"} of streams (at `where`, "streams[i]"),
    the top-level api as the entry {"api": ...} (where ""), or a stream mapped in Airbyte's UI as the entry its
    Heap object stands for (activation.py). `settings`: the top-level bulk and batch_size, as written."""
    prefix = f"{where}." if where else ""
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be an object such as {{\"stream\": \"users\", \"api\": {{...}}}}.")
    stream = namespace = None
    if where:
        _known_fields_only(entry, STREAM_ENTRY_FIELDS, where)
        stream = entry.get("stream")
        if not isinstance(stream, str) or not stream.strip():
            raise ConfigError(f"{prefix}stream is required: the name of the stream this entry maps.")
        namespace = entry.get("namespace")
        if namespace is not None and not isinstance(namespace, str):
            raise ConfigError(f"{prefix}namespace must be text (the stream's namespace), or left out.")
    api = entry.get("api")
    api_type = api.get("api_type") if isinstance(api, Mapping) else None
    preset = api_type if isinstance(api_type, str) and api_type in PRESETS else None
    kind = PRESETS[preset]["api_type"] if preset else api_type
    if kind in API_TYPES:
        _known_fields_only(api, api_fields(api_type), f"{prefix}api", f"api_type {api_type}")
    mapping = _mapping(_with_preset(api, preset), f"{prefix}api")
    most = max_batch(mapping.api_type)
    loads = f"{f'stream {stream}' if stream is not None else 'api'} loads through Heap's {mapping.api_type}"
    return StreamConfig(
        mapping=mapping,
        bulk=BULK_FORM.get(mapping.api_type, _boolean(settings, "bulk")),
        batch_size=_integer(settings, "batch_size", most, highest=most, why=f"{loads}, which takes at most {most}"),
        preset=preset,
        api_key=_api_key(api, f"{prefix}api") if mapping.api_type == "delete_users" else None,
        stream=stream,  # as written: a catalog name may have spaces around it (streams_for_catalog)
        namespace=namespace or None,
    )


def _known_fields_only(entry: Mapping[str, Any], known: Sequence[str], where: str, kind: str = "") -> None:
    """A field the rules do not know is a mistake (a misspelled column field would be ignored): refused with
    the known field closest to it, or, for a field of another api_type, this one's fields."""
    for name in entry:
        if name in known:
            continue
        close = get_close_matches(str(name), known, n=1)
        if close and not any(name in api_fields(other) for other in API_OPTIONS):
            raise ConfigError(f"{where}.{name} is not an option; did you mean {close[0]}?")
        options = ", ".join(field for field in known if field != "api_type")
        raise ConfigError(f"{where}.{name} is not an option{kind and ' of ' + kind}; its options are: {options}.")


def _no_stream_twice(streams: list[StreamConfig]) -> None:
    seen = set()
    for stream in streams:
        if stream.stream is not None and (stream.stream, stream.namespace) in seen:
            raise ConfigError(f"streams maps the stream {stream.stream} twice: keep one entry for it.")
        seen.add((stream.stream, stream.namespace))


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _app_id(value: Any) -> str:
    if value is None or value == "":
        raise ConfigError(
            "app_id is missing. Set it to your Heap environment ID, a number such as \"11\" "
            "(Heap: Account > Manage > Projects > Environment ID)."
        )
    if not isinstance(value, str) or not (value.isascii() and value.isdigit()):
        raise ConfigError("app_id must be your Heap environment ID as text, digits only (for example \"11\").")
    return value


def _base_url(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"base_url must be a URL such as {US_BASE_URL} (US) or {EU_BASE_URL} (EU).")
    url = value.strip().rstrip("/")
    # Parsed the way requests (urllib3) will parse it when sending, so the host checked is the host used.
    try:
        parts = parse_url(url)
    except LocationParseError:
        parts = None
    if parts is None or parts.scheme not in ("https", "http") or not parts.host:
        raise ConfigError(
            f"base_url {_without_credentials(url)!r} is not a URL; use {US_BASE_URL} (US) or {EU_BASE_URL} (EU)."
        )
    if parts.auth or "\\" in url or parts.query or parts.fragment:
        raise ConfigError(f"base_url must be a plain URL such as {US_BASE_URL}: no credentials, query or fragment.")
    if parts.scheme == "http" and not is_loopback_host(parts.host.strip("[]")):
        raise ConfigError(
            f"base_url must use https (got {url!r}); plain http is only allowed for a local test server "
            "on a loopback address such as 127.0.0.1."
        )
    return url


def _without_credentials(url: str) -> str:
    """`url` safe to print, whatever it is: whatever comes before its last `@` past the scheme (a user and
    password, however written) is masked, and a query or fragment (a token) dropped."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    if "@" in rest:
        rest = "…@" + rest.rpartition("@")[2]
    return scheme + separator + re.split("[?#]", rest, maxsplit=1)[0]


def _with_preset(api: Any, preset: str | None) -> Any:
    """A preset (api.api_type heap_users, ...) as the mapping it stands for, with every column the user set in
    api taking precedence over the preset's (a fixed event_name over the preset's event column)."""
    if preset is None:
        return api
    written = {
        key: value
        for key, value in api.items()
        if key != "api_type" and not (isinstance(value, str) and not value.strip())
    }
    preset_columns = dict(PRESETS[preset])
    if "event_name" in written:  # a fixed event name stands instead of the preset's event column
        preset_columns.pop("event_column", None)
    return preset_columns | written


def _mapping(api: Any, where: str) -> MappingConfig:
    """One api object (at `where`: "api" or "streams[i].api") -> the mapping it describes."""
    if not isinstance(api, Mapping):
        raise ConfigError(
            f"{where} is missing. Set {where}.api_type to one of: {', '.join(API_TYPES)}, or a preset for Heap "
            f"Connect's tables: {', '.join(PRESETS)}; or map each stream in streams."
        )
    api_type = api.get("api_type")
    if not isinstance(api_type, str) or api_type not in API_TYPES:
        raise ConfigError(
            f"{where}.api_type is {api_type!r}; it must be one of: {', '.join(API_TYPES)}, "
            f"or a preset for Heap Connect's tables: {', '.join(PRESETS)}."
        )
    columns: dict[str, Any] = {
        name: _column(api, name, f"{where}.{name}", api_type, required=name in REQUIRED_COLUMNS[api_type])
        for name in option_columns(api_type)
        if name != "excluded_columns"
    }
    columns["property_columns"] = _property_columns(columns.get("property_columns"), f"{where}.property_columns")
    excluded = api.get("excluded_columns", "") if "excluded_columns" in option_columns(api_type) else ""
    if not isinstance(excluded, str):
        raise ConfigError(f"{where}.excluded_columns must be a comma-separated list of field names.")
    columns["excluded_columns"] = frozenset(name.strip() for name in _listed(excluded) if name.strip())
    if columns.get("event_name") and len(columns["event_name"]) > MAX_EVENT_NAME:
        raise ConfigError(f"{where}.event_name is longer than Heap takes: at most {MAX_EVENT_NAME} characters.")
    for first, second, what in EXACTLY_ONE.get(api_type, ()):
        if (columns[first] is None) == (columns[second] is None):
            raise ConfigError(
                f"api_type {api_type} needs exactly one of {where}.{first} or {where}.{second}: {what}."
            )
    return MappingConfig(api_type=api_type, **columns)


def _api_key(api: Mapping[str, Any], where: str, required: bool = True) -> str | None:
    """Heap's user deletion key: in a delete_users api (`where`), or at the top level (where ""), optional."""
    name = f"{where}.api_key" if where else "api_key"
    value = api.get("api_key")
    if not required and value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"{name} is {'required for delete_users' if required else 'not a key'}: generate one in Heap under "
            "Account > Manage > Privacy & Security (the app_id must be your Main Production environment's)."
        )
    if not (value.strip().isascii() and value.strip().isprintable()):  # the key itself is never quoted
        raise ConfigError(
            f"{name} holds characters that are not printable ASCII, which no Heap key has: paste the key "
            "again exactly as Heap shows it."
        )
    return value.strip()


def _column(api: Mapping[str, Any], name: str, where: str, api_type: str, required: bool) -> str | None:
    value = api.get(name)
    if value is None and name in api:  # the spec's column fields are strings: null is not "not set"
        raise ConfigError(f"{where} must be a column name (a string), got null; leave it out to unset it.")
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ConfigError(f"{where} is required for api_type {api_type}: name the record column to use.")
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a column name (a string), got {type(value).__name__}.")
    return value.strip()


def _property_columns(value: str | None, where: str) -> tuple[str, ...] | None:
    if value is None:
        return ()
    if value == ALL_PROPERTIES:
        return None
    names = tuple(name.strip() for name in _listed(value))
    if any(not name for name in names):
        raise ConfigError(
            f"{where} has an empty name; write a comma-separated list such as "
            "\"name,plan,address.city\", or * for every field."
        )
    if ALL_PROPERTIES in names:
        raise ConfigError(f"{where}: use * alone for every field, not inside a list.")
    return names


# A comma with an even number of backquotes after it: one outside any backquoted name (`a,b` is one name)
_LIST_COMMA = re.compile(r",(?=(?:[^`]*`[^`]*`)*[^`]*$)")


def _listed(value: str) -> list[str]:
    """A comma-separated list of columns; a column in backquotes may hold commas (mapping.literal_name)."""
    return _LIST_COMMA.split(value)


def _boolean(raw: Mapping[str, Any], name: str) -> bool:
    """The boolean setting `name`; absent: the spec's default."""
    value = raw.get(name, SETTINGS[name]["default"])
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}.")
    return value


def _integer(
    raw: Mapping[str, Any], name: str, default: int | None = None, highest: int | None = None, why: str = ""
) -> int:
    """The whole-number setting `name` within the spec's bounds, or up to `highest` (saying `why`); absent:
    `default`, else the spec's default."""
    low, high = SETTINGS[name]["minimum"], highest or SETTINGS[name]["maximum"]
    value = raw.get(name, SETTINGS[name].get("default") if default is None else default)
    if isinstance(value, float) and value.is_integer():  # JSON Schema's integer: 5.0 is 5
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {value!r}{why and ': ' + why}.")
    return value


def _choice(raw: Mapping[str, Any], name: str) -> str:
    """The setting `name`, one of the spec's enum; absent: the spec's default."""
    choices = SETTINGS[name]["enum"]
    value = raw.get(name, SETTINGS[name]["default"])
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}.")
    return value
