"""HeapStandin: the public face of the stand-in, serving on a loopback port from a daemon thread."""

from __future__ import annotations

import socket
import threading
from typing import Self

from heap_standin.deletions import Deletions
from heap_standin.faults import Fault
from heap_standin.limits import Limits
from heap_standin.rules import is_loopback_host
from heap_standin.server import Server
from heap_standin.store import Predicate, State


class HeapStandin:
    """A Heap stand-in serving on a loopback port from a daemon thread. See the package docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
        track_events_per_minute: int = 0,
        enforce_identity_limits: bool = False,
        keep_items: bool = True,
        api_key: str | None = None,  # for the deletion API; None: any non-empty key
        token_ttl_seconds: float = 300.0,
        acknowledgement: str = "empty",  # how a success answers: a key of replies.ACKNOWLEDGEMENTS
    ) -> None:
        if not is_loopback_host(host):
            raise ValueError(f"the Heap stand-in only binds loopback addresses, not {host!r}")
        self._host = "127.0.0.1" if host == "localhost" else host
        self._family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        self._port = port
        limits = Limits(track_events_per_minute, enforce_identity_limits)
        self._state = State(latency_ms, limits, keep_items, Deletions(api_key, token_ttl_seconds), acknowledgement)
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> Self:
        """Serve in a daemon thread. After stop() this re-binds the same port: the data is kept."""
        if self._server is not None:
            raise RuntimeError("the Heap stand-in is already running")
        server = Server((self._host, self._port), self._family, self._state)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="heap-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every open connection; the recorded data stays."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopped = True
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if self._family == socket.AF_INET6 else self._host
        return f"http://{host}:{self._port}"

    # -- behaviour --

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each of the next /api/* requests consumes one, in order."""
        with self._state.lock:
            self._state.faults.extend(faults)

    def set_latency(self, ms: float) -> None:
        self._state.latency_s = ms / 1000.0

    def reject_when(self, predicate: Predicate | None) -> None:
        """Answer 400 with predicate(item)'s text for any request holding an item it flags (None clears)."""
        self._state.predicate = predicate

    def reset(self) -> None:
        """Forget stored data, counters, rate-limit levels and pending faults. Settings (latency, limits,
        predicate) stay."""
        self._state.reset()

    # -- what Heap holds: snapshots --

    def _snapshot(self, items: list[dict]) -> list[dict]:
        with self._state.lock:
            return list(items)

    @property
    def events(self) -> list[dict]:
        return self._snapshot(self._state.events)

    @property
    def users(self) -> list[dict]:
        return self._snapshot(self._state.users)

    @property
    def accounts(self) -> list[dict]:
        return self._snapshot(self._state.accounts)

    @property
    def deleted_users(self) -> list[dict]:
        """Users named in accepted deletion requests ({user_id} or {identity}), in arrival order."""
        return self._state.deletions.deleted_users

    @property
    def tokens_issued(self) -> int:
        return self._state.deletions.tokens_issued

    @property
    def identifies(self) -> list[dict]:
        """Accepted identify calls {app_id, user_id, identity, timestamp?}, in arrival order."""
        return self._snapshot(self._state.identifies)

    @property
    def duplicates_dropped(self) -> int:
        """Track events accepted but not stored again: their idempotency key was already held ("sent twice")."""
        with self._state.lock:
            return self._state.counts["events_deduplicated"]

    @property
    def sent_twice(self) -> int:
        """Items the client sent again after the stand-in had accepted them: track events whose idempotency key
        was already held (duplicates_dropped) plus user/account property items (identity or account and
        properties) already accepted in an earlier request."""
        with self._state.lock:
            return self._state.counts["events_deduplicated"] + self._state.counts["property_items_repeated"]

    @property
    def unconfirmed(self) -> int:
        """Items stored whose acknowledgement the client may not have had (a fault after storing, an answer that
        could not be written, raced stop() or found the client gone): each may legitimately be sent again."""
        with self._state.lock:
            return self._state.counts["items_unconfirmed"]

    @property
    def faults_served(self) -> dict[str, int]:
        """Faults the stand-in actually served (not merely queued), by Fault.kind."""
        with self._state.lock:
            return dict(self._state.faults_by_kind)

    @property
    def admissions(self) -> list[tuple[float, str, int, bool]]:
        """(time.monotonic(), endpoint kind, items, throttled) of every valid /api/* body that reached the rate
        limits, in arrival order: throttled ones were answered 429, the others admitted."""
        with self._state.lock:
            return list(self._state.admissions)

    def stats(self) -> dict:
        return self._state.stats()
