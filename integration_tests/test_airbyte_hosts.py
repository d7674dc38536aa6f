"""What the real Airbyte hosts send and expect: states echoed whole (the platform matches its echo by `id`),
a dry run that moves no cursor, and the CDK's in-process write contract."""

from __future__ import annotations

import json
import threading

from airbyte_cdk.models import (
    AirbyteMessage,
    AirbyteMessageSerializer,
    ConfiguredAirbyteCatalogSerializer,
    Type,
)

from destination_heap_analytics import DestinationHeapAnalytics
from integration_tests.support import USER_API, catalog, config, people, record, run_connector, state


def platform_stream_state(state_id: int, position: int, records: int) -> dict:
    """A STREAM state as platform 1.7+ hands it to a destination: an `id`, the source's stats, and a field this
    connector has never heard of."""
    message = state(position, state_id=state_id)
    message["state"]["sourceStats"] = {"recordCount": float(records)}
    message["state"]["x_future_field"] = {"kept": [1, "two"]}
    return message


def platform_global_state(state_id: int, position: int, records: int) -> dict:
    return {
        "type": "STATE",
        "state": {
            "type": "GLOBAL",
            "id": state_id,
            "global": {
                "shared_state": {"lsn": position},
                "stream_states": [
                    {"stream_descriptor": {"name": "users"}, "stream_state": {"position": position}}
                ],
            },
            "sourceStats": {"recordCount": float(records)},
        },
    }


def with_states(rows: list[dict], every: int, make_state) -> list[dict]:
    messages, since = [], 0
    for number, row in enumerate(rows, 1):
        messages.append(record(row))
        since += 1
        if number % every == 0 or number == len(rows):
            messages.append(make_state(987_650 + number, number, since))
            since = 0
    return messages


def assert_echoed_whole(result, sent: list[dict]) -> None:
    """Each STATE leaves exactly as it came, with only destinationStats added: recordCount, the records of its
    interval that reached Heap, and rejectedRecordCount (none here): together the records the source counted."""
    sent_states = [m for m in sent if m["type"] == "STATE"]
    echoed = [m for m in result.messages if m["type"] == "STATE"]
    assert len(echoed) == len(sent_states), result.describe()
    for original, echo in zip(sent_states, echoed, strict=True):
        stats = echo["state"].pop("destinationStats")
        assert echo == original
        assert stats == {"recordCount": original["state"]["sourceStats"]["recordCount"], "rejectedRecordCount": 0.0}


def test_stream_states_from_the_platform_are_echoed_whole_with_their_id(heap):
    messages = with_states(people(25), every=10, make_state=platform_stream_state)
    result = run_connector("write", config(heap, USER_API, batch_size=7), catalog(), messages)
    assert result.returncode == 0, result.describe()
    assert_echoed_whole(result, messages)
    assert [m["state"]["id"] for m in result.messages if m["type"] == "STATE"] == [987_660, 987_670, 987_675]
    assert len(heap.users) == 25


def test_global_states_from_the_platform_are_echoed_whole_with_their_id(heap):
    messages = with_states(people(12), every=5, make_state=platform_global_state)
    result = run_connector("write", config(heap, USER_API), catalog(), messages)
    assert result.returncode == 0, result.describe()
    assert_echoed_whole(result, messages)


def test_legacy_states_are_echoed_whole(heap):
    messages = [record(row) for row in people(3)] + [{"type": "STATE", "state": {"data": {"cursor": 3}, "id": 5}}]
    result = run_connector("write", config(heap, USER_API), catalog(), messages)
    assert result.returncode == 0, result.describe()
    (echo,) = [m["state"] for m in result.messages if m["type"] == "STATE"]
    stats = {"recordCount": 3.0, "rejectedRecordCount": 0.0}
    assert echo == {"data": {"cursor": 3}, "id": 5, "destinationStats": stats}


def test_a_dry_run_emits_no_state_and_says_why(heap):
    messages = with_states(people(30), every=10, make_state=platform_stream_state)
    result = run_connector("write", config(heap, USER_API, dry_run=True), catalog(), messages)
    assert result.returncode == 0, result.describe()
    assert [m for m in result.messages if m["type"] == "STATE"] == []
    assert heap.users == []
    logs = result.log_lines()
    assert any("no STATE is emitted" in line and "cursor" in line for line in logs), logs
    assert any("30 would have been sent (dry run: nothing sent)" in line for line in logs), logs
    assert any("3 states not emitted (dry run)" in line for line in logs), logs


def test_overwrite_from_older_tooling_loads_as_append_with_a_warning(heap):
    result = run_connector(
        "write", config(heap, USER_API), catalog(destination_sync_mode="overwrite"), with_states(
            people(4), every=4, make_state=platform_stream_state
        )
    )
    assert result.returncode == 0, result.describe()
    assert len(heap.users) == 4
    assert any("overwrite" in line and "append" in line for line in result.log_lines("WARN"))


def test_the_spec_offers_only_the_sync_modes_heap_can_honour():
    spec = DestinationHeapAnalytics().spec(None)
    assert [mode.value for mode in spec.supported_destination_sync_modes] == ["append", "append_dedup"]


def test_the_command_lines_spec_is_the_cdk_destinations_spec():
    """`spec` answers without loading the CDK; what it prints is exactly what the CDK's Destination gives."""
    printed = run_connector("spec").messages
    assert [m["type"] for m in printed] == ["SPEC"]
    assert printed[0]["spec"] == AirbyteMessageSerializer.dump(
        AirbyteMessage(type=Type.SPEC, spec=DestinationHeapAnalytics().spec(None))
    )["spec"]


def test_write_in_process_takes_airbyte_messages_and_echoes_the_state(heap):
    """The CDK's contract, as Airbyte's own destination tests call it: AirbyteMessage objects in and out."""
    messages = with_states(people(6), every=6, make_state=platform_stream_state)
    configured = ConfiguredAirbyteCatalogSerializer.load(catalog())
    output: list[AirbyteMessage] = []

    def run() -> None:  # not the main thread, as a host embedding the connector may call it
        output.extend(
            DestinationHeapAnalytics().write(
                config(heap, USER_API), configured, (AirbyteMessageSerializer.load(m) for m in messages)
            )
        )

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert sorted(user["identity"] for user in heap.users) == sorted(row["email"] for row in people(6))
    (state,) = output
    assert state.type == Type.STATE
    dumped = AirbyteMessageSerializer.dump(state)
    assert dumped["state"]["stream"]["stream_state"] == {"position": 6}
    # the CDK's model (protocol 0.17) knows recordCount only: rejectedRecordCount is the command line's
    assert dumped["state"]["destinationStats"] == {"recordCount": 6.0}
    json.dumps(dumped)  # a plain JSON message
