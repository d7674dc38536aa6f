"""One HTTP exchange, bounded as a whole: `exchange` sends a request and reads its answer within a deadline.

requests and urllib3 bound each socket read, not the exchange: a server that sends its status line, headers or
body a byte a second holds a request for as long as it likes. Here the deadline is a timer that, when it
passes, shuts down the socket of the connection in use, ending whatever the exchange waits for (connecting,
sending, the status line, headers or body). `heap_session` makes the Session whose connections hand their
socket to the deadline of the exchange using them. At most `MAX_ANSWER_BYTES` of an answer are read.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

# Heap's answers are a few bytes; a bigger one is not Heap's, and reading it whole could exhaust memory.
MAX_ANSWER_BYTES = 64 * 1024


class AnswerTimeout(requests.ReadTimeout):
    """The request, answer included, took longer than its deadline."""


@dataclass
class Answer:
    """Heap's answer: its status, headers and (at most MAX_ANSWER_BYTES of) its body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class _Deadline:
    """One exchange's deadline: when it passes, the socket of the connection in use is shut down, unless the
    exchange settled it first."""

    def __init__(self, seconds: float) -> None:
        self.passed = False
        self._settled = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        _CURRENT.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        _CURRENT.deadline = None

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._socket = sock
            if self.passed:
                _shut(sock)

    def settle(self) -> bool:
        """Ends the deadline's hold on the connection; whether it had passed. A timer going off after this cuts
        nothing, so the connection may go back to the pool, where another exchange may take it at once."""
        self._timer.cancel()
        with self._lock:
            self._settled = True
            return self.passed

    def _cut(self) -> None:
        with self._lock:
            if self._settled:
                return
            self.passed = True
            _shut(self._socket)


_CURRENT = threading.local()  # the deadline of the exchange this thread is in, for its connection to watch


def _shut(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read or write, which close() would not
        except OSError:
            pass


class _DeadlineConnection:
    """A connection that hands its socket to the deadline of the exchange using it: when it connects, and when a
    pooled one is used again."""

    def connect(self) -> None:
        super().connect()
        _watch(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:
            _watch(self.sock)
        super().request(*args, **kwargs)


def _watch(sock: socket.socket | None) -> None:
    deadline = getattr(_CURRENT, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)


class _DeadlinePool:
    """A pool that takes a connection back only once the exchange's deadline is settled: from then on the timer
    cuts nothing, so it cannot shut the socket of another exchange that took the connection. urllib3 puts a
    connection back itself as soon as an answer is read to its end, before `exchange` sees it end."""

    def _put_conn(self, conn: HTTPConnection | None) -> None:
        deadline = getattr(_CURRENT, "deadline", None)
        if conn is not None and deadline is not None and deadline.settle():
            conn.close()  # the deadline passed first and shut its socket: not one to use again
        super()._put_conn(conn)


class _HTTPPool(_DeadlinePool, HTTPConnectionPool):
    ConnectionCls = type("_HTTPDeadlineConnection", (_DeadlineConnection, HTTPConnection), {})


class _HTTPSPool(_DeadlinePool, HTTPSConnectionPool):
    ConnectionCls = type("_HTTPSDeadlineConnection", (_DeadlineConnection, HTTPSConnection), {})


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter, its pools (direct or through an HTTP proxy) making deadline-aware connections."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools are their own classes
            manager.pool_classes_by_scheme = _POOLS
        return manager


def heap_session(connections: int = 1) -> requests.Session:
    """A Session for `exchange`: its connections honour each exchange's deadline; no retries of its own."""
    session = requests.Session()
    adapter = _DeadlineAdapter(pool_connections=1, pool_maxsize=connections, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def exchange(
    session: requests.Session, url: str, timeout: tuple[float, float], method: str = "POST", **kwargs: Any
) -> Answer:
    """Send and read the answer within `timeout` = (connect, whole exchange) seconds, on a `heap_session`.
    Redirects are not followed: a body (or a key) must never go to another host than base_url's."""
    complete = False
    with _Deadline(timeout[1]) as deadline:
        try:
            response = session.request(method, url, timeout=timeout, stream=True, allow_redirects=False, **kwargs)
            try:
                body, complete = _read_answer(response.raw)
            finally:
                if complete and not deadline.passed:
                    response.raw.release_conn()  # the connection is clean: back to the pool
                else:
                    response.raw.close()  # unread bytes would confuse the next request on this connection
        except requests.ConnectTimeout:
            raise  # no connection: nothing reached Heap
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            if deadline.passed or isinstance(error, requests.Timeout | urllib3.exceptions.TimeoutError):
                raise AnswerTimeout("no whole answer in time") from None
            if isinstance(error, requests.RequestException):
                raise
            raise requests.ConnectionError(f"broken answer ({type(error).__name__})") from None
    if deadline.passed:  # cut as the answer ended: it may be cut short, so it is not taken
        raise AnswerTimeout("no whole answer in time")
    return Answer(response.status_code, response.headers, body)


def _read_answer(raw: urllib3.HTTPResponse) -> tuple[bytes, bool]:
    """(the body, whether it was read to its end), reading at most MAX_ANSWER_BYTES + 1."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_ANSWER_BYTES:
        chunk = raw.read1(MAX_ANSWER_BYTES + 1 - size)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:MAX_ANSWER_BYTES], False
