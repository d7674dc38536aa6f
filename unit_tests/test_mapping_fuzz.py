"""Hostile input: arbitrary JSON never crashes the mapping, and always yields either an item Heap accepts
(checked by the stand-in's own validator, written independently) or a counted Rejection; and a record that
has everything its mapping needs is never rejected, however odd the rest of it is."""

import math
from datetime import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from destination_heap_analytics.config import MappingConfig
from destination_heap_analytics.mapping import (
    HeapItem,
    Mapping,
    Rejection,
)
from heap_standin.rules import ENDPOINTS

PATHS = {"track": "/api/track", "add_user_properties": "/api/add_user_properties",
         "add_account_properties": "/api/add_account_properties"}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(min_size=1000, max_size=1300),
    st.sampled_from(["", " ", "id", "ID", "2017-03-10T22:21:56+00:00", "1489184516123", "\u0000", "😀" * 600]),
)
keys = st.one_of(st.text(max_size=12), st.sampled_from(["", "id", "Id", "a.b", "who", "what", "when", "k" * 1100]))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=5)),
    max_leaves=40,
)
records = st.one_of(
    st.dictionaries(keys, json_values, max_size=12),
    st.fixed_dictionaries({"who": json_values, "what": json_values, "when": json_values},
                          optional={"extra": json_values}),
    json_values,  # not even an object
)
MAPPINGS = [
    MappingConfig("track", identity_column="who", event_column="what", timestamp_column="when",
                  property_columns=None),
    MappingConfig("track", identity_column="who", event_column="what", property_columns=("extra", "a.b", "x.0.y")),
    MappingConfig("add_user_properties", identity_column="who", property_columns=None),
    MappingConfig("add_user_properties", identity_column="who", property_columns=("extra", "id", "what")),
    MappingConfig("add_account_properties", account_id_column="who", property_columns=None),
]
mappings = st.sampled_from(MAPPINGS)
streams = st.sampled_from(["", "users", "pageviews", "ünïcode stream"])


def _assert_notes_name_only_config(mapping: MappingConfig, notes: list[tuple[str, str]]) -> None:
    """Notes reach the logs: under * they name no key at all, else only a configured column."""
    allowed = {"*"} if mapping.property_columns is None else set(mapping.property_columns)
    assert {name for _, name in notes} <= allowed, notes


@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mapping=mappings, record=records, stream=streams,
       emitted_at=st.integers(min_value=0, max_value=4_102_444_800_000))
def test_any_json_maps_to_a_valid_item_or_a_rejection(mapping, record, stream, emitted_at):
    result = Mapping(mapping, stream).map(record, emitted_at)
    assert isinstance(result, (HeapItem, Rejection))
    if isinstance(result, Rejection):
        assert result.reason and isinstance(result.reason, str)
        return
    _assert_valid_item(mapping, result)


def _assert_valid_item(mapping: MappingConfig, item: HeapItem) -> None:
    error = ENDPOINTS[PATHS[mapping.api_type]].item_error(item.body)
    assert error is None, error
    for value in item.body.get("properties", {}).values():
        assert not isinstance(value, float) or math.isfinite(value)
    _assert_notes_name_only_config(mapping, item.notes)


# Records with a usable identity (or account id), event and timestamp, and anything at all besides.
identities = st.one_of(st.text(min_size=1, max_size=255).filter(str.strip),
                       st.integers(min_value=-(2**80), max_value=2**80))
event_names = st.one_of(st.text(min_size=1, max_size=1023).filter(str.strip), st.integers(), st.sampled_from(
    ["Signed Up", "e" * 1023, "😀", "404"]))


def _heap_shaped(moment: datetime, fraction: str, offset: str) -> str:
    digits = f"{moment.microsecond:06d}"
    fraction = fraction.replace("ms", digits[:3]).replace("us", digits[3:])
    return moment.replace(microsecond=0).isoformat() + fraction + offset


heap_shaped_times = st.builds(
    _heap_shaped,
    st.datetimes(),
    st.sampled_from(["", ".000", ".000000", ".ms", ".msus", ".ms000", ".000us"]),
    st.sampled_from(["Z", "+00:00", "-00:00", "+05:30", "-03:00", "+14:00", "-12:45"]),
)


usable_times = st.one_of(
    st.none(),
    st.just(""),
    heap_shaped_times,
    st.datetimes().map(datetime.isoformat),  # no offset: UTC
    st.integers(min_value=-62_135_596_800, max_value=4_102_444_800_000),  # from 0001-01-01, as epoch seconds
    st.floats(min_value=0, max_value=4e12),
    # as text: four or eight digits are a year or a date (20221021), not seconds since 1970
    st.integers(min_value=0, max_value=4_102_444_800_000).map(str).filter(lambda text: len(text) not in (4, 8)),
    st.sampled_from(["2024", "20221021", "2024-03-01T00:00:00z", "2024-03-01t00:00:00.5z", "1e10", "1.5E9"]),
)
usable_records = st.builds(
    lambda extra, fixed: {**extra, **fixed},
    st.dictionaries(keys, json_values, max_size=8),
    st.fixed_dictionaries({"who": identities, "what": event_names, "when": usable_times}),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mapping=mappings, record=usable_records, stream=streams,
       emitted_at=st.integers(min_value=0, max_value=4_102_444_800_000))
def test_a_record_with_what_its_mapping_needs_is_never_rejected(mapping, record, stream, emitted_at):
    """Without this, a mapping that rejected every record would pass the test above."""
    result = Mapping(mapping, stream).map(record, emitted_at)
    assert isinstance(result, HeapItem), result
    _assert_valid_item(mapping, result)
    assert result.identity == (None if mapping.api_type == "add_account_properties" else str(record["who"]))
