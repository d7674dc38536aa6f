"""Items -> HTTP requests -> fates: getting the items of every lane into Heap, and booking what became of each record.

The `Dispatcher` owns one `Lane` per Heap endpoint (lanes.py: each key's items in input order, merging) and
`max_concurrent_requests` sender threads. A sender takes a request's worth of ready items of one route, under the
dispatcher's one lock, when there is a full request of them, when the oldest has waited `MAX_ITEM_AGE_SECONDS`, or
when the writer asks for everything ready to go (the source is quiet, the window is full, the input has ended). It
then delivers them without any lock: `_deliver` sends the request through the route's client and acts on
`refusals.decide` when Heap refuses it; every record's fate is booked in the `StateLedger` once. Any error that stops
the sync is kept in `failure`, for the writer to raise; the other senders stop before their next attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

from destination_heap_analytics.client import DeliveryError, DeliveryStopped, HeapClient, HeapRejected
from destination_heap_analytics.config import HeapConfig
from destination_heap_analytics.exchange import Answer
from destination_heap_analytics.lanes import MERGING_APIS, Item, Lane
from destination_heap_analytics.refusals import Action, Evidence, decide
from destination_heap_analytics.state import Fate, StateLedger

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
# Heap publishes no maximum body size: 4 MB keeps a request far from common proxy and gateway limits (10 MB
# and more) while a request of 1000 ordinary items (1 to 2 kB each) still fits.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_ITEM_AGE_SECONDS = 1.0  # a ready item waits at most this long for a full request: slow sources' states flow
LOOK_SECONDS = 0.25  # how often an idle sender looks at item ages, and a waiting one whether the sync stops
SUSPECT_PAUSE_SECONDS = 0.5  # before a record refused alone without a name is tried again, doubled each time,
MAX_SUSPECT_PAUSE_SECONDS = 2.0  # up to this: a run of RUN_LIMIT refusals ends within a minute of pauses


class Route:
    """Where items go: an endpoint, in bulk or one item a request, through a client. Items arrive as JSON: a body is
    written around them, never parsed and dumped again. Streams with the same settings share one route (and so
    their requests)."""

    def __init__(self, config: HeapConfig, api_type: str, bulk: bool, batch_size: int, client: HeapClient) -> None:
        self.endpoint = ENDPOINTS[api_type]
        self.merges = api_type in MERGING_APIS  # its items merge with earlier updates of their key (lanes.py)
        self.bulk = bulk
        self.batch_size = batch_size if bulk else 1
        self.client = client
        envelope = {"app_id": config.app_id} if self.endpoint.app_id_in_body else {}
        if bulk:
            self._opening = orjson.dumps(envelope | {self.endpoint.list_key: []})[:-2]  # {"app_id":"1","users":[
        else:
            self._opening = orjson.dumps(envelope)[:-1] + (b"," if envelope else b"")  # {"app_id":"1", then item

    def body(self, items: list[bytes]) -> bytes:
        """The request body: a bulk list of items, or the single form of one item."""
        if self.bulk:
            return b"%s%s]}" % (self._opening, b",".join(items))
        return self._opening + items[0][1:]  # the item's own fields after the envelope's


class EndpointWatch:
    """What Heap's answers at one endpoint have shown so far (counts only; changed under its own small lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acceptances = 0
        self.run = 0  # refusals naming no item since the last acceptance

    def accepted(self) -> None:
        with self._lock:
            self.acceptances += 1
            self.run = 0

    def refused(self, names_item: bool) -> int:
        with self._lock:
            self.run += not names_item
            return self.run


class Dispatcher:
    """See the module."""

    def __init__(self, config: HeapConfig, ledger: StateLedger, stop: threading.Event) -> None:
        self._ledger = ledger
        self._stop = stop
        self._dry_run = config.dry_run
        self._app_id = config.app_id
        self._samples_left = DRY_RUN_SAMPLES if config.dry_run else 0
        self._on_invalid_fail = config.on_invalid_record == "fail"
        self._lock = threading.Condition()
        self._lanes: dict[str, Lane] = {}  # endpoint path -> its lane
        self._watches: dict[str, EndpointWatch] = {}
        self._routes: dict[Route, Lane] = {}
        self._flushing = False  # everything ready goes, full request or not
        self.in_flight = 0  # requests being delivered
        self.failure: Exception | None = None  # what stops the sync (set once)
        self._senders = [
            threading.Thread(target=self._send_requests, name=f"heap-sender-{n}", daemon=True)
            for n in range(config.max_concurrent_requests)
        ]
        for sender in self._senders:
            sender.start()

    def add(self, item: Item) -> bool:
        """Queue an item in its endpoint's lane; True if it merged into an earlier update of its key."""
        route = item.route
        with self._lock:
            lane = self._routes.get(route)
            if lane is None:
                lane = self._routes[route] = self._lane(route)
            merged = lane.add(item)
            if not merged and len(lane.ready.get(route, ())) >= route.batch_size:
                self._lock.notify()
            return merged

    def _lane(self, route: Route) -> Lane:
        """The endpoint's one lane, whatever stream or route its items come by."""
        path = route.endpoint.path
        if path not in self._lanes:
            self._lanes[path] = Lane(route.merges, MAX_REQUEST_BYTES)
            self._watches[path] = EndpointWatch()
        return self._lanes[path]

    def flush(self, flushing: bool = True) -> None:
        """Whether every ready item goes now, full request or not (the source is quiet, the window full, the input
        ended), or only full requests and old items (records are flowing)."""
        if flushing != self._flushing:
            with self._lock:
                self._flushing = flushing
                self._lock.notify_all()

    def close(self) -> None:
        """Stop: no new request starts; requests in flight end at their next attempt."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()

    def _fail(self, failure: Exception) -> None:
        with self._lock:
            self.failure = self.failure or failure
        self._stop.set()

    # -- sender threads -----------------------------------------------------------------------------------------

    def _send_requests(self) -> None:
        while True:
            with self._lock:
                request = self._next_request()
                while request is None:
                    if self._stop.is_set():
                        return
                    self._lock.wait(LOOK_SECONDS)
                    request = self._next_request()
                self.in_flight += 1
            route, items = request
            try:
                self._deliver(route, items)
            except DeliveryStopped:
                pass  # the sync is stopping: the items' fate stays open, so no state passes them
            except DeliveryError as failure:
                self._fail(failure)
            except Exception as bug:  # not Heap's answer: the writer raises it on the main thread
                self._fail(bug)
            with self._lock:
                self.in_flight -= 1
                self._lanes[route.endpoint.path].done(items)
                self._lock.notify_all()

    def _next_request(self) -> tuple[Route, list[Item]] | None:
        """The items of the route, among those with a request's worth ready (or an old one, or any when flushing),
        whose oldest ready item has waited longest: no route starves another."""
        if self._stop.is_set():
            return None
        too_old = time.monotonic() - MAX_ITEM_AGE_SECONDS
        chosen, since = None, float("inf")
        for route, lane in self._routes.items():
            ready, oldest = len(lane.ready.get(route, ())), lane.oldest(route)
            if (ready >= route.batch_size or (ready and (self._flushing or oldest <= too_old))) and oldest < since:
                chosen, since = route, oldest
        if chosen is None:
            return None
        return chosen, self._routes[chosen].take(chosen, chosen.batch_size, MAX_REQUEST_BYTES)

    def _deliver(self, route: Route, items: list[Item]) -> None:
        """One request's items into Heap, narrowing refusals down as `decide` says; each record's fate booked."""
        if self._dry_run:
            self._rehearse(route, items)
            return
        watch = self._watches[route.endpoint.path]
        todo: deque[list[Item]] = deque([items])
        while todo:
            request = todo.popleft()
            refusal = self._send(route, request, watch)
            if refusal is None:
                continue
            decision = decide(self._evidence(route, request, refusal, watch))
            if decision.action is Action.SPLIT:
                route.client.counters.bisected()
                todo.extendleft(reversed(_halves(request)))
            elif decision.action is Action.REJECT:
                self._reject(route, request[0], refusal)
            elif decision.action is Action.RETRY:  # after the request's other items: their answers are evidence
                pause = min(SUSPECT_PAUSE_SECONDS * 2 ** (request[0].lone_refusals - 1), MAX_SUSPECT_PAUSE_SECONDS)
                if not todo and self._stop.wait(pause):
                    raise DeliveryStopped()
                todo.append(request)
            else:
                raise DeliveryError(decision.message, decision.transient)

    def _send(self, route: Route, request: list[Item], watch: EndpointWatch) -> HeapRejected | None:
        """One request: None if Heap took it (its records booked as delivered), else Heap's refusal."""
        body = route.body([item.body() for item in request])
        try:
            answer = route.client.post(route.endpoint.path, body, [item.identity for item in request])
        except HeapRejected as refusal:
            return refusal
        watch.accepted()
        for item in request:
            self._ledger.delivered(item.entries)
        if route.endpoint.answers_with_request_id:
            _log_deletion_request(answer, len(request))
        return None

    def _evidence(self, route: Route, request: list[Item], refusal: HeapRejected, watch: EndpointWatch) -> Evidence:
        run = watch.refused(refusal.names_item)
        for item in request:
            if item.refused_at is None:
                item.refused_at = watch.acceptances
        alone = request[0]
        if len(request) == 1 and not refusal.names_item:
            alone.lone_refusals += 1
        return Evidence(
            path=route.endpoint.path,
            reason=str(refusal),  # with its HTTP status
            records=sum(len(item.entries) for item in request),
            names_item=refusal.names_item,
            deletion=route.endpoint.answers_with_request_id,
            run=run,
            accepted_any=watch.acceptances > 0,
            lone_refusals=alone.lone_refusals,
            accepted_since_refused=alone.refused_at is not None and watch.acceptances > alone.refused_at,
        )

    def _reject(self, route: Route, item: Item, refusal: HeapRejected) -> None:
        fate = Fate("rejected_by_heap", refusal=refusal.reason)
        if self._on_invalid_fail:
            raise DeliveryError(
                f"A record is invalid: {fate.describe()} (at {route.endpoint.path}). Fix the source data or the "
                "column mapping, or set on_invalid_record to skip to count and skip such records.",
                transient=False,
            )
        self._ledger.rejected(item.entries, fate)

    def _rehearse(self, route: Route, items: list[Item]) -> None:
        """Dry run: nothing is sent; the first bodies are logged by shape (values masked: personal data)."""
        with self._lock:
            sample = self._samples_left > 0
            self._samples_left -= sample
        if sample:
            shape = masked(orjson.loads(route.body([item.body() for item in items[:2]])))
            if "app_id" in shape:
                shape["app_id"] = self._app_id  # the config's, not data
            logger.info(f"Dry run: Heap would receive at {route.endpoint.path}: {orjson.dumps(shape).decode()}")
        for item in items:
            self._ledger.delivered(item.entries)


def _halves(request: list[Item]) -> list[list[Item]]:
    """A refused request as two, in order: its items halved, or its one merged item's records."""
    if len(request) > 1:
        middle = len(request) // 2
        return [request[:middle], request[middle:]]
    first, second = request[0].halves()
    return [[first], [second]]


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

