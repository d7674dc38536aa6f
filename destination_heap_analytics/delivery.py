"""Stage 3: getting batches of Heap items into Heap, and knowing exactly which ones got there.

`HeapClient` sends one request with retries (429, 5xx, timeouts, dropped connections) over one connection
pool, the one requests sets up for base_url (its proxy and TLS handling). `BatchSender` runs several
batches at once on a thread pool, bisects a rejected bulk request until the bad items are isolated, and
hands each finished batch back as a `BatchResult`.
"""

from __future__ import annotations

import logging
import queue
import random
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
import requests
from requests.adapters import HTTPAdapter

from destination_heap_analytics.config import HeapConfig
from destination_heap_analytics.pacing import Pacer

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
AUTH_TOKEN_PATH = "/api/public/v0/auth_token"
TOKEN_RENEWAL_SECONDS = 240.0  # Heap's tokens last 5 minutes: renew with a minute to spare
DRY_RUN_SAMPLES = 3
STOP_CHECK_SECONDS = 0.25  # how often a wait for Heap looks whether the sync is stopping
REJECTED_STATUSES = (400, 413, 422)  # the request's content is refused: split it to find the bad items
CONFIG_STATUSES = (401, 403, 404, 405)  # wrong host, path or app: no retry can help
INITIAL_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 300.0
CONNECT_TIMEOUT_SECONDS = 10.0
USER_AGENT = "destination-heap-analytics/0.2.0"
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")
_HEAP_ERROR = re.compile(r"^(?P<path>postBody[\w.\[\]]*)(?: (?P<rule>[^\n]*))?$")
_POSITION = re.compile(r"\[\d+\]")


class DeliveryError(Exception):
    """Heap could not be made to take a request. `transient`: trying again later may work."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class HeapRejected(Exception):
    """Heap refused the request's content (400-class): retrying the same body cannot succeed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason


class TokenUnavailable(Exception):
    """No deletion token could be had this time (throttled, server error): worth retrying."""


class DeletionAuth:
    """Bearer tokens for the user deletion API: fetched with HTTP Basic (app_id, api_key), renewed before
    they expire, shared by every sender thread. The api_key never leaves this object except to Heap."""

    def __init__(self, config: HeapConfig, session: requests.Session, timeout: tuple[float, float]) -> None:
        self._url = config.base_url + AUTH_TOKEN_PATH
        self._credentials = (config.app_id, config.api_key or "")
        self._session = session
        self._timeout = timeout
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = threading.Lock()

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._token = self._fetch()
                self._renew_at = time.monotonic() + TOKEN_RENEWAL_SECONDS
            return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def _fetch(self) -> str:
        response = self._session.post(self._url, auth=self._credentials, timeout=self._timeout)
        if response.status_code in (401, 403):
            raise DeliveryError(
                f"Heap refused the api_key for app_id {self._credentials[0]} (HTTP {response.status_code}). "
                "Check api.api_key, and that app_id is your Main Production environment's.",
                transient=False,
            )
        if response.status_code == 429 or response.status_code >= 500:
            raise TokenUnavailable(f"auth token: HTTP {response.status_code}")
        try:
            return str(response.json()["access_token"])
        except (ValueError, KeyError, TypeError):
            raise DeliveryError(
                f"Heap's auth token answer (HTTP {response.status_code}) had no access_token.", transient=False
            ) from None


class DeliveryStopped(Exception):
    """The sync is stopping; the request was abandoned before Heap acknowledged it."""


@dataclass
class DeliveryCounters:
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    bisections: int = 0
    paced_seconds: float = 0.0  # wall time during which at least one sender was held back
    _paced_through: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def bisected(self) -> None:
        with self._lock:
            self.bisections += 1

    def paced(self, started: float, ended: float) -> None:
        """A sender waited from `started` to `ended`: count the part no other sender's wait already covered."""
        with self._lock:
            self.paced_seconds += max(0.0, ended - max(started, self._paced_through))
            self._paced_through = max(self._paced_through, ended)

    def count(self, outcome: str, retried: bool) -> None:
        with self._lock:
            self.requests += 1
            self.retries += retried
            self.throttled += outcome == "429"


class HeapClient:
    """POSTs JSON bodies to Heap over one requests Session (its pool, proxies and TLS settings), retrying what
    is worth retrying."""

    def __init__(self, config: HeapConfig, pacer: Pacer | None, stop: threading.Event) -> None:
        self._base_url = config.base_url
        self._timeout = (min(CONNECT_TIMEOUT_SECONDS, config.request_timeout_seconds), config.request_timeout_seconds)
        self._max_retries = config.max_retries
        self._pacer = pacer
        self._stop = stop
        self.counters = DeliveryCounters()
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=config.max_concurrent_requests, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"Content-Type": "application/json", "User-Agent": USER_AGENT})
        needs_token = config.mapping.api_type == "delete_users" and not config.dry_run
        self._auth = DeletionAuth(config, self.session, self._timeout) if needs_token else None

    def post(self, path: str, body: bytes, identities: list[str | None]) -> requests.Response:
        """Deliver one body; returns Heap's acknowledgement. Raises HeapRejected, DeliveryError."""
        url = self._base_url + path
        for attempt in range(self._max_retries + 1):
            if self._stop.is_set():
                raise DeliveryStopped()
            if self._pacer:
                started = time.monotonic()
                if self._pacer.wait_for(identities):
                    self.counters.paced(started, time.monotonic())
                if self._stop.is_set():
                    raise DeliveryStopped()
            response, problem, retry_after = self._attempt(url, body, retried=attempt > 0)
            if response is not None:
                return response
            if attempt < self._max_retries:
                self._stop.wait(_backoff(attempt, retry_after))
        raise DeliveryError(
            f"Heap did not accept a request to {path} after {self._max_retries + 1} attempts; last answer: {problem}. "
            "This is usually temporary (Heap throttling or unavailable): run the sync again, it resumes from "
            "the last state.",
            transient=True,
        )

    def _attempt(self, url: str, body: bytes, retried: bool) -> tuple[requests.Response | None, str, float | None]:
        """One request: (Heap's acknowledgement, "", None), or (None, what went wrong, Retry-After) to retry."""
        try:
            headers = self._auth.headers() if self._auth else None
            response = self.session.post(url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False)
        except requests.ConnectionError as error:  # connect timeouts included: nothing reached Heap
            self.counters.count("connection_error", retried)
            return None, f"connection failed ({type(error).__name__})", None
        except requests.Timeout:
            self.counters.count("timeout", retried)
            return None, "timed out", None
        except requests.RequestException as error:  # a broken answer: the request may or may not have landed
            self.counters.count("connection_error", retried)
            return None, f"connection failed ({type(error).__name__})", None
        except TokenUnavailable as error:
            self.counters.count("token_unavailable", retried)
            return None, str(error), None
        status = response.status_code
        self.counters.count(str(status), retried)
        if 200 <= status < 300:
            if self._pacer:
                self._pacer.accepted()
            return response, "", None
        if status in REJECTED_STATUSES:
            raise HeapRejected(status, _without_values(response.content.decode("utf-8", "replace")))
        if status == 401 and self._auth:  # the token expired early: fetch a new one and try again
            self._auth.invalidate()
            return None, "HTTP 401 (token renewed)", None
        if status == 429 or status >= 500:
            retry_after = _retry_after(response)
            if status == 429 and self._pacer:
                self._pacer.throttled(retry_after)
            return None, f"HTTP {status}", retry_after
        if status in CONFIG_STATUSES:
            raise DeliveryError(
                f"Heap answered HTTP {status} at {url}. Check base_url (US: https://heapanalytics.com, "
                "EU: https://c.eu.heap-api.com) and app_id.",
                transient=False,
            )
        raise DeliveryError(f"Heap answered an unexpected HTTP {status} at {url}.", transient=False)


def _backoff(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; Heap's Retry-After, when given, is the floor."""
    jittered = random.uniform(0, min(MAX_BACKOFF_SECONDS, INITIAL_BACKOFF_SECONDS * 2**attempt))
    return max(jittered, retry_after or 0.0)


def _retry_after(response: requests.Response) -> float | None:
    try:
        return min(MAX_RETRY_AFTER_SECONDS, max(0.0, float(response.headers["Retry-After"])))
    except (KeyError, ValueError):
        return None


def _without_values(text: str) -> str:
    """Heap's 400 text, safe to log: the field path Heap names ("postBody.events[0].properties") with list
    positions masked, and its rule only in Heap's schema form ("should be object"), quotes masked. Any other
    wording may echo a record's values, so it is not kept."""
    match = _HEAP_ERROR.match(text.strip())
    if match is None:
        return "refused (Heap's wording is not logged: it may quote record values)"
    path, rule = _POSITION.sub("[n]", match["path"]), match["rule"] or ""
    if rule.startswith("should "):
        return f"{path} {_QUOTED.sub('…', rule)}"[:200]
    return f"{path} refused (Heap's wording is not logged: it may quote record values)"


@dataclass
class Batch:
    """Heap items in input order: each one's JSON, and the identity it counts against in rate limits."""

    number: int
    bodies: list[bytes] = field(default_factory=list)
    identities: list[str | None] = field(default_factory=list)


@dataclass
class BatchResult:
    number: int
    delivered: int = 0
    rejected: list[str] = field(default_factory=list)  # Heap's reason, one entry per refused item
    failure: DeliveryError | DeliveryStopped | None = None  # set: the batch is not (wholly) in Heap


class BatchSender:
    """Delivers batches concurrently with a bounded window: `submit` blocks while the window is full."""

    def __init__(self, config: HeapConfig, client: HeapClient, stop: threading.Event) -> None:
        self._endpoint = ENDPOINTS[config.mapping.api_type]
        self._app_id = config.app_id
        self._bulk = config.bulk
        # Items arrive as JSON: a body is written around them, never parsed and dumped again.
        envelope = {"app_id": config.app_id} if self._endpoint.app_id_in_body else {}
        if config.bulk:
            self._opening = orjson.dumps(envelope | {self._endpoint.list_key: []})[:-2]  # {"app_id":"1","users":[
        else:
            self._opening = orjson.dumps(envelope)[:-1] + (b"," if envelope else b"")  # {"app_id":"1", then item
        self._dry_run = config.dry_run
        self._samples_left = DRY_RUN_SAMPLES if config.dry_run else 0
        self._client = client
        self._stop = stop
        self._window = 2 * config.max_concurrent_requests  # queued as well as running, so no worker idles
        self._pool = ThreadPoolExecutor(config.max_concurrent_requests, thread_name_prefix="heap-sender")
        # Finished batches arrive here through a done-callback: collecting costs the same whatever the window.
        self._finished: queue.SimpleQueue[Future[BatchResult]] = queue.SimpleQueue()
        self.in_flight = 0

    def submit(self, batch: Batch, while_waiting: Callable[[], object] = lambda: None) -> list[BatchResult]:
        """Queue a batch; returns the results of batches that finished meanwhile. While the window is full it
        waits (back-pressure on stdin), calling `while_waiting` now and then; once the sync is stopping, the
        batch is dropped, never acknowledged."""
        finished = self.collect()
        while self.in_flight >= self._window and not self._stop.is_set():
            finished.extend(self.collect(timeout=STOP_CHECK_SECONDS))
            while_waiting()
        if not self._stop.is_set():
            self._pool.submit(self._deliver, batch).add_done_callback(self._finished.put)
            self.in_flight += 1
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
        return [future.result() for future in done]

    def close(self) -> None:
        """Stop: abandon queued batches, let running requests end (bounded by their timeout)."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, batch: Batch) -> BatchResult:
        result = BatchResult(batch.number)
        if self._dry_run:
            self._rehearse(batch, result)
            return result
        try:
            if self._bulk:
                self._deliver_bulk(batch.bodies, batch.identities, result)
            else:
                for body, identity in zip(batch.bodies, batch.identities, strict=True):
                    self._deliver_one(body, identity, result)
        except (DeliveryError, DeliveryStopped) as failure:
            result.failure = failure
        return result

    def _rehearse(self, batch: Batch, result: BatchResult) -> None:
        """Dry run: nothing is sent; the first bodies are logged by shape (values masked: personal data)."""
        if self._samples_left > 0:
            self._samples_left -= 1
            body = self._body(batch.bodies[:2] if self._bulk else batch.bodies[0])
            shape = masked(orjson.loads(body))
            if "app_id" in shape:
                shape["app_id"] = self._app_id  # the config's, not data
            logger.info(f"Dry run: Heap would receive at {self._endpoint.path}: {orjson.dumps(shape).decode()}")
        result.delivered = len(batch.bodies)

    def _body(self, items: list[bytes] | bytes) -> bytes:
        """The request body: a bulk list of items, or the single form of one item."""
        if self._bulk:
            return b"%s%s]}" % (self._opening, b",".join(items))
        return self._opening + items[1:]  # the item's own fields after the envelope's

    def _deliver_bulk(self, bodies: list[bytes], identities: list[str | None], result: BatchResult) -> None:
        """Send items in one request; if Heap refuses it, halve until each refused item stands alone."""
        try:
            response = self._client.post(self._endpoint.path, self._body(bodies), identities)
            result.delivered += len(bodies)
            if self._endpoint.answers_with_request_id:
                _log_deletion_request(response, len(bodies))
        except HeapRejected as rejection:
            if len(bodies) == 1:
                result.rejected.append(rejection.reason)
                return
            self._client.counters.bisected()
            middle = len(bodies) // 2
            self._deliver_bulk(bodies[:middle], identities[:middle], result)
            self._deliver_bulk(bodies[middle:], identities[middle:], result)

    def _deliver_one(self, body: bytes, identity: str | None, result: BatchResult) -> None:
        try:
            self._client.post(self._endpoint.path, self._body(body), [identity])
            result.delivered += 1
        except HeapRejected as rejection:
            result.rejected.append(rejection.reason)


def _log_deletion_request(response: requests.Response, users: int) -> None:
    """Heap deletes asynchronously: the request id is what a user needs to follow the deletion up."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        answer = {}
    request_id, status = answer.get("deletion_request_id", "(none given)"), answer.get("status", "unknown")
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
