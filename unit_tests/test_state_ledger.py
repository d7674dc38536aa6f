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
