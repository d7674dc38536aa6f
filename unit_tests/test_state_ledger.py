"""The state rule: a STATE leaves only once every batch opened before it is acknowledged, in arrival order."""

from destination_heap_analytics.state import StateLedger


def test_state_before_any_record_is_released_at_once():
    ledger = StateLedger()
    ledger.state_received("s0")
    assert ledger.releasable() == ["s0"]


def test_state_waits_for_the_batch_still_being_filled():
    ledger = StateLedger()
    first = ledger.open_batch()
    ledger.state_received("s1")
    assert ledger.releasable() == []
    ledger.acknowledged(first)
    assert ledger.releasable() == ["s1"]


def test_out_of_order_acknowledgements_release_states_in_order():
    ledger = StateLedger()
    batches = []
    for name in ("s1", "s2", "s3"):
        batches.append(ledger.open_batch())
        ledger.state_received(name)
    ledger.acknowledged(batches[2])
    ledger.acknowledged(batches[1])
    assert ledger.releasable() == []  # batch 1 is still in flight
    ledger.acknowledged(batches[0])
    assert ledger.releasable() == ["s1", "s2", "s3"]
    assert ledger.releasable() == []  # each state once


def test_a_gap_holds_back_every_later_state():
    ledger = StateLedger()
    one, two, three = ledger.open_batch(), ledger.open_batch(), ledger.open_batch()
    ledger.state_received("after-three")
    ledger.acknowledged(one)
    ledger.acknowledged(three)
    assert ledger.releasable() == [] and ledger.pending == 1
    ledger.acknowledged(two)
    assert ledger.releasable() == ["after-three"] and ledger.pending == 0


def test_several_states_between_the_same_records_all_wait_then_leave_in_order():
    ledger = StateLedger()
    batch = ledger.open_batch()
    ledger.state_received("a")
    ledger.state_received("b")
    ledger.acknowledged(batch)
    assert ledger.releasable() == ["a", "b"]


# Several streams: a stream's state waits for its own batches only; a state for the whole source, for all.


def test_a_slow_stream_does_not_hold_back_another_streams_state():
    ledger = StateLedger()
    users = ledger.open_batch("users")
    orders = ledger.open_batch("orders")
    ledger.state_received("orders-1", "orders")
    ledger.state_received("users-1", "users")
    ledger.acknowledged(orders)
    assert ledger.releasable() == ["orders-1"]
    ledger.acknowledged(users)
    assert ledger.releasable() == ["users-1"]


def test_a_streams_state_covers_its_batch_still_being_filled_and_not_later_ones():
    ledger = StateLedger()
    first = ledger.open_batch("users")
    ledger.state_received("users-1", "users")
    second = ledger.open_batch("users")  # records after the state
    ledger.acknowledged(first)
    assert ledger.releasable() == ["users-1"]
    ledger.state_received("users-2", "users")
    assert ledger.releasable() == []
    ledger.acknowledged(second)
    assert ledger.releasable() == ["users-2"]


def test_a_state_for_every_stream_waits_for_every_stream():
    ledger = StateLedger()
    users, orders = ledger.open_batch("users"), ledger.open_batch("orders")
    ledger.state_received("global-1")
    ledger.acknowledged(orders)
    assert ledger.releasable() == []
    ledger.acknowledged(users)
    assert ledger.releasable() == ["global-1"]


def test_one_streams_states_leave_in_order_even_when_a_later_one_is_covered_first():
    ledger = StateLedger()
    one = ledger.open_batch("users")
    ledger.state_received("users-1", "users")
    two = ledger.open_batch("users")
    ledger.state_received("users-2", "users")
    ledger.acknowledged(two)
    assert ledger.releasable() == []
    ledger.acknowledged(one)
    assert ledger.releasable() == ["users-1", "users-2"]


def test_a_state_of_a_stream_with_no_records_yet_leaves_at_once():
    ledger = StateLedger()
    ledger.open_batch("users")
    ledger.state_received("orders-0", "orders")
    assert ledger.releasable() == ["orders-0"]
