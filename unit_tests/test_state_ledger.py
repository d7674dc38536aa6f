"""The book of record fates: a STATE leaves once every record it covers has its fate, in arrival order; each record
counts in exactly one state's figures; every figure and the window come from the same bookings."""

from __future__ import annotations

import sys
import threading
import tracemalloc
from collections import Counter, deque
from collections.abc import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from destination_heap_analytics import state as state_module
from destination_heap_analytics.state import EVERY_STREAM, CatalogStreams, Entry, Fate, StateLedger

INVALID = Fate("missing_identity", "email")
REFUSED = Fate("rejected_by_heap", refusal="postBody.users[n].properties should be object")


def released(ledger: StateLedger) -> list:
    return [release.state for release in ledger.releasable()]


def stats(ledger: StateLedger) -> dict:
    return {release.state: release.destination_stats() for release in ledger.releasable()}


def records(ledger: StateLedger, count: int, stream: Hashable = "users") -> list[Entry]:
    return [ledger.received(stream) for _ in range(count)]


def test_state_before_any_record_is_released_at_once():
    ledger = StateLedger()
    ledger.state_received("s0")
    assert released(ledger) == ["s0"]
    assert ledger.pending == 0


def test_a_state_waits_for_every_record_before_it_to_have_its_fate():
    ledger = StateLedger()
    first, second = records(ledger, 2)
    ledger.state_received("s1")
    assert released(ledger) == [] and ledger.pending == 1
    ledger.delivered([first])
    assert released(ledger) == []
    ledger.rejected([second], INVALID)  # rejected is a fate too
    assert released(ledger) == ["s1"]
    assert released(ledger) == [] and ledger.pending == 0  # each state once


def test_fates_booked_out_of_order_release_states_in_order():
    ledger = StateLedger()
    entries = []
    for name in ("s1", "s2", "s3"):
        entries.append(ledger.received("users"))
        ledger.state_received(name)
    ledger.delivered([entries[2]])
    ledger.delivered([entries[1]])
    assert released(ledger) == []  # the first record is still on its way
    ledger.delivered([entries[0]])
    assert released(ledger) == ["s1", "s2", "s3"]


def test_a_gap_holds_back_every_later_state():
    ledger = StateLedger()
    one, two, three = records(ledger, 3)
    ledger.state_received("after-three")
    ledger.delivered([one, three])
    assert released(ledger) == [] and ledger.pending == 1
    ledger.delivered([two])
    assert released(ledger) == ["after-three"] and ledger.pending == 0


def test_several_states_between_the_same_records_all_wait_then_leave_in_order():
    ledger = StateLedger()
    (entry,) = records(ledger, 1)
    ledger.state_received("a")
    ledger.state_received("b")
    assert released(ledger) == []
    ledger.delivered([entry])
    assert released(ledger) == ["a", "b"]


# Several streams: a stream's state waits for its own records only; a state for every stream, for all.


def test_a_slow_stream_does_not_hold_back_another_streams_state():
    ledger = StateLedger()
    (users,), (orders,) = records(ledger, 1, "users"), records(ledger, 1, "orders")
    ledger.state_received("orders-1", "orders")
    ledger.state_received("users-1", "users")
    ledger.delivered([orders])
    assert released(ledger) == ["orders-1"]
    ledger.delivered([users])
    assert released(ledger) == ["users-1"]


def test_a_streams_state_covers_the_records_before_it_and_not_later_ones():
    ledger = StateLedger()
    (first,) = records(ledger, 1)
    ledger.state_received("users-1", "users")
    (second,) = records(ledger, 1)  # after the state
    ledger.delivered([first])
    assert released(ledger) == ["users-1"]
    ledger.state_received("users-2", "users")
    assert released(ledger) == []
    ledger.delivered([second])
    assert released(ledger) == ["users-2"]


def test_a_state_for_every_stream_waits_for_every_stream():
    ledger = StateLedger()
    (users,), (orders,) = records(ledger, 1, "users"), records(ledger, 1, "orders")
    ledger.state_received("global-1")
    ledger.delivered([orders])
    assert released(ledger) == []
    ledger.delivered([users])
    assert released(ledger) == ["global-1"]


def test_a_state_for_every_stream_waits_for_records_whose_stream_is_unknown():
    ledger = StateLedger()
    (unreadable,) = records(ledger, 1, EVERY_STREAM)
    ledger.state_received("users-1", "users")
    ledger.state_received("global-1")
    assert released(ledger) == ["users-1"]  # a stream's state does not cover it
    ledger.rejected([unreadable], INVALID)
    assert released(ledger) == ["global-1"]


def test_one_streams_states_leave_in_order_even_when_a_later_one_is_covered_first():
    ledger = StateLedger()
    (one,) = records(ledger, 1)
    ledger.state_received("users-1", "users")
    (two,) = records(ledger, 1)
    ledger.state_received("users-2", "users")
    ledger.delivered([two])
    assert released(ledger) == []
    ledger.delivered([one])
    assert released(ledger) == ["users-1", "users-2"]


def test_a_state_of_a_stream_with_no_records_yet_leaves_at_once():
    ledger = StateLedger()
    records(ledger, 1, "users")
    ledger.state_received("orders-0", "orders")
    assert released(ledger) == ["orders-0"]


def test_states_released_together_come_in_arrival_order_across_streams():
    ledger = StateLedger()
    (users,) = records(ledger, 1, "users")
    ledger.state_received("users-1", "users")
    ledger.state_received("orders-1", "orders")  # no records: could leave at once
    ledger.state_received("global-1")
    ledger.state_received("orders-2", "orders")
    assert released(ledger) == ["orders-1", "orders-2"]
    ledger.delivered([users])
    assert released(ledger) == ["users-1", "global-1"]


# What became of each state's records: destinationStats, as Airbyte 1.8+ counts them


def test_a_states_figures_count_its_intervals_records_delivered_and_rejected():
    """Records of one item straddle a state (updates of a key merged); Heap refuses one record on each side."""
    ledger = StateLedger()
    before = records(ledger, 3)
    ledger.state_received("users-1", "users")
    after = records(ledger, 2)
    ledger.state_received("users-2", "users")
    ledger.rejected([before[0]], INVALID)  # skipped by the mapping
    assert stats(ledger) == {}  # the others are on their way: neither state's figures are known yet
    ledger.delivered([before[1], after[0]])  # one merged item, delivered
    ledger.rejected([before[2]], REFUSED)
    ledger.rejected([after[1]], REFUSED)
    assert stats(ledger) == {
        "users-1": {"recordCount": 1.0, "rejectedRecordCount": 2.0},
        "users-2": {"recordCount": 1.0, "rejectedRecordCount": 1.0},
    }


@pytest.mark.parametrize(
    "state_stream, expected",
    [
        # a stream's state counts its own records only
        ("users", {"recordCount": 2.0, "rejectedRecordCount": 1.0}),
        # a record of a stream outside the catalog counts toward that stream's state, rejected
        (("ads", None), {"recordCount": 0.0, "rejectedRecordCount": 1.0}),
        # a state for every stream counts every record, those whose stream is unknown included
        (EVERY_STREAM, {"recordCount": 3.0, "rejectedRecordCount": 3.0}),
    ],
)
def test_a_record_counts_toward_its_own_streams_state_and_the_state_for_every_stream(state_stream, expected):
    ledger = StateLedger()
    ledger.delivered(records(ledger, 2, "users"))
    ledger.rejected(records(ledger, 1, "users"), INVALID)
    ledger.delivered(records(ledger, 1, "orders"))
    ledger.rejected(records(ledger, 1, ("ads", None)), INVALID)  # not in the catalog
    ledger.rejected(records(ledger, 1, EVERY_STREAM), INVALID)  # an unreadable RECORD line
    ledger.state_received("s", state_stream)
    assert stats(ledger) == {"s": expected}


def test_the_next_interval_starts_empty():
    ledger = StateLedger()
    ledger.rejected(records(ledger, 1), INVALID)
    ledger.state_received("users-1", "users")
    ledger.state_received("users-2", "users")
    assert stats(ledger) == {
        "users-1": {"recordCount": 0.0, "rejectedRecordCount": 1.0},
        "users-2": {"recordCount": 0.0, "rejectedRecordCount": 0.0},
    }


def test_a_state_for_every_stream_counts_only_records_no_earlier_state_counted():
    ledger = StateLedger()
    ledger.rejected(records(ledger, 1), INVALID)
    ledger.state_received("global-1")
    ledger.rejected(records(ledger, 1), INVALID)
    ledger.state_received("users-1", "users")
    ledger.rejected(records(ledger, 1, "orders"), INVALID)
    ledger.state_received("global-2")
    assert {state: figures["rejectedRecordCount"] for state, figures in stats(ledger).items()} == {
        "global-1": 1.0, "users-1": 1.0, "global-2": 1.0
    }


def test_a_record_counts_in_one_state_only_when_a_stream_state_covers_every_stream():
    """Two catalog streams share the name `users`; a STREAM state naming `users` without a namespace covers both
    (issue 24, finding 4: 6 records were reported as 11 across three states)."""
    catalog = CatalogStreams([("users", "a"), ("users", "b")])
    ledger = StateLedger()
    a, b = ("users", "a"), ("users", "b")
    ledger.delivered(records(ledger, 2, a))
    ledger.delivered(records(ledger, 1, b))
    ledger.state_received("a-1", catalog.covered_by(a))
    ledger.delivered(records(ledger, 1, a))
    ledger.rejected(records(ledger, 1, b), INVALID)
    ledger.state_received("users-1", catalog.covered_by(("users", None)))
    ledger.delivered(records(ledger, 1, b))
    ledger.state_received("b-1", catalog.covered_by(b))
    figures = stats(ledger)
    assert figures == {
        "a-1": {"recordCount": 2.0, "rejectedRecordCount": 0.0},
        "users-1": {"recordCount": 2.0, "rejectedRecordCount": 1.0},  # a's 1 after a-1, and b's 2 so far
        "b-1": {"recordCount": 1.0, "rejectedRecordCount": 0.0},
    }
    assert sum(sum(counts.values()) for counts in figures.values()) == 6


# Each stream's figures, the totals and the window: the same bookings


def test_each_streams_figures_come_from_its_records_fates():
    ledger = StateLedger()
    users, orders = records(ledger, 4, "users"), records(ledger, 2, "orders")
    ledger.delivered(users[:3])  # one item merged from three updates
    ledger.rejected([users[3]], INVALID)
    ledger.delivered(orders[:1])
    ledger.rejected(orders[1:], REFUSED)
    figures = ledger.snapshot()
    assert (figures["users"].read, figures["users"].delivered, figures["users"].items) == (4, 3, 1)
    assert figures["users"].rejected == Counter({"missing_identity (column email)": 1})
    assert (figures["orders"].read, figures["orders"].delivered, figures["orders"].items) == (2, 1, 1)
    assert figures["orders"].rejected == Counter({REFUSED.describe(): 1})


def test_a_snapshot_is_a_copy_that_later_bookings_do_not_change():
    ledger = StateLedger()
    (entry,) = records(ledger, 1)
    before = ledger.snapshot()
    ledger.rejected([entry], INVALID)
    assert (before["users"].read, before["users"].rejected) == (1, Counter())
    before["users"].rejected["x"] += 1
    assert ledger.snapshot()["users"].rejected == Counter({"missing_identity (column email)": 1})


def test_the_window_counts_the_records_whose_fate_is_open_and_their_bytes():
    ledger = StateLedger()
    first, second, third = records(ledger, 3)
    assert (ledger.open_records, ledger.open_bytes) == (3, 0)
    ledger.hold(first, b"x" * 10)
    ledger.hold(second, b"y" * 7)
    assert (ledger.open_records, ledger.open_bytes) == (3, 17)
    ledger.rejected([third], INVALID)  # never held: no bytes
    ledger.delivered([first])
    assert (ledger.open_records, ledger.open_bytes) == (1, 7)
    assert first.body == b""  # its JSON is let go with its fate
    ledger.delivered([second])
    assert (ledger.open_records, ledger.open_bytes) == (0, 0)


def test_waiting_for_room_returns_at_once_when_there_is_room_and_false_when_there_is_none():
    ledger = StateLedger()
    (entry,) = records(ledger, 1)
    ledger.hold(entry, b"x" * 10)
    assert ledger.wait_for_room(2, 11, timeout=0)
    assert not ledger.wait_for_room(1, 11, timeout=0)  # a record too many
    assert not ledger.wait_for_room(2, 10, timeout=0)  # a byte too many


def test_a_fate_booked_by_another_thread_wakes_a_wait_for_room():
    ledger = StateLedger()
    (entry,) = records(ledger, 1)
    waiting, answers = threading.Event(), []

    def reader() -> None:
        waiting.set()
        answers.append(ledger.wait_for_room(1, 1 << 30, timeout=30))  # 30 s: a bound for the failing case only

    thread = threading.Thread(target=reader)
    thread.start()
    waiting.wait()
    ledger.delivered([entry])
    thread.join()
    assert answers == [True]


def test_rejected_records_are_kept_as_received_until_taken_only_where_a_store_wants_them():
    keeping = StateLedger(keep_rejected=True)
    entries = [keeping.received("users", {"n": n}) for n in range(3)]
    keeping.rejected(entries[:2], REFUSED)
    keeping.delivered(entries[2:])
    taken = keeping.take_rejected()
    assert [(entry.record, fate) for entry, fate in taken] == [({"n": 0}, REFUSED), ({"n": 1}, REFUSED)]
    assert keeping.take_rejected() == []  # each once
    not_keeping = StateLedger()
    entry = not_keeping.received("users", {"n": 0})
    not_keeping.rejected([entry], REFUSED)
    assert entry.record is None and not_keeping.take_rejected() == []


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
    (entry,) = records(ledger, 1, ("users", "public"))
    ledger.state_received("users-1", CatalogStreams([("users", "public")]).covered_by(("users", None)))
    assert released(ledger) == []
    ledger.delivered([entry])
    assert released(ledger) == ["users-1"]


# The rule, checked against its plain statement on random sequences of records, states and fates.


class PlainLedger:
    """The rule as stated, at any cost: a state covers the records of its stream (of all, for EVERY_STREAM)
    received before it; it leaves once all have their fate, after the earlier states of its stream; it reports the
    records no earlier state covered."""

    def __init__(self) -> None:
        self.streams: list[Hashable] = []  # each record's stream, in arrival order
        self.fates: dict[int, str] = {}  # record -> "delivered" or "rejected"
        self.sizes: dict[int, int] = {}
        self.counted: set[int] = set()  # records some state reports
        self.waiting: list[tuple[Hashable, set[int], set[int], object]] = []  # (stream, covered, reported, state)

    def received(self, stream: Hashable, size: int) -> int:
        self.streams.append(stream)
        self.sizes[len(self.streams) - 1] = size
        return len(self.streams) - 1

    def state_received(self, state: object, stream: Hashable) -> None:
        covered = {n for n, of in enumerate(self.streams) if stream is EVERY_STREAM or of == stream}
        reported = covered - self.counted
        self.counted |= reported
        self.waiting.append((stream, covered, reported, state))

    def releasable(self) -> list[tuple[object, int, int]]:
        released, blocked = [], set()
        for stream, covered, reported, state in self.waiting:
            if stream not in blocked and covered <= self.fates.keys():
                fates = Counter(self.fates[n] for n in reported)
                released.append((state, fates["delivered"], fates["rejected"]))
            else:
                blocked.add(stream)
        gone = {state for state, _, _ in released}
        self.waiting = [entry for entry in self.waiting if entry[3] not in gone]
        return released

    def open(self) -> list[int]:
        return [n for n in range(len(self.streams)) if n not in self.fates]


STREAMS = ["a", "b", EVERY_STREAM]

ledger_steps = st.lists(
    st.one_of(
        st.tuples(st.just("record"), st.sampled_from(STREAMS), st.integers(0, 40)),
        st.tuples(st.just("state"), st.sampled_from(STREAMS)),
        st.tuples(st.sampled_from(["delivered", "rejected"]), st.integers(0, 60), st.integers(1, 3)),
        st.tuples(st.just("release")),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ledger_steps)
def test_the_ledger_does_what_the_plain_rule_says(steps):
    ledger: StateLedger[int] = StateLedger()
    plain = PlainLedger()
    entries: list[Entry] = []

    def release() -> None:
        assert [(r.state, r.delivered, r.rejected) for r in ledger.releasable()] == plain.releasable()

    for number, step in enumerate(steps):
        if step[0] == "record":
            _, stream, size = step
            entries.append(ledger.received(stream))
            plain.received(stream, size)
            if size:  # on its way to Heap; else skipped by the mapping, say
                ledger.hold(entries[-1], b"x" * size)
        elif step[0] == "state":
            ledger.state_received(number, step[1])
            plain.state_received(number, step[1])
        elif step[0] in ("delivered", "rejected") and plain.open():
            fate, pick, count = step
            still_open = plain.open()
            booked = [still_open[(pick + i) % len(still_open)] for i in range(min(count, len(still_open)))]
            booked = sorted(set(booked))  # records of one item, or of one rejection
            if fate == "delivered":
                ledger.delivered([entries[n] for n in booked])
            else:
                ledger.rejected([entries[n] for n in booked], INVALID)
            plain.fates.update(dict.fromkeys(booked, fate))
        elif step[0] == "release":
            release()
        assert ledger.open_records == len(plain.open())
        assert ledger.open_bytes == sum(plain.sizes[n] for n in plain.open())
    release()
    assert ledger.pending == len(plain.waiting)
    # every figure from the same bookings: per stream, and each record in one state's figures once all leave
    for n in plain.open():
        ledger.delivered([entries[n]])
        plain.fates[n] = "delivered"
    ledger.state_received("last", EVERY_STREAM)
    plain.state_received("last", EVERY_STREAM)
    final = ledger.releasable()
    assert [(r.state, r.delivered, r.rejected) for r in final] == plain.releasable()
    figures = ledger.snapshot()
    for stream in set(plain.streams):
        fates = Counter(plain.fates[n] for n, of in enumerate(plain.streams) if of == stream)
        assert figures[stream].read == sum(fates.values())
        assert (figures[stream].delivered, sum(figures[stream].rejected.values())) == (
            fates["delivered"], fates["rejected"]
        )
    assert ledger.pending == 0 and (ledger.open_records, ledger.open_bytes) == (0, 0)


def test_every_states_figures_add_up_to_the_records_received():
    ledger = StateLedger()
    ledger.delivered(records(ledger, 3, "a"))
    ledger.state_received("a-1", "a")
    ledger.rejected(records(ledger, 2, "b"), INVALID)
    ledger.state_received("g-1")
    ledger.delivered(records(ledger, 1, "a"))
    ledger.rejected(records(ledger, 1, EVERY_STREAM), INVALID)
    ledger.state_received("g-2")
    releases = ledger.releasable()
    totals = Counter()
    for figures in ledger.snapshot().values():
        totals.update(read=figures.read, delivered=figures.delivered, rejected=sum(figures.rejected.values()))
    assert sum(release.delivered for release in releases) == totals["delivered"] == 4
    assert sum(release.rejected for release in releases) == totals["rejected"] == 3
    assert totals["read"] == 7


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
        entry = ledger.received(f"stream-{i}")
        ledger.state_received(i, f"stream-{i}")
        released(ledger)  # as the writer does after every state
        ledger.delivered([entry])
        released(ledger)
    assert ledger.pending == 0


def states_of_one_stream_with_records_on_their_way(n: int) -> None:
    ledger, on_their_way = StateLedger(), deque()
    for i in range(n):
        on_their_way.append(ledger.received("users"))
        ledger.state_received(i, "users")
        ledger.state_received(-i, EVERY_STREAM)
        if len(on_their_way) > 50:  # a window of records awaiting Heap
            ledger.delivered([on_their_way.popleft()])
        released(ledger)
    while on_their_way:
        ledger.delivered([on_their_way.popleft()])
    released(ledger)
    assert ledger.pending == 0


@pytest.mark.parametrize("scenario", [states_of_distinct_streams, states_of_one_stream_with_records_on_their_way])
def test_each_state_costs_the_same_however_many_came_before(scenario):
    small = lines_executed_in_the_ledger(lambda: scenario(500))
    large = lines_executed_in_the_ledger(lambda: scenario(2000))
    assert large <= 4.4 * small  # linear: 4x the states, 4x the work (quadratic would be 16x)


# Memory: what the ledger keeps once every state has left does not grow with the number of states.


def memory_held_after(states: int, streams: list, stream_states: bool) -> int:
    """Bytes allocated in state.py and still held once `states` rounds of one record per stream and a state (one per
    stream, or one for every stream) have all left."""
    tracemalloc.start()
    try:
        ledger = StateLedger()
        for i in range(states):
            entries = [ledger.received(stream) for stream in streams]
            for stream in streams if stream_states else [EVERY_STREAM]:
                ledger.state_received(i, stream)
            ledger.delivered(entries)
            released(ledger)
        assert ledger.pending == 0
        held = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, state_module.__file__)])
        return sum(statistic.size for statistic in held.statistics("filename"))
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("streams", "stream_states"),
    [
        pytest.param(["a", "b"], True, id="stream_states"),
        pytest.param(["a", "b"], False, id="global_states"),
        pytest.param([EVERY_STREAM], False, id="unreadable_records_global_states"),
    ],
)
def test_the_ledger_lets_go_of_settled_intervals(streams, stream_states):
    small = memory_held_after(100, streams, stream_states)
    large = memory_held_after(1000, streams, stream_states)
    assert large < small + 4096, f"{small} bytes held after 100 states, {large} after 1000"
