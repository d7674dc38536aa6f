"""What to do with a refusal: `decide` as a table of cases, one or more per rule of refusals.py and for the order
in which the rules apply, and its promises checked on every combination of evidence."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from destination_heap_analytics.client import CHECK_BASE_URL
from destination_heap_analytics.refusals import LONE_REFUSALS, RUN_LIMIT, Action, Evidence, decide

PATH = "/api/add_user_properties"
REASON = "refused (Heap's wording is not logged: it may quote record values)"


def evidence(**fields) -> Evidence:
    """A refusal of one lone record, without a name, the first at the endpoint: each case changes what it is about."""
    return Evidence(**{"path": PATH, "reason": REASON, "records": 1, "names_item": False} | fields)


STOP, SPLIT, REJECT, RETRY = Action.STOP, Action.SPLIT, Action.REJECT, Action.RETRY

CASES = [
    # rule 1: a refused deletion stops, whatever else the evidence shows
    ("deletion of one named record", dict(deletion=True, names_item=True), STOP),
    ("deletion of several items", dict(deletion=True, records=40), STOP),
    ("deletion refused alone, unnamed, after acceptances", dict(
        deletion=True, lone_refusals=LONE_REFUSALS, accepted_any=True, accepted_since_refused=True), STOP),
    ("deletion at the run limit", dict(deletion=True, run=RUN_LIMIT, accepted_any=True), STOP),
    # rule 2: the run limit of refusals naming no item stops, before any split or retry
    ("run limit, nothing accepted", dict(run=RUN_LIMIT), STOP),
    ("run limit, several items", dict(run=RUN_LIMIT, records=500), STOP),
    ("run limit, one merged item", dict(run=RUN_LIMIT, records=7), STOP),
    ("past the run limit", dict(run=RUN_LIMIT + 5, accepted_any=True), STOP),
    ("run limit, a suspect due for rejection", dict(
        run=RUN_LIMIT, accepted_any=True, lone_refusals=LONE_REFUSALS, accepted_since_refused=True), STOP),
    ("one short of the run limit, several items", dict(run=RUN_LIMIT - 1, records=2), SPLIT),
    ("one short of the run limit, one record", dict(run=RUN_LIMIT - 1), RETRY),
    ("a named refusal does not count toward the run", dict(run=RUN_LIMIT, names_item=True), REJECT),
    ("a named refusal of several items at the run limit", dict(run=RUN_LIMIT, names_item=True, records=3),
     SPLIT),
    # rule 3: several items, or one item merged from several records, split
    ("several items, unnamed", dict(records=2), SPLIT),
    ("several items, named", dict(records=1000, names_item=True), SPLIT),
    ("several items holding merged records", dict(records=9), SPLIT),
    ("one merged item, unnamed", dict(records=2), SPLIT),
    ("one merged item, named", dict(records=5, names_item=True), SPLIT),
    ("one merged item whose records were refused alone before", dict(
        records=2, lone_refusals=LONE_REFUSALS, accepted_since_refused=True, accepted_any=True), SPLIT),
    # rule 4: one record Heap names is rejected at once
    ("one record, named", dict(names_item=True), REJECT),
    ("one record, named, nothing accepted yet", dict(names_item=True, accepted_any=False), REJECT),
    # rule 5: one record refused alone without a name is a suspect, retried until LONE_REFUSALS with an acceptance
    ("a suspect's first refusal", dict(lone_refusals=1), RETRY),
    ("a suspect one short, with an acceptance since", dict(
        lone_refusals=LONE_REFUSALS - 1, accepted_any=True, accepted_since_refused=True), RETRY),
    ("a suspect at the limit, with an acceptance since", dict(
        lone_refusals=LONE_REFUSALS, accepted_any=True, accepted_since_refused=True), REJECT),
    ("a suspect past the limit, with an acceptance since", dict(
        lone_refusals=LONE_REFUSALS + 4, accepted_any=True, accepted_since_refused=True), REJECT),
    ("a suspect at the limit, no acceptance since (only before)", dict(
        lone_refusals=LONE_REFUSALS, accepted_any=True, accepted_since_refused=False), RETRY),
    ("a suspect far past the limit, nothing ever accepted", dict(lone_refusals=LONE_REFUSALS * 5), RETRY),
]


@pytest.mark.parametrize(("fields", "action"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_what_is_done_with_a_refusal(fields, action):
    assert decide(evidence(**fields)).action is action


def test_a_refused_deletion_says_it_is_never_skipped_and_is_not_transient():
    decision = decide(evidence(deletion=True, names_item=True))
    assert not decision.transient
    assert "deletion" in decision.message and "never skipped" in decision.message and REASON in decision.message


def test_a_run_of_refusals_with_nothing_accepted_is_a_config_error_naming_the_endpoint_and_what_to_check():
    decision = decide(evidence(run=RUN_LIMIT, records=10))
    assert not decision.transient
    assert f"{RUN_LIMIT} requests in a row at {PATH}" in decision.message
    assert "accepted none" in decision.message and CHECK_BASE_URL in decision.message and REASON in decision.message


def test_a_run_of_refusals_after_acceptances_is_transient_and_says_no_state_passes_a_record_heap_did_not_take():
    decision = decide(evidence(run=RUN_LIMIT, accepted_any=True))
    assert decision.transient
    assert f"Heap accepted requests at {PATH} earlier" in decision.message
    assert "no state passes a record Heap did not take" in decision.message and REASON in decision.message


@pytest.mark.parametrize("action", [SPLIT, REJECT, RETRY])
def test_only_a_stop_carries_a_message(action):
    fields = next(case[1] for case in CASES if case[2] is action)
    decision = decide(evidence(**fields))
    assert (decision.message, decision.transient) == ("", False)


# The rules' promises, on any evidence


def any_evidence() -> st.SearchStrategy[Evidence]:
    return st.builds(
        lambda items, extra, **fields: Evidence(PATH, REASON, records=items + extra, **fields),
        items=st.integers(1, 1000),
        extra=st.integers(0, 50),
        names_item=st.booleans(),
        deletion=st.booleans(),
        run=st.integers(0, 3 * RUN_LIMIT),
        accepted_any=st.booleans(),
        lone_refusals=st.integers(0, 3 * LONE_REFUSALS),
        accepted_since_refused=st.booleans(),
    )


@given(any_evidence())
def test_a_record_is_rejected_only_alone_and_named_or_refused_alone_often_enough_with_an_acceptance_since(refusal):
    if decide(refusal).action is REJECT:
        assert refusal.records == 1 and not refusal.deletion
        assert refusal.names_item or (refusal.lone_refusals >= LONE_REFUSALS and refusal.accepted_since_refused)


@given(any_evidence())
def test_a_deletion_always_stops_and_nothing_else_stops_short_of_the_run_limit(refusal):
    stops = decide(refusal).action is STOP
    assert stops is (refusal.deletion or (not refusal.names_item and refusal.run >= RUN_LIMIT))


@given(any_evidence())
def test_a_request_of_several_records_is_never_retried_whole_nor_rejected(refusal):
    if refusal.records > 1:
        assert decide(refusal).action in (SPLIT, STOP)
