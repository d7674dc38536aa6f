"""A Lane, one endpoint's ordering point: each key's items leave in input order, one at a time; merging only where it
leaves Heap's end state as it was; merged items split back into their records in order."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from destination_heap_analytics.config import API_TYPES
from destination_heap_analytics.lanes import MERGING_APIS, Item, Lane, encoded, merged
from destination_heap_analytics.state import Entry, Interval

BIG = 1 << 30  # a byte cap no test item comes near


def update(key: Hashable, properties: dict[str, Any], route: str = "r", stream: str = "users") -> Item:
    """One record's item, as the writer queues it on a merging lane: its body as fields too."""
    body = {"identity": key, "properties": properties}
    json = encoded(body)
    return Item(key, route, key, [Entry(stream, Interval(), body=json)], body, len(json))


def versions(items: list[Item]) -> list[list[int]]:
    """Each item's records by their `v`."""
    return [[orjson.loads(entry.body)["properties"]["v"] for entry in item.entries] for item in items]


def taken_keys(items: list[Item]) -> list[Hashable]:
    return [item.key for item in items]


# ------------------------------------------------------------------------------------------------------------
# The merge rule (an item's body)


@pytest.mark.parametrize(
    ("earlier", "later", "expected"),
    [
        (  # the union of the properties
            {"identity": "a", "properties": {"plan": "pro"}},
            {"identity": "a", "properties": {"seats": 3}},
            {"identity": "a", "properties": {"plan": "pro", "seats": 3}},
        ),
        (  # a property in both: the later value wins
            {"identity": "a", "properties": {"plan": "free", "seats": 1}},
            {"identity": "a", "properties": {"plan": "pro"}},
            {"identity": "a", "properties": {"plan": "pro", "seats": 1}},
        ),
        (  # an update without a property leaves it as it was, as Heap does
            {"account_id": "acme", "properties": {"plan": "pro", "mrr": 10}},
            {"account_id": "acme", "properties": {"mrr": 12}},
            {"account_id": "acme", "properties": {"plan": "pro", "mrr": 12}},
        ),
        (  # the same update twice is that update
            {"identity": "a", "properties": {"plan": "pro"}},
            {"identity": "a", "properties": {"plan": "pro"}},
            {"identity": "a", "properties": {"plan": "pro"}},
        ),
    ],
)
def test_two_updates_of_a_key_merge_into_the_union_of_their_properties_later_values_winning(earlier, later, expected):
    assert merged(earlier, later) == expected


def test_merging_leaves_both_updates_as_they_were():
    earlier, later = {"identity": "a", "properties": {"v": 1}}, {"identity": "a", "properties": {"v": 2}}
    merged(earlier, later)
    assert (earlier, later) == ({"identity": "a", "properties": {"v": 1}}, {"identity": "a", "properties": {"v": 2}})


@pytest.mark.parametrize(
    ("api_type", "merges"),
    [
        ("add_user_properties", True),
        ("add_account_properties", True),
        ("track", False),  # each event is its own
        ("identify", False),  # order-sensitive: never merged
        ("delete_users", False),  # order-sensitive: never merged, not even an exact repeat
    ],
)
def test_only_property_updates_merge(api_type, merges):
    assert api_type in API_TYPES
    assert (api_type in MERGING_APIS) is merges


# ------------------------------------------------------------------------------------------------------------
# Order: each key's items one at a time, in input order


def test_each_keys_items_leave_in_input_order_one_at_a_time():
    lane = Lane(merges=False, max_item_bytes=BIG)
    for v in range(3):
        lane.add(update("a", {"v": v}))
    first = lane.take("r", 10, BIG)
    assert versions(first) == [[0]]
    assert lane.take("r", 10, BIG) == []  # busy: its next item waits until the request is done
    lane.done(first)
    second = lane.take("r", 10, BIG)
    assert versions(second) == [[1]]
    lane.done(second)
    assert versions(lane.take("r", 10, BIG)) == [[2]]


def test_different_keys_go_together_in_the_order_they_became_ready():
    lane = Lane(merges=False, max_item_bytes=BIG)
    for key in ("c", "a", "b"):
        lane.add(update(key, {"v": 0}))
    lane.add(update("a", {"v": 1}))
    taken = lane.take("r", 10, BIG)
    assert taken_keys(taken) == ["c", "a", "b"]
    lane.done([taken[1]])  # a's request is over first
    assert versions(lane.take("r", 10, BIG)) == [[1]]


def test_routes_go_apart_but_a_key_keeps_its_order_across_them():
    """Two streams of one endpoint with their own routes: each route's requests hold its own items, and a key's item
    of the second route waits for its item of the first."""
    lane = Lane(merges=False, max_item_bytes=BIG)
    lane.add(update("a", {"v": 0}, route="first"))
    lane.add(update("b", {"v": 0}, route="second"))
    lane.add(update("a", {"v": 1}, route="second"))
    assert taken_keys(second := lane.take("second", 10, BIG)) == ["b"]  # a's first item is not taken yet
    first = lane.take("first", 10, BIG)
    assert versions(first) == [[0]]
    lane.done(second)
    assert lane.take("second", 10, BIG) == []  # a is busy at the first route
    lane.done(first)
    assert [(item.route, item.key) for item in lane.take("second", 10, BIG)] == [("second", "a")]


def test_a_request_takes_at_most_the_items_asked_for_and_the_rest_stay_ready():
    lane = Lane(merges=False, max_item_bytes=BIG)
    for key in "abcde":
        lane.add(update(key, {"v": 0}))
    assert taken_keys(lane.take("r", 2, BIG)) == ["a", "b"]
    assert taken_keys(lane.take("r", 10, BIG)) == ["c", "d", "e"]
    assert lane.take("r", 10, BIG) == [] and lane.take("elsewhere", 10, BIG) == []


def test_the_byte_cap_stops_a_request_but_never_leaves_one_empty():
    lane = Lane(merges=False, max_item_bytes=BIG)
    items = [update(key, {"v": 0}) for key in "abc"]
    for item in items:
        lane.add(item)
    size = items[0].size
    # each item counts its size and a separator: two fit in exactly 2 * (size + 1), a third does not
    assert taken_keys(lane.take("r", 10, 2 * (size + 1))) == ["a", "b"]
    assert taken_keys(lane.take("r", 10, 1)) == ["c"]  # alone, an item goes whatever the cap


def test_oldest_is_when_the_first_ready_item_was_queued():
    lane = Lane(merges=False, max_item_bytes=BIG)
    assert lane.oldest("r") == float("inf")
    first, second = update("a", {"v": 0}), update("b", {"v": 0})
    first.born, second.born = 10.0, 5.0
    lane.add(first)
    lane.add(second)
    assert lane.oldest("r") == 10.0  # ready first, however old the second
    lane.take("r", 1, BIG)
    assert lane.oldest("r") == 5.0


# ------------------------------------------------------------------------------------------------------------
# Merging


def test_a_merging_lane_merges_a_keys_waiting_updates_into_one_item_that_remembers_its_records():
    lane = Lane(merges=True, max_item_bytes=BIG)
    assert lane.add(update("a", {"plan": "a", "v": 0})) is False
    assert lane.add(update("b", {"v": 0})) is False
    assert lane.add(update("a", {"seats": 5, "v": 1})) is True
    assert lane.add(update("a", {"plan": "c", "v": 2})) is True
    first, other = lane.take("r", 10, BIG)
    assert versions([first, other]) == [[0, 1, 2], [0]]
    assert orjson.loads(first.body()) == {"identity": "a", "properties": {"plan": "c", "seats": 5, "v": 2}}
    assert first.size == sum(len(entry.body) for entry in first.entries)


def test_a_lane_that_does_not_merge_keeps_every_update_apart():
    lane = Lane(merges=False, max_item_bytes=BIG)
    assert [lane.add(update("a", {"v": v})) for v in range(3)] == [False, False, False]
    assert versions(lane.take("r", 10, BIG)) == [[0]]


def test_an_update_never_merges_into_an_item_already_in_a_request():
    lane = Lane(merges=True, max_item_bytes=BIG)
    lane.add(update("a", {"v": 0}))
    taken = lane.take("r", 10, BIG)
    assert lane.add(update("a", {"v": 1})) is False  # waits for the request instead
    assert lane.add(update("a", {"v": 2})) is True  # into the waiting one
    assert versions(taken) == [[0]]
    lane.done(taken)
    assert versions(lane.take("r", 10, BIG)) == [[1, 2]]


@pytest.mark.parametrize(("room", "merges"), [(0, False), (1, True)], ids=["at_the_cap", "under_the_cap"])
def test_the_byte_cap_stops_a_merge(room, merges):
    one, two = update("a", {"v": 0}), update("a", {"v": 1})
    lane = Lane(merges=True, max_item_bytes=one.size + two.size + room)
    lane.add(one)
    assert lane.add(two) is merges


# ------------------------------------------------------------------------------------------------------------
# Halves of a merged item


def merged_item(count: int) -> Item:
    """One item merged from `count` updates of key a, each setting `v` and a property of its own."""
    lane = Lane(merges=True, max_item_bytes=BIG)
    for v in range(count):
        lane.add(update("a", {"v": v, f"p{v % 3}": v}))
    (item,) = lane.take("r", 10, BIG)
    return item


def ordered_union(item: Item) -> dict[str, Any]:
    """The item's records applied in order, as Heap would apply them one by one."""
    state: dict[str, Any] = {}
    for entry in item.entries:
        state.update(orjson.loads(entry.body)["properties"])
    return state


@pytest.mark.parametrize("count", [2, 3, 5, 8])
def test_halves_keep_input_order_and_each_body_is_the_ordered_union_of_its_records(count):
    item = merged_item(count)
    item.refused_at = 4
    first, second = item.halves()
    assert versions([first, second]) == [list(range(count // 2)), list(range(count // 2, count))]
    for half in (first, second):
        assert orjson.loads(half.body())["properties"] == ordered_union(half)
        assert (half.key, half.route, half.identity, half.born, half.refused_at) == ("a", "r", "a", item.born, 4)
        assert half.size == sum(len(entry.body) for entry in half.entries)


def test_halving_down_to_single_records_gives_back_each_record_as_received_in_order():
    pending, singles = [merged_item(7)], []
    while pending:
        item = pending.pop(0)
        if len(item.entries) == 1:
            singles.append(item)
        else:
            pending[:0] = item.halves()  # first half first, as the dispatcher sends them
    assert versions(singles) == [[v] for v in range(7)]
    assert all(item.body() is item.entries[0].body for item in singles)  # a lone record's own JSON, not redone


# ------------------------------------------------------------------------------------------------------------
# Bookkeeping


def test_a_keys_bookkeeping_is_freed_once_it_has_nothing_waiting():
    lane = Lane(merges=True, max_item_bytes=BIG)
    for key in range(100):
        lane.add(update(key, {"v": 0}))
        lane.done(lane.take("r", 10, BIG))
    lane.add(update("a", {"v": 0}))
    taken = lane.take("r", 10, BIG)
    assert lane._waiting == {} and lane.ready == {} and lane._busy == {"a"}  # a is in a request, nothing waits
    lane.done(taken)
    assert (lane._waiting, lane.ready, lane._busy) == ({}, {}, set())


# ------------------------------------------------------------------------------------------------------------
# Any interleaving: Heap ends as ordered delivery would leave it

KEYS = ["a", "b", "c"]
ROUTES = ["first", "second"]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(KEYS), st.sampled_from(ROUTES), st.sampled_from(["x", "y", "z"])),
        st.tuples(st.just("take"), st.sampled_from(ROUTES), st.integers(1, 3)),
        st.tuples(st.just("done"), st.integers(0, 10)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(steps=steps, merges=st.booleans())
def test_taken_items_applied_in_take_order_leave_each_key_as_its_records_applied_in_input_order(steps, merges):
    lane = Lane(merges=merges, max_item_bytes=BIG)
    expected: dict[Hashable, dict[str, Any]] = {key: {} for key in KEYS}  # the records in input order
    heap: dict[Hashable, dict[str, Any]] = {key: {} for key in KEYS}  # the items in the order taken
    records: dict[Hashable, list[int]] = {key: [] for key in KEYS}  # each key's record numbers, in input order
    delivered: dict[Hashable, list[int]] = {key: [] for key in KEYS}
    in_request: list[Item] = []

    def take(route: str, count: int) -> None:
        for item in lane.take(route, count, BIG):
            assert all(item.key != other.key for other in in_request), "a key in two requests at once"
            assert item.route == route
            heap[item.key].update(orjson.loads(item.body())["properties"])
            delivered[item.key].extend(orjson.loads(entry.body)["properties"]["n"] for entry in item.entries)
            in_request.append(item)

    for number, step in enumerate(steps):
        if step[0] == "add":
            _, key, route, name = step
            lane.add(update(key, {name: number, "n": number}, route=route))
            expected[key].update({name: number, "n": number})
            records[key].append(number)
        elif step[0] == "take":
            take(step[1], step[2])
        elif in_request:
            lane.done([in_request.pop(step[1] % len(in_request))])
    while in_request or lane.ready:  # drain: everything waiting goes, one request at a time per key
        for route in ROUTES:
            take(route, 3)
        lane.done(in_request)
        in_request.clear()
    assert heap == expected
    assert delivered == records  # every record once, in input order
    assert (lane._waiting, lane.ready, lane._busy) == ({}, {}, set())
