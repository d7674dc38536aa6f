"""A local stand-in for Heap's server-side ingestion APIs.

Heap is not reachable from the machines this connector is built and tested on, so this module serves the
same three ingestion endpoints on a loopback address, enforces the request rules from
``/work/shared/heap-api.md`` (field types and sizes, bulk limits, rate limits), records what it accepted and
can misbehave on purpose (latency, 429, 5xx, hangs, connection resets).

Used three ways:
- in-process by integration tests: ``with HeapStandin() as heap: ... heap.events``;
- as a subprocess by benchmarks and the demo, driven through the ``/_standin/*`` control endpoints;
- from the command line: ``python -m destination_heap_analytics.heap_standin --port 8765``.

It only ever binds loopback addresses and never opens outbound connections.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import math
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, Self

import orjson

from destination_heap_analytics.config import is_loopback_host

MAX_BULK_ITEMS = 1000
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_STRING = 1023  # Heap: strings "under 1024 characters"
MAX_IDENTITY = 255
MAX_USER_ID = 2**53 - 1
IDENTITY_BULK_EVENTS_PER_MINUTE = 1000
IDENTITY_SINGLE_REQUESTS = 30  # per 30 s, i.e. one request a second with a burst of 30
_READY_PREFIX = "heap-standin listening on "

Predicate = Callable[[dict], "str | None"]


# ----------------------------------------------------------------------------------------------------------
# Faults


@dataclass(frozen=True)
class Fault:
    """One misbehaviour, applied to one future ``/api/*`` request.

    Exactly one kind per fault: ``status`` (answer that status, optionally with ``Retry-After``),
    ``hang_seconds`` (say nothing for that long, then close the connection) or ``reset`` (close with RST).
    """

    status: int | None = None
    retry_after: float | None = None
    hang_seconds: float | None = None
    reset: bool = False

    def __post_init__(self) -> None:
        kinds = (self.status is not None) + (self.hang_seconds is not None) + bool(self.reset)
        if kinds != 1:
            raise ValueError("a Fault needs exactly one of status, hang_seconds or reset")
        if self.retry_after is not None and self.status is None:
            raise ValueError("retry_after only goes with status")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError("a Fault status must be an HTTP error status (400..599)")


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


def _string_error(body: dict, field: str, max_len: int, required: bool = True) -> str | None:
    """``field`` must be a string of 1..max_len characters (Heap wants strings, never numbers)."""
    value = body.get(field)
    if type(value) is str:
        return None if 0 < len(value) <= max_len else f".{field} should be 1..{max_len} characters"
    if field not in body:
        return f".{field} is required" if required else None
    return f".{field} should be string"


def _user_id_error(value: Any) -> str | None:
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
    if kind is int or kind is bool:
        return None
    return f".properties.{_short(key)} should be string, number or boolean"


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
    return _properties_error(body, required=False) or _string_error(
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
        error = _user_id_error(body["user_id"])
    elif "identity" not in body:
        return " should have identity or user_id"
    else:
        error = _string_error(body, "identity", MAX_IDENTITY)
    return error or _event_fields_error(body) or _session_id_error(body)


def _track_item_error(item: Any) -> str | None:
    if type(item) is not dict:
        return " should be object"
    return (
        _unknown_key_error(item, _TRACK_ITEM_KEYS)
        or _string_error(item, "identity", MAX_IDENTITY)
        or _event_fields_error(item)
    )


def _user_error(item: Any, allowed: frozenset[str]) -> str | None:
    if type(item) is not dict:
        return " should be object"
    return (
        _unknown_key_error(item, allowed)
        or _string_error(item, "identity", MAX_IDENTITY)
        or _properties_error(item, required=True, forbid_id=True)
    )


def _account_error(item: Any, allowed: frozenset[str]) -> str | None:
    if type(item) is not dict:
        return " should be object"
    return (
        _unknown_key_error(item, allowed)
        or _string_error(item, "account_id", MAX_IDENTITY)
        or _properties_error(item, required=True)
    )


def _identify_error(body: dict) -> str | None:
    if "user_id" not in body:
        return ".user_id is required"
    return (
        _unknown_key_error(body, _IDENTIFY_KEYS)
        or _user_id_error(body["user_id"])
        or _string_error(body, "identity", MAX_IDENTITY)
        or ("timestamp" in body and _timestamp_error(body["timestamp"]) or None)
    )


class _Endpoint(NamedTuple):
    kind: str  # "track" | "user" | "account": which store accepted items go to
    list_key: str | None  # the bulk form's list: "events" | "users" | "accounts"; None: no bulk form
    single_error: Callable[[dict], str | None]
    item_error: Callable[[Any], str | None]


_ENDPOINTS = {
    "/api/track": _Endpoint("track", "events", _track_single_error, _track_item_error),
    "/api/add_user_properties": _Endpoint(
        "user",
        "users",
        lambda b: _user_error(b, _USER_SINGLE_KEYS),
        lambda i: _user_error(i, _USER_ITEM_KEYS),
    ),
    "/api/add_account_properties": _Endpoint(
        "account",
        "accounts",
        lambda b: _account_error(b, _ACCOUNT_SINGLE_KEYS),
        lambda i: _account_error(i, _ACCOUNT_ITEM_KEYS),
    ),
    "/api/v1/identify": _Endpoint("identify", None, _identify_error, _identify_error),
}


def _app_id_error(body: dict) -> str | None:
    app_id = body.get("app_id")
    if type(app_id) is str and app_id.isascii() and app_id.isdigit():
        return None
    return (
        "postBody.app_id is required"
        if "app_id" not in body
        else "postBody.app_id should be a numeric string"
    )


def _bulk_error(body: dict, endpoint: _Endpoint) -> str | None:
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


# ----------------------------------------------------------------------------------------------------------
# Rate limiting


class _LeakyBuckets:
    """Leaky buckets keyed by (app_id, identity, ...): each drains continuously at ``per_second``."""

    _PRUNE_AT = 100_000  # keeps memory flat when a benchmark walks through many identities

    def __init__(self, capacity: float, per_second: float) -> None:
        self.capacity = capacity
        self.per_second = per_second
        self._levels: dict[Any, tuple[float, float]] = {}
        self._prune_at = self._PRUNE_AT

    def _level(self, key: Any, now: float) -> float:
        level, stamp = self._levels.get(key, (0.0, now))
        return max(0.0, level - (now - stamp) * self.per_second)

    def wait_seconds(self, key: Any, amount: float, now: float) -> float:
        """Seconds until ``amount`` fits. A batch bigger than the bucket fits once it is empty, so it is
        throttled rather than rejected forever."""
        overflow = self._level(key, now) + min(amount, self.capacity) - self.capacity
        return overflow / self.per_second if overflow > 1e-9 else 0.0

    def add(self, key: Any, amount: float, now: float) -> None:
        self._levels[key] = (self._level(key, now) + amount, now)
        if len(self._levels) > self._prune_at:
            self._levels = {k: v for k, v in self._levels.items() if self._level(k, now) > 0}
            # Many buckets still busy: wait for twice as many before scanning again, so adds stay O(1).
            self._prune_at = max(self._PRUNE_AT, 2 * len(self._levels))

    def clear(self) -> None:
        self._levels.clear()


class _Limits:
    """The limits of heap-api.md, switched on by the HeapStandin options. Callers hold the state lock."""

    def __init__(self, track_events_per_minute: int, enforce_identity_limits: bool) -> None:
        rate = track_events_per_minute
        self.app_track = _LeakyBuckets(rate / 4, rate / 60) if rate > 0 else None
        self.identity_bulk = None
        self.identity_single = None
        if enforce_identity_limits:
            per_minute = IDENTITY_BULK_EVENTS_PER_MINUTE
            self.identity_bulk = _LeakyBuckets(per_minute, per_minute / 60)
            self.identity_single = _LeakyBuckets(IDENTITY_SINGLE_REQUESTS, IDENTITY_SINGLE_REQUESTS / 30)

    def clear(self) -> None:
        for buckets in (self.app_track, self.identity_bulk, self.identity_single):
            if buckets is not None:
                buckets.clear()

    def _charges(self, endpoint: _Endpoint, body: dict, bulk: bool) -> list[tuple[_LeakyBuckets, Any, int]]:
        """What this request would take from which bucket."""
        app_id = body["app_id"]
        charges: list[tuple[_LeakyBuckets, Any, int]] = []
        if endpoint.kind == "track" and bulk:
            events = body["events"]
            if self.app_track is not None:
                charges.append((self.app_track, app_id, len(events)))
            if self.identity_bulk is not None:
                per_identity = Counter(event["identity"] for event in events)
                charges.extend((self.identity_bulk, (app_id, who), n) for who, n in per_identity.items())
        elif not bulk and endpoint.kind in ("track", "user") and self.identity_single is not None:
            who = body.get("identity") or "user_id:" + body.get("user_id", "")
            charges.append((self.identity_single, (endpoint.kind, app_id, who), 1))
        return charges

    def admit(self, endpoint: _Endpoint, body: dict, bulk: bool, now: float) -> float:
        """Take the request's share from every bucket and return 0, or return the seconds to wait."""
        charges = self._charges(endpoint, body, bulk)
        wait = max((buckets.wait_seconds(key, n, now) for buckets, key, n in charges), default=0.0)
        if wait > 0:
            return wait
        for buckets, key, n in charges:
            buckets.add(key, n, now)
        return 0.0


# ----------------------------------------------------------------------------------------------------------
# What Heap holds


class _Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


_OK = _Reply(200, b"{}", "application/json")
_COUNTERS = (
    "requests",
    "bulk_requests",
    "single_requests",
    "events_stored",
    "events_deduplicated",
    "users_stored",
    "accounts_stored",
    "identifies_stored",
    "faults_served",
    "rejected_400",
    "rejected_by_predicate",
    "max_in_flight",
)


def _seconds_text(seconds: float) -> str:
    return f"{seconds:g}"


def _bad_request(message: str) -> _Reply:
    return _Reply(400, message.encode())


_DELETION_PREFIX = "/api/public/v0/"
MAX_DELETION_USERS = 10_000


class _Deletions:
    """Heap's user deletion API: Basic-auth tokens that expire, deletion requests of up to 10,000 users."""

    def __init__(self, api_key: str | None, token_ttl_seconds: float) -> None:
        self.api_key = api_key  # None: any non-empty key is accepted
        self.token_ttl = token_ttl_seconds
        self.lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self.lock:
            self.tokens: dict[str, float] = {}  # token -> expiry (monotonic)
            self.requests: dict[str, list[dict]] = {}  # deletion_request_id -> users
            self.tokens_issued = 0

    @property
    def deleted_users(self) -> list[dict]:
        with self.lock:
            return [user for users in self.requests.values() for user in users]

    def serve(self, method: str, path: str, authorization: str, raw: bytes) -> _Reply:
        if path == _DELETION_PREFIX + "auth_token" and method == "POST":
            return self._token(authorization)
        if path == _DELETION_PREFIX + "user_deletion" and method == "POST":
            return self._delete(authorization, raw)
        if path.startswith(_DELETION_PREFIX + "deletion_status/") and method == "GET":
            request_id = path.rsplit("/", 1)[1]
            with self.lock:
                known = request_id in self.requests
            return _json_reply({"status": "complete"}) if known else _Reply(404, b"Not Found")
        return _Reply(404, b"Not Found")

    def _token(self, authorization: str) -> _Reply:
        try:
            scheme, encoded = authorization.split(" ", 1)
            app_id, api_key = base64.b64decode(encoded).decode().split(":", 1)
        except (ValueError, UnicodeDecodeError):
            return _Reply(401, b"Unauthorized: HTTP Basic auth with app_id:api_key is required")
        if scheme != "Basic" or not app_id.isdigit() or not api_key or (self.api_key not in (None, api_key)):
            return _Reply(401, b"Unauthorized")
        token = uuid.uuid4().hex
        with self.lock:
            self.tokens[token] = time.monotonic() + self.token_ttl
            self.tokens_issued += 1
        return _json_reply({"access_token": token})

    def _delete(self, authorization: str, raw: bytes) -> _Reply:
        token = authorization.removeprefix("Bearer ")
        with self.lock:
            expiry = self.tokens.get(token)
        if not authorization.startswith("Bearer ") or expiry is None or expiry < time.monotonic():
            return _Reply(401, b"Unauthorized: missing or expired token")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _bad_request("postBody should be valid JSON")
        if error := _deletion_body_error(body):
            return _bad_request("postBody" + error)
        request_id = str(uuid.uuid4())
        with self.lock:
            self.requests[request_id] = body["users"]
        return _Reply(201, orjson.dumps({"deletion_request_id": request_id, "status": "pending"}), "application/json")


def _deletion_body_error(body: Any) -> str | None:
    if type(body) is not dict or set(body) != {"users"} or type(body["users"]) is not list:
        return " should be an object with only a users list"
    if not 0 < len(body["users"]) <= MAX_DELETION_USERS:
        return f".users should hold 1..{MAX_DELETION_USERS} users"
    for index, user in enumerate(body["users"]):
        if type(user) is not dict or len(user) != 1 or not set(user) <= {"user_id", "identity"}:
            return f".users[{index}] should have exactly one of user_id or identity"
        error = _user_id_error(user["user_id"]) if "user_id" in user else _string_error(user, "identity", MAX_IDENTITY)
        if error:
            return f".users[{index}]{error}"
    return None


class _State:
    """Everything the stand-in knows; shared by the handler threads and survives stop()/start()."""

    def __init__(self, latency_ms: float, limits: _Limits, keep_items: bool, deletions: _Deletions) -> None:
        self.lock = threading.Lock()
        self.deletions = deletions
        self.latency_s = latency_ms / 1000.0
        self.keep_items = keep_items
        self.limits = limits
        self.predicate: Predicate | None = None
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        with self.lock:
            # in_flight is a live gauge, not a counter: requests still running when reset() comes end later.
            self.counts = dict.fromkeys(_COUNTERS, 0)
            self.counts["max_in_flight"] = self.in_flight
            self.by_status: dict[str, int] = {}
            self.faults: deque[Fault] = deque()
            self.events: list[dict] = []
            self.users: list[dict] = []
            self.accounts: list[dict] = []
            self.identifies: list[dict] = []
            # Per app_id. Kept even with keep_items=False: dedup must stay exact in summary mode.
            self.idempotency_keys: dict[str, set] = {}
            self.identities: dict[str, set] = {}
            self.account_ids: dict[str, set] = {}
            self.limits.clear()
        self.deletions.clear()

    # -- request bookkeeping --

    def begin_request(self) -> None:
        with self.lock:
            self.counts["requests"] += 1
            self.in_flight += 1
            self.counts["max_in_flight"] = max(self.counts["max_in_flight"], self.in_flight)

    def end_request(self, status: int | None) -> None:
        with self.lock:
            self.in_flight -= 1
            if status is not None:
                key = str(status)
                self.by_status[key] = self.by_status.get(key, 0) + 1
                if status == 400:
                    self.counts["rejected_400"] += 1

    def next_fault(self) -> Fault | None:
        with self.lock:
            if not self.faults:
                return None
            self.counts["faults_served"] += 1
            return self.faults.popleft()

    def stats(self) -> dict:
        with self.lock:
            return {
                **self.counts,
                "by_status": dict(self.by_status),
                "in_flight": self.in_flight,
                "faults_pending": len(self.faults),
                "distinct_identities": sum(len(s) for s in self.identities.values()),
                "distinct_accounts": sum(len(s) for s in self.account_ids.values()),
            }

    # -- ingestion --

    def ingest(self, endpoint: _Endpoint, raw: bytes) -> _Reply:
        """Validate, rate-limit and store one /api/* body; the whole request is accepted or none of it."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _bad_request(f"postBody should be valid JSON: {exc}")
        if type(body) is not dict:
            return _bad_request("postBody should be object")
        if error := _app_id_error(body):
            return _bad_request(error)
        bulk = endpoint.list_key in body
        with self.lock:
            self.counts["bulk_requests" if bulk else "single_requests"] += 1
        error = _bulk_error(body, endpoint) if bulk else _prefixed(endpoint.single_error(body))
        if error or (error := self._predicate_error(body, endpoint, bulk)):
            return _bad_request(error)
        return self._admit_and_store(endpoint, body, bulk)

    def _predicate_error(self, body: dict, endpoint: _Endpoint, bulk: bool) -> str | None:
        predicate = self.predicate
        if predicate is None:
            return None
        items = body[endpoint.list_key] if bulk else [{k: v for k, v in body.items() if k != "app_id"}]
        for item in items:
            if (message := predicate(item)) is not None:
                with self.lock:
                    self.counts["rejected_by_predicate"] += 1
                return message
        return None

    def _admit_and_store(self, endpoint: _Endpoint, body: dict, bulk: bool) -> _Reply:
        app_id = body["app_id"]
        items = body[endpoint.list_key] if bulk else [body]
        with self.lock:
            wait = self.limits.admit(endpoint, body, bulk, time.monotonic())
            if wait > 0:
                retry_after = _seconds_text(math.ceil(wait * 10) / 10)
                return _Reply(429, b"Too Many Requests", headers=(("Retry-After", retry_after),))
            if endpoint.kind == "track":
                self._store_events(app_id, items, add_app_id=bulk)
            elif endpoint.kind == "identify":
                self.counts["identifies_stored"] += 1
                if self.keep_items:
                    self.identifies.append(body)
            else:
                self._store_properties(endpoint.kind, app_id, items, add_app_id=bulk)
        return _OK

    def _store_events(self, app_id: str, events: list[dict], add_app_id: bool) -> None:
        seen = self.idempotency_keys.setdefault(app_id, set())
        identities = self.identities.setdefault(app_id, set())
        keep = self.keep_items
        stored = 0
        for event in events:
            key = event.get("idempotency_key")
            if key is not None:
                if key in seen:
                    continue  # Heap maps the key into its event-ID space: a repeat changes nothing
                seen.add(key)
            if "identity" in event:
                identities.add(event["identity"])
            if keep:
                if add_app_id:
                    event["app_id"] = app_id
                self.events.append(event)
            stored += 1
        self.counts["events_stored"] += stored
        self.counts["events_deduplicated"] += len(events) - stored

    def _store_properties(self, kind: str, app_id: str, items: list[dict], add_app_id: bool) -> None:
        id_field, ids, store, counter = (
            ("identity", self.identities, self.users, "users_stored")
            if kind == "user"
            else ("account_id", self.account_ids, self.accounts, "accounts_stored")
        )
        ids.setdefault(app_id, set()).update(item[id_field] for item in items)
        if self.keep_items:
            for item in items:
                if add_app_id:
                    item["app_id"] = app_id
                store.append(item)
        self.counts[counter] += len(items)


def _prefixed(error: str | None) -> str | None:
    return None if error is None else "postBody" + error


# ----------------------------------------------------------------------------------------------------------
# HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive handler threads must not make stop() wait for idle clients
    request_queue_size = 1024
    allow_reuse_address = True  # so start() after stop() can re-bind the same port

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, state: _State) -> None:
        self.address_family = family
        self.state = state
        self.stopped = False
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a DNS lookup we neither need nor want.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def track_connection(self, conn: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            (self._connections.add if open_ else self._connections.discard)(conn)

    def drop_connections(self) -> None:
        """Close kept-alive connections too, so clients see the server go away rather than linger on."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (timeouts, our own resets, stop()) are normal here; anything else is a bug.
        if not isinstance(sys.exc_info()[1], OSError):
            traceback.print_exc()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "heap-standin"
    disable_nagle_algorithm = True  # small responses must not wait for delayed ACKs
    timeout = 300  # idle keep-alive connections eventually free their thread
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would cost more than the request

    def setup(self) -> None:
        super().setup()
        self.server.track_connection(self.connection, True)

    def finish(self) -> None:
        self.server.track_connection(self.connection, False)
        super().finish()

    # -- plumbing --

    def _reply(self, reply: _Reply) -> None:
        """Write status line, headers and body in one send: keep-alive needs Content-Length on every reply."""
        lines = [
            f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in reply.headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + reply.body)

    def _read_body(self) -> bytes | None:
        """The request body (b"" when none); None when the request was already answered or is unreadable."""
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                raw = self._read_chunked()
            else:
                raw = self._read_sized(int(self.headers.get("Content-Length") or 0))
            if raw is not None and self.headers.get("Content-Encoding", "").lower() == "gzip":
                raw = gzip.decompress(raw)
        except (ValueError, OSError, EOFError) as exc:
            self.close_connection = True
            self._reply(_bad_request(f"unreadable request body: {exc}"))
            return None
        return raw

    def _read_sized(self, length: int) -> bytes | None:
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._reply(_Reply(413, b"request body too large"))
            return None
        raw = self.rfile.read(length)
        if len(raw) < length:  # the client hung up mid-body
            self.close_connection = True
            return None
        return raw

    def _read_chunked(self) -> bytes:
        parts, total = [], 0
        while True:
            size = int(self.rfile.readline(65537).split(b";")[0], 16)
            total += size
            if total > MAX_BODY_BYTES:
                raise ValueError("body too large")
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # skip trailers
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _route(self) -> None:
        body = self._read_body()
        if body is None:
            return
        path = self.path.split("?", 1)[0]
        if path.startswith("/api/"):
            self._serve_api(path, body)
        elif path.startswith("/_standin/"):
            self._reply(_control(self.server.state, self.command, path, body))
        elif path == "/" and self.command in ("GET", "HEAD"):
            self._reply(_Reply(200, b"heap-standin: a local stand-in for Heap's server-side APIs\n"))
        else:
            self._reply(_Reply(404, b"Not Found"))

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _route

    # -- the Heap part --

    def _serve_api(self, path: str, body: bytes) -> None:
        state = self.server.state
        state.begin_request()
        reply = None
        try:
            reply = self._api_outcome(state, path, body)
        finally:
            # Count before answering: a client that reads stats right after its reply must see this request.
            state.end_request(None if reply is None else reply.status)
        if reply is not None:
            self._reply(reply)

    def _api_outcome(self, state: _State, path: str, body: bytes) -> _Reply | None:
        """The reply to send, or None when the connection is to be dropped without one."""
        if state.latency_s > 0:
            time.sleep(state.latency_s)
        if self.server.stopped:  # stop() came while we slept: the server is gone, nothing is processed
            self.close_connection = True
            return None
        fault = state.next_fault()
        return self._serve_fault(fault) if fault else self._api_reply(state, path, body)

    def _api_reply(self, state: _State, path: str, body: bytes) -> _Reply:
        if path.startswith(_DELETION_PREFIX):
            return state.deletions.serve(self.command, path, self.headers.get("Authorization", ""), body)
        endpoint = _ENDPOINTS.get(path)
        if endpoint is None:
            return _Reply(404, b"Not Found")
        if self.command != "POST":
            return _Reply(405, b"Method Not Allowed", headers=(("Allow", "POST"),))
        try:
            return state.ingest(endpoint, body)
        except Exception:  # noqa: BLE001 - a stand-in bug or a failing predicate must answer, loudly
            traceback.print_exc()
            return _Reply(500, b"heap-standin internal error")

    def _serve_fault(self, fault: Fault) -> _Reply | None:
        if fault.status is not None:
            headers = (
                () if fault.retry_after is None else (("Retry-After", _seconds_text(fault.retry_after)),)
            )
            return _Reply(fault.status, HTTPStatus(fault.status).phrase.encode(), headers=headers)
        self.close_connection = True
        if fault.hang_seconds is not None:
            time.sleep(fault.hang_seconds)  # then the server closes the connection without a word
        else:
            # SO_LINGER 0 makes close() send RST instead of FIN: the client sees "connection reset".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # the makefile() reference would otherwise keep the socket open
            self.connection.close()
        return None


# ----------------------------------------------------------------------------------------------------------
# Control endpoints, for driving a stand-in that runs in another process


def _json_reply(value: Any) -> _Reply:
    return _Reply(200, orjson.dumps(value), "application/json")


def _control(state: _State, method: str, path: str, raw: bytes) -> _Reply:
    action = (method, path.rstrip("/"))
    try:
        if action == ("GET", "/_standin/stats"):
            return _json_reply(state.stats())
        if action == ("GET", "/_standin/received"):
            with state.lock:
                received = {
                    "events": state.events[:],
                    "users": state.users[:],
                    "accounts": state.accounts[:],
                    "identifies": state.identifies[:],
                }
            return _json_reply(received)
        if action == ("POST", "/_standin/reset"):
            state.reset()
            return _json_reply({})
        if action == ("POST", "/_standin/faults"):
            faults = faults_from_dicts(orjson.loads(raw or b"{}")["faults"])
            with state.lock:
                state.faults.extend(faults)
            return _json_reply({"pending": len(state.faults)})
        if action == ("POST", "/_standin/latency"):
            state.latency_s = float(orjson.loads(raw)["ms"]) / 1000.0
            return _json_reply({})
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return _bad_request(f"bad control request: {exc!r}")
    return _Reply(404, b"unknown control endpoint")


# ----------------------------------------------------------------------------------------------------------
# Public API


class HeapStandin:
    """A Heap stand-in serving on a loopback port from a daemon thread. See the module docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
        track_events_per_minute: int = 0,
        enforce_identity_limits: bool = False,
        keep_items: bool = True,
        api_key: str | None = None,  # for the deletion API; None: any non-empty key
        token_ttl_seconds: float = 300.0,
    ) -> None:
        if not is_loopback_host(host):
            raise ValueError(f"the Heap stand-in only binds loopback addresses, not {host!r}")
        self._host = "127.0.0.1" if host == "localhost" else host
        self._family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        self._port = port
        limits = _Limits(track_events_per_minute, enforce_identity_limits)
        self._state = _State(latency_ms, limits, keep_items, _Deletions(api_key, token_ttl_seconds))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> Self:
        """Serve in a daemon thread. After stop() this re-binds the same port: the data is kept."""
        if self._server is not None:
            raise RuntimeError("the Heap stand-in is already running")
        server = _Server((self._host, self._port), self._family, self._state)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="heap-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every open connection; the recorded data stays."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopped = True
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if self._family == socket.AF_INET6 else self._host
        return f"http://{host}:{self._port}"

    # -- behaviour --

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each of the next /api/* requests consumes one, in order."""
        with self._state.lock:
            self._state.faults.extend(faults)

    def set_latency(self, ms: float) -> None:
        self._state.latency_s = ms / 1000.0

    def reject_when(self, predicate: Predicate | None) -> None:
        """Answer 400 with predicate(item)'s text for any request holding an item it flags (None clears)."""
        self._state.predicate = predicate

    def reset(self) -> None:
        """Forget stored data, counters, rate-limit levels and pending faults. Settings (latency, limits,
        predicate) stay."""
        self._state.reset()

    # -- what Heap holds: snapshots --

    def _snapshot(self, items: list[dict]) -> list[dict]:
        with self._state.lock:
            return list(items)

    @property
    def events(self) -> list[dict]:
        return self._snapshot(self._state.events)

    @property
    def users(self) -> list[dict]:
        return self._snapshot(self._state.users)

    @property
    def accounts(self) -> list[dict]:
        return self._snapshot(self._state.accounts)

    @property
    def deleted_users(self) -> list[dict]:
        """Users named in accepted deletion requests ({user_id} or {identity}), in arrival order."""
        return self._state.deletions.deleted_users

    @property
    def tokens_issued(self) -> int:
        return self._state.deletions.tokens_issued

    @property
    def identifies(self) -> list[dict]:
        """Accepted identify calls {app_id, user_id, identity, timestamp?}, in arrival order."""
        return self._snapshot(self._state.identifies)

    def stats(self) -> dict:
        return self._state.stats()


def faults_from_dicts(specs: Iterable[dict]) -> list[Fault]:
    """Build faults from the JSON shape the /_standin/faults endpoint takes."""
    return [Fault(**spec) for spec in specs]


# ----------------------------------------------------------------------------------------------------------
# Command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="heap-standin", description="Serve a local stand-in for Heap's APIs."
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (default 8765)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added latency per /api/* request")
    parser.add_argument("--track-events-per-minute", type=int, default=0, help="bulk track limit per app_id")
    parser.add_argument("--enforce-identity-limits", action="store_true", help="per-identity rate limits")
    parser.add_argument("--summary-only", action="store_true", help="keep counts only, not the items")
    args = parser.parse_args(argv)
    if not is_loopback_host(args.host):
        parser.error(f"refusing to bind {args.host!r}: the Heap stand-in only binds loopback addresses")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    standin = HeapStandin(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        track_events_per_minute=args.track_events_per_minute,
        enforce_identity_limits=args.enforce_identity_limits,
        keep_items=not args.summary_only,
    )
    try:
        standin.start()
    except OSError as exc:
        print(f"heap-standin: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(_READY_PREFIX + standin.url, flush=True)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    while not stopping.wait(0.5):
        pass
    standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
