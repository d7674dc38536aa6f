"""Delivery rules without a network: Heap's error texts reduced to data-free reasons, what an answer means and
how long Heap asks to wait, per-key order across concurrent batches, refusals about the request against
refusals about an item (from the start, mid-sync, at random), the byte-bounded window, and the state rule with
several batches in flight."""

from __future__ import annotations

import email.utils
import random
import threading
import time

import orjson
import pytest

from destination_heap_analytics import refusals
from destination_heap_analytics.client import (
    UNEXPLAINED,
    DeliveryCounters,
    DeliveryError,
    HeapRejected,
    Verdict,
    classify,
    error_named,
    heap_reason,
    is_heap_acknowledgement,
    retry_after,
)
from destination_heap_analytics.config import parse_config
from destination_heap_analytics.delivery import MAX_WINDOW_BYTES, Batch, BatchSender, Route
from destination_heap_analytics.state import StateLedger

USER_API = {"api_type": "add_user_properties", "identity_column": "email", "property_columns": "v"}
TRACK_API = {"api_type": "track", "identity_column": "email", "event_column": "event"}
DELETE_API = {"api_type": "delete_users", "identity_column": "email", "api_key": "k"}


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


class FakeClient:
    """Stands in for HeapClient: `answer(items)` decides each request (return to accept, raise to refuse);
    every accepted item is recorded in arrival order."""

    def __init__(self, answer=None, delay=lambda: 0.0) -> None:
        self.counters = DeliveryCounters()
        self.arrived: list[dict] = []
        self.requests: list[list[dict]] = []
        self._answer = answer or (lambda items: None)
        self._delay = delay
        self._lock = threading.Lock()

    def post(self, path: str, body: bytes, identities: list) -> object:
        parsed = orjson.loads(body)
        items = next((value for value in parsed.values() if isinstance(value, list)), [parsed])
        with self._lock:
            self.requests.append(items)
        time.sleep(self._delay())
        self._answer(items)
        with self._lock:
            self.arrived.extend(items)
        return object()


def sender_for(api: dict, client: FakeClient, **options) -> BatchSender:
    """A sender, and (as `sender.route`) the route to the fake client that run_batches gives each batch."""
    config = parse_config({"app_id": "11", "base_url": "http://127.0.0.1:9", "api": api, **options})
    sender = BatchSender(config, threading.Event())
    sender.route = Route(config, config.streams[0], client)
    return sender


def run_batches(sender: BatchSender, batches: list[Batch]) -> list:
    results = []
    for batch in batches:
        batch.route = sender.route
        results.extend(sender.submit(batch))
    while sender.in_flight:
        results.extend(sender.collect(timeout=1))
    sender.close()
    return sorted(results, key=lambda result: result.number)


def user_batches(rounds: int, users: int, per_batch: int) -> list[Batch]:
    items = [{"identity": f"u{u}", "properties": {"v": r}} for r in range(rounds) for u in range(users)]
    batches = []
    for start in range(0, len(items), per_batch):
        batch = Batch(len(batches) + 1, None)  # run_batches gives it its route
        for item in items[start : start + per_batch]:
            body = orjson.dumps(item)
            batch.bodies.append(body)
            batch.identities.append(item["identity"])
            batch.keys.append(item["identity"])
            batch.size += len(body) + 1
        batches.append(batch)
    return batches


def versions_by_user(arrived: list[dict]) -> dict[str, list[int]]:
    versions: dict[str, list[int]] = {}
    for item in arrived:
        versions.setdefault(item["identity"], []).append(item["properties"]["v"])
    return versions


# ------------------------------------------------------------------------------------------------------------
# Per-key order


def test_each_keys_updates_arrive_in_input_order_whatever_the_concurrency():
    """Ten rounds of the same 300 users in batches of 70 (batches straddle rounds), 8 senders, random delays."""
    client = FakeClient(delay=lambda: random.uniform(0, 0.004))
    results = run_batches(sender_for(USER_API, client, max_concurrent_requests=8), user_batches(10, 300, 70))
    assert all(result.failure is None for result in results)
    versions = versions_by_user(client.arrived)
    assert len(versions) == 300
    assert all(seen == list(range(10)) for seen in versions.values()), "a user's updates arrived out of order"


def test_order_holds_through_the_halving_of_a_refused_request():
    """A refused item in the first round: its batch is halved, yet later rounds still wait for it."""
    def answer(items):
        if len(items) > 1 and any(item["identity"] == "u5" and item["properties"]["v"] == 0 for item in items):
            raise HeapRejected(400, "postBody.users[5].properties should be object")

    client = FakeClient(answer, delay=lambda: random.uniform(0, 0.003))
    results = run_batches(sender_for(USER_API, client, max_concurrent_requests=8), user_batches(4, 40, 16))
    assert sum(len(result.rejected) for result in results) == 0  # u5 v0 went through alone
    assert all(seen == list(range(4)) for seen in versions_by_user(client.arrived).values())


def test_batches_without_shared_keys_run_in_parallel():
    """Track batches carry no keys: 8 of them are in Heap's hands at once. Each request waits until all 8 have
    arrived; one at a time, the first would wait in vain (30 s: only for a sender that serialises them)."""
    all_in_flight = threading.Barrier(8)
    met: list[bool] = []

    def answer(items):
        try:
            all_in_flight.wait(timeout=30)
            met.append(True)
        except threading.BrokenBarrierError:
            met.append(False)

    client = FakeClient(answer)
    batches = []
    for number in range(1, 9):
        body = orjson.dumps({"identity": f"u{number}", "event": "e"})
        batches.append(Batch(number, None, [body], [f"u{number}"], [], len(body)))
    run_batches(sender_for(TRACK_API, client, max_concurrent_requests=8), batches)
    assert met == [True] * 8, "the 8 batches were not all in flight at once"


def test_a_batch_waiting_for_its_key_holds_no_sender_thread():
    """Two sender threads; batch 1 (u1) is in Heap's hands until batch 3 (u2) arrives, batch 2 (u1) waits for
    batch 1 in between. Parked, it leaves the second thread to batch 3; holding it, batch 3 could not start."""
    other_key_arrived = threading.Event()
    seen_while_first_in_flight = []

    def answer(items):
        if items[0]["identity"] == "u2":
            other_key_arrived.set()
        elif items[0]["properties"]["v"] == 0:  # batch 1; the wait is only a bound for the failing case
            seen_while_first_in_flight.append(other_key_arrived.wait(timeout=5))

    client = FakeClient(answer)
    bodies = [{"identity": "u1", "properties": {"v": 0}}, {"identity": "u1", "properties": {"v": 1}}]
    bodies.append({"identity": "u2", "properties": {"v": 0}})
    batches = []
    for number, item in enumerate(bodies, start=1):
        body = orjson.dumps(item)
        batches.append(Batch(number, None, [body], [item["identity"]], [item["identity"]], len(body)))
    results = run_batches(sender_for(USER_API, client, max_concurrent_requests=2), batches)
    assert [result.failure for result in results] == [None, None, None]
    assert seen_while_first_in_flight == [True]
    assert versions_by_user(client.arrived) == {"u1": [0, 1], "u2": [0]}


def test_a_batch_whose_predecessor_failed_is_not_sent():
    def answer(items):
        if items[0]["properties"]["v"] == 0:
            raise DeliveryError("Heap is down", transient=True)

    client = FakeClient(answer, delay=lambda: 0.01)
    results = run_batches(sender_for(USER_API, client), user_batches(2, 5, 5))
    assert isinstance(results[0].failure, DeliveryError)
    assert results[1].failure is not None
    assert [item["properties"]["v"] for item in client.arrived] == []
    assert len(client.requests) == 1


# ------------------------------------------------------------------------------------------------------------
# Refusals: the request or an item?


def test_a_refusal_of_the_request_stops_after_two_requests():
    def answer(items):
        raise HeapRejected(400, "invalid app_id")

    client = FakeClient(answer)
    (result,) = run_batches(sender_for(USER_API, client), user_batches(1, 200, 200))
    assert isinstance(result.failure, DeliveryError) and not result.failure.transient
    assert "refused the request itself" in str(result.failure) and UNEXPLAINED in str(result.failure)
    assert [len(request) for request in client.requests] == [200, 1]


def test_a_413_to_everything_stops_after_two_requests():
    def answer(items):
        raise HeapRejected(413, "Request Entity Too Large")

    client = FakeClient(answer)
    (result,) = run_batches(sender_for(USER_API, client), user_batches(1, 100, 100))
    assert isinstance(result.failure, DeliveryError) and not result.failure.transient
    assert "413" in str(result.failure)
    assert len(client.requests) == 2


def test_a_413_for_a_big_request_is_halved_until_the_halves_fit():
    def answer(items):
        if len(items) > 30:
            raise HeapRejected(413, "Request Entity Too Large")

    client = FakeClient(answer)
    (result,) = run_batches(sender_for(USER_API, client), user_batches(1, 100, 100))
    assert result.failure is None and result.delivered == 100 and result.rejected == []
    assert sorted(item["identity"] for item in client.arrived) == sorted(f"u{u}" for u in range(100))


def test_an_unexplained_refusal_of_one_item_is_isolated_once_the_request_is_proven_good():
    bad = "u37"

    def answer(items):
        if any(item["identity"] == bad for item in items):
            raise HeapRejected(400, f"identity {bad} is blocked")

    client = FakeClient(answer)
    (result,) = run_batches(sender_for(USER_API, client), user_batches(1, 100, 100))
    assert result.failure is None
    assert (result.delivered, result.rejected) == (99, [UNEXPLAINED])
    assert len(client.requests) <= 2 + 2 * 7 + 2


def test_an_item_heap_names_is_isolated_by_halving():
    def answer(items):
        for index, item in enumerate(items):
            if item["identity"] == "u600":
                raise HeapRejected(400, f"postBody.users[{index}].properties should be object")

    client = FakeClient(answer)
    (result,) = run_batches(sender_for(USER_API, client), user_batches(1, 1000, 1000))
    assert (result.delivered, result.rejected) == (999, ["postBody.users[n].properties should be object"])
    assert len(client.requests) <= 1 + 2 * 10 + 2


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "single"])
@pytest.mark.parametrize(
    "bad, named",
    [({"u0", "u37", "u99"}, True), ({"u1", "u64"}, True), ({"u37"}, False)],
    ids=["named_at_the_ends", "named_apart", "unexplained"],
)
def test_each_refused_item_is_placed_at_its_position_in_the_batch(bad, named, bulk):
    """The state a refused record belongs to (and counts it as rejected) is found by its position in the batch."""

    def answer(items):
        for index, item in enumerate(items):
            if item["identity"] in bad:
                raise HeapRejected(400, f"postBody.users[{index}].properties should be object" if named else "no")

    client = FakeClient(answer)
    client.accepted_any = True
    sender = sender_for(USER_API, client, bulk=bulk)
    batches = user_batches(1, 100, 100 if bulk else 1)
    results = run_batches(sender, batches)
    refused = [
        orjson.loads(batch.bodies[position])["identity"]
        for batch, result in zip(batches, results, strict=True)
        for position in result.refused_at
    ]
    assert sorted(refused) == sorted(bad)
    assert all(len(result.refused_at) == len(result.rejected) for result in results)


def test_a_refused_deletion_is_never_skipped():
    def answer(items):
        for index, item in enumerate(items):
            if item["identity"] == "u3":
                raise HeapRejected(400, f"postBody.users[{index}].identity should be string")

    client = FakeClient(answer)
    (result,) = run_batches(sender_for(DELETE_API, client), user_batches(1, 10, 10))
    assert isinstance(result.failure, DeliveryError) and not result.failure.transient
    assert "deletion" in str(result.failure)
    assert client.arrived == [] and len(client.requests) == 1


# ------------------------------------------------------------------------------------------------------------
# The window, in bytes


def test_the_window_is_bounded_in_bytes_as_well_as_batches():
    client = FakeClient(delay=lambda: 0.01)
    sender = sender_for(TRACK_API, client, max_concurrent_requests=8)
    peak = 0
    for number in range(1, 41):
        body = orjson.dumps({"identity": "u", "event": "e"})
        batch = Batch(number, sender.route, [body], ["u"], [], size=MAX_WINDOW_BYTES // 5)  # 5 fill the window
        sender.submit(batch)
        peak = max(peak, sender.bytes_in_flight)
    while sender.in_flight:
        sender.collect(timeout=1)
    sender.close()
    assert peak <= MAX_WINDOW_BYTES
    assert len(client.requests) == 40


# ------------------------------------------------------------------------------------------------------------
# The state rule with several batches in flight


def test_a_state_never_leaves_before_every_batch_holding_an_earlier_record_is_acknowledged():
    """Random interleavings of records, states and out-of-order acknowledgements, several batches in flight."""
    rng = random.Random(7)
    for _ in range(200):
        ledger: StateLedger[int] = StateLedger()
        open_batch = None
        in_flight: list[int] = []
        acknowledged: set[int] = set()
        batch_of_record: list[int] = []
        state_after: dict[int, int] = {}  # state -> records received before it
        for step in range(120):
            action = rng.random()
            if action < 0.5:
                if open_batch is None:
                    open_batch = ledger.open_batch()
                batch_of_record.append(open_batch)
                if rng.random() < 0.2:
                    in_flight.append(open_batch)
                    open_batch = None
            elif action < 0.65:
                state_after[step] = len(batch_of_record)
                ledger.state_received(step)
            elif in_flight:
                batch = in_flight.pop(rng.randrange(len(in_flight)))
                ledger.acknowledged(batch)
                acknowledged.add(batch)
            for state, _ in ledger.releasable():
                needed = set(batch_of_record[: state_after[state]])
                assert needed <= acknowledged, f"state {state} left before batches {needed - acknowledged}"


def test_every_item_refused_alone_with_the_same_answer_is_the_request_found_in_a_few_requests():
    def answer(items):
        raise HeapRejected(400, "postBody.users[0].properties should be object")

    client = FakeClient(answer)
    (result,) = run_batches(sender_for(USER_API, client), user_batches(1, 1000, 1000))
    assert isinstance(result.failure, DeliveryError) and not result.failure.transient
    assert "refused the request itself" in str(result.failure)
    assert len(client.requests) <= 10 + 4, f"{len(client.requests)} requests"


def test_a_few_items_refused_alike_once_heap_accepted_the_sync_are_skipped():
    bad = ("u1", "u2", "u3", "u4")

    def answer(items):
        if any(item["identity"] in bad and item["properties"]["v"] == 1 for item in items):
            raise HeapRejected(400, "postBody.users[0].properties should be object")

    client = FakeClient(answer)
    first, second = run_batches(sender_for(USER_API, client, max_concurrent_requests=1), user_batches(2, 8, 8))
    assert (first.delivered, first.rejected) == (8, [])
    assert second.failure is None and (second.delivered, len(second.rejected)) == (4, 4)


# ------------------------------------------------------------------------------------------------------------
# Refusals that name no item: evidence against the request, not an item


def track_batches(items: int, per_batch: int) -> list[Batch]:
    batches = []
    for start in range(0, items, per_batch):
        batch = Batch(len(batches) + 1, None)
        for i in range(start, min(start + per_batch, items)):
            body = orjson.dumps({"identity": f"u{i}", "event": "e"})
            batch.bodies.append(body)
            batch.identities.append(f"u{i}")
            batch.size += len(body) + 1
        batches.append(batch)
    return batches


def refusing(rule, text: str = "Bad Request"):
    """An answer for FakeClient: the n-th request (from 0) holding `items` is refused with `text` if rule(n, items)."""
    count = iter(range(10**9))
    lock = threading.Lock()

    def answer(items):
        with lock:
            refused = rule(next(count), items)
        if refused:
            raise HeapRejected(400, text)

    return answer


@pytest.mark.parametrize("per_batch", [100, 1000])
def test_heap_refusing_everything_mid_sync_stops_it_in_under_50_requests_skipping_nothing(per_batch):
    """Two requests accepted, then every one refused without a name (the red team's case, which took 7,564
    requests and skipped 3,800 records with batches of 100, and overflowed the stack with 1000)."""
    client = FakeClient(refusing(lambda n, items: n >= 2, "postBody.app_id is invalid"))
    results = run_batches(sender_for(TRACK_API, client), track_batches(4000, per_batch))
    failures = [result.failure for result in results if result.failure is not None]
    assert failures and all(isinstance(failure, DeliveryError | refusals.DeliveryStopped) for failure in failures)
    assert any(isinstance(failure, DeliveryError) and failure.transient for failure in failures)
    assert len(client.requests) - 2 <= 50, f"{len(client.requests)} requests"
    acknowledged = [result for result in results if result.failure is None]
    assert [result.rejected for result in acknowledged] == [[]] * len(acknowledged)
    assert sum(result.delivered for result in acknowledged) == 2 * per_batch


@pytest.mark.parametrize("seed", range(20))
def test_random_refusals_never_skip_a_good_item(seed):
    """One request in ten refused at random, batches of 20, four at a time: every item lands, none is refused."""
    chance = random.Random(seed)
    client = FakeClient(refusing(lambda n, items: chance.random() < 0.1))
    results = run_batches(sender_for(TRACK_API, client, max_concurrent_requests=4), track_batches(2000, 20))
    assert [result.failure for result in results] == [None] * len(results)
    assert sum(len(result.rejected) for result in results) == 0
    assert {item["identity"] for item in client.arrived} == {f"u{i}" for i in range(2000)}


def test_heap_taking_single_items_only_stops_the_sync_instead_of_splitting_every_batch():
    client = FakeClient(refusing(lambda n, items: len(items) > 1))
    results = run_batches(sender_for(TRACK_API, client), track_batches(3000, 1000))
    errors = [result.failure for result in results if isinstance(result.failure, DeliveryError)]
    assert errors and not errors[0].transient and "batch_size" in str(errors[0])
    assert len(client.requests) <= 50, f"{len(client.requests)} requests"


def test_an_item_refused_without_a_name_is_tried_again_before_its_keys_later_updates():
    """u5's first update is refused twice, then taken: its later update in the same batch waits behind it."""
    refusals_left = [2]

    def answer(items):
        if any(item["identity"] == "u5" and item["properties"]["v"] == 0 for item in items) and (
            len(items) > 1 or refusals_left[0] > 0
        ):
            refusals_left[0] -= len(items) == 1
            raise HeapRejected(400, "Bad Request")

    client = FakeClient(answer)
    sender = sender_for(USER_API, client, max_concurrent_requests=1)
    (result,) = run_batches(sender, user_batches(2, 10, 20))
    assert (result.failure, result.delivered, result.rejected) == (None, 20, [])
    assert versions_by_user(client.arrived)["u5"] == [0, 1]


def test_an_item_heap_refuses_every_time_without_a_name_is_skipped_after_a_harmless_repeat():
    """The last item of the only batch is refused alone, with nothing after it to show that Heap takes other
    requests: an event Heap already took is sent again (its idempotency key makes the repeat change nothing), and
    the item, refused alone twice more after that, is skipped."""
    client = FakeClient(refusing(lambda n, items: any(item["identity"] == "u9" for item in items)))
    (result,) = run_batches(sender_for(TRACK_API, client), track_batches(10, 10))
    assert (result.failure, result.delivered, result.rejected) == (None, 9, [UNEXPLAINED])
    arrived = [item["identity"] for item in client.arrived]
    assert sorted(set(arrived)) == sorted(f"u{i}" for i in range(9)) and arrived.count("u8") == 2
    assert [len(items) for items in client.requests][-4:] == [1, 1, 1, 1]  # u9, u8 again, u9, u9


def test_a_lone_refusal_without_a_name_and_no_other_request_taken_stops_the_sync(monkeypatch):
    """Single items; the first is taken, the second refused every time and nothing else is sent meanwhile: whether
    Heap refuses it or every request cannot be told, so the sync stops rather than skip it."""
    monkeypatch.setattr(refusals, "EVIDENCE_WAIT_SECONDS", 0.05)
    client = FakeClient(refusing(lambda n, items: n > 0))
    results = run_batches(sender_for(TRACK_API, client, max_concurrent_requests=1), track_batches(2, 1))
    assert results[0].failure is None and results[0].delivered == 1
    assert isinstance(results[1].failure, DeliveryError) and results[1].failure.transient
    assert results[1].rejected == [] and len(client.requests) == 1 + 1 + refusals.SUSPECT_RETRIES
