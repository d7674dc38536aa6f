"""The reference model of a load's outcome, for the tests of ordered delivery and record fates.

Heap's user and account properties are last-write-wins: what Heap ends holding for a key is its updates applied
one after the other, each property taking the latest value it was given. The connector promises the same end
state as applying every record in input order, across the streams loading one endpoint, leaving out the
records Heap refuses on their own (a refused record changes nothing in Heap). And each STATE's
destinationStats count its interval's records (those of its stream since that stream's previous state):
`recordCount` those delivered, `rejectedRecordCount` those refused.

Which records Heap refuses on their own is the tests' choice: those carrying the property `bad`, which the
stand-in is told to refuse (`refuse_the_bad_property`), as Heap refuses an item with a property it will not take.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from heap_standin import HeapStandin
from integration_tests.support import states_of

Properties = dict[str, object]
REFUSED_PROPERTY = "bad"


def refused(data: dict) -> bool:
    """Whether Heap refuses this record's item on its own."""
    return REFUSED_PROPERTY in data


def refusal(item: dict) -> str | None:
    """Heap's 400 text for a request holding this item (naming the item, as Heap does), or None."""
    if REFUSED_PROPERTY not in item.get("properties", {}):
        return None
    kind = "events" if "event" in item else "accounts" if "account_id" in item else "users"
    return f"postBody.{kind}[0].properties.{REFUSED_PROPERTY} should be string"


def refuse_the_bad_property(heap: HeapStandin) -> None:
    """From now on the stand-in answers 400 to any request holding an item with the refused property."""
    heap.reject_when(refusal)


def applied_in_order(updates: Iterable[tuple[str, Properties]]) -> dict[str, Properties]:
    """What Heap holds after these (key, properties) updates in this order: each key's last value of each
    property."""
    held: dict[str, Properties] = {}
    for key, properties in updates:
        held.setdefault(key, {}).update(properties)
    return held


def heap_end_state(stored: list[dict], id_field: str) -> dict[str, Properties]:
    """What the stand-in's stored user or account items (`identity` or `account_id`), in arrival order, leave."""
    return applied_in_order((item[id_field], item["properties"]) for item in stored)


def input_end_state(
    messages: Iterable[dict], streams: Iterable[str], key: str, refused: Callable[[dict], bool]
) -> dict[str, Properties]:
    """What applying the RECORDs of `streams` in input order leaves, keyed by the `key` column, without the
    records Heap refuses: every other column is a property."""
    names = set(streams)
    return applied_in_order(
        (data[key], {column: value for column, value in data.items() if column != key})
        for data in (m["record"]["data"] for m in messages if m["type"] == "RECORD" and m["record"]["stream"] in names)
        if not refused(data)
    )


def assert_same_end_state(held: dict[str, Properties], wanted: dict[str, Properties], kind: str) -> None:
    """Heap holds for each key what ordered delivery leaves (`kind`: users, accounts), saying how many do not."""
    astray = sorted(key for key in held.keys() | wanted.keys() if held.get(key) != wanted.get(key))
    assert held == wanted, f"{len(astray)} of {len(wanted)} {kind} end where ordered delivery would not leave them"


def expected_destination_stats(messages: list[dict], refused: Callable[[dict], bool]) -> dict[object, dict]:
    """Each input STATE's destinationStats by its `id`: its stream's records since that stream's previous
    state, those Heap takes as `recordCount` and those it refuses as `rejectedRecordCount`."""
    expected: dict[object, dict] = {}
    interval: dict[str, list[dict]] = {}  # per stream: its records since its previous state
    for message in messages:
        if message["type"] == "RECORD":
            interval.setdefault(message["record"]["stream"], []).append(message["record"]["data"])
        elif message["type"] == "STATE":
            stream = message["state"]["stream"]["stream_descriptor"]["name"]
            records = interval.pop(stream, [])
            rejected = sum(1 for data in records if refused(data))
            expected[message["state"]["id"]] = {
                "recordCount": float(len(records) - rejected),
                "rejectedRecordCount": float(rejected),
            }
    return expected


def assert_states_echoed_with_their_ids(emitted: list[dict], messages: list[dict]) -> None:
    """Every input STATE came back once, as sent (its `id` included) with destinationStats added; each
    stream's in input order (the streams' states may interleave)."""
    sent = states_of(messages)
    echoed = [{k: v for k, v in state.items() if k != "destinationStats"} for state in emitted]
    assert sorted(state["id"] for state in echoed) == sorted(state["id"] for state in sent)
    for stream in {state["stream"]["stream_descriptor"]["name"] for state in sent}:
        assert [s for s in echoed if s["stream"]["stream_descriptor"]["name"] == stream] == [
            s for s in sent if s["stream"]["stream_descriptor"]["name"] == stream
        ], f"the states of {stream} did not come back as sent, in order"
