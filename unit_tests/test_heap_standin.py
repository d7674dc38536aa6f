"""Tests of the local Heap stand-in: its request rules, storage, faults, limits and command line.

Everything talks to the stand-in over 127.0.0.1 only.
"""

from __future__ import annotations

import gzip
import http.client
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import requests

from heap_standin import Fault, HeapStandin

TRACK = "/api/track"
USERS = "/api/add_user_properties"
ACCOUNTS = "/api/add_account_properties"
TS = "2017-03-10T22:21:56+00:00"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shared_standin():
    with HeapStandin() as standin:
        yield standin


@pytest.fixture
def heap(shared_standin):
    """One stand-in for the module (starting one per test costs time), wiped before each test."""
    shared_standin.reset()
    shared_standin.set_latency(0)
    shared_standin.reject_when(None)
    return shared_standin


def post(standin: HeapStandin, path: str, body, timeout: float = 5.0) -> requests.Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return requests.post(standin.url + path, data=data, timeout=timeout)


def event(**extra) -> dict:
    return {"identity": "alice@example.com", "event": "Signed Up", **extra}


def assert_nothing_stored(standin: HeapStandin) -> None:
    stats = standin.stats()
    assert (stats["events_stored"], stats["users_stored"], stats["accounts_stored"]) == (0, 0, 0)
    assert standin.events == standin.users == standin.accounts == []


# ------------------------------------------------------------------------------------------------------
# Validation: one row per rule. (path, body, exact message or regex)

LONG = "x" * 1024
INVALID = [
    ("not JSON", TRACK, b"{nope", r"postBody should be valid JSON"),
    ("body is a list", TRACK, [event()], "postBody should be object"),
    ("app_id missing", TRACK, event(), "postBody.app_id is required"),
    ("app_id is a number", TRACK, {"app_id": 11, **event()}, "postBody.app_id should be a numeric string"),
    ("app_id not digits", TRACK, {"app_id": "a1", **event()}, "postBody.app_id should be a numeric string"),
    ("app_id empty", TRACK, {"app_id": "", **event()}, "postBody.app_id should be a numeric string"),
    (
        "unknown top-level key",
        TRACK,
        {"app_id": "1", "foo": 1, **event()},
        'postBody has unknown property "foo"',
    ),
    (
        "no identity or user_id",
        TRACK,
        {"app_id": "1", "event": "e"},
        "postBody should have identity or user_id",
    ),
    (
        "identity and user_id",
        TRACK,
        {"app_id": "1", "user_id": "5", **event()},
        "postBody should have identity or user_id, not both",
    ),
    ("identity a number", TRACK, {"app_id": "1", **event(identity=42)}, "postBody.identity should be string"),
    ("identity empty", TRACK, {"app_id": "1", **event(identity="")}, r"postBody.identity should be 1..255"),
    (
        "identity too long",
        TRACK,
        {"app_id": "1", **event(identity="i" * 256)},
        r"postBody.identity should be 1",
    ),
    (
        "user_id a number",
        TRACK,
        {"app_id": "1", "user_id": 5, "event": "e"},
        r"postBody.user_id should be a string",
    ),
    (
        "user_id not digits",
        TRACK,
        {"app_id": "1", "user_id": "u5", "event": "e"},
        r"postBody.user_id should be",
    ),
    ("user_id over 2^53-1", TRACK, {"app_id": "1", "user_id": str(2**53), "event": "e"}, r"0..2\^53-1"),
    ("event missing", TRACK, {"app_id": "1", "identity": "a"}, "postBody.event is required"),
    (
        "event empty",
        TRACK,
        {"app_id": "1", **event(event="")},
        r"postBody.event should be 1..1023 characters",
    ),
    ("event 1024 chars", TRACK, {"app_id": "1", **event(event=LONG)}, r"postBody.event should be 1..1023"),
    ("event a number", TRACK, {"app_id": "1", **event(event=3)}, "postBody.event should be string"),
    ("timestamp no offset", TRACK, {"app_id": "1", **event(timestamp="2017-03-10T22:21:56")}, r"with offset"),
    (
        "timestamp garbage",
        TRACK,
        {"app_id": "1", **event(timestamp="yesterday")},
        r"postBody.timestamp should be",
    ),
    ("timestamp epoch number", TRACK, {"app_id": "1", **event(timestamp=1489184516)}, r"postBody.timestamp"),
    ("timestamp null", TRACK, {"app_id": "1", **event(timestamp=None)}, r"postBody.timestamp should be"),
    (
        "properties a list",
        TRACK,
        {"app_id": "1", **event(properties=[1])},
        "postBody.properties should be object",
    ),
    (
        "property a boolean",  # Heap: "a number or string"; its own clients raise on any other type
        TRACK,
        {"app_id": "1", **event(properties={"a": True})},
        r"postBody.properties.a should be string or number",
    ),
    (
        "bulk user property a boolean",
        USERS,
        {
            "app_id": "1",
            "users": [{"identity": "a", "properties": {"n": 1}}, {"identity": "b", "properties": {"on": False}}],
        },
        r"postBody.users\[1\].properties.on should be string or number",
    ),
    (
        "property null",
        TRACK,
        {"app_id": "1", **event(properties={"a": None})},
        r"postBody.properties.a should be",
    ),
    (
        "property list",
        TRACK,
        {"app_id": "1", **event(properties={"a": [1, 2]})},
        r"postBody.properties.a should",
    ),
    (
        "property object",
        TRACK,
        {"app_id": "1", **event(properties={"a": {"b": 1}})},
        r"properties.a should be",
    ),
    (
        "property 1024 chars",
        TRACK,
        {"app_id": "1", **event(properties={"a": LONG})},
        r"properties.a should be under",
    ),
    (
        "property key empty",
        TRACK,
        {"app_id": "1", **event(properties={"": 1})},
        r'properties key "" should be',
    ),
    (
        "property key too long",
        TRACK,
        {"app_id": "1", **event(properties={LONG: 1})},
        r"properties key .* 1..1023",
    ),
    (
        "idempotency_key empty",
        TRACK,
        {"app_id": "1", **event(idempotency_key="")},
        r"idempotency_key should be 1",
    ),
    (
        "idempotency_key int",
        TRACK,
        {"app_id": "1", **event(idempotency_key=7)},
        r"idempotency_key should be string",
    ),
    ("session_id list", TRACK, {"app_id": "1", **event(session_id=[])}, r"postBody.session_id should be"),
    (
        "bulk: one bad item",
        TRACK,
        {"app_id": "1", "events": [event()] * 3 + [event(properties=["a"])]},
        "postBody.events[3].properties should be object",
    ),
    ("bulk: empty", TRACK, {"app_id": "1", "events": []}, r"postBody.events should have 1..1000 items"),
    (
        "bulk: 1001 items",
        TRACK,
        {"app_id": "1", "events": [event()] * 1001},
        r"should have 1..1000 items, got 1001",
    ),
    ("bulk: not a list", TRACK, {"app_id": "1", "events": event()}, "postBody.events should be array"),
    (
        "bulk: item not object",
        TRACK,
        {"app_id": "1", "events": [event(), "e"]},
        "postBody.events[1] should be object",
    ),
    (
        "bulk: user_id in item",
        TRACK,
        {"app_id": "1", "events": [event(user_id="5")]},
        'postBody.events[0] has unknown property "user_id"',
    ),
    (
        "bulk: extra top-level key",
        TRACK,
        {"app_id": "1", "events": [event()], "identity": "a"},
        'postBody has unknown property "identity"',
    ),
    (
        "bulk: identity missing",
        TRACK,
        {"app_id": "1", "events": [{"event": "e"}]},
        "postBody.events[0].identity is",
    ),
    ("user: properties missing", USERS, {"app_id": "1", "identity": "a"}, "postBody.properties is required"),
    (
        "user: identity int",
        USERS,
        {"app_id": "1", "identity": 1, "properties": {}},
        "postBody.identity should be",
    ),
    (
        "user: id property",
        USERS,
        {"app_id": "1", "identity": "a", "properties": {"ID": "x"}},
        r"properties.ID is not",
    ),
    (
        "users bulk: Id property",
        USERS,
        {
            "app_id": "1",
            "users": [{"identity": "a", "properties": {"n": 1}}, {"identity": "b", "properties": {"Id": 1}}],
        },
        r'postBody.users\[1\].properties.Id is not allowed: "id" is reserved',
    ),
    (
        "users bulk: event in item",
        USERS,
        {"app_id": "1", "users": [{"identity": "a", "properties": {}, "event": "e"}]},
        'postBody.users[0] has unknown property "event"',
    ),
    (
        "account: id an int",
        ACCOUNTS,
        {"app_id": "1", "account_id": 9, "properties": {}},
        r"account_id should be str",
    ),
    ("account: properties missing", ACCOUNTS, {"app_id": "1", "account_id": "a"}, r"properties is required"),
    (
        "accounts bulk: empty account_id",
        ACCOUNTS,
        {"app_id": "1", "accounts": [{"account_id": "", "properties": {}}]},
        r"postBody.accounts\[0\].account_id should be 1..255 characters",
    ),
    (
        "accounts bulk: properties null",
        ACCOUNTS,
        {"app_id": "1", "accounts": [{"account_id": "a", "properties": None}]},
        r"postBody.accounts\[0\].properties should be object",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "message"), [row[1:] for row in INVALID], ids=[r[0] for r in INVALID]
)
def test_invalid_request_is_rejected_whole(heap, path, body, message):
    response = post(heap, path, body)
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("text/plain")
    assert message in response.text or re.search(message, response.text), response.text
    assert_nothing_stored(heap)
    assert heap.stats()["rejected_400"] == 1


# ------------------------------------------------------------------------------------------------------
# Valid requests are stored as sent, with app_id added

VALID = [
    ("track single, identity", TRACK, {"app_id": "11", **event()}, "events", 1),
    (
        "track single, all fields",
        TRACK,
        {
            "app_id": "11",
            **event(timestamp=TS, idempotency_key="k1", session_id="s1"),
            "properties": {"plan": "pro", "seats": 3, "price": 9.5, "trial": "false", "tags": "a||b"},
        },
        "events",
        1,
    ),
    ("track single, user_id", TRACK, {"app_id": "11", "user_id": str(2**53 - 1), "event": "e"}, "events", 1),
    (
        "track single, Z timestamp",
        TRACK,
        {"app_id": "11", **event(timestamp="2017-03-10T22:21:56.123Z")},
        "events",
        1,
    ),
    (
        "track bulk",
        TRACK,
        {"app_id": "11", "events": [event(timestamp=TS, properties={"n": i}) for i in range(1000)]},
        "events",
        1000,
    ),
    (
        "user single",
        USERS,
        {"app_id": "11", "identity": "a", "properties": {"email": "a@b.c", "age": 3}},
        "users",
        1,
    ),
    (
        "users bulk",
        USERS,
        {"app_id": "11", "users": [{"identity": f"u{i}", "properties": {"idx": i}} for i in range(5)]},
        "users",
        5,
    ),
    (
        "account single",
        ACCOUNTS,
        {"app_id": "11", "account_id": "acme", "properties": {"tier": "gold"}},
        "accounts",
        1,
    ),
    (
        "accounts bulk",
        ACCOUNTS,
        {"app_id": "11", "accounts": [{"account_id": f"a{i}", "properties": {}} for i in range(3)]},
        "accounts",
        3,
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "store", "count"), [r[1:] for r in VALID], ids=[r[0] for r in VALID]
)
def test_valid_request_is_stored(heap, path, body, store, count):
    response = post(heap, path, body)
    assert (response.status_code, response.text) == (200, "")  # as Heap's own clients' tests mock it
    stored = getattr(heap, store)
    items = body.get(store, [body])
    assert stored == [{**item, "app_id": "11"} for item in items]
    stats = heap.stats()
    assert stats[f"{store}_stored"] == count
    assert stats["bulk_requests" if store in body else "single_requests"] == 1


def test_idempotency_key_deduplicates_per_app_first_wins(heap):
    first = [event(idempotency_key="k1", properties={"v": 1}), event(idempotency_key="k2")]
    assert post(heap, TRACK, {"app_id": "1", "events": first}).status_code == 200
    repeat = [event(idempotency_key="k1", properties={"v": 2}), event(idempotency_key="k3"), event()]
    assert post(heap, TRACK, {"app_id": "1", "events": repeat}).status_code == 200
    assert post(heap, TRACK, {"app_id": "1", **event(idempotency_key="k2")}).status_code == 200
    assert post(heap, TRACK, {"app_id": "2", **event(idempotency_key="k1")}).status_code == 200  # other app
    keys = [(e["app_id"], e.get("idempotency_key"), e.get("properties")) for e in heap.events]
    assert keys == [
        ("1", "k1", {"v": 1}),
        ("1", "k2", None),
        ("1", "k3", None),
        ("1", None, None),
        ("2", "k1", None),
    ]
    assert (heap.stats()["events_stored"], heap.stats()["events_deduplicated"]) == (5, 2)
    assert heap.duplicates_dropped == 2  # the "sent twice" figure, as tests read it


def test_reject_when_predicate_rejects_whole_batch(heap):
    heap.reject_when(lambda item: "Heap refuses this event" if item.get("event") == "bad" else None)
    batch = {"app_id": "1", "events": [event(), event(event="bad")]}
    response = post(heap, TRACK, batch)
    assert (response.status_code, response.text) == (400, "Heap refuses this event")
    single = post(heap, TRACK, {"app_id": "1", **event(event="bad")})
    assert single.status_code == 400
    assert_nothing_stored(heap)
    assert post(heap, TRACK, {"app_id": "1", **event()}).status_code == 200
    assert heap.stats()["rejected_by_predicate"] == 2


# ------------------------------------------------------------------------------------------------------
# HTTP behaviour


def test_http_routes(heap):
    assert requests.get(heap.url + "/", timeout=5).status_code == 200
    assert requests.head(heap.url + "/", timeout=5).status_code == 200
    response = requests.get(heap.url + TRACK, timeout=5)
    assert (response.status_code, response.headers["Allow"]) == (405, "POST")
    assert post(heap, "/api/v9/nothing", {"app_id": "1"}).status_code == 404
    assert requests.post(heap.url + "/elsewhere", timeout=5).status_code == 404
    assert heap.stats()["by_status"] == {"405": 1, "404": 1}  # only /api/* requests count


def test_keep_alive_serves_many_requests_on_one_connection(heap):
    host, port = heap.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    for body in ({"app_id": "1", **event()}, {"app_id": "1"}, {"app_id": "1", **event()}):
        connection.request("POST", TRACK, orjson.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        assert response.getheader("Connection") is None
    connection.close()
    assert heap.stats()["by_status"] == {"200": 2, "400": 1}


def test_chunked_and_gzip_bodies_are_read(heap):
    body = orjson.dumps({"app_id": "1", **event()})
    chunked = requests.post(heap.url + TRACK, data=iter([body[:10], body[10:]]), timeout=5)
    zipped = requests.post(
        heap.url + TRACK, data=gzip.compress(body), headers={"Content-Encoding": "gzip"}, timeout=5
    )
    assert (chunked.status_code, zipped.status_code) == (200, 200)
    assert len(heap.events) == 2


def test_latency_and_max_in_flight(heap):
    heap.set_latency(150)
    started = time.monotonic()
    threads = [
        threading.Thread(target=post, args=(heap, TRACK, {"app_id": "1", **event()})) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - started >= 0.15  # a lower bound: a loaded machine only adds to it
    assert heap.stats()["max_in_flight"] >= 2
    assert heap.stats()["events_stored"] == 4


# ------------------------------------------------------------------------------------------------------
# Faults


def test_status_faults_are_served_in_order_and_store_nothing(heap):
    heap.inject(Fault(status=429, retry_after=1.5), Fault(status=429), Fault(status=500), Fault(status=502))
    heap.inject(Fault(status=503))
    body = {"app_id": "1", **event()}
    responses = [post(heap, TRACK, body) for _ in range(6)]
    assert [r.status_code for r in responses] == [429, 429, 500, 502, 503, 200]
    assert responses[0].headers["Retry-After"] == "1.5"
    assert "Retry-After" not in responses[1].headers
    assert len(heap.events) == 1
    stats = heap.stats()
    assert stats["faults_served"] == 5
    assert stats["by_status"] == {"429": 2, "500": 1, "502": 1, "503": 1, "200": 1}


def test_hang_fault_makes_client_time_out(heap):
    heap.inject(Fault(hang_seconds=1.0))
    with pytest.raises(requests.exceptions.ReadTimeout):
        post(heap, TRACK, {"app_id": "1", **event()}, timeout=0.3)
    assert post(heap, TRACK, {"app_id": "1", **event()}).status_code == 200
    assert len(heap.events) == 1


def test_hang_fault_closes_without_answer(heap):
    heap.inject(Fault(hang_seconds=0.1))
    with pytest.raises(requests.exceptions.ConnectionError):
        post(heap, TRACK, {"app_id": "1", **event()}, timeout=3)
    assert_nothing_stored(heap)


def test_reset_fault_gives_connection_error(heap):
    heap.inject(Fault(reset=True))
    with pytest.raises(requests.exceptions.ConnectionError, match="reset"):
        post(heap, TRACK, {"app_id": "1", **event()})
    assert_nothing_stored(heap)
    assert heap.stats()["faults_served"] == 1


def test_delay_fault_answers_that_request_late_and_as_usual(heap):
    """The delayed request is stored and answered 200, after a request sent while it waited. The delay is the
    behaviour: 3 s is far more than the second request takes, even on busy cores."""
    heap.inject(Fault(delay_seconds=3.0))
    answers: list[int] = []
    body = {"app_id": "1", **event(identity="slow")}
    slow = threading.Thread(target=lambda: answers.append(post(heap, TRACK, body).status_code))
    slow.start()
    while heap.stats()["faults_served"] < 1:  # the slow request has taken the fault
        time.sleep(0.01)
    answers.append(post(heap, TRACK, {"app_id": "1", **event(identity="quick")}).status_code)
    slow.join()
    assert answers == [200, 200]
    assert [e["identity"] for e in heap.events] == ["quick", "slow"]
    assert heap.faults_served == {"delay": 1}


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"status": 200},
        {"status": 500, "reset": True},
        {"hang_seconds": 1, "retry_after": 1},
        {"delay_seconds": 1, "status": 503},
        {"delay_seconds": 1, "after_store": True},
    ],
)
def test_fault_needs_exactly_one_kind(bad):
    with pytest.raises(ValueError):
        Fault(**bad)


def test_reset_forgets_data_and_faults(heap):
    post(heap, TRACK, {"app_id": "1", **event(idempotency_key="k")})
    heap.inject(Fault(status=500))
    heap.reset()
    assert heap.stats()["requests"] == 0
    assert heap.duplicates_dropped == 0
    assert post(heap, TRACK, {"app_id": "1", **event(idempotency_key="k")}).status_code == 200
    assert len(heap.events) == 1


# ------------------------------------------------------------------------------------------------------
# Lifecycle, limits, summary mode


def test_stop_and_start_keep_port_and_data():
    standin = HeapStandin().start()
    try:
        url = standin.url
        session = requests.Session()
        assert session.post(url + TRACK, json={"app_id": "1", **event()}, timeout=5).status_code == 200
        standin.stop()
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.post(url + TRACK, json={"app_id": "1", **event()}, timeout=2)
        standin.start()
        assert standin.url == url
        assert session.post(url + TRACK, json={"app_id": "1", **event()}, timeout=5).status_code == 200
        assert len(standin.events) == 2
    finally:
        standin.stop()


def test_app_rate_limit_answers_429_with_retry_after():
    # 600 events/min: bucket of 150 events draining 10 a second.
    with HeapStandin(track_events_per_minute=600) as standin:
        batch = {"app_id": "1", "events": [event()] * 100}
        assert post(standin, TRACK, batch).status_code == 200
        throttled = post(standin, TRACK, batch)
        assert throttled.status_code == 429
        assert 4.0 <= float(throttled.headers["Retry-After"]) <= 5.0  # (100 + 100 - 150) / 10 per second
        assert post(standin, TRACK, {"app_id": "2", "events": [event()] * 100}).status_code == 200  # per app
        single = post(standin, TRACK, {"app_id": "1", **event()})
        assert single.status_code == 200  # the app-wide limit is for bulk track
        stats = standin.stats()
        assert (stats["events_stored"], stats["by_status"]["429"]) == (201, 1)


def test_identity_limits():
    with HeapStandin(enforce_identity_limits=True) as standin:
        session = requests.Session()
        single = {"app_id": "1", **event()}
        codes = [session.post(standin.url + TRACK, json=single, timeout=5).status_code for _ in range(31)]
        assert codes == [200] * 30 + [429]
        user = {"app_id": "1", "identity": "bob", "properties": {"a": 1}}
        assert session.post(standin.url + USERS, json=user, timeout=5).status_code == 200
        bulk = {"app_id": "1", "events": [event(identity="carol")] * 1000}
        assert session.post(standin.url + TRACK, json=bulk, timeout=5).status_code == 200
        one_more = {"app_id": "1", "events": [event(identity="dave")] + [event(identity="carol")] * 100}
        assert session.post(standin.url + TRACK, json=one_more, timeout=5).status_code == 429
        assert standin.stats()["events_stored"] == 1030


def test_summary_mode_keeps_exact_counts_only():
    with HeapStandin(keep_items=False) as standin:
        batch = [event(idempotency_key=f"k{i % 600}") for i in range(1000)]
        assert post(standin, TRACK, {"app_id": "1", "events": batch}).status_code == 200
        assert post(standin, USERS, {"app_id": "1", "identity": "a", "properties": {}}).status_code == 200
        assert (
            post(standin, ACCOUNTS, {"app_id": "1", "account_id": "x", "properties": {}}).status_code == 200
        )
        assert standin.events == standin.users == standin.accounts == []
        stats = standin.stats()
        assert (stats["events_stored"], stats["events_deduplicated"]) == (600, 400)
        assert standin.duplicates_dropped == 400
        assert (stats["users_stored"], stats["accounts_stored"], stats["distinct_accounts"]) == (1, 1, 1)


def test_non_loopback_host_is_refused():
    with pytest.raises(ValueError, match="loopback"):
        HeapStandin(host="0.0.0.0")


# ------------------------------------------------------------------------------------------------------
# Control endpoints and command line


def test_control_endpoints(heap):
    control = heap.url + "/_standin"
    faults = {"faults": [{"status": 429, "retry_after": 1}, {"status": 503}]}
    assert requests.post(control + "/faults", json=faults, timeout=5).json() == {"pending": 2}
    assert post(heap, TRACK, {"app_id": "1", **event()}).headers["Retry-After"] == "1"
    assert post(heap, TRACK, {"app_id": "1", **event()}).status_code == 503
    assert requests.post(control + "/latency", json={"ms": 5}, timeout=5).status_code == 200
    assert post(heap, TRACK, {"app_id": "1", **event()}).status_code == 200
    received = requests.get(control + "/received", timeout=5).json()
    assert received == {"events": [{"app_id": "1", **event()}], "users": [], "accounts": [], "identifies": []}
    stats = requests.get(control + "/stats", timeout=5).json()
    assert (stats["requests"], stats["faults_served"]) == (3, 2)
    assert requests.post(control + "/faults", json={"faults": [{"nope": 1}]}, timeout=5).status_code == 400
    assert requests.post(control + "/reset", timeout=5).status_code == 200
    assert heap.stats()["requests"] == 0


def run_cli(*args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "heap_standin", *args]
    return subprocess.Popen(
        command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_cli_prints_url_and_stops_on_sigterm():
    process = run_cli("--port", "0", "--summary-only")
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r"heap-standin listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, line
        url = match.group(1)
        assert requests.post(url + TRACK, json={"app_id": "1", **event()}, timeout=5).status_code == 200
        assert requests.get(url + "/_standin/stats", timeout=5).json()["events_stored"] == 1
        assert requests.get(url + "/_standin/received", timeout=5).json()["events"] == []
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
        process.communicate()


def test_cli_refuses_non_loopback_host():
    process = run_cli("--host", "192.0.2.1", "--port", "0")
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 2
    assert "loopback" in stderr


IDENTIFY = "/api/v1/identify"


@pytest.mark.parametrize(
    "body, message",
    [
        ({"identity": "alice"}, "user_id is required"),
        ({"user_id": 12, "identity": "alice"}, "user_id should be a string holding an integer"),
        ({"user_id": str(2**53), "identity": "alice"}, "user_id should be a string holding an integer"),
        ({"user_id": "12"}, "identity is required"),
        ({"user_id": "12", "identity": "x" * 256}, "identity should be 1..255 characters"),
        ({"user_id": "12", "identity": "a", "timestamp": "yesterday"}, "timestamp should be an ISO 8601"),
        ({"user_id": "12", "identity": "a", "users": []}, "unknown"),
    ],
)
def test_identify_rules(heap, body, message):
    response = post(heap, IDENTIFY, {"app_id": "1", **body})
    assert response.status_code == 400 and message in response.text
    assert heap.identifies == []


def test_identify_is_stored(heap):
    body = {"app_id": "1", "user_id": "8765", "identity": "alice", "timestamp": "2017-03-10T22:21:56+00:00"}
    assert post(heap, IDENTIFY, body).status_code == 200
    assert heap.identifies == [body] and heap.stats()["identifies_stored"] == 1


DELETION = "/api/public/v0/user_deletion"
TOKEN = "/api/public/v0/auth_token"


def test_deletion_needs_a_token_that_expires():
    with HeapStandin(api_key="k3y") as heap:
        assert requests.post(heap.url + TOKEN, auth=("11", "wrong"), timeout=5).status_code == 401
        assert requests.post(heap.url + TOKEN, auth=("app", "k3y"), timeout=5).status_code == 401
        token = requests.post(heap.url + TOKEN, auth=("11", "k3y"), timeout=5).json()["access_token"]
        bearer = {"Authorization": f"Bearer {token}"}
        users = {"users": [{"identity": "alice"}, {"user_id": "42"}]}
        assert requests.post(heap.url + DELETION, json=users, timeout=5).status_code == 401
        answer = requests.post(heap.url + DELETION, json=users, headers=bearer, timeout=5)
        assert answer.status_code == 201 and answer.json()["status"] == "pending"
        status = requests.get(f"{heap.url}/api/public/v0/deletion_status/{answer.json()['deletion_request_id']}",
                              timeout=5)
        assert status.status_code == 200
        assert heap.deleted_users == users["users"]
    with HeapStandin(api_key="k3y", token_ttl_seconds=0) as heap:  # a token expired as soon as it is issued
        token = requests.post(heap.url + TOKEN, auth=("11", "k3y"), timeout=5).json()["access_token"]
        bearer = {"Authorization": f"Bearer {token}"}
        assert requests.post(heap.url + DELETION, json=users, headers=bearer, timeout=5).status_code == 401
        assert heap.deleted_users == []


@pytest.mark.parametrize(
    "body, message",
    [
        ({"users": []}, "1..10000 users"),
        ({"users": [{"identity": "a", "user_id": "1"}]}, "exactly one of user_id or identity"),
        ({"users": [{"user_id": "x"}]}, "user_id should be a string holding an integer"),
        ({"users": [{"identity": "a"}], "app_id": "1"}, "only a users list"),
        ({"users": [{"identity": "a"}] * 10_001}, "1..10000 users"),
    ],
)
def test_deletion_rules(body, message):
    with HeapStandin() as heap:
        token = requests.post(heap.url + TOKEN, auth=("11", "any"), timeout=5).json()["access_token"]
        answer = requests.post(heap.url + DELETION, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert answer.status_code == 400 and message in answer.text
        assert heap.deleted_users == []


def test_the_standin_imports_nothing_from_the_connector():
    """It checks the connector independently: a rule it took from the product would hide a shared mistake."""
    code = (
        "import sys, heap_standin, heap_standin.__main__; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'destination_heap_analytics'))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
