"""Delivery against a Heap that is slow, wrong or hostile: each user's updates arrive in input order; a refusal of
the request itself (not of an item) fails the sync quickly instead of "skipping" every record; a request is
bounded in time as a whole and Heap's answer in size; memory is bounded in bytes; Heap's error texts and
tokens never reach the logs; a 2xx that is not Heap's answer is no acknowledgement.

The misbehaving servers are integration_tests/misbehaving.py's, on 127.0.0.1 only.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from destination_heap_analytics.refusals import RUN_LIMIT
from heap_standin import Fault, HeapStandin
from integration_tests import reliability
from integration_tests.adversarial import assert_each_key_in_order
from integration_tests.misbehaving import DRIP_SECONDS, Handler, Server, always, assert_failed, drip
from integration_tests.support import (
    TRACK_API,
    USER_API,
    catalog,
    config,
    interleave,
    people,
    record,
    run_connector,
    send_sigterm,
    state,
    states_of,
)

DELETE_API = {"api_type": "delete_users", "identity_column": "email", "api_key": "s3cret-deletion-key"}


def deletion_server(deletion: Callable[[Handler], None], token: bytes = b'{"access_token": "tok123"}'):
    def answer(handler: Handler, path: str, raw: bytes) -> None:
        if path.endswith("/auth_token"):
            handler.send(200, token, {"Content-Type": "application/json"})
        else:
            deletion(handler)

    return Server(answer)


# ------------------------------------------------------------------------------------------------------------
# 1. Per-key order


def test_ten_rounds_of_the_same_users_end_on_the_last_version_in_heaps_arrival_order():
    """10 rounds of 2,000 users (version 0..9), default concurrency and batching, 20 ms latency, and 503s whose
    retries would let later rounds overtake: four at the start (each of round 0's two first requests refused
    twice) and two late ones: the source stops after round 6 until its STATE is out (rounds 0-6 in Heap), the
    two 503s are queued, then rounds 7-9 come, so their requests meet them. In the order Heap received them,
    every user's versions arrive in order (those that waited merged into a later one: see test_hot_keys), so
    each ends on version 9."""
    rows = [{"email": f"secret-person-{u}@example.com", "version": r} for r in range(10) for u in range(2000)]
    api = {"api_type": "add_user_properties", "identity_column": "email", "property_columns": "version"}
    messages = interleave(rows, every=1000)
    after_round_6 = [index for index, message in enumerate(messages) if message["type"] == "STATE"][13]
    states_out: list[dict] = []
    rounds_0_to_6_in = threading.Event()

    def count_states(message: dict) -> None:
        if message["type"] == "STATE":
            states_out.append(message)
            if len(states_out) == 14:  # the STATE after rows 0..13,999: rounds 0-6
                rounds_0_to_6_in.set()

    def refuse_twice_before_rounds_7_to_9() -> None:
        rounds_0_to_6_in.wait(60)  # the bound only ends a run that went wrong
        heap.inject(Fault(status=503), Fault(status=503))

    with HeapStandin(latency_ms=20) as heap:
        heap.inject(*[Fault(status=503)] * 4)
        result = run_connector(
            "write",
            config(heap, api),
            catalog(),
            messages,
            pauses={after_round_6: refuse_twice_before_rounds_7_to_9},
            on_message=count_states,
            timeout=120,
        )
        assert result.returncode == 0, result.describe()
        assert result.states == states_of(messages)
        assert rounds_0_to_6_in.is_set() and heap.faults_served == {"503": 6}
        versions: dict[str, list[int]] = {}
        for user in heap.users:
            versions.setdefault(user["identity"], []).append(user["properties"]["version"])
    assert_each_key_in_order(versions, {row["email"]: 9 for row in rows})


def test_account_properties_keep_each_accounts_order():
    """5 rounds of 300 accounts in batches of 100; Heap takes a second over the first batch (round 0 of
    accounts 0-99), so round 1 of the same accounts, three batches later, would overtake it if it did not
    wait. In the order Heap received them, every account's versions arrive in order, ending on 4 (those that
    waited merged into one item: see test_hot_keys)."""
    rows = [{"account": f"secret-account-{a}", "version": r} for r in range(5) for a in range(300)]
    api = {"api_type": "add_account_properties", "account_id_column": "account", "property_columns": "version"}
    slowed = threading.Event()

    def slow_first_batch(item: dict) -> None:
        if item["account_id"] == "secret-account-0" and not slowed.is_set():
            slowed.set()
            time.sleep(1.0)  # accepted, but late
        return None

    with HeapStandin(latency_ms=10) as heap:
        heap.reject_when(slow_first_batch)
        result = run_connector("write", config(heap, api, batch_size=100), catalog(), interleave(rows, every=500))
        assert result.returncode == 0, result.describe()
        versions: dict[str, list[int]] = {}
        for account in heap.accounts:  # in arrival order
            versions.setdefault(account["account_id"], []).append(account["properties"]["version"])
    assert slowed.is_set()
    assert_each_key_in_order(versions, {row["account"]: 4 for row in rows})


# ------------------------------------------------------------------------------------------------------------
# 2. Refusals of the request itself


def test_a_wrong_app_id_fails_the_sync_in_a_few_requests_instead_of_skipping_every_record():
    """Every request refused without naming an item, nothing ever accepted: the requests are split, but no record is
    rejected (none is refused alone after Heap took anything), and RUN_LIMIT refusals in a row stop the sync."""
    with Server(always(400, b"invalid app_id")) as server:
        messages = interleave(people(200), every=50)
        result = run_connector("write", config(server.url, USER_API), catalog(), messages)
        requests = len(server.requests)
    message = assert_failed(result)
    assert "refuses the requests themselves" in message and "app_id" in message
    assert requests <= RUN_LIMIT + 8, f"{requests} requests to learn that Heap refuses the request"
    assert result.summary["outcome"] == "failed" and result.summary["skipped"] == 0
    assert result.states == []
    reliability.note("request_refusals_caught", "wrong app_id")


def test_a_413_to_everything_fails_the_sync():
    with Server(always(413, b"Request Entity Too Large")) as server:
        result = run_connector("write", config(server.url, TRACK_API), catalog(), interleave(people(300), every=100))
        requests = len(server.requests)
    assert "413" in assert_failed(result)
    assert requests <= RUN_LIMIT + 8
    assert result.summary["skipped"] == 0 and result.states == []
    reliability.note("request_refusals_caught", "413 to everything")


def test_a_refused_deletion_fails_the_sync_and_is_never_skipped():
    with deletion_server(lambda handler: handler.send(400, b"postBody.users[0].identity should be string")) as server:
        result = run_connector("write", config(server.url, DELETE_API), catalog(), interleave(people(30), every=10))
        deletions = [path for path, _ in server.requests if path.endswith("/user_deletion")]
    message = assert_failed(result)
    assert "deletion" in message and "postBody.users[n].identity should be string" in message
    assert len(deletions) == 1
    assert result.summary["skipped"] == 0
    reliability.note("request_refusals_caught", "refused deletion")


# ------------------------------------------------------------------------------------------------------------
# 3. Deadlines and answer sizes


def trickle(handler: Handler, path: str, raw: bytes) -> None:
    """200 with a body announced as 1 MB, sent a byte every 1.5 s."""
    handler.send_response(200)
    handler.send_header("Content-Length", "1000000")
    handler.end_headers()
    for _ in range(60):
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(1.5)


def test_an_answer_trickling_in_is_bounded_by_the_request_timeout():
    with Server(trickle) as server:
        cfg = config(server.url, TRACK_API, request_timeout_seconds=3, max_retries=1)
        result = run_connector("write", cfg, catalog(), interleave(people(5), every=5), timeout=120)
    message = assert_failed(result, "transient_error")
    assert "timed out" in message and "2 attempts" in message
    # A deadline is the behaviour: two attempts cut at 3 s each, where one answer trickling to its end takes
    # 90 s; 45 s leaves start-up on a loaded machine room.
    assert result.duration < 45, f"two attempts of at most 3 s took {result.duration:.0f} s"


def test_headers_dripping_in_are_bounded_by_the_request_timeout():
    """Status line and headers one byte a second: the 3 s deadline covers them too, not each byte's wait."""
    with Server(drip) as server:
        cfg = config(server.url, TRACK_API, request_timeout_seconds=3, max_retries=0)
        result = run_connector("write", cfg, catalog(), interleave(people(5), every=5), timeout=DRIP_SECONDS + 30)
    message = assert_failed(result, "transient_error")
    assert "timed out" in message and "1 attempts" in message
    # Time is the behaviour here: one 3 s attempt, on a loaded machine, against a drip that lasts 100 s.
    assert result.duration < DRIP_SECONDS / 4, f"a 3 s attempt took {result.duration:.0f} s"


@pytest.mark.parametrize("dripping", ["GET /", "auth token"])
def test_check_against_headers_dripping_in_fails_within_its_deadline(dripping: str):
    """check's GET of base_url and its fetch of a deletion token are bounded as a whole by its 10 s deadline: a
    server dripping its answer fails the check instead of passing it after 100 s."""

    def answer(handler: Handler, path: str, raw: bytes) -> None:
        if (dripping == "GET /") == (handler.command == "GET"):
            drip(handler, path, raw)
        else:
            handler.send(200, b'{"access_token": "tok123"}')

    with Server(answer) as server:
        result = run_connector("check", config(server.url, DELETE_API), timeout=DRIP_SECONDS + 30)
    assert result.returncode == 0, result.describe()
    (status,) = result.statuses
    assert status["status"] == "FAILED", result.describe()
    assert "did not answer within 10 s" in status["message"], status["message"]
    # Time is the behaviour here: one 10 s deadline, on a loaded machine, against a drip that lasts 100 s.
    assert result.duration < DRIP_SECONDS / 3, f"check took {result.duration:.0f} s"


def test_an_800_mb_answer_is_not_read_whole_and_is_not_an_acknowledgement():
    megabytes_sent: list[int] = []

    def endless_200(handler: Handler, path: str, raw: bytes) -> None:
        """200 with an 800 MB web page: a wrong base_url's answer, no acknowledgement."""
        handler.send_response(200)
        handler.send_header("Content-Length", str(800 * 1024 * 1024 + 6))
        handler.end_headers()
        handler.wfile.write(b"<html>")
        chunk = b" " * (1 << 20)
        for _ in range(800):
            handler.wfile.write(chunk)  # fails once the connector has hung up and the socket buffers are full
            megabytes_sent.append(1)

    with Server(endless_200) as server:
        result = run_connector("write", config(server.url, TRACK_API), catalog(), interleave(people(5), every=5))
    message = assert_failed(result)
    assert "base_url" in message and "not Heap's acknowledgement" in message
    # The connector reads 64 kB of an answer; what else the server got out is what the socket buffers took.
    assert len(megabytes_sent) < 64, f"the connector read {len(megabytes_sent)} MB of the answer"


# ------------------------------------------------------------------------------------------------------------
# 5. Memory bounded in bytes


def peak_rss_mb(process) -> list[float]:
    """Polls the process's VmHWM (peak resident memory) until it exits; the list holds the last reading."""
    peak: list[float] = [0.0]

    def poll() -> None:
        status = Path(f"/proc/{process.pid}/status")
        while process.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]) / 1024)
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.05)

    threading.Thread(target=poll, daemon=True).start()
    return peak


def test_large_records_against_a_slow_heap_stay_within_bounded_memory():
    """8,000 records of 40 kB (40 properties of 1,000 characters) against a stand-in answering in 0.5 s: reading
    stops when 32 MB of bodies are queued or in flight, so the connector stays under 250 MB."""
    big = "x" * 1000
    lines = [
        json.dumps(record({"email": f"secret-person-{i}@example.com", "action": "Secret Signed Up",
                           **{f"p{k}": f"{k}{big}"[:1000] for k in range(40)}}))
        for i in range(200)
    ]
    stdin = [lines[i % 200] for i in range(8000)] + [json.dumps(state(1))]
    api = {"api_type": "track", "identity_column": "email", "event_column": "action", "property_columns": "*"}
    seen: dict[str, list[float]] = {}
    with HeapStandin(latency_ms=500, keep_items=False) as heap:
        result = run_connector(
            "write", config(heap, api), catalog(), stdin_lines=stdin, timeout=240, check_leaks=False,
            on_start=lambda process: seen.setdefault("peak", peak_rss_mb(process)),
        )
        requests = heap.stats()["requests"]
    assert result.returncode == 0, result.describe()
    assert len(result.states) == 1
    assert requests >= 8000 * 40_000 // (4 << 20), "batches were not closed at 4 MB"
    assert 0 < seen["peak"][0] < 250, f"peak RSS {seen['peak'][0]:.0f} MB"
    reliability.record("bytes_bound_peak_mb", round(seen["peak"][0]))


def test_an_item_larger_than_a_request_may_be_is_skipped_and_counted(heap):
    """One record whose item alone is 5 MB (5,000 properties of 1,000 characters, each within Heap's rules) is
    not sent as a body past the 4 MB a request holds: it is skipped as item_too_large; the others land."""
    rows = people(10)
    rows[4] = {**rows[4], **{f"p{k:04d}": f"{k:04d}" + "v" * 996 for k in range(5000)}}
    messages = interleave(rows, every=5)
    result = run_connector("write", config(heap, {**TRACK_API, "property_columns": "*"}), catalog(), messages)
    assert result.returncode == 0, result.describe()
    assert result.skipped == {"item_too_large": 1}, result.describe()
    assert sorted(event["identity"] for event in heap.events) == sorted(row["email"] for row in rows[:4] + rows[5:])
    assert result.states == states_of(messages)


# ------------------------------------------------------------------------------------------------------------
# 6. Smaller ones


def test_a_wrong_base_url_answering_200_with_a_page_does_not_succeed():
    page = b"<!doctype html><html><body>Welcome to our site</body></html>"
    with Server(always(200, page, {"Content-Type": "text/html"})) as server:
        result = run_connector("write", config(server.url, TRACK_API), catalog(), interleave(people(20), every=10))
    message = assert_failed(result)
    assert "HTML page" in message and "base_url" in message


def test_408_is_retried_like_a_timeout(heap):
    rows = people(20)
    messages = interleave(rows, every=10)
    heap.inject(Fault(status=408), Fault(status=408))
    result = run_connector("write", config(heap, TRACK_API, max_concurrent_requests=1), catalog(), messages)
    assert result.returncode == 0, result.describe()
    assert result.states == states_of(messages)
    assert sorted(e["identity"] for e in heap.events) == sorted(r["email"] for r in rows)
    assert result.summary["retries"] == 2


def test_retry_after_as_an_http_date_is_honoured():
    """A 429 whose Retry-After is an HTTP date 3 s ahead (in whole seconds: over 2 s from the moment the 429 was
    written): the retry waits for it, where backoff alone would retry within 0.5 s; the log says what Heap asked
    for and what was taken."""

    def answer(handler: Handler, path: str, raw: bytes) -> None:
        if len(handler.server.requests) == 1:
            when = email.utils.formatdate(time.time() + 3, usegmt=True)
            handler.send(429, b"Too Many Requests", {"Retry-After": when})
        else:
            handler.send(200, b"")

    with Server(answer) as server:
        cfg = config(server.url, TRACK_API, max_concurrent_requests=1)
        result = run_connector("write", cfg, catalog(), interleave(people(5), every=5))
        arrivals = server.arrivals
    assert result.returncode == 0, result.describe()
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 1.9, f"retried {arrivals[1] - arrivals[0]:.2f} s after a 429 asking for 2 s+"
    told = [line for line in result.log_lines("INFO") if "(Retry-After); retrying in" in line]
    assert len(told) == 1 and told[0].startswith("Heap answered HTTP 429 at /api/track asking to wait "), told


def test_a_day_long_retry_after_is_logged_with_the_wait_taken():
    """Retry-After: 86400 is not waited for a day: the connector says that Heap asked for 86400 s and that it waits
    300 s (its most) before the retry. The sync is then stopped with SIGTERM rather than waiting 5 minutes."""
    started: dict[str, object] = {}

    def stop_once_told(message: dict) -> None:
        if message["type"] == "LOG" and "Retry-After" in message["log"]["message"]:
            send_sigterm(started["process"])

    with Server(always(429, b"Too Many Requests", {"Retry-After": "86400"})) as server:
        result = run_connector(
            "write", config(server.url, TRACK_API), catalog(), interleave(people(5), every=5),
            on_start=lambda process: started.setdefault("process", process), on_message=stop_once_told, timeout=60,
        )
    told = [line for line in result.log_lines("WARN") if "Retry-After" in line]
    assert told == [
        "Heap answered HTTP 429 at /api/track asking to wait 86400.0 s (Retry-After); retrying in 300.0 s, the most "
        "this connector waits before a retry."
    ], result.describe()
    assert [error["failure_type"] for error in result.errors] == ["transient_error"], result.describe()
    assert result.states == []


def test_a_deletion_endpoint_answering_401_even_to_a_fresh_token_is_a_config_error():
    with deletion_server(lambda handler: handler.send(401, b"Unauthorized")) as server:
        cfg = config(server.url, DELETE_API, max_retries=6)
        result = run_connector("write", cfg, catalog(), interleave(people(3), every=3))
        requests = len(server.requests)
    message = assert_failed(result)
    assert "401" in message and "api_key" in message
    assert "s3cret-deletion-key" not in result.stdout + result.stderr
    assert requests <= 4  # token, deletion, a fresh token, deletion: no further retries


def test_the_token_request_follows_no_redirect():
    with Server(always(200, b'{"access_token": "elsewhere"}')) as elsewhere:

        def redirect(handler: Handler, path: str, raw: bytes) -> None:
            handler.send(307, b"", {"Location": elsewhere.url + path})

        with Server(redirect) as server:
            result = run_connector("write", config(server.url, DELETE_API), catalog(), interleave(people(3), every=3))
        assert elsewhere.requests == []
    message = assert_failed(result)
    assert "redirect" in message and "base_url" in message


def test_a_token_with_a_line_break_ends_clearly_and_is_never_printed():
    token = b'{"access_token": "secret-token-part\\r\\nX-Injected: yes"}'
    with deletion_server(lambda handler: handler.send(201, b'{"deletion_request_id": "1"}'), token=token) as server:
        result = run_connector("write", config(server.url, DELETE_API), catalog(), interleave(people(3), every=3))
        deletions = [path for path, _ in server.requests if path.endswith("/user_deletion")]
    message = assert_failed(result)
    assert "access_token" in message and "not printable" in message
    assert "secret-token-part" not in result.stdout + result.stderr
    assert deletions == []


def test_an_api_key_that_basic_auth_cannot_carry_fails_without_a_traceback_or_the_key():
    key = "s3cret-\u20ac-key"
    with deletion_server(lambda handler: handler.send(201, b'{"deletion_request_id": "1"}')) as server:
        cfg = config(server.url, {**DELETE_API, "api_key": key})
        result = run_connector("write", cfg, catalog(), interleave(people(3), every=3))
    assert_failed(result)
    assert key not in result.stdout + result.stderr
    assert "s3cret-" not in result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------------------
# 7. Progress while Heap is slow


@pytest.mark.slow
def test_a_sync_waiting_on_a_slow_heap_still_logs_progress():
    """One request taking 20 s: the 15 s progress line still comes while the sync waits for it."""
    with HeapStandin(latency_ms=20_000) as heap:
        cfg = config(heap, TRACK_API, request_timeout_seconds=40)
        result = run_connector("write", cfg, catalog(), interleave(people(10), every=10), timeout=60)
    assert result.returncode == 0, result.describe()
    assert any(line.startswith("Progress: ") for line in result.log_lines("INFO")), result.describe()
