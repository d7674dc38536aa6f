"""The state rule: a STATE leaves only once every batch opened before it is acknowledged, in arrival order."""

import sys
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from destination_heap_analytics import state as state_module
from destination_heap_analytics.state import EVERY_STREAM, CatalogStreams, StateLedger


def released(ledger: StateLedger) -> list:
    return [state for state, _ in ledger.releasable()]


def test_state_before_any_record_is_released_at_once():
    ledger = StateLedger()
    ledger.state_received("s0")
    assert released(ledger) == ["s0"]


def test_state_waits_for_the_batch_still_being_filled():
    ledger = StateLedger()
    first = ledger.open_batch()
    ledger.state_received("s1")
    assert released(ledger) == []
    ledger.acknowledged(first)
    assert released(ledger) == ["s1"]


def test_out_of_order_acknowledgements_release_states_in_order():
    ledger = StateLedger()
    batches = []
    for name in ("s1", "s2", "s3"):
        batches.append(ledger.open_batch())
        ledger.state_received(name)
    ledger.acknowledged(batches[2])
    ledger.acknowledged(batches[1])
    assert released(ledger) == []  # batch 1 is still in flight
    ledger.acknowledged(batches[0])
    assert released(ledger) == ["s1", "s2", "s3"]
    assert released(ledger) == []  # each state once


def test_a_gap_holds_back_every_later_state():
    ledger = StateLedger()
    one, two, three = ledger.open_batch(), ledger.open_batch(), ledger.open_batch()
    ledger.state_received("after-three")
    ledger.acknowledged(one)
    ledger.acknowledged(three)
    assert released(ledger) == [] and ledger.pending == 1
    ledger.acknowledged(two)
    assert released(ledger) == ["after-three"] and ledger.pending == 0


def test_several_states_between_the_same_records_all_wait_then_leave_in_order():
    ledger = StateLedger()
    batch = ledger.open_batch()
    ledger.state_received("a")
    ledger.state_received("b")
    ledger.acknowledged(batch)
    assert released(ledger) == ["a", "b"]


# Several streams: a stream's state waits for its own batches only; a state for the whole source, for all.


def test_a_slow_stream_does_not_hold_back_another_streams_state():
    ledger = StateLedger()
    users = ledger.open_batch("users")
    orders = ledger.open_batch("orders")
    ledger.state_received("orders-1", "orders")
    ledger.state_received("users-1", "users")
    ledger.acknowledged(orders)
    assert released(ledger) == ["orders-1"]
    ledger.acknowledged(users)
    assert released(ledger) == ["users-1"]


def test_a_streams_state_covers_its_batch_still_being_filled_and_not_later_ones():
    ledger = StateLedger()
    first = ledger.open_batch("users")
    ledger.state_received("users-1", "users")
    second = ledger.open_batch("users")  # records after the state
    ledger.acknowledged(first)
    assert released(ledger) == ["users-1"]
    ledger.state_received("users-2", "users")
    assert released(ledger) == []
    ledger.acknowledged(second)
    assert released(ledger) == ["users-2"]


def test_a_state_for_every_stream_waits_for_every_stream():
    ledger = StateLedger()
    users, orders = ledger.open_batch("users"), ledger.open_batch("orders")
    ledger.state_received("global-1")
    ledger.acknowledged(orders)
    assert released(ledger) == []
    ledger.acknowledged(users)
    assert released(ledger) == ["global-1"]


def test_one_streams_states_leave_in_order_even_when_a_later_one_is_covered_first():
    ledger = StateLedger()
    one = ledger.open_batch("users")
    ledger.state_received("users-1", "users")
    two = ledger.open_batch("users")
    ledger.state_received("users-2", "users")
    ledger.acknowledged(two)
    assert released(ledger) == []
    ledger.acknowledged(one)
    assert released(ledger) == ["users-1", "users-2"]


def test_a_state_of_a_stream_with_no_records_yet_leaves_at_once():
    ledger = StateLedger()
    ledger.open_batch("users")
    ledger.state_received("orders-0", "orders")
    assert released(ledger) == ["orders-0"]


# What became of each state's records: destinationStats, as Airbyte 1.8+ counts them


def stats(ledger: StateLedger) -> dict:
    return {state: interval.destination_stats() for state, interval in ledger.releasable()}


def test_a_states_figures_count_its_intervals_records_heap_refusals_included_once_acknowledged():
    """A batch straddles a state; Heap refuses one item on each side of it and a record is skipped before it."""
    ledger = StateLedger()
    batch = ledger.open_batch("users")
    for _ in range(2):
        ledger.record_batched(batch, ledger.record_received("users"))  # positions 0, 1
    ledger.record_rejected(ledger.record_received("users"))  # invalid: never batched
    ledger.state_received("users-1", "users")
    for _ in range(2):
        ledger.record_batched(batch, ledger.record_received("users"))  # positions 2, 3
    ledger.state_received("users-2", "users")
    assert stats(ledger) == {}  # the batch is in flight: neither state's figures are known yet
    ledger.acknowledged(batch, refused=[1, 3])
    assert stats(ledger) == {
        "users-1": {"recordCount": 1.0, "rejectedRecordCount": 2.0},
        "users-2": {"recordCount": 1.0, "rejectedRecordCount": 1.0},
    }


def test_records_merged_into_a_refused_item_are_each_rejected_in_their_own_interval():
    """Item 0 takes a later update of its key from each side of a state; Heap refuses it: all three records are
    rejected, each in its own state's figures. Item 1 took one merged update too, and Heap took it."""
    ledger = StateLedger()
    batch = ledger.open_batch("users")
    for _ in range(2):
        ledger.record_batched(batch, ledger.record_received("users"))  # positions 0, 1
    ledger.record_merged(batch, 0, ledger.record_received("users"))
    ledger.state_received("users-1", "users")
    ledger.record_merged(batch, 0, ledger.record_received("users"))
    ledger.record_merged(batch, 1, ledger.record_received("users"))
    ledger.state_received("users-2", "users")
    ledger.acknowledged(batch, refused=[0])
    assert stats(ledger) == {
        "users-1": {"recordCount": 1.0, "rejectedRecordCount": 2.0},
        "users-2": {"recordCount": 1.0, "rejectedRecordCount": 1.0},
    }


@pytest.mark.parametrize(
    "state_stream, expected",
    [
        # a stream's state counts its own records only, whether one stream or several send records
        ("users", {"recordCount": 2.0, "rejectedRecordCount": 1.0}),
        # a record of a stream outside the catalog counts toward that stream's state, rejected
        (("ads", None), {"recordCount": 0.0, "rejectedRecordCount": 1.0}),
        # a state for every stream counts every record, those whose stream is unknown included
        (EVERY_STREAM, {"recordCount": 3.0, "rejectedRecordCount": 3.0}),
    ],
)
def test_a_record_counts_toward_its_own_streams_state_and_the_state_for_every_stream(state_stream, expected):
    ledger = StateLedger()
    users, orders = ledger.open_batch("users"), ledger.open_batch("orders")
    for _ in range(2):
        ledger.record_batched(users, ledger.record_received("users"))
    ledger.record_rejected(ledger.record_received("users"))
    ledger.record_batched(orders, ledger.record_received("orders"))
    ledger.record_rejected(ledger.record_received(("ads", None)))  # not in the catalog
    ledger.record_rejected(ledger.record_received(EVERY_STREAM))  # an unreadable RECORD line
    ledger.state_received("s", state_stream)
    ledger.acknowledged(users)
    ledger.acknowledged(orders)
    assert stats(ledger) == {"s": expected}


def test_the_next_interval_starts_empty():
    ledger = StateLedger()
    ledger.record_rejected(ledger.record_received("users"))
    ledger.state_received("users-1", "users")
    ledger.state_received("users-2", "users")
    assert stats(ledger) == {
        "users-1": {"recordCount": 0.0, "rejectedRecordCount": 1.0},
        "users-2": {"recordCount": 0.0, "rejectedRecordCount": 0.0},
    }


def test_a_state_for_every_stream_starts_every_streams_next_interval_but_not_a_streams_own():
    ledger = StateLedger()
    ledger.record_rejected(ledger.record_received("users"))
    ledger.state_received("global-1")
    ledger.record_rejected(ledger.record_received("users"))
    ledger.state_received("users-1", "users")
    ledger.state_received("global-2")
    assert {state: figures["rejectedRecordCount"] for state, figures in stats(ledger).items()} == {
        "global-1": 1.0, "users-1": 2.0, "global-2": 1.0
    }


# Which stream a STREAM state covers: the one its descriptor names, else the one of its name, else every stream.

CATALOG = [("users", "public"), ("orders", "public"), ("orders", "archive"), ("events", None)]


@pytest.mark.parametrize(
    "descriptor, covered",
    [
        (("users", "public"), ("users", "public")),
        (("users", None), ("users", "public")),  # the namespace left out: the one catalog stream of that name
        (("users", "other"), ("users", "public")),
        (("orders", None), EVERY_STREAM),  # two catalog streams of that name: it may cover either
        (("orders", "archive"), ("orders", "archive")),
        (("events", None), ("events", None)),
        (("refunds", None), EVERY_STREAM),  # no catalog stream: wait for all rather than leave at once
        (None, EVERY_STREAM),  # a STREAM state without a descriptor
    ],
)
def test_the_stream_a_state_covers(descriptor, covered):
    assert CatalogStreams(CATALOG).covered_by(descriptor) == covered


def test_a_state_without_the_namespace_waits_for_its_streams_records():
    ledger = StateLedger()
    batch = ledger.open_batch(("users", "public"))
    ledger.state_received("users-1", CatalogStreams([("users", "public")]).covered_by(("users", None)))
    assert released(ledger) == []
    ledger.acknowledged(batch)
    assert released(ledger) == ["users-1"]


# The rule, checked against its plain statement on random sequences of batches, states and acknowledgements.


class PlainLedger:
    """The rule as stated, at any cost: a state leaves once no batch it covers awaits Heap, after the earlier
    states of its stream."""

    def __init__(self):
        self.opened, self.unacknowledged, self.waiting = [], set(), []

    def open_batch(self, stream):
        self.opened.append(stream)
        self.unacknowledged.add(len(self.opened))
        return len(self.opened)

    def state_received(self, state, stream):
        covered = {n for n, of in enumerate(self.opened, 1) if stream is EVERY_STREAM or of == stream}
        self.waiting.append((stream, covered, state))

    def releasable(self):
        released, blocked = [], set()
        for stream, covered, state in self.waiting:
            if stream not in blocked and not covered & self.unacknowledged:
                released.append(state)
            else:
                blocked.add(stream)
        self.waiting = [entry for entry in self.waiting if entry[2] not in released]
        return released


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["open", "state", "ack", "release"]), st.sampled_from([None, "a", "b"]),
                          st.integers(0, 40)), max_size=60))
def test_the_ledger_releases_what_the_plain_rule_releases(steps):
    ledger, plain = StateLedger(), PlainLedger()
    for number, (action, stream, pick) in enumerate(steps):
        if action == "open":
            assert ledger.open_batch(stream) == plain.open_batch(stream)
        elif action == "state":
            ledger.state_received(number, stream)
            plain.state_received(number, stream)
        elif action == "ack" and plain.unacknowledged:
            batch = sorted(plain.unacknowledged)[pick % len(plain.unacknowledged)]
            plain.unacknowledged.discard(batch)
            ledger.acknowledged(batch)
        else:
            assert released(ledger) == plain.releasable()
    assert released(ledger) == plain.releasable()
    assert ledger.pending == len(plain.waiting)


# Cost: each state in constant time however many streams and states came before. Measured in lines of
# state.py executed (a count, not a clock: the suite runs on a busy machine).


def lines_executed_in_the_ledger(action) -> int:
    count = 0

    def local(frame, event, arg):
        nonlocal count
        count += event == "line"
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code.co_filename == state_module.__file__ else None

    sys.settrace(tracer)
    try:
        action()
    finally:
        sys.settrace(None)
    return count


def states_of_distinct_streams(n: int) -> None:
    ledger = StateLedger()
    for i in range(n):
        batch = ledger.open_batch(f"stream-{i}")
        ledger.state_received(i, f"stream-{i}")
        released(ledger)  # as the writer does after every state
        ledger.acknowledged(batch)
        released(ledger)
    assert ledger.pending == 0


def states_of_one_stream_with_batches_in_flight(n: int) -> None:
    ledger, in_flight = StateLedger(), deque()
    for i in range(n):
        in_flight.append(ledger.open_batch("users"))
        ledger.state_received(i, "users")
        ledger.state_received(-i, EVERY_STREAM)
        if len(in_flight) > 50:  # a window of batches awaiting Heap
            ledger.acknowledged(in_flight.popleft())
        released(ledger)
    while in_flight:
        ledger.acknowledged(in_flight.popleft())
    released(ledger)
    assert ledger.pending == 0


@pytest.mark.parametrize("scenario", [states_of_distinct_streams, states_of_one_stream_with_batches_in_flight])
def test_each_state_costs_the_same_however_many_came_before(scenario):
    small = lines_executed_in_the_ledger(lambda: scenario(500))
    large = lines_executed_in_the_ledger(lambda: scenario(2000))
    assert large <= 4.4 * small  # linear: 4x the states, 4x the work (quadratic would be 16x)
