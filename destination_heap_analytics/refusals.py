"""Refused requests (400, 413, 422): getting one batch's items into Heap anyway, and telling a refused item from a
refused request.

Heap documents no per-item error for bulk requests: one bad item may fail the whole request, and a refusal may
also be about the request itself (a wrong app_id, a body too large) or Heap's own passing trouble. So:

- A refusal that names an item (`postBody.events[3].properties should be object`, or a field of a single item)
  is about that item: the request is halved, the halves in order, until each refused item stands alone; those
  are skipped and counted (`rejected_by_heap`), the others delivered.
- A refusal that names no item is evidence against the request, not an item. The request is halved too (at
  most log2 of the batch deep, never item by item). An item then refused alone, without a name, is only a
  suspect. The batch's later items go first (those with its key wait behind it); then it is tried alone again,
  twice, once Heap has accepted another request at its endpoint since refusing it (if none has, an item of the
  batch Heap took is sent again, which changes nothing in Heap, or other batches are awaited), and skipped
  only if refused every time. With no acceptance meanwhile, the sync stops. So a random refusal does not skip
  a good item: that takes several refusals of the one item in a row.
- Before Heap accepted anything at an endpoint, an unexplained refusal is checked on the first item alone:
  refused too, it is the request's, and the sync stops with a config error after two requests. So do three
  items of a batch refused alone with the same named answer, and a 413 for one item.
- `RUN_LIMIT` refusals naming no item in a row at an endpoint, with no acceptance between, stop the sync: a
  config error when Heap accepted nothing there, a transient error when it did earlier (it changed its mind
  mid-sync). States never pass what Heap holds: the batches involved are not acknowledged.
- A refused request whose halves Heap then takes, each whole, was refused for no item: `UNPINNED_SPLITS` of
  those in a row, with no request of more than one item accepted between, stop the sync with a config error
  (Heap takes single items only) instead of splitting every batch down to single items.
- One batch at a time narrows down refusals naming no item at an endpoint; other refused batches wait for its
  verdict instead of each spending requests on what is likely one cause.
- A refused deletion is never skipped: it stops the sync.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import orjson

from destination_heap_analytics.client import CHECK_BASE_URL, DeliveryError, DeliveryStopped, HeapRejected
from destination_heap_analytics.exchange import Answer

if TYPE_CHECKING:
    from destination_heap_analytics.delivery import Batch, BatchResult, Route

logger = logging.getLogger("airbyte")

RUN_LIMIT = 30  # refusals naming no item, in a row at one endpoint: plus those in flight, well under 50 requests
UNPINNED_SPLITS = 4  # refused requests whose halves were then taken whole, with no bigger request taken between
SAME_REFUSALS_FOR_REQUEST = 3  # items refused alone with one named answer before anything was accepted
SUSPECT_RETRIES = 2  # tries of a suspect after its first refusal, once Heap accepted something else
EVIDENCE_WAIT_SECONDS = 2.0  # how long a suspect with no item of its batch taken waits for other batches
STOP_CHECK_SECONDS = 0.25  # how often a batch waiting for its turn looks whether the sync is stopping


class RefusalWatch:
    """What Heap's answers at one endpoint have shown so far, shared by every batch sent there."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.acceptances = 0
        self._run = 0  # refusals naming no item since the last acceptance
        self._last_reason = ""
        self._unpinned_splits = 0
        self._verdict: DeliveryError | None = None  # Heap's refusals here cannot be pinned on items: stop
        self._changed = threading.Condition()
        # one batch at a time narrows down refusals naming no item: batches already refused wait for its verdict
        # rather than each spending requests on what is likely one cause
        self._narrowing = threading.Lock()

    @property
    def accepted_any(self) -> bool:
        """Heap took a request at this endpoint in this sync: app_id, base_url and the request's form are right."""
        return self.acceptances > 0

    def before_request(self) -> None:
        """Raises once Heap's refusals here cannot be pinned on items (and for every request after that)."""
        with self._changed:
            if self._verdict is None and self._run >= RUN_LIMIT:
                self._verdict = self._run_refused()
            if self._verdict is not None:
                raise DeliveryError(str(self._verdict), self._verdict.transient)  # each thread its own

    def _run_refused(self) -> DeliveryError:
        if not self.acceptances:
            return DeliveryError(
                f"Heap refused {self._run} requests in a row at {self.path} without naming an item it refuses (last: "
                f"{self._last_reason}) and accepted none from this sync: it refuses the requests themselves. Nothing "
                f"more is sent. {CHECK_BASE_URL}",
                transient=False,
            )
        return DeliveryError(
            f"Heap accepted requests at {self.path} earlier in this sync, then refused {self._run} in a row without "
            f"naming an item it refuses (last: {self._last_reason}). Nothing more is sent, and no state passes a "
            "record Heap did not take: run the sync again later; if it keeps failing, check app_id and that the Heap "
            "environment still accepts data.",
            transient=True,
        )

    def accepted(self, items: int) -> None:
        with self._changed:
            self.acceptances += 1
            self._run = 0
            if items > 1:
                self._unpinned_splits = 0
            self._changed.notify_all()

    def refused(self, refusal: HeapRejected) -> None:
        if not refusal.names_item:
            with self._changed:
                self._run += 1
                self._last_reason = refusal.reason

    def split_unpinned(self) -> None:
        """A refused request's halves were each taken whole: the refusal was about no item. Raises when that
        is all Heap does with requests of more than one item."""
        with self._changed:
            self._unpinned_splits += 1
            if self._unpinned_splits >= UNPINNED_SPLITS and self._verdict is None:
                self._verdict = DeliveryError(
                    f"Heap refused {UNPINNED_SPLITS} requests in a row at {self.path} whose items it then accepted in "
                    "smaller requests, and accepted no request of more than one item meanwhile: it takes items one "
                    "at a time only. Set batch_size to 1, or check any proxy between this host and Heap that limits "
                    "requests.",
                    transient=False,
                )
            if self._verdict is not None:
                raise DeliveryError(str(self._verdict), self._verdict.transient)  # each thread its own

    def take_turn_to_narrow(self, stop: threading.Event) -> None:
        """Wait until no other batch is narrowing down an unexplained refusal here; then `end_narrowing`."""
        while not self._narrowing.acquire(timeout=STOP_CHECK_SECONDS):
            if stop.is_set():
                raise DeliveryStopped()

    def end_narrowing(self) -> None:
        self._narrowing.release()

    def await_acceptance(self, since: int, timeout: float) -> bool:
        """Whether Heap accepted a request here after the `since`-th acceptance, waiting up to `timeout` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: self.acceptances > since, timeout)


class ItemDelivery:
    """One batch's items into Heap, by the rules of the module: `run` delivers what Heap takes, records what it
    refuses in `result`, and raises DeliveryError when a refusal is the request's or cannot be pinned on items."""

    def __init__(
        self, route: Route, batch: Batch, result: BatchResult, watch: RefusalWatch, stop: threading.Event
    ) -> None:
        self._route = route
        self._batch = batch
        self._result = result
        self._watch = watch
        # each item's ordering key (none for track, whose events carry their own time)
        self._keys = batch.keys if len(batch.keys) == len(batch.bodies) else None
        self._last_of_key = {key: item for item, key in enumerate(self._keys or ())}
        self._delivered: list[int] = []  # items Heap took, in the order it took them
        self._suspects: list[tuple[int, int]] = []  # (item, acceptances at the endpoint when it was refused)
        self._held: dict[str, list[int]] = {}  # a suspect's key -> the batch's later items with it, in order
        self._stop = stop
        self._narrowing = False  # this batch has the endpoint's turn to narrow down an unexplained refusal

    def run(self) -> None:
        items = list(range(len(self._batch.bodies)))
        try:
            if self._route.bulk:
                self._deliver(items)
            else:  # Heap has no bulk form (or bulk is off): one item a request
                for item in items:
                    self._deliver([item])
            self._settle()
        finally:
            if self._narrowing:
                self._watch.end_narrowing()

    def _deliver(self, items: list[int]) -> bool:
        """Send items in one request, narrowing a refusal down; True if Heap took them all at once."""
        items = self._not_held(items)
        if not items:
            return False
        refusal = self._send(items)
        if refusal is None:
            return True
        if self._route.endpoint.answers_with_request_id:
            raise DeliveryError(
                f"Heap refused a deletion request ({refusal}): its users are not deleted, and a deletion is never "
                "skipped. Check the users' identities or user_ids and the deletion api_key, then run the sync "
                "again; it resumes from the last state.",
                transient=False,
            )
        if not (refusal.names_item or self._narrowing):
            self._watch.take_turn_to_narrow(self._stop)
            self._narrowing = True
        if len(items) == 1:
            self._refused_alone(items[0], refusal)
        elif not (refusal.names_item or self._watch.accepted_any):  # the request, or its first item?
            self._deliver(items[:1])
            self._deliver(items[1:])
        else:
            self._route.client.counters.bisected()
            middle = len(items) // 2
            taken = [self._deliver(items[:middle]), self._deliver(items[middle:])]  # both, in order
            if all(taken):
                self._watch.split_unpinned()
        return False

    def _refused_alone(self, item: int, refusal: HeapRejected) -> None:
        if refusal.status == 413:
            raise DeliveryError(
                f"Heap refused a request holding a single item as too large ({refusal}). Nothing more is sent: "
                "check base_url, and any proxy between this host and Heap.",
                transient=False,
            )
        if refusal.names_item and (self._watch.accepted_any or not self._same_refusals(refusal)):
            self._reject(item, refusal)
        elif refusal.names_item or not self._watch.accepted_any:
            raise DeliveryError(
                f"Heap refused the request itself, not an item in it ({refusal}), and has accepted nothing from "
                f"this sync. Nothing more is sent. {CHECK_BASE_URL}",
                transient=False,
            )
        else:
            self._suspects.append((item, self._watch.acceptances))
            if self._keys is not None:
                self._held.setdefault(self._keys[item], [])

    def _reject(self, item: int, refusal: HeapRejected) -> None:
        """The item is Heap's to refuse: skipped, counted by Heap's reason and placed by its position."""
        self._result.rejected.append(refusal.reason)
        self._result.refused_at.append(item)

    def _same_refusals(self, refusal: HeapRejected) -> bool:
        """Nothing of the batch delivered, and its first items tried alone all refused with this same answer: it
        is the request, whatever item Heap names (a few more requests tell it, not twice the batch)."""
        refused = self._result.rejected
        alike = set(refused) <= {refusal.reason}
        return self._result.delivered == 0 and alike and len(refused) + 1 >= SAME_REFUSALS_FOR_REQUEST

    def _not_held(self, items: list[int]) -> list[int]:
        """The items free to go: one whose key a suspect holds waits behind it (its key's order)."""
        if not self._held:
            return items
        free = []
        for item in items:
            waiting = self._held.get(self._keys[item])
            if waiting is None:
                free.append(item)
            else:
                waiting.append(item)
        return free

    def _settle(self) -> None:
        """Try each suspect again, then the items that waited behind it."""
        while self._suspects:
            item, since = self._suspects.pop(0)
            self._retry_suspect(item, since)
            if self._keys is not None:
                self._deliver(self._held.pop(self._keys[item]))

    def _retry_suspect(self, item: int, since: int) -> None:
        """Skip the item only if Heap refuses it alone every time again, after accepting another request here."""
        for _ in range(SUSPECT_RETRIES):
            corroborated = self._corroborate(since)
            refusal = self._send([item])
            if refusal is None:
                return
            if refusal.status == 413 or refusal.names_item:
                self._refused_alone(item, refusal)
                return
        if corroborated:
            self._reject(item, refusal)
            return
        raise DeliveryError(
            f"Heap refused an item alone at {self._route.endpoint.path} {SUSPECT_RETRIES + 1} times without naming "
            f"it ({refusal}) and accepted no other request there meanwhile: whether it refuses the item or every "
            "request cannot be told. Nothing more is sent, and no state passes a record Heap did not take: run the "
            "sync again later; if it keeps failing, check app_id.",
            transient=True,
        )

    def _corroborate(self, since: int) -> bool:
        """Whether Heap accepted a request here since the `since`-th acceptance. If not yet, an item of this batch
        that Heap took is sent again (a repeat changes nothing: see `_control`), or other batches are awaited."""
        if self._watch.await_acceptance(since, 0):
            return True
        control = self._control()
        if control is not None:
            self._send([control], repeat=True)
            return self._watch.await_acceptance(since, 0)
        return self._watch.await_acceptance(since, EVIDENCE_WAIT_SECONDS)

    def _control(self) -> int | None:
        """An item Heap took whose repeat changes nothing: an event (Heap keeps one per idempotency key), or the
        last update of its key in this batch (later batches with that key have waited for this one)."""
        for item in reversed(self._delivered):
            if self._keys is None or self._last_of_key[self._keys[item]] == item:
                return item
        return None

    def _send(self, items: list[int], repeat: bool = False) -> HeapRejected | None:
        """One request holding `items`: None if Heap took it, else its refusal. `repeat`: items Heap took before."""
        self._watch.before_request()
        route, batch = self._route, self._batch
        bodies = [batch.bodies[item] for item in items]
        body = route.body(bodies) if route.bulk else route.body(bodies[0])
        try:
            answer = route.client.post(route.endpoint.path, body, [batch.identities[item] for item in items])
        except HeapRejected as refusal:
            self._watch.refused(refusal)
            return refusal
        self._watch.accepted(len(items))
        if not repeat:
            self._delivered.extend(items)
            self._result.delivered += len(items)
            if route.endpoint.answers_with_request_id:
                _log_deletion_request(answer, len(items))
        return None


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
