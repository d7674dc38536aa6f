"""Small HTTP servers that misbehave as Heap (or something posing as it) might, on 127.0.0.1 only, written with
http.server: each answers every request through a function the test gives it, and records what it was sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from integration_tests.support import Result


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self) -> None:
        try:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.server.requests.append((self.path, body))
            self.server.arrivals.append(time.monotonic())
            self.server.answer(self, self.path, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up (its deadline, or the sync ended): nobody to answer

    do_GET = do_POST = _answer

    def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


Answer = Callable[[Handler, str, bytes], None]


class Server:
    """Answers every request with `answer(handler, path, body)`; records (path, body) of each request and the
    time.monotonic() it arrived."""

    def __init__(self, answer: Answer) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.answer = answer
        self._server.requests = []
        self._server.arrivals = []
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[tuple[str, bytes]]:
        return list(self._server.requests)

    @property
    def arrivals(self) -> list[float]:
        return list(self._server.arrivals)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def always(status: int, body: bytes, headers: dict[str, str] | None = None) -> Answer:
    return lambda handler, path, raw: handler.send(status, body, headers)


DRIPPED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Padding: " + b"x" * 49 + b"\r\n\r\n"
DRIP_SECONDS = len(DRIPPED_HEAD)  # 100 s, were the client to wait for the whole answer


def drip(handler: Handler, path: str, raw: bytes) -> None:
    """A 200 whose status line and headers come one byte a second."""
    for byte in DRIPPED_HEAD:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(1)


def assert_failed(result: Result, failure_type: str = "config_error") -> str:
    """The sync failed loudly: non-zero exit, one TRACE error of that type, no STATE. Returns its message."""
    assert result.returncode != 0, result.describe()
    assert [error["failure_type"] for error in result.errors] == [failure_type], result.describe()
    assert result.states == [], result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    return result.errors[0]["message"]
