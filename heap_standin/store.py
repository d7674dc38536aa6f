"""What the stand-in holds: accepted items, counters (duplicates dropped by idempotency key among them),
pending faults; and the ingestion of one /api/* body: validate, rate-limit, store."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

import orjson

from heap_standin.deletions import Deletions
from heap_standin.faults import Fault
from heap_standin.limits import Limits
from heap_standin.replies import ACKNOWLEDGEMENTS, Reply, bad_request, seconds_text
from heap_standin.rules import Endpoint, app_id_error, bulk_error, prefixed

Predicate = Callable[[dict], "str | None"]

COUNTERS = (
    "requests",
    "bulk_requests",
    "single_requests",
    "events_stored",
    "events_deduplicated",
    "users_stored",
    "accounts_stored",
    "identifies_stored",
    "faults_served",
    "items_unconfirmed",  # stored, but the acknowledgement may not have reached the client: a resend is legitimate
    "property_items_repeated",  # user/account property items already accepted in an earlier request
    "rejected_400",
    "rejected_by_predicate",
    "max_in_flight",
)


class State:
    """Everything the stand-in knows; shared by the handler threads and survives stop()/start()."""

    def __init__(
        self, latency_ms: float, limits: Limits, keep_items: bool, deletions: Deletions, acknowledgement: str
    ) -> None:
        self.lock = threading.Lock()
        self.acknowledgement = ACKNOWLEDGEMENTS[acknowledgement]
        self.deletions = deletions
        self.latency_s = latency_ms / 1000.0
        self.keep_items = keep_items
        self.limits = limits
        self.predicate: Predicate | None = None
        self.in_flight = 0
        self._local = threading.local()  # per handler thread: the items the current request stored
        self.reset()

    def reset(self) -> None:
        with self.lock:
            # in_flight is a live gauge, not a counter: requests still running when reset() comes end later.
            self.counts = dict.fromkeys(COUNTERS, 0)
            self.counts["max_in_flight"] = self.in_flight
            self.by_status: dict[str, int] = {}
            self.faults_by_kind: dict[str, int] = {}  # served faults, by Fault.kind
            # (monotonic time, endpoint kind, items, answered 429) of every body that passed validation and
            # reached the rate limits: when the stand-in admitted or throttled how much.
            self.admissions: list[tuple[float, str, int, bool]] = []
            self.faults: deque[Fault] = deque()
            self.events: list[dict] = []
            self.users: list[dict] = []
            self.accounts: list[dict] = []
            self.identifies: list[dict] = []
            # Per app_id. Kept even with keep_items=False: dedup must stay exact in summary mode.
            self.idempotency_keys: dict[str, set] = {}
            self.identities: dict[str, set] = {}
            self.account_ids: dict[str, set] = {}
            # Per app_id: hashes of the user/account property items accepted so far (sent-twice detection).
            self.property_items: dict[str, set] = {}
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
            fault = self.faults.popleft()
            self.counts["faults_served"] += 1
            self.faults_by_kind[fault.kind] = self.faults_by_kind.get(fault.kind, 0) + 1
            return fault

    def take_stored(self) -> int:
        """How many items the current thread's request stored (0 if none), and forget it."""
        stored = getattr(self._local, "stored", 0)
        self._local.stored = 0
        return stored

    def unconfirmed(self, items: int) -> None:
        """`items` were stored but their acknowledgement may not have reached the client."""
        if items:
            with self.lock:
                self.counts["items_unconfirmed"] += items

    def stats(self) -> dict:
        with self.lock:
            return {
                **self.counts,
                "by_status": dict(self.by_status),
                "faults_by_kind": dict(self.faults_by_kind),
                "in_flight": self.in_flight,
                "faults_pending": len(self.faults),
                "distinct_identities": sum(len(s) for s in self.identities.values()),
                "distinct_accounts": sum(len(s) for s in self.account_ids.values()),
            }

    # -- ingestion --

    def ingest(self, endpoint: Endpoint, raw: bytes) -> Reply:
        """Validate, rate-limit and store one /api/* body; the whole request is accepted or none of it."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return bad_request(f"postBody should be valid JSON: {exc}")
        if type(body) is not dict:
            return bad_request("postBody should be object")
        if error := app_id_error(body):
            return bad_request(error)
        bulk = endpoint.list_key in body
        with self.lock:
            self.counts["bulk_requests" if bulk else "single_requests"] += 1
        error = bulk_error(body, endpoint) if bulk else prefixed(endpoint.single_error(body))
        if error or (error := self._predicate_error(body, endpoint, bulk)):
            return bad_request(error)
        return self._admit_and_store(endpoint, body, bulk)

    def _predicate_error(self, body: dict, endpoint: Endpoint, bulk: bool) -> str | None:
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

    def _admit_and_store(self, endpoint: Endpoint, body: dict, bulk: bool) -> Reply:
        app_id = body["app_id"]
        items = body[endpoint.list_key] if bulk else [body]
        with self.lock:
            now = time.monotonic()
            wait = self.limits.admit(endpoint, body, bulk, now)
            self.admissions.append((now, endpoint.kind, len(items), wait > 0))
            if wait > 0:
                retry_after = seconds_text(math.ceil(wait * 10) / 10)
                return Reply(429, b"Too Many Requests", headers=(("Retry-After", retry_after),))
            if endpoint.kind == "track":
                self._store_events(app_id, items, add_app_id=bulk)
            elif endpoint.kind == "identify":
                self.counts["identifies_stored"] += 1
                if self.keep_items:
                    self.identifies.append(body)
            else:
                self._store_properties(endpoint.kind, app_id, items, add_app_id=bulk)
        self._local.stored = len(items)
        return self.acknowledgement

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
        # An item (identity or account, and its properties) this app already accepted in an earlier request was
        # sent twice; repeats inside one request are the source's doing, not a resend.
        seen = self.property_items.setdefault(app_id, set())
        fresh = {hash(orjson.dumps({k: v for k, v in item.items() if k != "app_id"}, option=orjson.OPT_SORT_KEYS))
                 for item in items}
        self.counts["property_items_repeated"] += len(fresh & seen)
        seen |= fresh
        if self.keep_items:
            for item in items:
                if add_app_id:
                    item["app_id"] = app_id
                store.append(item)
        self.counts[counter] += len(items)
