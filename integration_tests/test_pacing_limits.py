"""Pacing against a stand-in that ENFORCES a bulk track limit (a leaky bucket of limit/4 events draining at
limit/60 a second, answering 429 with Retry-After when a request does not fit), with small limits so each test
runs in about 20 s.

- Configured pace equal to the stand-in's limit, with another sender of the same environment spending most of the
  allowance as the sync begins (so a connector any faster than the limit overflows it within seconds): not one
  429, and the rate the stand-in observed (the connector's admitted events after its first request, over the
  time from the first to the last) stays within the limit.
- The stand-in's limit LOWER than the configured pace: the connector meets 429s, slows down (the requests it
  sends after the first 429, admitted or not, are spaced further apart than before it) and still loads every
  record exactly once.

In both, the summary's "held back by pacing" (wall time during which a sender waited for the pacer) is at most
the sync's elapsed time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from statistics import mean

import requests

from heap_standin import HeapStandin
from integration_tests.adversarial import STREAM, assert_loaded_once, event_config, events_catalog, lines, state_message
from integration_tests.support import APP_ID, Result, record, run_connector, watch

BATCH = 20
OTHER_SENDER = 200  # events another sender of the environment posts in one request as the sync begins
HELD_BACK = re.compile(r", (\d+(?:\.\d+)?) s held back by pacing")
ELAPSED = re.compile(r", (\d+(?:\.\d+)?) s, \d+ records/s$")


def _stdin(total: int) -> bytes:
    messages = []
    for i in range(total):
        messages.append(record({"user": f"paced-user-{i % 200:03d}", "event": "Paced Probe", "i": i}, STREAM))
        if (i + 1) % 100 == 0 or i == total - 1:
            messages.append(state_message(i))
    return lines(*map(json.dumps, messages))


def _run(heap: HeapStandin, tmp_path: Path, total: int, per_minute: int) -> Result:
    config = event_config(
        heap,
        {"property_columns": "i"},
        track_events_per_minute=per_minute,
        batch_size=BATCH,
        max_concurrent_requests=1,
        max_retries=10,
    )
    result = run_connector("write", config, events_catalog(), stdin=_stdin(total), directory=tmp_path, timeout=90)
    assert result.returncode == 0, result.describe()
    assert not result.errors, result.describe()
    assert result.cursors()[-1] == total - 1
    return result


def _held_back_within_elapsed(result: Result) -> float:
    """The summary's "held back by pacing" seconds, checked to be at most the sync's elapsed time."""
    summary = result.summary_line
    held, elapsed = HELD_BACK.search(summary), ELAPSED.search(summary)
    assert held and elapsed, f"no pacing or elapsed figure in: {summary}"
    assert float(held[1]) <= float(elapsed[1]) <= result.duration + 0.1, summary
    return float(held[1])


def _track_admissions(heap: HeapStandin) -> list[tuple[float, int, bool]]:
    """The connector's bulk track requests as the stand-in's rate limits saw them (the other sender's left out)."""
    return [
        (at, items, throttled)
        for at, kind, items, throttled in heap.admissions
        if kind == "track" and items != OTHER_SENDER
    ]


def _another_sender_spends_the_allowance(heap: HeapStandin, first_index: int) -> list[int]:
    """Once the connector's first batch is in, another sender posts OTHER_SENDER events to the same environment
    (their `i` from `first_index` on); returns the status it got, once it got one."""
    events = [{"identity": "other-sender", "event": "Other", "properties": {"i": first_index + k}}
              for k in range(OTHER_SENDER)]
    answered: list[int] = []

    def post() -> None:
        answer = requests.post(f"{heap.url}/api/track", json={"app_id": APP_ID, "events": events}, timeout=30)
        answered.append(answer.status_code)

    watch(lambda: heap.stats()["events_stored"] > 0, post)
    return answered


def test_pace_equal_to_the_enforced_limit_meets_no_429_and_stays_within_it(tmp_path: Path) -> None:
    # 20 events/s: a first batch, then 380 events at the limit, about 19 s. The stand-in's allowance is 300 events
    # (limit/4); the other sender leaves 80 of it, so a connector sending 40 events/s overflows it within 4 s.
    limit, total = 1200, 400
    heap = HeapStandin(track_events_per_minute=limit).start()
    try:
        other_sender = _another_sender_spends_the_allowance(heap, first_index=total)
        result = _run(heap, tmp_path, total, per_minute=limit)
        assert other_sender == [200], f"the other sender's events were not admitted: {other_sender}"
        admissions = _track_admissions(heap)
        throttled = [a for a in admissions if a[2]]
        assert not throttled, f"{len(throttled)} requests answered 429 at a pace equal to the limit"
        assert heap.stats()["by_status"].get("429", 0) == 0 and result.summary["throttled"] == 0
        (first_at, _, _), (last_at, _, _) = admissions[0], admissions[-1]
        after_first = sum(items for _, items, _ in admissions[1:])
        rate = after_first / (last_at - first_at) * 60
        assert rate <= limit * 1.03, f"{rate:.0f} events/minute observed, limit {limit}"
        assert rate >= limit * 0.8, f"{rate:.0f} events/minute observed: pacing held back far below {limit}"
        assert _held_back_within_elapsed(result) > 0
        assert_loaded_once(heap, set(range(total + OTHER_SENDER)))
    finally:
        heap.stop()


def test_a_limit_lower_than_the_configured_pace_means_429s_then_a_slower_pace_and_every_record_once(
    tmp_path: Path,
) -> None:
    limit, configured, total = 600, 2400, 300  # the stand-in drains 10 events/s; the connector starts at 40/s
    heap = HeapStandin(track_events_per_minute=limit).start()
    try:
        result = _run(heap, tmp_path, total, per_minute=configured)
        admissions = _track_admissions(heap)
        first_429 = next((n for n, (_, _, throttled) in enumerate(admissions) if throttled), None)
        assert first_429 is not None, "the stand-in never answered 429: the test did not test anything"
        assert result.summary["throttled"] >= 1, result.summary_line
        # Every request the connector sent, admitted or answered 429: the stand-in spaces the ADMITTED ones by
        # itself, so only the connector's own attempts show whether it slowed down (a connector that ignores
        # 429s keeps its pace, and meets a 429 on every other request).
        sent = [at for at, _, _ in admissions]
        before, after = sent[: first_429 + 1], sent[first_429:]
        assert len(before) >= 3 and len(after) >= 3, (len(before), len(after))
        gap_before = mean(b - a for a, b in zip(before, before[1:], strict=False))
        gap_after = mean(b - a for a, b in zip(after, after[1:], strict=False))
        assert gap_after > 1.5 * gap_before, (
            f"requests {gap_before:.2f} s apart before the first 429 and {gap_after:.2f} s after: no slowdown"
        )
        _held_back_within_elapsed(result)
        assert_loaded_once(heap, set(range(total)))  # nothing sent twice either: a 429 stores nothing
    finally:
        heap.stop()
