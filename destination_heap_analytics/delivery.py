"""Batch -> HTTP requests: getting batches of Heap items into Heap, and knowing exactly which ones got there.

`BatchSender` runs several batches at once on a thread pool, in a window bounded in batches and in bytes,
each by its stream's `Route` (endpoint, bulk or single, client), and hands each finished batch back as a
`BatchResult`.

Per-key order. Heap's user and account properties are last-write-wins and identify is order-sensitive, so
the updates of one key (identity, account ID, user_id) must reach Heap in input order. Each batch carries
the ordering key of each item (none for track: events carry their own time). When a batch is submitted, it
is made to wait for the earlier batches, still unfinished, that hold one of its keys; batches without a
shared key run in parallel. The pool starts batches in submission order, so a batch only ever waits for one
already running: no deadlock. Within a batch, retries repeat the same request, and the halves of a refused
request go one after the other, so the order holds there too. A batch whose predecessor failed is not sent.

Refusals (400, 413, 422). When Heap's text names an item (`postBody.events[3]...`, or a field of a single
item), the request is halved until each refused item stands alone: the good ones are delivered. When it
names none (a wrong app_id, a 413), the first item is sent alone to tell a refused request from a refused
item; refused too, and with nothing of this sync accepted yet, it is the request: the sync stops with a
config error, after two requests rather than twice the batch. So does a batch whose first three items,
tried alone before anything was accepted, are refused with the same answer (whatever item Heap names), and
a 413 for a single item. A refused deletion is never skipped: it stops the sync.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from destination_heap_analytics.client import (
    CHECK_BASE_URL,
    Answer,
    DeliveryError,
    DeliveryStopped,
    HeapClient,
    HeapRejected,
)
from destination_heap_analytics.config import HeapConfig, StreamConfig

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
# Items refused one by one with the same answer, before anything was accepted: taken as the request refused.
SAME_REFUSALS_FOR_REQUEST = 3
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


@dataclass
class BatchResult:
    number: int
    delivered: int = 0
    rejected: list[str] = field(default_factory=list)  # Heap's reason, one entry per refused item
    refused_at: list[int] = field(default_factory=list)  # each refused item's position in the batch, likewise
    failure: DeliveryError | DeliveryStopped | None = None  # set: the batch is not (wholly) in Heap


class _Turn:
    """A submitted batch as the later batches that share a key with it see it: done yet, and delivered?"""

    def __init__(self, batch: Batch) -> None:
        # a key is kept in order at its endpoint: two streams updating the same users' properties share it
        path = batch.route.endpoint.path
        self.keys = {(path, key) for key in batch.keys}
        self.size = batch.size
        self.done = threading.Event()
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
        # Finished batches arrive here through a done-callback: collecting costs the same whatever the window.
        self._finished: queue.SimpleQueue[Future[BatchResult]] = queue.SimpleQueue()
        self._turns: dict[int, _Turn] = {}  # batch number -> its turn, until collected
        self._last_turn: dict[Hashable, _Turn] = {}  # (path, key) -> the latest unfinished batch holding it
        self.in_flight = 0
        self.bytes_in_flight = 0

    def submit(self, batch: Batch, while_waiting: Callable[[], object] = lambda: None) -> list[BatchResult]:
        """Queue a batch; returns the results of batches that finished meanwhile. While the window is full it
        waits (back-pressure on stdin), calling `while_waiting` now and then; once the sync is stopping, the
        batch is dropped, never acknowledged."""
        finished = self.collect()
        while self._window_is_full(batch) and not self._stop.is_set():
            finished.extend(self.collect(timeout=STOP_CHECK_SECONDS))
            while_waiting()
        if not self._stop.is_set():
            turn = _Turn(batch)
            after = self._take_turn(batch.number, turn)
            self._pool.submit(self._deliver, batch, after, turn).add_done_callback(self._finished.put)
            self.in_flight += 1
            self.bytes_in_flight += batch.size
        return finished

    def collect(self, timeout: float | None = 0) -> list[BatchResult]:
        """Results of finished batches, waiting up to `timeout` seconds (None: forever) for the first."""
        done = []
        if self.in_flight and timeout != 0:
            try:
                done.append(self._finished.get(timeout=timeout))
            except queue.Empty:
                return []
        while True:
            try:
                done.append(self._finished.get_nowait())
            except queue.Empty:
                break
        self.in_flight -= len(done)
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

    def _take_turn(self, number: int, turn: _Turn) -> list[_Turn]:
        """Register the batch as its keys' latest; returns the unfinished batches it must wait for."""
        after = {id(earlier): earlier for key in turn.keys if (earlier := self._last_turn.get(key)) is not None}
        for key in turn.keys:
            self._last_turn[key] = turn
        self._turns[number] = turn
        return list(after.values())

    def _end_turn(self, number: int) -> None:
        turn = self._turns.pop(number)
        self.bytes_in_flight -= turn.size
        for key in turn.keys:
            if self._last_turn.get(key) is turn:
                del self._last_turn[key]

    def _deliver(self, batch: Batch, after: list[_Turn], turn: _Turn) -> BatchResult:
        result = BatchResult(batch.number)
        route = batch.route
        try:
            self._wait_for(after)
            if self._dry_run:
                self._rehearse(batch, result)
            elif route.bulk:
                _deliver_bulk(route, batch.bodies, batch.identities, result)
            else:
                for position, (body, identity) in enumerate(zip(batch.bodies, batch.identities, strict=True)):
                    _deliver_alone(route, route.body(body), identity, result, position)
        except (DeliveryError, DeliveryStopped) as failure:
            result.failure = failure
        turn.delivered = result.failure is None
        turn.done.set()
        return result

    def _wait_for(self, after: list[_Turn]) -> None:
        """Wait until the earlier batches holding one of this batch's keys are done. If one of them did not
        reach Heap, this one must not overtake it: it is abandoned (the sync fails on the earlier one)."""
        for earlier in after:
            while not earlier.done.wait(STOP_CHECK_SECONDS):
                if self._stop.is_set():
                    raise DeliveryStopped()
            if not earlier.delivered:
                raise DeliveryStopped()

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


def _deliver_bulk(
    route: Route,
    bodies: list[bytes],
    identities: list[str | None],
    result: BatchResult,
    request_ok: bool = False,
    first: int = 0,
) -> None:
    """Send items in one request. Refused naming an item: halve until each refused item stands alone, the
    halves in order. Refused naming none: send the first item alone to learn whether Heap refuses the request
    itself (`request_ok`: an item of this batch was accepted, so it does not). `first`: the position of the
    first item in its batch."""
    endpoint = route.endpoint
    try:
        answer = route.client.post(endpoint.path, route.body(bodies), identities)
    except HeapRejected as rejection:
        if len(bodies) == 1 or endpoint.answers_with_request_id:
            _refused(route, rejection, result, request_ok, first)  # a refused deletion stops the sync there
            return
        if not (request_ok or rejection.names_item):
            request_ok = _deliver_alone(route, route.body(bodies[:1]), identities[0], result, first)
            _deliver_bulk(route, bodies[1:], identities[1:], result, request_ok, first + 1)
            return
        route.client.counters.bisected()
        middle = len(bodies) // 2
        _deliver_bulk(route, bodies[:middle], identities[:middle], result, request_ok, first)
        _deliver_bulk(route, bodies[middle:], identities[middle:], result, request_ok, first + middle)
        return
    result.delivered += len(bodies)
    if endpoint.answers_with_request_id:
        _log_deletion_request(answer, len(bodies))


def _deliver_alone(route: Route, body: bytes, identity: str | None, result: BatchResult, position: int) -> bool:
    """Send one item in a request of its own (`body`): True if Heap took it (so the request is fine); raises if
    Heap refuses the request itself."""
    try:
        route.client.post(route.endpoint.path, body, [identity])
    except HeapRejected as refusal:
        _refused(route, refusal, result, False, position)
        return False
    result.delivered += 1
    return True


def _refused(route: Route, rejection: HeapRejected, result: BatchResult, request_ok: bool, position: int) -> None:
    """A refusal not to be narrowed down further (one item, or a deletion): the item is counted as rejected if
    the refusal is about it; otherwise the sync stops."""
    if route.endpoint.answers_with_request_id:
        raise DeliveryError(
            f"Heap refused a deletion request ({rejection}): its users are not deleted, and a deletion is never "
            "skipped. Check the users' identities or user_ids and api.api_key, then run the sync again; it "
            "resumes from the last state.",
            transient=False,
        )
    if rejection.status == 413:
        raise DeliveryError(
            f"Heap refused a request holding a single item as too large ({rejection}). Nothing more is sent: "
            "check base_url, and any proxy between this host and Heap.",
            transient=False,
        )
    accepted = request_ok or route.client.accepted_any
    if accepted or (rejection.names_item and not _same_refusals(result, rejection)):
        result.rejected.append(rejection.reason)
        result.refused_at.append(position)
        return
    raise DeliveryError(
        f"Heap refused the request itself, not an item in it ({rejection}), and has accepted nothing from this "
        f"sync. Nothing more is sent. {CHECK_BASE_URL}",
        transient=False,
    )


def _same_refusals(result: BatchResult, rejection: HeapRejected) -> bool:
    """Nothing of the batch delivered, and its first items tried alone all refused with this same answer: it is
    the request, whatever item Heap names (a few more requests tell it, not twice the batch)."""
    refused = result.rejected
    alike = set(refused) <= {rejection.reason}
    return result.delivered == 0 and alike and len(refused) + 1 >= SAME_REFUSALS_FOR_REQUEST


def _log_deletion_request(answer: Answer, users: int) -> None:
    """Heap deletes asynchronously: the request id is what a user needs to follow the deletion up."""
    try:
        body = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        body = {}
    request_id, status = body.get("deletion_request_id", "(none given)"), body.get("status", "unknown")
    logger.info(f"Heap accepted a deletion request for {users} users: deletion_request_id {request_id}, {status}")


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
