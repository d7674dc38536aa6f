"""Stage 3: getting batches of Heap items into Heap, and knowing exactly which ones got there.

`HeapClient` sends one request with retries (408, 429, 5xx, timeouts, dropped connections) over one
connection pool, the one requests sets up for base_url (its proxy and TLS handling). Each attempt is bounded
as a whole by `request_timeout_seconds`, Heap's answer included, and at most `MAX_ANSWER_BYTES` of the
answer are read. A 2xx counts as an acknowledgement only if it is Heap's answer (`{}`, `OK` or a JSON object).

`BatchSender` runs several batches at once on a thread pool, in a window bounded in batches and in bytes,
and hands each finished batch back as a `BatchResult`.

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
import random
import re
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
import requests
import urllib3
from requests.adapters import HTTPAdapter

from destination_heap_analytics.config import HeapConfig, StreamConfig
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
REJECTED_STATUSES = (400, 413, 422)  # the request's content is refused: retrying the same body cannot help
CONFIG_STATUSES = (401, 403, 404, 405)  # wrong host, path or app: no retry can help
# Heap's answers are a few bytes; a bigger one is not Heap's, and reading it whole could exhaust memory.
MAX_ANSWER_BYTES = 64 * 1024
# Heap publishes no maximum body size: 4 MB keeps a request far from common proxy and gateway limits (10 MB
# and more) while a batch of 1000 ordinary items (1 to 2 kB each) still fits.
MAX_BATCH_BYTES = 4 * 1024 * 1024
# Items refused one by one with the same answer, before anything was accepted: taken as the request refused.
SAME_REFUSALS_FOR_REQUEST = 3
MAX_WINDOW_BYTES = 32 * 1024 * 1024  # bodies queued or in flight at once, whatever the number of batches
INITIAL_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 300.0
CONNECT_TIMEOUT_SECONDS = 10.0
USER_AGENT = "destination-heap-analytics/0.2.0"
CHECK_BASE_URL = "Check base_url (US: https://heapanalytics.com, EU: https://c.eu.heap-api.com) and app_id."
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")  # printable ASCII: a token goes into a header line
_PATH = re.compile(r"postBody(?:\.[A-Za-z_]\w{0,63}|\[\d{1,9}\])*")
_POSITION = re.compile(r"\[\d+\]")
_ITEM_PATH = re.compile(r"postBody\.(?:(?:events|users|accounts)\[\d+\]|(?!(?:app_id|events|users|accounts)\b)\w)")
# The rules of Heap's error texts that are kept; anything after them, and any other wording, may quote a
# record's values and is dropped. Longest first, so that "should be object" wins over "should be".
HEAP_RULES = sorted(
    (
        "should be object", "should be array", "should be string", "should be number", "should be integer",
        "should be boolean", "should be a finite number", "should be a numeric string", "should be valid JSON",
        "should not be empty", "should not be set", "is required", "is too long", "is invalid", "should be",
        "should not be",
    ),
    key=len,
    reverse=True,
)
UNEXPLAINED = "refused (Heap's wording is not logged: it may quote record values)"


class DeliveryError(Exception):
    """Heap could not be made to take a request. `transient`: trying again later may work."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class HeapRejected(Exception):
    """Heap refused the request's content (400, 413, 422): retrying the same body cannot succeed. `text` is
    Heap's own wording, which may quote record values: only `reason` may be logged."""

    def __init__(self, status: int, text: str) -> None:
        self.status = status
        self.text = text
        self.reason = heap_reason(text)
        super().__init__(f"HTTP {status}: {self.reason}")

    @property
    def names_item(self) -> bool:
        """Heap's text points into one item: the refusal is about that item, not the request."""
        return _ITEM_PATH.match(self.text.strip()) is not None


class TokenUnavailable(Exception):
    """No deletion token could be had this time (throttled, server error): worth retrying."""


class TokenRefused(Exception):
    """The deletion endpoint answered 401 to the token it was given."""


class AnswerTimeout(requests.Timeout):
    """The request, answer included, took longer than its deadline."""


@dataclass
class Answer:
    """Heap's answer: its status, headers and (at most MAX_ANSWER_BYTES of) its body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def exchange(session: requests.Session, url: str, timeout: tuple[float, float], **kwargs: Any) -> Answer:
    """POST and read the answer within `timeout` = (connect, whole request) seconds. Redirects are not
    followed: a body (or a key) must never go to another host than base_url's."""
    deadline = time.monotonic() + timeout[1]
    response = session.post(url, timeout=timeout, stream=True, allow_redirects=False, **kwargs)
    complete = False
    try:
        body, complete = _read_answer(response.raw, deadline)
    finally:
        if complete:
            response.raw.release_conn()  # the connection is clean: back to the pool
        else:
            response.raw.close()  # unread bytes would confuse the next request on this connection
    return Answer(response.status_code, response.headers, body)


def _read_answer(raw: urllib3.HTTPResponse, deadline: float) -> tuple[bytes, bool]:
    """(the body, whether it was read to its end), reading at most MAX_ANSWER_BYTES + 1. Each socket read
    waits no longer than the time left, so a server that trickles its answer cannot outlast the deadline."""
    sock = getattr(raw.connection, "sock", None)
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_ANSWER_BYTES:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AnswerTimeout("Heap's answer did not arrive whole in time")
        if sock is not None:
            sock.settimeout(left)
        try:
            chunk = raw.read1(MAX_ANSWER_BYTES + 1 - size)
        except urllib3.exceptions.ReadTimeoutError:
            raise AnswerTimeout("Heap's answer did not arrive whole in time") from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise requests.ConnectionError(f"broken answer ({type(error).__name__})") from None
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:MAX_ANSWER_BYTES], False


def is_heap_acknowledgement(body: bytes) -> bool:
    """Heap acknowledges with `{}`, `OK` or (deletions) a JSON object; an HTML page is some other server's."""
    text = body.strip()
    if text.upper() == b"OK":
        return True
    try:
        return isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return False


def heap_reason(text: str) -> str:
    """Heap's refusal, safe to log: its field path with list positions masked ("postBody.events[n].properties")
    and its rule from HEAP_RULES ("should be object"); "…" marks wording dropped after the rule. Values are
    never kept: any other wording becomes a fixed phrase."""
    path, _, rule = text.strip().partition(" ")
    if _PATH.fullmatch(path) is None:
        return UNEXPLAINED
    path = _POSITION.sub("[n]", path)
    for known in HEAP_RULES:
        if rule == known:
            return f"{path} {known}"
        if rule.startswith(known) and not rule[len(known)].isalnum():
            return f"{path} {known} …"
    return f"{path} {UNEXPLAINED}"


class DeletionAuth:
    """Bearer tokens for the user deletion API: fetched with HTTP Basic (app_id, api_key), renewed before
    they expire, shared by every sender thread. The api_key never leaves this object except to Heap."""

    def __init__(
        self, config: HeapConfig, api_key: str, session: requests.Session, timeout: tuple[float, float]
    ) -> None:
        self._url = config.base_url + AUTH_TOKEN_PATH
        self._credentials = (config.app_id, api_key)
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
        try:
            answer = exchange(self._session, self._url, self._timeout, auth=self._credentials)
        except UnicodeEncodeError:  # HTTP Basic carries Latin-1 only; the error would quote the key
            raise DeliveryError(
                "api.api_key holds a character HTTP Basic authentication cannot carry: check the key.",
                transient=False,
            ) from None
        status = answer.status
        if status in (401, 403):
            raise DeliveryError(
                f"Heap refused the api_key for app_id {self._credentials[0]} (HTTP {status}). "
                "Check api.api_key, and that app_id is your Main Production environment's.",
                transient=False,
            )
        if status in (408, 429) or status >= 500:
            raise TokenUnavailable(f"auth token: HTTP {status}")
        if 300 <= status < 400:
            raise DeliveryError(
                f"Heap's auth token endpoint answered with a redirect (HTTP {status}); the api_key is sent to "
                f"base_url's host only. {CHECK_BASE_URL}",
                transient=False,
            )
        return _access_token(answer)


def _access_token(answer: Answer) -> str:
    """The token of Heap's answer; never quoted in a message (it is a credential)."""
    try:
        token = orjson.loads(answer.body)["access_token"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise DeliveryError(
            f"Heap's auth token answer (HTTP {answer.status}) had no access_token. {CHECK_BASE_URL}", transient=False
        ) from None
    if not isinstance(token, str) or _TOKEN.fullmatch(token) is None:
        raise DeliveryError(
            f"Heap's auth token answer (HTTP {answer.status}) holds an access_token that is not printable "
            f"ASCII text (not shown). {CHECK_BASE_URL}",
            transient=False,
        )
    return token


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
    is worth retrying. `pacer`: the one for the limit its requests count against, shared with every client
    whose requests count against the same. `api_key`: the deletion API's, for a bearer token."""

    def __init__(
        self,
        config: HeapConfig,
        pacer: Pacer | None,
        stop: threading.Event,
        counters: DeliveryCounters | None = None,
        api_key: str | None = None,
    ) -> None:
        self._base_url = config.base_url
        self._timeout = (min(CONNECT_TIMEOUT_SECONDS, config.request_timeout_seconds), config.request_timeout_seconds)
        self._max_retries = config.max_retries
        self._pacer = pacer
        self._stop = stop
        self.counters = counters or DeliveryCounters()
        self.accepted_any = False  # Heap acknowledged a request of this sync: app_id and base_url are right
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=config.max_concurrent_requests, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"Content-Type": "application/json", "User-Agent": USER_AGENT})
        self._auth = DeletionAuth(config, api_key, self.session, self._timeout) if api_key else None

    def post(self, path: str, body: bytes, identities: list[str | None]) -> Answer:
        """Deliver one body; returns Heap's acknowledgement. Raises HeapRejected, DeliveryError."""
        url = self._base_url + path
        token_renewed = False
        for attempt in range(self._max_retries + 1):
            if self._stop.is_set():
                raise DeliveryStopped()
            if self._pacer:
                started = time.monotonic()
                if self._pacer.wait_for(identities):
                    self.counters.paced(started, time.monotonic())
                if self._stop.is_set():
                    raise DeliveryStopped()
            try:
                answer, problem, retry_after = self._attempt(url, body, retried=attempt > 0)
            except TokenRefused:
                if token_renewed:  # a fresh token refused too: the key or app is wrong, not the token's age
                    raise DeliveryError(
                        f"Heap answered HTTP 401 at {url} even with a freshly issued token. Check api.api_key, "
                        "and that app_id is your Main Production environment's.",
                        transient=False,
                    ) from None
                self._auth.invalidate()  # the token expired early: fetch a new one and try again
                token_renewed = True
                answer, problem, retry_after = None, "HTTP 401 (token renewed)", None
            if answer is not None:
                return answer
            if attempt < self._max_retries:
                self._stop.wait(_backoff(attempt, retry_after))
        raise DeliveryError(
            f"Heap did not accept a request to {path} after {self._max_retries + 1} attempts; last answer: {problem}. "
            "This is usually temporary (Heap throttling or unavailable): run the sync again, it resumes from "
            "the last state.",
            transient=True,
        )

    def _attempt(self, url: str, body: bytes, retried: bool) -> tuple[Answer | None, str, float | None]:
        """One request: (Heap's acknowledgement, "", None), or (None, what went wrong, Retry-After) to retry."""
        try:
            headers = self._auth.headers() if self._auth else None
            answer = exchange(self.session, url, self._timeout, data=body, headers=headers)
        except requests.ConnectionError as error:  # connect timeouts included: nothing reached Heap
            self.counters.count("connection_error", retried)
            return None, f"connection failed ({type(error).__name__})", None
        except requests.Timeout:  # no whole answer within request_timeout_seconds
            self.counters.count("timeout", retried)
            return None, "timed out", None
        except requests.RequestException as error:  # a broken answer: the request may or may not have landed
            self.counters.count("connection_error", retried)
            return None, f"connection failed ({type(error).__name__})", None
        except TokenUnavailable as error:
            self.counters.count("token_unavailable", retried)
            return None, str(error), None
        status = answer.status
        self.counters.count(str(status), retried)
        if 200 <= status < 300:
            return self._acknowledgement(url, answer), "", None
        if status in REJECTED_STATUSES:
            raise HeapRejected(status, answer.body.decode("utf-8", "replace"))
        if status == 401 and self._auth:
            raise TokenRefused()
        if status in (408, 429) or status >= 500:  # 408: Heap gave up waiting for the request, as a timeout
            retry_after = _retry_after(answer)
            if status == 429 and self._pacer:
                self._pacer.throttled(retry_after)
            return None, f"HTTP {status}", retry_after
        if status in CONFIG_STATUSES or 300 <= status < 400:
            raise DeliveryError(f"Heap answered HTTP {status} at {url}. {CHECK_BASE_URL}", transient=False)
        raise DeliveryError(f"Heap answered an unexpected HTTP {status} at {url}.", transient=False)

    def _acknowledgement(self, url: str, answer: Answer) -> Answer:
        """A 2xx counts only if it is Heap's answer: a wrong base_url that answers 200 must not "succeed"."""
        if not is_heap_acknowledgement(answer.body):
            what = "an HTML page" if answer.body.lstrip()[:1] == b"<" else "a body Heap never sends"
            raise DeliveryError(
                f"{url} answered HTTP {answer.status} with {what}, not Heap's acknowledgement: nothing is taken "
                f"as delivered. {CHECK_BASE_URL}",
                transient=False,
            )
        if self._pacer:
            self._pacer.accepted()
        self.accepted_any = True
        return answer


def _backoff(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; Heap's Retry-After, when given, is the floor."""
    jittered = random.uniform(0, min(MAX_BACKOFF_SECONDS, INITIAL_BACKOFF_SECONDS * 2**attempt))
    return max(jittered, retry_after or 0.0)


def _retry_after(answer: Answer) -> float | None:
    try:
        return min(MAX_RETRY_AFTER_SECONDS, max(0.0, float(answer.headers["Retry-After"])))
    except (KeyError, ValueError):
        return None


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
    """Heap items of one stream in input order: each one's JSON, the identity it counts against in rate limits
    and the key its order is kept by (none for track), and the bytes of its bodies."""

    number: int
    route: Route
    bodies: list[bytes] = field(default_factory=list)
    identities: list[str | None] = field(default_factory=list)
    keys: list[Hashable] = field(default_factory=list)
    size: int = 0


@dataclass
class BatchResult:
    number: int
    delivered: int = 0
    rejected: list[str] = field(default_factory=list)  # Heap's reason, one entry per refused item
    failure: DeliveryError | DeliveryStopped | None = None  # set: the batch is not (wholly) in Heap


class _Turn:
    """A submitted batch as the later batches that share a key with it see it: done yet, and delivered?"""

    def __init__(self, batch: Batch) -> None:
        # a key is kept in order at its endpoint: two streams updating the same users' properties share it
        path = batch.route.endpoint.path
        self.keys = {(path, key) for key in batch.keys if key is not None}
        self.size = batch.size
        self.done = threading.Event()
        self.delivered = False


class BatchSender:
    """Delivers batches concurrently, each key's in input order, with a window bounded in batches and bytes:
    `submit` blocks while the window is full. Each batch goes by its own route (its stream's endpoint)."""

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
                for body, identity in zip(batch.bodies, batch.identities, strict=True):
                    _deliver_one(route, body, identity, result)
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
    route: Route, bodies: list[bytes], identities: list[str | None], result: BatchResult, request_ok: bool = False
) -> None:
    """Send items in one request. Refused naming an item: halve until each refused item stands alone, the
    halves in order. Refused naming none: send the first item alone to learn whether Heap refuses the request
    itself (`request_ok`: an item of this batch was accepted, so it does not)."""
    endpoint = route.endpoint
    try:
        answer = route.client.post(endpoint.path, route.body(bodies), identities)
    except HeapRejected as rejection:
        if len(bodies) == 1 or endpoint.answers_with_request_id:
            _refused(route, rejection, result, request_ok)  # a refused deletion stops the sync there
            return
        if not (request_ok or rejection.names_item):
            request_ok = _probe(route, bodies[0], identities[0], result)
            _deliver_bulk(route, bodies[1:], identities[1:], result, request_ok)
            return
        route.client.counters.bisected()
        middle = len(bodies) // 2
        _deliver_bulk(route, bodies[:middle], identities[:middle], result, request_ok)
        _deliver_bulk(route, bodies[middle:], identities[middle:], result, request_ok)
        return
    result.delivered += len(bodies)
    if endpoint.answers_with_request_id:
        _log_deletion_request(answer, len(bodies))


def _probe(route: Route, body: bytes, identity: str | None, result: BatchResult) -> bool:
    """Send one item alone: True if Heap took it (so the request is fine); raises if Heap refuses the request
    itself."""
    try:
        route.client.post(route.endpoint.path, route.body([body]), [identity])
    except HeapRejected as refusal:
        _refused(route, refusal, result, request_ok=False)
        return False
    result.delivered += 1
    return True


def _deliver_one(route: Route, body: bytes, identity: str | None, result: BatchResult) -> None:
    try:
        route.client.post(route.endpoint.path, route.body(body), [identity])
        result.delivered += 1
    except HeapRejected as rejection:
        _refused(route, rejection, result, request_ok=False)


def _refused(route: Route, rejection: HeapRejected, result: BatchResult, request_ok: bool) -> None:
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
