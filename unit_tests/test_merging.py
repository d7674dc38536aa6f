"""The merge rule: which updates of one key become one Heap item, and what that item holds."""

from __future__ import annotations

import pytest

from destination_heap_analytics.config import API_TYPES
from destination_heap_analytics.merging import MERGING_APIS, MergeSlots, merged


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


def test_a_key_has_one_unsent_item_until_its_batch_is_sent():
    slots: MergeSlots[str] = MergeSlots()
    slots.put("a", "batch 1", 0, {"identity": "a", "properties": {"v": 1}})
    slots.put("b", "batch 1", 1, {"identity": "b", "properties": {"v": 1}})
    slots.put("c", "batch 2", 0, {"identity": "c", "properties": {"v": 1}})
    slots.put("a", "batch 1", 0, {"identity": "a", "properties": {"v": 2}})  # merged: the same item
    assert slots.get("a") == ("batch 1", 0, {"identity": "a", "properties": {"v": 2}})
    slots.sent("batch 1", ["a", "b"])
    assert (slots.get("a"), slots.get("b")) == (None, None)  # a later update of a or b comes after batch 1
    assert slots.get("c") == ("batch 2", 0, {"identity": "c", "properties": {"v": 1}})
