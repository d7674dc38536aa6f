"""The state rule: a STATE leaves only once every batch opened before it is acknowledged, in arrival order."""

import pytest

from destination_heap_analytics.state import EVERY_STREAM, StateLedger


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
