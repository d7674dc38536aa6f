"""exchange: one HTTP exchange within its deadline, against a loopback server."""

from __future__ import annotations

import pytest
import urllib3

from destination_heap_analytics import exchange as exchange_module
from destination_heap_analytics.exchange import AnswerTimeout, exchange, heap_session
from integration_tests.misbehaving import Server, always

# Long enough never to pass on its own on a busy machine: the test makes it pass where it wants, by hand.
DEADLINE_SECONDS = 120.0


def test_a_deadline_passing_once_the_connection_is_back_in_the_pool_cuts_nothing(monkeypatch):
    """The deadline's timer goes off at the worst moment: just after a finished exchange put its connection
    back in the pool, where another request may already have taken it. The finished exchange keeps its answer,
    and the pooled connection stays whole for the next request (nothing is sent twice)."""
    release_conn = urllib3.HTTPResponse.release_conn

    def release_then_deadline_passes(response: urllib3.HTTPResponse) -> None:
        release_conn(response)
        exchange_module._CURRENT.deadline._cut()  # the timer thread's call, at this very instant

    monkeypatch.setattr(urllib3.HTTPResponse, "release_conn", release_then_deadline_passes)
    with Server(always(200, b'{"ok": true}')) as server:
        session = heap_session()
        first = exchange(session, f"{server.url}/api/track", (5.0, DEADLINE_SECONDS), json={"n": 1})
        monkeypatch.setattr(urllib3.HTTPResponse, "release_conn", release_conn)
        second = exchange(session, f"{server.url}/api/track", (5.0, DEADLINE_SECONDS), json={"n": 2})
        assert (first.status, first.body, second.status) == (200, b'{"ok": true}', 200)
        assert [body for _, body in server.requests] == [b'{"n": 1}', b'{"n": 2}']  # each sent once


def test_a_deadline_passing_before_the_answer_is_whole_times_the_exchange_out(monkeypatch):
    """The other side of the line: a deadline passing while the answer is still being read is a timeout, and
    the connection is closed rather than pooled (unread bytes would confuse the next request)."""
    read_answer = exchange_module._read_answer

    def deadline_passes_while_reading(raw: urllib3.HTTPResponse) -> tuple[bytes, bool]:
        exchange_module._CURRENT.deadline._cut()
        return read_answer(raw)

    monkeypatch.setattr(exchange_module, "_read_answer", deadline_passes_while_reading)
    with Server(always(200, b"{}")) as server:
        with pytest.raises(AnswerTimeout):
            exchange(heap_session(), f"{server.url}/api/track", (5.0, DEADLINE_SECONDS), json={})
