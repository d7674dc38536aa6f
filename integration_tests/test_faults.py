"""Heap misbehaving: throttling, server errors, hangs, resets, a server that goes away, a SIGTERM.

Retried faults must lose nothing and (track) double nothing; faults that outlast the retries must end the sync
loudly (non-zero exit, TRACE) with no STATE emitted past what Heap holds.
"""

from __future__ import annotations

import threading
import time

import pytest

from heap_standin import Fault, HeapStandin
from integration_tests.support import (
    TRACK_API,
    USER_API,
    StateWatcher,
    catalog,
    config,
    interleave,
    people,
    run_connector,
    send_sigterm,
    states_of,
    watch,
)


def assert_every_event_once(heap: HeapStandin, rows: list[dict]) -> None:
    """Nothing lost, nothing doubled: Heap holds exactly one event per input record."""
    identities = [e["identity"] for e in heap.events]
    assert sorted(identities) == sorted(r["email"] for r in rows)
    assert len({e["idempotency_key"] for e in heap.events}) == len(rows)


def assert_succeeded(result, messages: list[dict]) -> None:
    assert result.returncode == 0, result.describe()
    assert result.errors == []
    assert result.states == states_of(messages)
    assert result.summary["outcome"] == "succeeded"


# ------------------------------------------------------------------------------------------------------------
# Retried faults


def test_429_with_retry_after_is_retried_no_sooner_than_heap_asks(heap):
    """Retry-After 2 s on a first attempt, whose own backoff would be at most 0.5 s: the retry must wait for
    Heap's 2 s."""
    rows = people(30)
    messages = interleave(rows, every=10)
    heap.inject(Fault(status=429, retry_after=2.0))
    moments: dict[str, float] = {}
    watch(lambda: heap.stats()["faults_served"] >= 1, lambda: moments.setdefault("throttled", time.monotonic()))
    watch(lambda: heap.stats()["events_stored"] > 0, lambda: moments.setdefault("accepted", time.monotonic()))
    cfg = config(heap, TRACK_API, max_concurrent_requests=1)
    result = run_connector("write", cfg, catalog(), messages)

    assert_succeeded(result, messages)
    assert_every_event_once(heap, rows)
    assert heap.stats()["by_status"] == {"429": 1, "200": 1}
    assert (result.summary["throttled"], result.summary["retries"]) == (1, 1)
    # A lower bound, which a loaded machine only makes easier to meet; the margin is for the watching threads,
    # which may note the 429 a little late.
    assert moments["accepted"] - moments["throttled"] >= 1.5, moments


@pytest.mark.parametrize(
    "faults",
    [[Fault(status=429)] * 2, [Fault(status=429, retry_after=0.2)] * 3],
    ids=["without_retry_after", "retry_after_0.2"],
)
def test_repeated_429s_are_retried_and_nothing_is_lost_or_doubled(heap, faults):
    rows = people(40)
    messages = interleave(rows, every=10)
    heap.inject(*faults)
    result = run_connector("write", config(heap, TRACK_API, batch_size=10), catalog(), messages)
    assert_succeeded(result, messages)
    assert_every_event_once(heap, rows)
    assert heap.stats()["by_status"]["429"] == len(faults)
    assert result.summary["throttled"] == len(faults)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried_and_nothing_is_lost_or_doubled(heap, status):
    rows = people(120)
    messages = interleave(rows, every=25)
    heap.inject(*[Fault(status=status)] * 4)
    cfg = config(heap, TRACK_API, batch_size=20, max_concurrent_requests=4)
    result = run_connector("write", cfg, catalog(), messages)
    assert_succeeded(result, messages)
    assert_every_event_once(heap, rows)
    stats = heap.stats()
    assert stats["by_status"][str(status)] == 4 and stats["events_deduplicated"] == 0
    assert result.summary["retries"] == 4


def test_server_errors_on_user_properties_in_single_mode_are_retried(heap):
    rows = people(15)
    messages = interleave(rows, every=5)
    heap.inject(Fault(status=503), Fault(status=500, retry_after=0.1), Fault(status=502))
    result = run_connector("write", config(heap, USER_API, bulk=False), catalog(), messages)
    assert_succeeded(result, messages)
    assert {u["identity"] for u in heap.users} == {r["email"] for r in rows}
    assert heap.stats()["faults_served"] == 3


def test_a_request_that_hangs_past_the_timeout_is_abandoned_and_retried(heap):
    rows = people(30)
    messages = interleave(rows, every=10)
    heap.inject(Fault(hang_seconds=20))
    moments: dict[str, float] = {}
    watch(lambda: heap.stats()["faults_served"] >= 1, lambda: moments.setdefault("hung", time.monotonic()))
    watch(lambda: heap.stats()["events_stored"] > 0, lambda: moments.setdefault("accepted", time.monotonic()))
    cfg = config(heap, TRACK_API, request_timeout_seconds=1, max_retries=3, max_concurrent_requests=1)
    result = run_connector("write", cfg, catalog(), messages)
    assert_succeeded(result, messages)
    assert_every_event_once(heap, rows)
    assert result.summary["retries"] == 1
    # A deadline is the behaviour: timed out after 1 s (+ at most 0.5 s backoff), not after the 20 s the server
    # keeps silent; 10 s leaves a loaded machine room.
    assert moments["accepted"] - moments["hung"] < 10, moments


def test_an_answer_lost_after_heap_stored_the_events_is_retried_without_doubling_them(heap):
    """Heap answers too late (after the client's 1 s timeout) but has stored the batch: the retry is a repeat
    that Heap deduplicates by idempotency_key, so every event is there exactly once."""
    rows = people(50)
    messages = interleave(rows, every=25)
    heap.set_latency(1600)
    watch(lambda: heap.stats()["events_stored"] > 0, lambda: heap.set_latency(0))
    cfg = config(heap, TRACK_API, request_timeout_seconds=1, max_retries=4, max_concurrent_requests=1)
    result = run_connector("write", cfg, catalog(), messages)
    assert_succeeded(result, messages)
    assert_every_event_once(heap, rows)
    assert heap.stats()["events_deduplicated"] > 0, "the scenario did not produce a repeated request"
    assert result.summary["retries"] >= 1


def test_connection_resets_are_retried(heap):
    rows = people(60)
    messages = interleave(rows, every=20)
    heap.inject(Fault(reset=True), Fault(reset=True), Fault(reset=True))
    cfg = config(heap, TRACK_API, batch_size=15, max_concurrent_requests=2)
    result = run_connector("write", cfg, catalog(), messages)
    assert_succeeded(result, messages)
    assert_every_event_once(heap, rows)
    assert heap.stats()["faults_served"] == 3


def test_heaps_own_rate_limit_answers_are_waited_out(heap):
    """A stand-in enforcing 6,000 events a minute (bucket of 1,500) against an unpaced connector: the 429s
    it answers, with Retry-After, are waited out and every event lands once."""
    limited = HeapStandin(track_events_per_minute=6000).start()
    try:
        rows = people(1700)
        messages = interleave(rows, every=300)
        cfg = config(limited, TRACK_API, batch_size=100, max_concurrent_requests=1)
        result = run_connector("write", cfg, catalog(), messages, timeout=60)
        assert_succeeded(result, messages)
        assert_every_event_once(limited, rows)
        assert limited.stats()["by_status"].get("429", 0) >= 1
        assert result.summary["throttled"] >= 1
    finally:
        limited.stop()


# ------------------------------------------------------------------------------------------------------------
# Faults that outlast the retries, and faults no retry can fix


def test_retries_running_out_end_the_sync_with_a_transient_error_and_no_state(heap):
    rows = people(20)
    messages = interleave(rows, every=10)
    heap.inject(*[Fault(status=503)] * 3)
    cfg = config(heap, TRACK_API, max_retries=2, max_concurrent_requests=1)
    result = run_connector("write", cfg, catalog(), messages)
    assert result.returncode != 0, result.describe()
    assert [e["failure_type"] for e in result.errors] == ["transient_error"]
    assert "503" in result.errors[0]["message"] and "3 attempts" in result.errors[0]["message"]
    assert result.states == []
    assert heap.events == []
    assert result.summary["outcome"] == "failed"
    assert heap.stats()["requests"] == 3


def test_heap_going_away_mid_load_fails_loudly_and_no_state_passes_what_heap_holds(heap):
    rows = people(2000)
    messages = interleave(rows, every=100)
    heap.set_latency(15)
    watch(lambda: heap.stats()["events_stored"] >= 400, heap.stop)
    watcher = StateWatcher(heap, "track", lambda d: d["email"])
    cfg = config(heap, TRACK_API, batch_size=20, max_concurrent_requests=2, max_retries=2, request_timeout_seconds=1)
    result = run_connector("write", cfg, catalog(), messages, on_message=watcher.on_message, timeout=60)

    assert result.returncode != 0, result.describe()
    assert [e["failure_type"] for e in result.errors] == ["transient_error"], result.describe()
    assert result.summary["outcome"] == "failed"
    held = watcher.held()  # the stand-in is stopped: this is final
    assert 400 <= len(held) < 2000
    watcher.assert_safe(messages)
    # Against the final content too: every record before the last emitted state is in Heap.
    emitted = len(result.states)
    assert 1 <= emitted < len(states_of(messages))
    assert {r["email"] for r in rows[: emitted * 100]} <= held
    assert result.summary["sent"] <= len(held)


@pytest.mark.parametrize("status", [401, 403])
def test_an_authorisation_refusal_is_not_retried_and_ends_as_a_config_error(heap, status):
    heap.inject(Fault(status=status))
    result = run_connector("write", config(heap, TRACK_API), catalog(), interleave(people(10), every=5))
    assert result.returncode != 0, result.describe()
    assert [e["failure_type"] for e in result.errors] == ["config_error"]
    message = result.errors[0]["message"]
    assert str(status) in message and "app_id" in message
    assert heap.stats()["requests"] == 1
    assert result.states == []


def test_a_base_url_with_a_wrong_path_ends_as_a_config_error_naming_base_url(heap):
    cfg = config(heap, TRACK_API, base_url=heap.url + "/wrong-prefix")
    result = run_connector("write", cfg, catalog(), interleave(people(10), every=5))
    assert result.returncode != 0, result.describe()
    assert [e["failure_type"] for e in result.errors] == ["config_error"]
    assert "base_url" in result.errors[0]["message"] and "404" in result.errors[0]["message"]
    assert heap.events == []


def test_sigterm_mid_load_keeps_states_safe_and_exits_non_zero(heap):
    rows = people(1500)
    messages = interleave(rows, every=50)
    heap.set_latency(40)
    watcher = StateWatcher(heap, "track", lambda d: d["email"])

    def terminate_once_loading(process) -> None:
        watch(lambda: heap.stats()["events_stored"] >= 300, lambda: send_sigterm(process))

    cfg = config(heap, TRACK_API, batch_size=25, max_concurrent_requests=2)
    result = run_connector(
        "write", cfg, catalog(), messages, on_message=watcher.on_message, on_start=terminate_once_loading, timeout=60
    )
    assert result.returncode != 0, result.describe()
    assert [e["failure_type"] for e in result.errors] == ["transient_error"], result.describe()
    assert "SIGTERM" in result.errors[0]["message"]
    assert result.summary["outcome"] == "terminated"
    watcher.assert_safe(messages)
    held = watcher.held()
    assert len(held) < len(rows), "the sync finished before SIGTERM could interrupt it"
    assert {r["email"] for r in rows[: len(result.states) * 50]} <= held
    assert heap.stats()["events_deduplicated"] == 0


def test_sigterm_while_waiting_for_a_slow_source_exits_promptly_with_acknowledged_states_out(heap):
    """The source stalls after STATE 5 for two minutes; once the connector has sent STATE 5 back (all 50
    records in Heap), the platform cancels the sync. The connector must stop long before the source would
    speak again, with STATE 1..5 out, no other, and a transient TRACE."""
    rows = people(100)
    messages = interleave(rows, every=10)
    stall_after = [i for i, m in enumerate(messages) if m["type"] == "STATE"][4]
    watcher = StateWatcher(heap, "track", lambda d: d["email"])
    five_states = threading.Event()
    signalled: dict[str, float] = {}

    def on_message(message: dict) -> None:
        watcher.on_message(message)
        if len(watcher.snapshots) == 5:
            five_states.set()

    def terminate_during_the_stall(process) -> None:
        if five_states.wait(60):
            signalled["at"] = time.monotonic()
            send_sigterm(process)

    cfg = config(heap, TRACK_API, batch_size=10)
    result = run_connector(
        "write",
        cfg,
        catalog(),
        messages,
        on_message=on_message,
        on_start=terminate_during_the_stall,
        pauses={stall_after: 120},
        timeout=180,
    )
    assert signalled, f"STATE 5 never came out during the stall\n{result.describe()}"
    assert result.returncode != 0, result.describe()
    # The deadline is the behaviour: the connector gives requests in flight up to 10 s (none are left here),
    # while one that waits for its blocked read to return would sit out the source's 120 s stall.
    assert result.ended_at - signalled["at"] < 30, "the connector did not stop promptly on SIGTERM"
    assert [e["failure_type"] for e in result.errors] == ["transient_error"], result.describe()
    assert result.states == states_of(messages)[:5]
    watcher.assert_safe(messages)
    assert len(heap.events) == 50
    assert result.summary["outcome"] == "terminated"
