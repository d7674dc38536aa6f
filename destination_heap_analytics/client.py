"""HTTP request -> acknowledgement: one body into Heap, and knowing whether it got there.

`HeapClient.post` sends one request with retries (408, 429, 5xx, timeouts, dropped connections), each attempt
an `exchange` bounded as a whole by `request_timeout_seconds`; what an answer means is a pure function of it
(`classify`). A 2xx counts as an acknowledgement unless its body is plainly another server's page (HTML); one
whose JSON says it failed (`{"error": ...}`) is still one, and said once in the log (`error_named`). Heap's
refusals are logged only as a field path and a rule from a fixed list: its wording may quote record values.
"""

from __future__ import annotations

import enum
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson
import requests
from urllib3.exceptions import InvalidHeader
from urllib3.util import Retry

from destination_heap_analytics.config import HeapConfig
from destination_heap_analytics.exchange import Answer, exchange, heap_session
from destination_heap_analytics.pacing import Pacer

logger = logging.getLogger("airbyte")

AUTH_TOKEN_PATH = "/api/public/v0/auth_token"
TOKEN_RENEWAL_SECONDS = 240.0  # Heap's tokens last 5 minutes: renew with a minute to spare
REJECTED_STATUSES = (400, 413, 422)  # the request's content is refused: retrying the same body cannot help
CONFIG_STATUSES = (401, 403, 404, 405)  # wrong host, path or app: no retry can help
INITIAL_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 300.0
CONNECT_TIMEOUT_SECONDS = 10.0
USER_AGENT = "destination-heap-analytics/0.2.0"
CHECK_BASE_URL = "Check base_url (US: https://heapanalytics.com, EU: https://c.eu.heap-api.com) and app_id."
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")  # printable ASCII: a token goes into a header line
_PATH = re.compile(r"postBody(?:\.[A-Za-z_]\w{0,63}|\[\d{1,9}\])*")
_POSITION = re.compile(r"\[\d+\]")
_PROPERTY_NAME = re.compile(r"(\.properties)\..*")  # under property_columns "*", names are record data
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
# The fields by which a JSON answer says it failed, and the values that mean it did: error_named
ERROR_FIELDS: dict[str, Callable[[object], bool]] = {
    "error": bool,
    "errors": bool,
    "success": lambda value: value is False,
    "ok": lambda value: value is False,
    "status": lambda value: isinstance(value, str) and value.lower() in ("error", "failed", "failure"),
}


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


def is_heap_acknowledgement(body: bytes) -> bool:
    """Heap's success body is not documented; Heap's own server-side clients take every 2xx as success, and
    their tests mock it as an empty body (200 or 204). So any 2xx is Heap's (empty, `OK`, `Event accepted`,
    JSON) but an HTML or XML page, which only a wrong base_url (a proxy, a website) answers with."""
    return not body.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


def error_named(body: bytes) -> str | None:
    """The field by which a 2xx body's JSON object says something went wrong (`{"error": "invalid app_id"}`,
    `{"success": false}`), one of ERROR_FIELDS; None for any other body. Only the field's name may be logged:
    its value is Heap's wording, which may quote what was sent."""
    if not body.lstrip()[:1] == b"{":
        return None
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict):
        return None
    return next((name for name, failed in ERROR_FIELDS.items() if name in answer and failed(answer[name])), None)


class Verdict(enum.Enum):
    """What an answer of Heap's means for the request that had it."""

    ACKNOWLEDGED = "acknowledged"
    RETRY = "retry"  # 408, 429, 5xx: Heap may take it later
    REFUSED = "refused"  # 400, 413, 422: the content is refused, the same body can never succeed
    UNAUTHORIZED = "unauthorized"  # 401: the deletion API's token, or the wrong place
    WRONG_PLACE = "wrong place"  # 403, 404, 405, a redirect: wrong host, path or app
    NOT_HEAP = "not heap"  # a 2xx web page: some other server answered
    UNEXPECTED = "unexpected"


def classify(status: int, body: bytes) -> Verdict:
    """What an answer means, from its status and body alone."""
    if 200 <= status < 300:
        return Verdict.ACKNOWLEDGED if is_heap_acknowledgement(body) else Verdict.NOT_HEAP
    if status in REJECTED_STATUSES:
        return Verdict.REFUSED
    if status == 401:
        return Verdict.UNAUTHORIZED
    if status in (408, 429) or status >= 500:  # 408: Heap gave up waiting for the request, as a timeout
        return Verdict.RETRY
    if status in CONFIG_STATUSES or 300 <= status < 400:
        return Verdict.WRONG_PLACE
    return Verdict.UNEXPECTED


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait Heap asks for, in seconds: Retry-After in either of its forms (seconds, or an HTTP date), as
    urllib3 reads it, or a decimal number of seconds, which some servers send; None when absent or unreadable."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return Retry(retry_after_max=float("inf")).parse_retry_after(value)
    except InvalidHeader:
        try:
            seconds = float(value)
        except ValueError:
            return None
        return seconds if 0 <= seconds < float("inf") else None


def heap_reason(text: str) -> str:
    """Heap's refusal, safe to log: its field path with list positions and property names masked
    ("postBody.events[n].properties.<property>") and its rule from HEAP_RULES ("should be object"); "…" marks
    wording dropped after the rule. Values are never kept: any other wording becomes a fixed phrase."""
    path, _, rule = text.strip().partition(" ")
    if _PATH.fullmatch(path) is None:
        return UNEXPLAINED
    path = _PROPERTY_NAME.sub(r"\1.<property>", _POSITION.sub("[n]", path))
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
                "The deletion api_key holds a character HTTP Basic authentication cannot carry: check the key.",
                transient=False,
            ) from None
        status = answer.status
        if status in (401, 403):
            raise DeliveryError(
                f"Heap refused the api_key for app_id {self._credentials[0]} (HTTP {status}). "
                "Check the deletion api_key, and that app_id is your Main Production environment's.",
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
    _error_named: bool = False  # a 2xx body named an error (HeapClient says so once a sync)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def first_error_named(self) -> bool:
        """True the first time a 2xx body of the sync named an error, False after."""
        with self._lock:
            first, self._error_named = not self._error_named, True
            return first

    def bisected(self) -> None:
        with self._lock:
            self.bisections += 1

    def paced(self, started: float, ended: float) -> None:
        """A sender waited from `started` to `ended`: count the part no other sender's wait already covered."""
        with self._lock:
            self.paced_seconds += max(0.0, ended - max(started, self._paced_through))
            self._paced_through = max(self._paced_through, ended)

    def count(self, outcome: str, retried: bool) -> None:
        """One attempt: `outcome` is its HTTP status, or what went wrong without an answer."""
        with self._lock:
            self.requests += 1
            self.retries += retried
            self.throttled += outcome == "429"


class HeapClient:
    """See the module. `pacer`: the one for the limit its requests count against, shared with every client whose
    requests count against the same. `api_key`: the deletion API's, for a bearer token."""

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
        self.session = heap_session(config.max_concurrent_requests)
        self.session.headers.update({"Content-Type": "application/json", "User-Agent": USER_AGENT})
        self._auth = DeletionAuth(config, api_key, self.session, self._timeout) if api_key else None

    def post(self, path: str, body: bytes, identities: list[str | None]) -> Answer:
        """Deliver one body; returns Heap's acknowledgement. Raises HeapRejected, DeliveryError, DeliveryStopped."""
        url = self._base_url + path
        token_renewed = False
        problem, pause = "", 0.0
        for attempt in range(self._max_retries + 1):
            if attempt:
                self._stop.wait(pause)
            self._hold(identities)
            try:
                headers = self._auth.headers() if self._auth else None
                answer = exchange(self.session, url, self._timeout, data=body, headers=headers)
            except (requests.RequestException, TokenUnavailable) as error:
                problem = _unanswered(error)
                self.counters.count(problem, retried=attempt > 0)
                pause = _backoff(attempt, None)
                continue
            self.counters.count(str(answer.status), retried=attempt > 0)
            verdict = classify(answer.status, answer.body)
            if verdict is Verdict.ACKNOWLEDGED:
                if self._pacer:
                    self._pacer.accepted()
                self._say_if_error_named(path, answer)
                return answer
            if verdict is Verdict.REFUSED:
                raise HeapRejected(answer.status, answer.body.decode("utf-8", "replace"))
            if verdict is Verdict.UNAUTHORIZED and self._auth and not token_renewed:
                self._auth.invalidate()  # the token expired early: fetch a new one and try again
                token_renewed = True
                problem, pause = "HTTP 401 (token renewed)", _backoff(attempt, None)
                continue
            if verdict is not Verdict.RETRY:
                raise DeliveryError(_wrong_answer(verdict, answer.status, url, token_renewed), transient=False)
            problem, pause = f"HTTP {answer.status}", self._pause_asked(path, answer, attempt)
        raise DeliveryError(
            f"Heap did not accept a request to {path} after {self._max_retries + 1} attempts; last answer: {problem}. "
            "This is usually temporary (Heap throttling or unavailable): run the sync again, it resumes from "
            "the last state.",
            transient=True,
        )

    def _hold(self, identities: list[str | None]) -> None:
        """Before each attempt: stop if the sync is stopping, and wait as Heap's limits require."""
        if self._stop.is_set():
            raise DeliveryStopped()
        if self._pacer:
            started = time.monotonic()
            if self._pacer.wait_for(identities):
                self.counters.paced(started, time.monotonic())
            if self._stop.is_set():
                raise DeliveryStopped()

    def _say_if_error_named(self, path: str, answer: Answer) -> None:
        """A 2xx stays Heap's acknowledgement, as Heap's own clients take it; one whose body names an error is
        said once a sync, by the field's name only, for a user whose data does not show up in Heap."""
        field_name = error_named(answer.body)
        if field_name is not None and self.counters.first_error_named():
            logger.warning(
                f"Heap answered HTTP {answer.status} at {path} with a JSON body whose {field_name!r} field says "
                "something went wrong (its wording is not logged: it may quote what was sent). Any 2xx is taken "
                "as delivered, as Heap's own clients take it; this is said once a sync. If the data does not show "
                f"up in Heap: {CHECK_BASE_URL}"
            )

    def _pause_asked(self, path: str, answer: Answer, attempt: int) -> float:
        """The wait before retrying after a 408, 429 or 5xx: backoff, or longer if Heap asks (Retry-After, at most
        MAX_RETRY_AFTER_SECONDS). A wait Heap asked for is logged, with the one taken."""
        asked = retry_after(answer.headers)
        honoured = None if asked is None else min(asked, MAX_RETRY_AFTER_SECONDS)
        if answer.status == 429 and self._pacer:
            self._pacer.throttled(honoured)
        pause = _backoff(attempt, honoured)
        if asked is not None and attempt < self._max_retries:
            capped = asked > MAX_RETRY_AFTER_SECONDS
            (logger.warning if capped else logger.info)(
                f"Heap answered HTTP {answer.status} at {path} asking to wait {asked:.1f} s (Retry-After); retrying "
                f"in {pause:.1f} s" + (", the most this connector waits before a retry" if capped else "") + "."
            )
        return pause


def _unanswered(error: Exception) -> str:
    """What went wrong with an attempt that had no answer, in a few words (no values, no secrets)."""
    if isinstance(error, requests.ReadTimeout):
        return "timed out"  # no whole answer within request_timeout_seconds
    if isinstance(error, TokenUnavailable):
        return str(error)
    # no connection (connect timeouts too: nothing reached Heap), or a broken answer (it may have landed)
    return f"connection failed ({type(error).__name__})"


def _wrong_answer(verdict: Verdict, status: int, url: str, token_renewed: bool) -> str:
    """The config error for an answer no retry can change."""
    if verdict is Verdict.NOT_HEAP:
        return (
            f"{url} answered HTTP {status} with an HTML page, not Heap's acknowledgement: nothing is taken as "
            f"delivered. {CHECK_BASE_URL}"
        )
    if verdict is Verdict.UNAUTHORIZED and token_renewed:  # a fresh token refused too: the key or app is wrong
        return (
            f"Heap answered HTTP 401 at {url} even with a freshly issued token. Check the deletion api_key, and "
            "that app_id is your Main Production environment's."
        )
    if verdict is Verdict.UNEXPECTED:
        return f"Heap answered an unexpected HTTP {status} at {url}."
    return f"Heap answered HTTP {status} at {url}. {CHECK_BASE_URL}"


def _backoff(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; Heap's Retry-After, when given, is the floor."""
    jittered = random.uniform(0, min(MAX_BACKOFF_SECONDS, INITIAL_BACKOFF_SECONDS * 2**attempt))
    return max(jittered, retry_after or 0.0)
