"""The HTTP side: a threading server on a loopback address, keep-alive, chunked and gzip bodies, the fault
injection (statuses, hangs, resets) and the /_standin/* control endpoints for a stand-in in another process."""

from __future__ import annotations

import gzip
import select
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from heap_standin.deletions import DELETION_PREFIX
from heap_standin.faults import Fault, faults_from_dicts
from heap_standin.replies import Reply, bad_request, json_reply, seconds_text
from heap_standin.rules import ENDPOINTS, MAX_BODY_BYTES
from heap_standin.store import State


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive handler threads must not make stop() wait for idle clients
    request_queue_size = 1024
    allow_reuse_address = True  # so start() after stop() can re-bind the same port

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, state: State) -> None:
        self.address_family = family
        self.state = state
        self.stopped = False
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a DNS lookup we neither need nor want.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def track_connection(self, conn: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            (self._connections.add if open_ else self._connections.discard)(conn)

    def drop_connections(self) -> None:
        """Close kept-alive connections too, so clients see the server go away rather than linger on."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (timeouts, our own resets, stop()) are normal here; anything else is a bug.
        if not isinstance(sys.exc_info()[1], OSError):
            traceback.print_exc()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "heap-standin"
    disable_nagle_algorithm = True  # small responses must not wait for delayed ACKs
    timeout = 300  # idle keep-alive connections eventually free their thread
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would cost more than the request

    def setup(self) -> None:
        super().setup()
        self.server.track_connection(self.connection, True)

    def finish(self) -> None:
        self.server.track_connection(self.connection, False)
        super().finish()

    # -- plumbing --

    def _reply(self, reply: Reply) -> None:
        """Write status line, headers and body in one send: keep-alive needs Content-Length on every reply."""
        lines = [
            f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in reply.headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + reply.body)

    def _read_body(self) -> bytes | None:
        """The request body (b"" when none); None when the request was already answered or is unreadable."""
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                raw = self._read_chunked()
            else:
                raw = self._read_sized(int(self.headers.get("Content-Length") or 0))
            if raw is not None and self.headers.get("Content-Encoding", "").lower() == "gzip":
                raw = gzip.decompress(raw)
        except (ValueError, OSError, EOFError) as exc:
            self.close_connection = True
            self._reply(bad_request(f"unreadable request body: {exc}"))
            return None
        return raw

    def _read_sized(self, length: int) -> bytes | None:
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._reply(Reply(413, b"request body too large"))
            return None
        raw = self.rfile.read(length)
        if len(raw) < length:  # the client hung up mid-body
            self.close_connection = True
            return None
        return raw

    def _read_chunked(self) -> bytes:
        parts, total = [], 0
        while True:
            size = int(self.rfile.readline(65537).split(b";")[0], 16)
            total += size
            if total > MAX_BODY_BYTES:
                raise ValueError("body too large")
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # skip trailers
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _route(self) -> None:
        body = self._read_body()
        if body is None:
            return
        path = self.path.split("?", 1)[0]
        if path.startswith("/api/"):
            self._serve_api(path, body)
        elif path.startswith("/_standin/"):
            self._reply(control(self.server.state, self.command, path, body))
        elif path == "/" and self.command in ("GET", "HEAD"):
            self._reply(Reply(200, b"heap-standin: a local stand-in for Heap's server-side APIs\n"))
        else:
            self._reply(Reply(404, b"Not Found"))

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _route

    # -- the Heap part --

    def _serve_api(self, path: str, body: bytes) -> None:
        state = self.server.state
        state.begin_request()
        state.take_stored()
        reply = None
        try:
            reply = self._api_outcome(state, path, body)
        finally:
            # Count before answering: a client that reads stats right after its reply must see this request.
            state.end_request(None if reply is None else reply.status)
        stored = state.take_stored()
        if reply is None:  # a fault after the items were stored: no answer, so the client may send them again
            state.unconfirmed(stored)
            return
        # Looked at before answering: a client that hung up once it had the answer is no sign of a lost one.
        gone = bool(stored) and self._client_gone()
        try:
            self._reply(reply)
        except OSError:
            state.unconfirmed(stored)
            raise
        if stored and (gone or self.server.stopped):
            # The client had given up (its timeout) before the answer came, or the answer raced stop(): either
            # way the client may not have it and may send the items again.
            state.unconfirmed(stored)

    def _client_gone(self) -> bool:
        """The client closed its end (it reads EOF): it hung up before or as the answer went out."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            # recv() on a socket with a timeout would wait for data: peek only once select says it would not.
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _api_outcome(self, state: State, path: str, body: bytes) -> Reply | None:
        """The reply to send, or None when the connection is to be dropped without one."""
        if state.latency_s > 0:
            time.sleep(state.latency_s)
        if self._stopped_meanwhile():
            return None
        fault = state.next_fault()
        if fault is not None and fault.delay_seconds is not None:
            time.sleep(fault.delay_seconds)  # a slow answer, not a failed one
            return None if self._stopped_meanwhile() else self._api_reply(state, path, body)
        if fault is None:
            return self._api_reply(state, path, body)
        if fault.after_store:
            self._api_reply(state, path, body)  # stored (if valid); the fault replaces the answer
            state.unconfirmed(state.take_stored())
        return self._serve_fault(fault)

    def _stopped_meanwhile(self) -> bool:
        """stop() came while the request slept: the server is gone, nothing is processed, no answer."""
        if self.server.stopped:
            self.close_connection = True
        return self.server.stopped

    def _api_reply(self, state: State, path: str, body: bytes) -> Reply:
        if path.startswith(DELETION_PREFIX):
            return state.deletions.serve(self.command, path, self.headers.get("Authorization", ""), body)
        endpoint = ENDPOINTS.get(path)
        if endpoint is None:
            return Reply(404, b"Not Found")
        if self.command != "POST":
            return Reply(405, b"Method Not Allowed", headers=(("Allow", "POST"),))
        try:
            return state.ingest(endpoint, body)
        except Exception:  # noqa: BLE001 - a stand-in bug or a failing predicate must answer, loudly
            traceback.print_exc()
            return Reply(500, b"heap-standin internal error")

    def _serve_fault(self, fault: Fault) -> Reply | None:
        if fault.status is not None:
            headers = (
                () if fault.retry_after is None else (("Retry-After", seconds_text(fault.retry_after)),)
            )
            return Reply(fault.status, HTTPStatus(fault.status).phrase.encode(), headers=headers)
        self.close_connection = True
        if fault.hang_seconds is not None:
            time.sleep(fault.hang_seconds)  # then the server closes the connection without a word
        else:
            # SO_LINGER 0 makes close() send RST instead of FIN: the client sees "connection reset".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # the makefile() reference would otherwise keep the socket open
            self.connection.close()
        return None


# ----------------------------------------------------------------------------------------------------------
# Control endpoints, for driving a stand-in that runs in another process


def control(state: State, method: str, path: str, raw: bytes) -> Reply:
    action = (method, path.rstrip("/"))
    try:
        if action == ("GET", "/_standin/stats"):
            return json_reply(state.stats())
        if action == ("GET", "/_standin/received"):
            with state.lock:
                received = {
                    "events": state.events[:],
                    "users": state.users[:],
                    "accounts": state.accounts[:],
                    "identifies": state.identifies[:],
                }
            return json_reply(received)
        if action == ("POST", "/_standin/reset"):
            state.reset()
            return json_reply({})
        if action == ("POST", "/_standin/faults"):
            faults = faults_from_dicts(orjson.loads(raw or b"{}")["faults"])
            with state.lock:
                state.faults.extend(faults)
            return json_reply({"pending": len(state.faults)})
        if action == ("POST", "/_standin/latency"):
            state.latency_s = float(orjson.loads(raw)["ms"]) / 1000.0
            return json_reply({})
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return bad_request(f"bad control request: {exc!r}")
    return Reply(404, b"unknown control endpoint")
