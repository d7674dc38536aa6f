"""Delivery without a network: Heap's error texts reduced to data-free reasons, what an answer means and how long
Heap asks to wait; then the Dispatcher against a fake Heap, booking in a real StateLedger: per-key order across the
routes of one endpoint whatever the concurrency, merged items Heap refuses, refusals of the request itself, random
refusals, refused deletions, senders that hold no lock while they wait, and dry runs."""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import orjson
import pytest

from destination_heap_analytics import delivery
from destination_heap_analytics.client import (
    UNEXPLAINED,
    DeliveryCounters,
    DeliveryError,
    DeliveryStopped,
    HeapRejected,
    Verdict,
    classify,
    error_named,
    heap_reason,
    is_heap_acknowledgement,
    retry_after,
)
from destination_heap_analytics.config import parse_config
from destination_heap_analytics.delivery import Dispatcher, Route
from destination_heap_analytics.lanes import Item, encoded
from destination_heap_analytics.refusals import RUN_LIMIT
from destination_heap_analytics.state import StateLedger

USER_API = {"api_type": "add_user_properties", "identity_column": "email", "property_columns": "v"}

# ------------------------------------------------------------------------------------------------------------
# Heap's error texts


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("postBody.events[0].properties should be object", "postBody.events[n].properties should be object"),
        ("postBody.users[12].identity should be string", "postBody.users[n].identity should be string"),
        ("postBody.app_id is required", "postBody.app_id is required"),
        ("postBody should be valid JSON: unexpected character", "postBody should be valid JSON …"),
        ("postBody.accounts[3].account_id is too long", "postBody.accounts[n].account_id is too long"),
        ("postBody.events[1].event should not be empty", "postBody.events[n].event should not be empty"),
        (
            "postBody.users[0].identity should not be … jane.doe@example.com (value: Jane Doe …)",
            "postBody.users[n].identity should not be …",
        ),
        ('postBody.events[0].identity should not be "jane@example.com"', "postBody.events[n].identity should not be …"),
        ("postBody.events[0].timestamp should be an ISO 8601 date-time", "postBody.events[n].timestamp should be …"),
        ("postBody.properties.plan is not allowed", f"postBody.properties.<property> {UNEXPLAINED}"),
        (
            "postBody.events[0].properties.x has value jane@doe.com",
            f"postBody.events[n].properties.<property> {UNEXPLAINED}",
        ),
        (  # a property name from the data (property_columns "*"): masked
            "postBody.users[0].properties.contacts_jane_doe_555_0142 should be string",
            "postBody.users[n].properties.<property> should be string",
        ),
        ("postBody.events[0].properties.jane@example.com should be string", UNEXPLAINED),
        ("identity jane@example.com is blocked", UNEXPLAINED),
        ("invalid app_id", UNEXPLAINED),
        ("<html><body>Bad Request</body></html>", UNEXPLAINED),
        ("", UNEXPLAINED),
        ("postBody.events[0].event should be stringjane", "postBody.events[n].event should be …"),
    ],
)
def test_heap_error_texts_keep_a_field_path_and_a_known_rule_and_no_value(text, reason):
    assert heap_reason(text) == reason


@pytest.mark.parametrize(
    ("text", "names_item"),
    [
        ("postBody.events[3].properties should be object", True),
        ("postBody.properties.plan should be string", True),  # a single item's field
        ("postBody.identity is required", True),
        ("postBody.app_id should be a numeric string", False),
        ("postBody.events should be array", False),
        ("postBody should be object", False),
        ("invalid app_id", False),
        ("Request Entity Too Large", False),
    ],
)
def test_a_refusal_is_about_an_item_only_when_heap_names_one(text, names_item):
    assert HeapRejected(400, text).names_item is names_item


@pytest.mark.parametrize(
    ("body", "acknowledged"),
    [
        (b"", True),  # Heap's own clients' tests: an empty 200 text/plain, and a 204
        (b"{}", True),
        (b"OK", True),
        (b"ok\n", True),
        (b"Event accepted", True),  # Heap's reference
        (b'{"deletion_request_id": "x", "status": "pending"}', True),
        (b"[]", True),
        (b"<!doctype html><html><body>Welcome</body></html>", False),
        (b"\n  <html><body>Proxy login</body></html>", False),
        (b"\xef\xbb\xbf<?xml version='1.0'?><error/>", False),
    ],
)
def test_every_2xx_body_is_heaps_acknowledgement_but_another_servers_page(body, acknowledged):
    assert is_heap_acknowledgement(body) is acknowledged


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        (b'{"error": "invalid app_id"}', "error"),
        (b' {"errors": [{"message": "x"}]}', "errors"),
        (b'{"success": false}', "success"),
        (b'{"ok": false, "error": ""}', "ok"),
        (b'{"status": "Error"}', "status"),
        (b'{"error": null, "errors": [], "success": true, "status": "pending"}', None),
        (b'{"deletion_request_id": "x", "status": "pending"}', None),
        (b"", None),
        (b"OK", None),
        (b"Event accepted", None),
        (b'["error"]', None),
        (b"{not json", None),
    ],
)
def test_a_2xx_body_that_names_an_error_is_told_by_the_fields_name(body, field_name):
    assert error_named(body) == field_name
    assert classify(200, body) is Verdict.ACKNOWLEDGED  # still Heap's acknowledgement


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (200, b"", Verdict.ACKNOWLEDGED),
        (204, b"", Verdict.ACKNOWLEDGED),
        (201, b'{"deletion_request_id": "x"}', Verdict.ACKNOWLEDGED),
        (200, b"<html><body>Welcome</body></html>", Verdict.NOT_HEAP),
        (400, b"postBody.events[0].properties should be object", Verdict.REFUSED),
        (413, b"Request Entity Too Large", Verdict.REFUSED),
        (422, b"", Verdict.REFUSED),
        (401, b"Unauthorized", Verdict.UNAUTHORIZED),
        (408, b"", Verdict.RETRY),
        (429, b"Too Many Requests", Verdict.RETRY),
        (500, b"", Verdict.RETRY),
        (503, b"<html>down</html>", Verdict.RETRY),
        (403, b"Forbidden", Verdict.WRONG_PLACE),
        (404, b"", Verdict.WRONG_PLACE),
        (405, b"", Verdict.WRONG_PLACE),
        (307, b"", Verdict.WRONG_PLACE),
        (418, b"", Verdict.UNEXPECTED),
    ],
)
def test_what_an_answer_means(status, body, verdict):
    assert classify(status, body) is verdict


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("86400", 86400),  # a day: read as asked (the wait taken is capped, and logged, by the client)
        (" 3 ", 3),
        ("1.5", 1.5),  # not the standard's form, but some servers send it
        ("0", 0),
        ("soon", None),
        ("-3", None),
        ("nan", None),
        (email.utils.formatdate(0, usegmt=True), 0),  # a date in the past: no wait
    ],
)
def test_the_wait_heap_asks_for(header, seconds):
    assert retry_after({} if header is None else {"Retry-After": header}) == seconds


def test_the_wait_heap_asks_for_as_an_http_date():
    asked = retry_after({"Retry-After": email.utils.formatdate(time.time() + 60, usegmt=True)})
    assert 58 <= asked <= 60  # whole seconds in the date


# ------------------------------------------------------------------------------------------------------------
# A Heap without a network

Answer = Callable[[list[dict]], None]


class FakeClient:
    """Stands in for HeapClient: `answer(items)` decides each request (return to accept, raise HeapRejected to
    refuse); every accepted item is recorded in arrival order. Like HeapClient, it sends nothing once the sync stops."""

    def __init__(self, stop: threading.Event, answer: Answer | None = None, delay=lambda: 0.0) -> None:
        self.counters = DeliveryCounters()
        self.arrived: list[dict] = []
        self.requests: list[list[dict]] = []
        self._stop = stop
        self._answer = answer or (lambda items: None)
        self._delay = delay
        self._lock = threading.Lock()

    def post(self, path: str, body: bytes, identities: list) -> object:
        if self._stop.is_set():
            raise DeliveryStopped()
        parsed = orjson.loads(body)
        items = next((value for value in parsed.values() if isinstance(value, list)), [parsed])
        with self._lock:
            self.requests.append(items)
        time.sleep(self._delay())
        self._answer(items)
        with self._lock:
            self.arrived.extend(items)
        return object()


class Sync:
    """A Dispatcher booking into a real StateLedger, sending to a FakeClient; records are added as the writer adds
    them (an entry in the book, the item's JSON held in the window, the item queued in its endpoint's lane)."""

    def __init__(
        self,
        answer: Answer | None = None,
        delay=lambda: 0.0,
        stop: threading.Event | None = None,
        **options: Any,
    ) -> None:
        self.config = parse_config({"app_id": "11", "base_url": "http://127.0.0.1:9", "api": USER_API, **options})
        self.stop = stop or threading.Event()
        self.ledger: StateLedger = StateLedger()
        self.client = FakeClient(self.stop, answer, delay)
        self.dispatcher = Dispatcher(self.config, self.ledger, self.stop)

    def route(self, api_type: str, bulk: bool = True, batch_size: int = 1000) -> Route:
        return Route(self.config, api_type, bulk, batch_size, self.client)

    def add(self, route: Route, body: dict, key: Hashable = None, stream: str = "users") -> bool:
        """One record into its lane (key None: its own, as an event's); True if it merged into an earlier one."""
        entry = self.ledger.received(stream)
        json = encoded(body)
        self.ledger.hold(entry, json)
        fields = body if route.merges else None
        item = Item(entry if key is None else key, route, body.get("identity"), [entry], fields, len(json))
        return self.dispatcher.add(item)

    def finish(self) -> None:
        """Send everything; return once every record has its fate or the sync failed, and every sender is idle."""
        self.dispatcher.flush()
        for _ in range(2400):  # 120 s: a bound for a dispatcher that never gets there, not a timing
            if self.ledger.wait_for_room(1, 1 << 62, timeout=0.05) or self.dispatcher.failure is not None:
                break
        else:
            raise AssertionError(f"{self.ledger.open_records} records still without a fate, and no failure")
        self.close()

    def close(self) -> None:
        self.dispatcher.close()
        for _ in range(3000):  # 30 s: a bound for a sender that never ends, not a timing
            if not self.dispatcher.in_flight:
                return
            time.sleep(0.01)
        raise AssertionError("a sender is still delivering after the sync stopped")

    def rejected(self) -> int:
        return sum(sum(figures.rejected.values()) for figures in self.ledger.snapshot().values())

    def delivered(self) -> int:
        return sum(figures.delivered for figures in self.ledger.snapshot().values())


@pytest.fixture
def syncs():
    """Builds Syncs and stops every one of them at the end of the test, whatever happened."""
    made: list[Sync] = []

    def make(*args: Any, **options: Any) -> Sync:
        made.append(Sync(*args, **options))
        return made[-1]

    yield make
    for sync in made:
        sync.close()


@pytest.fixture(autouse=True)
def short_pauses(monkeypatch):
    monkeypatch.setattr(delivery, "SUSPECT_PAUSE_SECONDS", 0.001)


def apply_in_order(items: list[dict], key: str = "identity") -> dict[Hashable, dict]:
    """Heap's end state: each key's properties, the items applied in the order given."""
    end: dict[Hashable, dict] = {}
    for item in items:
        end.setdefault(item[key], {}).update(item["properties"])
    return end


def versions_by(arrived: list[dict], key: str, version: Callable[[dict], int]) -> dict[Hashable, list[int]]:
    seen: dict[Hashable, list[int]] = {}
    for item in arrived:
        seen.setdefault(item[key], []).append(version(item))
    return seen


# ------------------------------------------------------------------------------------------------------------
# Per-key order, across the routes of one endpoint


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_each_users_updates_arrive_in_input_order_across_two_routes_whatever_the_concurrency(syncs, concurrency):
    """Ten rounds of 30 users, each record by one of two streams' routes to one endpoint (batches of 7 and 11), a few
    senders, random delays: each user's updates arrive in input order (merged ones as one), and Heap ends as the
    records applied in input order would leave it."""
    rng = random.Random(3)
    sync = syncs(delay=lambda: rng.uniform(0, 0.003), max_concurrent_requests=concurrency)
    routes = [sync.route("add_user_properties", batch_size=7), sync.route("add_user_properties", batch_size=11)]
    records = [{"identity": f"u{u}", "properties": {"v": r, f"p{r % 4}": r}} for r in range(10) for u in range(30)]
    for number, record in enumerate(records):
        sync.add(routes[rng.randrange(2)], record, key=record["identity"], stream=f"stream-{number % 2}")
        if number % 50 == 0:
            time.sleep(0.002)  # let senders take requests while records still come: not everything merges
    sync.finish()
    assert sync.dispatcher.failure is None
    versions = versions_by(sync.client.arrived, "identity", lambda item: item["properties"]["v"])
    assert all(seen == sorted(set(seen)) and seen[-1] == 9 for seen in versions.values()), versions
    assert apply_in_order(sync.client.arrived) == apply_in_order(records)
    assert (sync.delivered(), sync.rejected(), sync.ledger.open_records) == (300, 0, 0)


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_each_user_ids_identifies_arrive_in_input_order_across_two_routes_whatever_the_concurrency(syncs, concurrency):
    """identify: single requests, no merging; two routes of the endpoint, a few senders, random delays."""
    rng = random.Random(5)
    sync = syncs(delay=lambda: rng.uniform(0, 0.002), max_concurrent_requests=concurrency)
    routes = [sync.route("identify", bulk=False, batch_size=1), sync.route("identify", bulk=False, batch_size=1)]
    for r in range(6):
        for user_id in range(20):
            sync.add(routes[rng.randrange(2)], {"identity": f"i{r}", "user_id": user_id}, key=user_id)
    sync.finish()
    assert sync.dispatcher.failure is None
    seen = versions_by(sync.client.arrived, "user_id", lambda item: int(item["identity"][1:]))
    assert seen == {user_id: list(range(6)) for user_id in range(20)}


def test_an_old_item_goes_without_a_full_request_or_a_flush(syncs, monkeypatch):
    monkeypatch.setattr(delivery, "MAX_ITEM_AGE_SECONDS", 0.0)
    sync = syncs()
    sync.add(sync.route("track"), {"identity": "u", "event": "e"})
    assert sync.ledger.wait_for_room(1, 1 << 62, timeout=30)  # 30 s: a bound for the failing case only
    assert sync.client.arrived == [{"identity": "u", "event": "e"}]


# ------------------------------------------------------------------------------------------------------------
# Refusals of items


@pytest.mark.parametrize("named", [True, False], ids=["named", "unnamed"])
def test_a_merged_item_heap_refuses_comes_back_as_its_records_and_only_the_bad_one_is_rejected(
    syncs, monkeypatch, named
):
    """u1 gets {plan:a}, {seats:5}, a property Heap refuses, then {plan:c, city:Oslo}, merged into one item: Heap
    ends where ordered delivery leaves it (issue 24, finding 1: it ended holding nothing for u1)."""
    monkeypatch.setattr(delivery, "MAX_ITEM_AGE_SECONDS", 60.0)  # nothing leaves before the flush: all merge

    def answer(items):
        for index, item in enumerate(items):
            if "bad" in item["properties"]:
                raise HeapRejected(400, f"postBody.users[{index}].properties.bad should be string" if named else "no")

    sync = syncs(answer)
    route = sync.route("add_user_properties")
    records = [
        {"identity": "u1", "properties": {"plan": "a"}},
        {"identity": "u2", "properties": {"plan": "x"}},
        {"identity": "u1", "properties": {"seats": 5}},
        {"identity": "u1", "properties": {"bad": {"nested": 1}}},
        {"identity": "u1", "properties": {"plan": "c", "city": "Oslo"}},
        {"identity": "u3", "properties": {"plan": "y"}},
    ]
    assert [sync.add(route, record, key=record["identity"]) for record in records] == [
        False, False, True, True, True, False
    ]
    sync.finish()
    assert sync.dispatcher.failure is None
    good = [record for record in records if "bad" not in record["properties"]]
    assert apply_in_order(sync.client.arrived) == apply_in_order(good)
    assert apply_in_order(sync.client.arrived)["u1"] == {"plan": "c", "seats": 5, "city": "Oslo"}
    assert (sync.delivered(), sync.rejected()) == (5, 1)
    (reason,) = sync.ledger.snapshot()["users"].rejected
    assert reason.startswith("rejected_by_heap: ")


def test_an_item_heap_names_is_isolated_by_halving_in_a_few_requests(syncs):
    def answer(items):
        for index, item in enumerate(items):
            if item["identity"] == "u600":
                raise HeapRejected(400, f"postBody.users[{index}].properties should be object")

    sync = syncs(answer, max_concurrent_requests=1)
    route = sync.route("add_user_properties")
    for u in range(1000):
        sync.add(route, {"identity": f"u{u}", "properties": {"v": 0}}, key=f"u{u}")
    sync.finish()
    assert (sync.delivered(), sync.rejected()) == (999, 1)
    assert sync.ledger.snapshot()["users"].rejected == {
        "rejected_by_heap: postBody.users[n].properties should be object": 1
    }
    assert len(sync.client.requests) <= 1 + 2 * 10  # a refused half and a taken half per level, log2(1000) deep


def test_a_413_for_a_big_request_is_halved_until_the_halves_fit(syncs):
    def answer(items):
        if len(items) > 30:
            raise HeapRejected(413, "Request Entity Too Large")

    sync = syncs(answer)
    route = sync.route("track", batch_size=100)
    for u in range(100):
        sync.add(route, {"identity": f"u{u}", "event": "e"})
    sync.finish()
    assert (sync.dispatcher.failure, sync.delivered(), sync.rejected()) == (None, 100, 0)
    assert sorted(item["identity"] for item in sync.client.arrived) == sorted(f"u{u}" for u in range(100))


def test_under_on_invalid_record_fail_a_record_heap_refuses_stops_the_sync(syncs):
    def answer(items):
        raise HeapRejected(400, "postBody.events[0].event should not be empty")

    sync = syncs(answer, on_invalid_record="fail")
    sync.add(sync.route("track"), {"identity": "u", "event": ""})
    sync.finish()
    failure = sync.dispatcher.failure
    assert isinstance(failure, DeliveryError) and not failure.transient
    assert "on_invalid_record" in str(failure)
    assert (sync.delivered(), sync.rejected(), sync.ledger.open_records) == (0, 0, 1)


def refusing(rule: Callable[[int, list[dict]], bool], text: str = "Bad Request") -> Answer:
    """An answer for FakeClient: the n-th request (from 0) holding `items` is refused with `text` if rule(n, items)."""
    count = iter(range(10**9))
    lock = threading.Lock()

    def answer(items):
        with lock:
            refused = rule(next(count), items)
        if refused:
            raise HeapRejected(400, text)

    return answer


@pytest.mark.parametrize("seed", range(3))
def test_random_refusals_never_reject_a_good_record(syncs, seed):
    """One request in ten refused at random without a name, four senders: every event lands, and every user ends as
    ordered delivery would leave them; nothing is rejected."""
    chance = random.Random(seed)
    sync = syncs(refusing(lambda n, items: chance.random() < 0.1), max_concurrent_requests=4)
    track, users = sync.route("track", batch_size=20), sync.route("add_user_properties", batch_size=20)
    updates = []
    for i in range(600):
        sync.add(track, {"identity": f"e{i}", "event": "e"}, stream="events")
        updates.append({"identity": f"u{i % 25}", "properties": {"v": i, f"p{i % 3}": i}})
        sync.add(users, updates[-1], key=updates[-1]["identity"])
    sync.finish()
    assert (sync.dispatcher.failure, sync.rejected(), sync.delivered()) == (None, 0, 1200)
    events = [item for item in sync.client.arrived if "event" in item]
    assert {item["identity"] for item in events} == {f"e{i}" for i in range(600)}
    assert apply_in_order([item for item in sync.client.arrived if "properties" in item]) == apply_in_order(updates)


# ------------------------------------------------------------------------------------------------------------
# Refusals that stop the sync


class InstantPauses(threading.Event):
    """The sync's stop event, noting each pause a sender asks of it and returning at once: how long a sync would
    wait is read from the pauses asked, not from a clock."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: dict[int, list[float]] = {}  # sender thread -> its pauses

    def wait(self, timeout: float | None = None) -> bool:
        self.asked.setdefault(threading.get_ident(), []).append(timeout)
        return self.is_set()

    def longest(self) -> float:
        """The longest any one sender paused in all (senders pause at the same time)."""
        return max((sum(pauses) for pauses in self.asked.values()), default=0.0)


REAL_SUSPECT_PAUSE_SECONDS = delivery.SUSPECT_PAUSE_SECONDS


def refused_from(accepted: int, concurrency: int, records: int, syncs) -> tuple[Sync, InstantPauses]:
    """`records` events after `accepted` requests' worth, in requests of 50, Heap refusing every request after the
    first `accepted` without naming an item; pauses noted, not taken (at their real length)."""
    pauses = InstantPauses()
    answer = refusing(lambda n, items: n >= accepted, "postBody.app_id is invalid")
    sync = syncs(answer, stop=pauses, max_concurrent_requests=concurrency)
    route = sync.route("track", batch_size=50)
    for i in range(accepted * 50 + records):
        sync.add(route, {"identity": f"u{i}", "event": "e"})
    sync.finish()
    return sync, pauses


@pytest.mark.parametrize("accepted", [0, 3], ids=["from_the_start", "mid_sync"])
@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_refusal_of_the_request_itself_stops_within_the_run_limit_skipping_nothing(
    syncs, monkeypatch, accepted, concurrency
):
    """Heap refuses every request without naming an item (from the start: a wrong app_id; mid-sync: it changed its
    mind): the sync stops after RUN_LIMIT refusals and the requests already in flight, rejecting no record."""
    monkeypatch.setattr(delivery, "SUSPECT_PAUSE_SECONDS", REAL_SUSPECT_PAUSE_SECONDS)
    sync, _ = refused_from(accepted, concurrency, 3000, syncs)
    failure = sync.dispatcher.failure
    assert isinstance(failure, DeliveryError) and failure.transient is (accepted > 0)
    assert ("accepted none from this sync" in str(failure)) is (accepted == 0)
    assert len(sync.client.requests) <= accepted + RUN_LIMIT + concurrency, f"{len(sync.client.requests)} requests"
    assert sync.rejected() == 0
    assert sync.delivered() == len(sync.client.arrived) == accepted * 50


@pytest.mark.parametrize("accepted", [0, 3], ids=["from_the_start", "mid_sync"])
@pytest.mark.parametrize(("concurrency", "records"), [(1, 3000), (4, 3)], ids=["one_sender", "a_small_sync"])
def test_a_refusal_of_the_request_itself_stops_within_a_minute_of_pauses(
    syncs, monkeypatch, accepted, concurrency, records
):
    """The same, where one sender makes the refusals (one sender, or one request's worth of records): at the real
    pause, no sender pauses a minute in all before the sync stops."""
    monkeypatch.setattr(delivery, "SUSPECT_PAUSE_SECONDS", REAL_SUSPECT_PAUSE_SECONDS)
    sync, pauses = refused_from(accepted, concurrency, records, syncs)
    assert isinstance(sync.dispatcher.failure, DeliveryError)
    assert pauses.longest() <= 60, f"a sender paused {pauses.longest():.0f} s before the sync stopped"


def test_a_last_record_heap_refuses_alone_without_a_name_does_not_hold_the_sync_for_a_minute(syncs, monkeypatch):
    """One item a request; Heap takes the first four events and refuses the fifth every time without naming it, and
    nothing else is left to send: the sync ends (the record rejected, or the sync stopped) within a minute of pauses
    at the real pause, and no good record is rejected."""
    monkeypatch.setattr(delivery, "SUSPECT_PAUSE_SECONDS", REAL_SUSPECT_PAUSE_SECONDS)
    pauses = InstantPauses()
    sync = syncs(refusing(lambda n, items: items[0]["identity"] == "u4"), stop=pauses, max_concurrent_requests=1)
    route = sync.route("track", bulk=False, batch_size=1)
    for i in range(5):
        sync.add(route, {"identity": f"u{i}", "event": "e"})
    sync.finish()
    assert sorted(item["identity"] for item in sync.client.arrived) == ["u0", "u1", "u2", "u3"]
    assert sync.rejected() <= 1
    assert pauses.longest() <= 60, f"a sender paused {pauses.longest():.0f} s before the sync ended"


def test_a_refused_deletion_stops_the_sync_and_nothing_is_skipped(syncs):
    def answer(items):
        for index, item in enumerate(items):
            if item["identity"] == "u3":
                raise HeapRejected(400, f"postBody.users[{index}].identity should be string")

    sync = syncs(answer)
    route = sync.route("delete_users", batch_size=10000)
    for u in range(10):
        sync.add(route, {"identity": f"u{u}"}, key=f"u{u}")
    sync.finish()
    failure = sync.dispatcher.failure
    assert isinstance(failure, DeliveryError) and not failure.transient and "deletion" in str(failure)
    assert sync.client.arrived == [] and len(sync.client.requests) == 1
    assert (sync.delivered(), sync.rejected(), sync.ledger.open_records) == (0, 0, 10)


# ------------------------------------------------------------------------------------------------------------
# Waiting holds no lock


class PauseWatch(threading.Event):
    """The sync's stop event, watching the dispatcher's one timed wait on it (a suspect's pause before its retry):
    the pause lasts until another record was delivered, or 30 s (a bound for the failing case only)."""

    def __init__(self) -> None:
        super().__init__()
        self.pausing = threading.Event()
        self.other_delivered = threading.Event()
        self.delivered_during_pause: list[bool] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.pausing.set()
        self.delivered_during_pause.append(self.other_delivered.wait(30))
        return self.is_set()


def test_a_sender_pausing_before_a_suspects_retry_holds_no_lock(syncs):
    """Two senders, one item a request. x is refused alone without a name: its sender pauses. Meanwhile y is added
    and delivered by the other sender; with a lock held through the pause, adding y or taking it would wait."""
    watch = PauseWatch()
    refusals_of_x = []

    def answer(items):
        if items[0]["identity"] == "x" and not refusals_of_x:
            refusals_of_x.append(1)
            raise HeapRejected(400, "Bad Request")
        if items[0]["identity"] == "y":
            watch.other_delivered.set()

    sync = syncs(answer, stop=watch, max_concurrent_requests=2)
    route = sync.route("track", bulk=False, batch_size=1)
    sync.dispatcher.flush()
    sync.add(route, {"identity": "x", "event": "e"})
    assert watch.pausing.wait(30)  # 30 s: a bound for the failing case only
    sync.add(route, {"identity": "y", "event": "e"})
    sync.finish()
    assert watch.delivered_during_pause == [True]
    assert [item["identity"] for item in sync.client.arrived] == ["y", "x"]
    assert (sync.delivered(), sync.rejected()) == (2, 0)


# ------------------------------------------------------------------------------------------------------------
# Dry run


def test_a_dry_run_books_every_record_delivered_sends_nothing_and_logs_no_value(syncs, caplog):
    sync = syncs(dry_run=True)
    route = sync.route("add_user_properties")
    for u in range(5):
        sync.add(route, {"identity": f"jane{u}@example.com", "properties": {"plan": "secret-plan"}}, key=u)
    with caplog.at_level(logging.INFO, logger="airbyte"):
        sync.finish()
    assert sync.client.requests == []
    assert (sync.dispatcher.failure, sync.delivered(), sync.rejected(), sync.ledger.open_records) == (None, 5, 0, 0)
    assert "Dry run: Heap would receive at /api/add_user_properties" in caplog.text
    assert "example.com" not in caplog.text and "secret-plan" not in caplog.text
