"""Batch -> HTTP requests: getting batches of Heap items into Heap, and knowing exactly which ones got there.

`BatchSender` runs several batches at once on a thread pool, in a window bounded in batches and in bytes,
each by its stream's `Route` (endpoint, bulk or single, client), and hands each finished batch back as a
`BatchResult`.

Per-key order. Heap's user and account properties are last-write-wins and identify is order-sensitive, so
the updates of one key (identity, account ID, user_id) must reach Heap in input order. Each batch carries
the ordering key of each item (none for track: events carry their own time). A batch submitted while
earlier batches holding one of its keys are unfinished is parked, holding no sender thread, and handed to
the pool when the last of them finishes; batches without a shared key run in parallel, so one stream's
waits never hold another stream's requests. Within a batch, retries repeat the same request, and the
halves of a refused request go one after the other, so the order holds there too. A batch whose
predecessor failed is not sent.

Refusals (400, 413, 422) are narrowed down by `refusals.ItemDelivery`, with what Heap's answers at each
endpoint have shown so far (a `RefusalWatch` per endpoint, shared by its batches).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import orjson

from destination_heap_analytics.client import DeliveryError, DeliveryStopped, HeapClient
from destination_heap_analytics.config import HeapConfig, StreamConfig
from destination_heap_analytics.refusals import ItemDelivery, RefusalWatch

logger = logging.getLogger("airbyte")


@dataclass(frozen=True)
class Endpoint:
    path: str
    list_key: str | None  # the item list of the bulk body; None: Heap has no bulk form
    app_id_in_body: bool = True  # the ingestion APIs authenticate by app_id in the body
    answers_with_request_id: bool = False  # Heap's answer names an asynchronous request (user deletion)


ENDPOINTS = {
    "track": Endpoint("/api/track", "events"),
    "add_user_properties": Endpoint("/api/add_user_properties", "users"),
    "add_account_properties": Endpoint("/api/add_account_properties", "accounts"),
    "identify": Endpoint("/api/v1/identify", None),
    "delete_users": Endpoint(
        "/api/public/v0/user_deletion", "users", app_id_in_body=False, answers_with_request_id=True
    ),
}
DRY_RUN_SAMPLES = 3
STOP_CHECK_SECONDS = 0.25  # how often a wait for Heap looks whether the sync is stopping
# Heap publishes no maximum body size: 4 MB keeps a request far from common proxy and gateway limits (10 MB
# and more) while a batch of 1000 ordinary items (1 to 2 kB each) still fits.
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_WINDOW_BYTES = 32 * 1024 * 1024  # bodies queued or in flight at once, whatever the number of batches


class Route:
    """Where one stream's batches go: its endpoint, in bulk or one item a request, through its client. Items
    arrive as JSON: a body is written around them, never parsed and dumped again."""

    def __init__(self, config: HeapConfig, stream: StreamConfig, client: HeapClient) -> None:
        self.endpoint = ENDPOINTS[stream.mapping.api_type]
        self.bulk = stream.bulk
        self.client = client
        envelope = {"app_id": config.app_id} if self.endpoint.app_id_in_body else {}
        if stream.bulk:
            self._opening = orjson.dumps(envelope | {self.endpoint.list_key: []})[:-2]  # {"app_id":"1","users":[
        else:
            self._opening = orjson.dumps(envelope)[:-1] + (b"," if envelope else b"")  # {"app_id":"1", then item

    def body(self, items: list[bytes] | bytes) -> bytes:
        """The request body: a bulk list of items, or the single form of one item."""
        if self.bulk:
            return b"%s%s]}" % (self._opening, b",".join(items))
        return self._opening + items[1:]  # the item's own fields after the envelope's


@dataclass
class Batch:
    """Heap items of one stream in input order: each one's JSON and the identity it counts against in rate
    limits, the keys whose order is kept (HeapItem.key; none for track), and the bytes of its bodies."""

    number: int
    route: Route
    bodies: list[bytes] = field(default_factory=list)
    identities: list[str | None] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    size: int = 0
    merged: dict[int, int] = field(default_factory=dict)  # item position -> later records merged into it

    @property
    def records(self) -> int:
        return len(self.bodies) + sum(self.merged.values())


@dataclass
class BatchResult:
    number: int
    delivered: int = 0
    rejected: list[str] = field(default_factory=list)  # Heap's reason, one entry per refused item
    refused_at: list[int] = field(default_factory=list)  # each refused item's position in the batch, likewise
    failure: DeliveryError | DeliveryStopped | None = None  # set: the batch is not (wholly) in Heap


class _Turn:
    """A submitted batch in the keys' queues: the earlier batches it goes after, the later ones parked behind it,
    and whether it is done and delivered. The lists and flags change under the sender's lock."""

    def __init__(self, batch: Batch, watch: RefusalWatch) -> None:
        self.batch = batch
        self.watch = watch  # what Heap's refusals at its endpoint have shown
        # a key is kept in order at its endpoint: two streams updating the same users' properties share it
        path = batch.route.endpoint.path
        self.keys = {(path, key) for key in batch.keys}
        self.size = batch.size
        self.result: Future[BatchResult] = Future()
        self.after: list[_Turn] = []  # the earlier batches holding one of its keys, uncollected when it came
        self.unfinished = 0  # how many of those are still running or parked: it starts when none is
        self.parked: list[_Turn] = []  # later batches waiting for this one
        self.done = False
        self.delivered = False


class BatchSender:
    """See the module: concurrent batches, each key's in input order, in a window bounded in batches and bytes."""

    def __init__(self, config: HeapConfig, stop: threading.Event) -> None:
        self._app_id = config.app_id
        self._dry_run = config.dry_run
        self._samples_left = DRY_RUN_SAMPLES if config.dry_run else 0
        self._stop = stop
        self._window = 2 * config.max_concurrent_requests  # queued as well as running, so no worker idles
        self._pool = ThreadPoolExecutor(config.max_concurrent_requests, thread_name_prefix="heap-sender")
        self._running: set[Future[BatchResult]] = set()  # submitted, not yet collected
        self._turns: dict[int, _Turn] = {}  # batch number -> its turn, until collected
        self._last_turn: dict[Hashable, _Turn] = {}  # (path, key) -> the latest unfinished batch holding it
        self._watches: dict[str, RefusalWatch] = {}  # endpoint path -> what its refusals have shown
        self._turns_lock = threading.Lock()  # a turn's ending (a sender thread) against a later one's taking
        self.bytes_in_flight = 0

    @property
    def in_flight(self) -> int:
        """Batches submitted and not yet collected."""
        return len(self._running)

    def submit(self, batch: Batch, while_waiting: Callable[[], object] = lambda: None) -> list[BatchResult]:
        """Queue a batch; returns the results of batches that finished meanwhile. While the window is full it
        waits (back-pressure on stdin), calling `while_waiting` now and then; once the sync is stopping, the
        batch is dropped, never acknowledged."""
        finished = self.collect()
        while self._window_is_full(batch) and not self._stop.is_set():
            finished.extend(self.collect(timeout=STOP_CHECK_SECONDS))
            while_waiting()
        if not self._stop.is_set():
            watch = self._watches.setdefault(batch.route.endpoint.path, RefusalWatch(batch.route.endpoint.path))
            turn = _Turn(batch, watch)
            self._running.add(turn.result)
            self.bytes_in_flight += batch.size
            if self._take_turn(batch.number, turn):
                self._pool.submit(self._run, turn)
        return finished

    def collect(self, timeout: float | None = 0) -> list[BatchResult]:
        """Results of finished batches, waiting up to `timeout` seconds (None: forever) for the first."""
        if not self._running:
            return []
        done, self._running = wait(self._running, timeout, return_when=FIRST_COMPLETED)
        results = [future.result() for future in done]
        for result in results:
            self._end_turn(result.number)
        return results

    def close(self) -> None:
        """Stop: abandon queued batches, let running requests end (bounded by their timeout)."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _window_is_full(self, batch: Batch) -> bool:
        if self.in_flight >= self._window:
            return True
        return self.in_flight > 0 and self.bytes_in_flight + batch.size > MAX_WINDOW_BYTES

    def behind(self, batch: Batch) -> bool:
        """Whether an earlier batch holding one of the batch's keys is unfinished (it would be parked)."""
        path = batch.route.endpoint.path
        turns = (self._last_turn.get((path, key)) for key in batch.keys)
        return any(turn is not None and not turn.done for turn in turns)

    def _take_turn(self, number: int, turn: _Turn) -> bool:
        """Register the batch as its keys' latest, parked behind the earlier unfinished batches holding one of
        them; True if there are none, and it may start now."""
        after = {id(earlier): earlier for key in turn.keys if (earlier := self._last_turn.get(key)) is not None}
        turn.after = list(after.values())
        with self._turns_lock:
            for earlier in turn.after:
                if not earlier.done:
                    earlier.parked.append(turn)
                    turn.unfinished += 1
        for key in turn.keys:
            self._last_turn[key] = turn
        self._turns[number] = turn
        return turn.unfinished == 0

    def _end_turn(self, number: int) -> None:
        turn = self._turns.pop(number)
        self.bytes_in_flight -= turn.size
        for key in turn.keys:
            if self._last_turn.get(key) is turn:
                del self._last_turn[key]

    def _run(self, turn: _Turn) -> None:
        """Deliver a batch on a sender thread; then start the batches parked behind it that wait for no other."""
        outcome: BatchResult | Exception
        try:
            outcome = self._deliver(turn.batch, turn.after, turn.watch)
        except Exception as error:  # a bug, not Heap's answer: collect raises it on the main thread
            outcome = error
        with self._turns_lock:
            turn.done = True
            turn.delivered = isinstance(outcome, BatchResult) and outcome.failure is None
            for later in turn.parked:
                later.unfinished -= 1
            ready = [later for later in turn.parked if later.unfinished == 0]
            turn.after, turn.parked = [], []  # one key's batches do not keep each other alive
        if isinstance(outcome, BatchResult):
            turn.result.set_result(outcome)
        else:
            turn.result.set_exception(outcome)
        for later in ready:
            self._pool.submit(self._run, later)

    def _deliver(self, batch: Batch, after: list[_Turn], watch: RefusalWatch) -> BatchResult:
        result = BatchResult(batch.number)
        try:
            if not all(earlier.delivered for earlier in after):
                raise DeliveryStopped()  # an earlier update of one of its keys is not in Heap: never overtake it
            if self._dry_run:
                self._rehearse(batch, result)
            else:
                ItemDelivery(batch.route, batch, result, watch, self._stop).run()
        except (DeliveryError, DeliveryStopped) as failure:
            result.failure = failure
        return result

    def _rehearse(self, batch: Batch, result: BatchResult) -> None:
        """Dry run: nothing is sent; the first bodies are logged by shape (values masked: personal data)."""
        route = batch.route
        if self._samples_left > 0:
            self._samples_left -= 1
            shape = masked(orjson.loads(route.body(batch.bodies[:2] if route.bulk else batch.bodies[0])))
            if "app_id" in shape:
                shape["app_id"] = self._app_id  # the config's, not data
            logger.info(f"Dry run: Heap would receive at {route.endpoint.path}: {orjson.dumps(shape).decode()}")
        result.delivered = len(batch.bodies)


def masked(value: Any) -> Any:
    """The shape of a body with every value replaced by its type (and length for text), and each `properties`
    object by its size (under `*` property names come from the data): safe to log."""
    if isinstance(value, dict):
        return {
            key: f"<{len(inner)} properties>" if key == "properties" and isinstance(inner, dict) else masked(inner)
            for key, inner in value.items()
        }
    if isinstance(value, list):
        return [masked(inner) for inner in value]
    if isinstance(value, str):
        return f"<text, {len(value)} chars>"
    return f"<{type(value).__name__}>"
