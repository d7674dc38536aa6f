"""Heap refusing requests (400) in ways that name no item: from the start, mid-sync, at random, or whenever a
request holds more than one item. A refusal that names no item is evidence against the request, not an item:
the sync fails clearly within a bounded number of requests when the refusals cannot be pinned on items, never
counts good records as `rejected_by_heap`, and never emits a STATE past what Heap holds.

The Heap here is integration_tests/misbehaving.py's small server on 127.0.0.1, refusing by a rule each test sets.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Callable

import pytest

from integration_tests.misbehaving import Handler, Server
from integration_tests.support import TRACK_API, Result, catalog, config, interleave, people, run_connector, states_of

EVERY = 100  # records between two states
MAX_REQUESTS_WHEN_FAILING = 50


class RefusingHeap:
    """Answers the n-th request (from 0) holding `items` with 400 `text` when refuses(n, items), else with an
    empty 200 (Heap's own clients' acknowledgement); keeps the items it accepted."""

    def __init__(self, refuses: Callable[[int, list[dict]], bool], text: bytes = b"Bad Request") -> None:
        self.accepted: list[dict] = []
        self._refuses = refuses
        self._text = text
        self._requests = 0
        self._lock = threading.Lock()

    def __call__(self, handler: Handler, path: str, raw: bytes) -> None:
        body = json.loads(raw)
        items = body.get("events", [body])
        with self._lock:
            refused = self._refuses(self._requests, items)
            self._requests += 1
            if not refused:
                self.accepted.extend(items)
        if refused:
            handler.send(400, self._text)
        else:
            handler.send(200, b"")

    def holds(self) -> set[str]:
        with self._lock:
            return {item["identity"] for item in self.accepted}


def assert_states_within_heap(result: Result, rows: list[dict], heap: RefusingHeap) -> None:
    """Each STATE emitted (state n follows record n * EVERY) covers only records Heap accepted."""
    held = heap.holds()
    for position in result.cursors("position"):
        missing = [i for i in range(min(position * EVERY, len(rows))) if rows[i]["email"] not in held]
        assert not missing, f"STATE {position} emitted, but {len(missing)} records before it are not in Heap"


@pytest.mark.parametrize(
    ("batch_size", "text"),
    [(100, b"Bad Request"), (1000, b"postBody.app_id is invalid")],
    ids=["batches_of_100", "batches_of_1000"],
)
def test_heap_refusing_every_request_mid_sync_fails_the_sync_within_50_requests(batch_size: int, text: bytes):
    """Two requests accepted, then every one refused without naming an item: a transient error within 50
    requests, nothing counted as rejected_by_heap, no STATE past the 2 batches Heap took."""
    rows = people(4000)
    messages = interleave(rows, every=EVERY)
    heap = RefusingHeap(lambda n, items: n >= 2, text)
    with Server(heap) as server:
        cfg = config(server.url, TRACK_API, batch_size=batch_size)
        result = run_connector("write", cfg, catalog(), messages, timeout=120)
        refused = len(server.requests) - 2
    assert result.returncode != 0, result.describe()
    assert [error["failure_type"] for error in result.errors] == ["transient_error"], result.describe()
    message = result.errors[0]["message"]
    assert "refused" in message and "run the sync again" in message, message
    assert "Traceback" not in result.stderr, result.describe()
    assert refused <= MAX_REQUESTS_WHEN_FAILING, f"{refused} requests refused before the sync stopped"
    assert result.summary["skipped"] == 0, result.describe()
    assert len(heap.accepted) == 2 * batch_size
    assert_states_within_heap(result, rows, heap)


def test_random_refusals_never_skip_a_good_record():
    """One request in ten refused at random ("Bad Request"), batches of 20, one request at a time (so the run
    repeats exactly): every record lands, none is counted as refused, every STATE is emitted."""
    rows = people(4000)
    messages = interleave(rows, every=EVERY)
    chance = random.Random(5)
    heap = RefusingHeap(lambda n, items: chance.random() < 0.1)
    with Server(heap) as server:
        cfg = config(server.url, TRACK_API, batch_size=20, max_concurrent_requests=1)
        result = run_connector("write", cfg, catalog(), messages, timeout=120)
    assert result.returncode == 0, result.describe()
    assert result.summary["skipped"] == 0, result.skipped
    assert heap.holds() == {row["email"] for row in rows}
    assert result.states == states_of(messages)


def test_heap_taking_single_items_only_loads_everything_and_says_how_many_requests_it_split():
    """Every request of more than one item refused, single items accepted: each request is halved down to single
    items (about 2 requests a record, so slow but complete: no record is rejected, every state leaves), and the
    summary counts the splits, which tells the user to look at batch_size or a proxy limiting requests."""
    rows = people(300)
    heap = RefusingHeap(lambda n, items: len(items) > 1)
    messages = interleave(rows, every=EVERY)
    with Server(heap) as server:
        result = run_connector("write", config(server.url, TRACK_API), catalog(), messages, timeout=120)
    assert result.returncode == 0, result.describe()
    assert result.summary["skipped"] == 0, result.skipped
    assert heap.holds() == {row["email"] for row in rows}
    assert result.states == states_of(messages)
    splits = re.search(r", (\d+) bulk requests split to isolate refused items", result.summary_line)
    assert splits and int(splits[1]) >= len(rows) - 1, result.summary_line
