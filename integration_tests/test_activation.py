"""Data activation end to end, as Airbyte 1.8+ drives it: `discover`, the user's choices in the Mappings tab,
the configured catalog the platform writes from them (renamed fields, the matching key as primary_key, the
object and sync mode), the records renamed on the way, `write`."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from heap_standin import HeapStandin
from integration_tests.support import APP_ID, HEX32, run_connector, without_app_id

DELETION_KEY = "s3cret-activation-deletion-key"
SYNC_ID = 4217  # the platform's job id


def activation_config(heap, **extra) -> dict:
    """A data-activation connection's config: no mapping, the UI holds it."""
    return {"app_id": APP_ID, "base_url": heap.url, "track_events_per_minute": 0, **extra}


def discover(config: dict) -> list[dict]:
    result = run_connector("discover", config)
    assert result.returncode == 0, result.describe()
    (answer,) = [m for m in result.messages if m["type"] != "LOG"]  # run_connector checked it against the protocol
    assert answer["type"] == "DESTINATION_CATALOG"
    assert DELETION_KEY not in result.stdout + result.stderr
    return answer["destination_catalog"]["operations"]


@dataclass(eq=False)  # each choice is one stream (a key of messages_for's dict)
class Choice:
    """What the user picks in the Mappings tab for one source stream."""

    stream: str
    object_name: str
    sync_mode: str
    fields: dict[str, str]  # source field -> the object's field
    key: list[str] = field(default_factory=list)  # the matching key picked

    def rename(self, row: dict) -> dict:
        """A record as the platform hands it on: mapped fields only, under the object's names."""
        return {target: row[source] for source, target in self.fields.items() if source in row}


def configured_stream(operations: list[dict], choice: Choice, checked: bool = True) -> dict:
    """The ConfiguredAirbyteStream the platform writes for a choice, after its save-time checks (`checked`): the
    operation was offered, the key is one of its matching keys, every required field is mapped, and without
    additionalProperties every mapped field is the object's."""
    mapped = list(choice.fields.values())
    if checked:
        (operation,) = [
            op for op in operations if (op["object_name"], op["sync_mode"]) == (choice.object_name, choice.sync_mode)
        ]
        schema = operation["json_schema"]
        assert set(schema["required"]) <= set(mapped)
        assert schema["additionalProperties"] or set(mapped) <= set(schema["properties"])
        assert choice.key in operation.get("matching_keys", [[]])
    return {
        "stream": {
            "name": choice.stream,
            # rebuilt under the object's field names, with the source's types
            "json_schema": {
                "type": "object",
                "properties": {name: {"type": ["null", "string", "integer"]} for name in mapped},
                "additionalProperties": True,
            },
            "supported_sync_modes": ["full_refresh", "incremental"],
        },
        "sync_mode": "incremental",
        "cursor_field": ["updated_at"],
        "destination_sync_mode": choice.sync_mode,
        "destination_object_name": choice.object_name,
        "primary_key": [[name] for name in choice.key],
        "generation_id": 3,
        "minimum_generation_id": 0,
        "sync_id": SYNC_ID,
    }


def stream_state(stream: str, state_id: int, position: int, records: int) -> dict:
    return {
        "type": "STATE",
        "state": {
            "type": "STREAM",
            "id": state_id,
            "stream": {"stream_descriptor": {"name": stream}, "stream_state": {"updated_at": position}},
            "sourceStats": {"recordCount": float(records)},
        },
    }


def messages_for(streams: dict[Choice, list[dict]]) -> list[dict]:
    """Each stream's records, renamed, then its STATE (ids 1, 2, ...)."""
    messages = []
    for state_id, (choice, rows) in enumerate(streams.items(), 1):
        for row in rows:
            record = {"stream": choice.stream, "data": choice.rename(row), "emitted_at": 1_700_000_000_000}
            messages.append({"type": "RECORD", "record": record})
        messages.append(stream_state(choice.stream, state_id, len(rows), len(rows)))
    return messages


SIGNUPS = Choice(
    "signups",
    "event",
    "append",
    {"email": "identity", "action": "event", "at": "timestamp", "signup_id": "idempotency_key", "plan": "plan",
     "visits": "visit_count"},
)
CONTACTS = Choice("contacts", "user", "append_dedup", {"email": "identity", "name": "full_name", "plan": "plan"},
                  key=["identity"])
COMPANIES = Choice("companies", "account", "append_dedup", {"company": "account_id", "tier": "tier"},
                   key=["account_id"])
MERGES = Choice("merges", "identify", "append", {"email": "identity", "anonymous_id": "user_id"})
ERASURES = Choice("erasures", "user", "soft_delete", {"heap_user": "user_id"}, key=["user_id"])


def signup(i: int, **overrides) -> dict:
    row = {"email": f"secret-signup-{i}@example.com", "action": "Secret Signed Up", "at": f"2023-03-0{i}T10:00:00Z",
           "signup_id": f"secret-signup-id-{i}", "plan": f"secret-plan-{i}", "visits": i, "ignored": "secret-x"}
    return row | overrides


def test_the_platform_end_to_end_discover_choose_map_write(heap):
    config = activation_config(heap, api_key=DELETION_KEY)
    operations = discover(config)
    streams = {
        SIGNUPS: [signup(1), signup(2, email=None), signup(3), signup(4)],  # the second has no identity: rejected
        CONTACTS: [{"email": "secret-contact-1@example.com", "name": "Secret Ada", "plan": "secret-pro"}],
        COMPANIES: [{"company": "secret-co-1", "tier": "secret-gold"}, {"company": "secret-co-2", "tier": "silver"}],
        MERGES: [{"email": "secret-merged@example.com", "anonymous_id": 8_412_345_678}],
        ERASURES: [{"heap_user": 77_001}, {"heap_user": "77002"}],
    }
    catalog = {"streams": [configured_stream(operations, choice) for choice in streams]}
    messages = messages_for(streams)
    result = run_connector("write", config, catalog, messages, private=[DELETION_KEY])
    assert result.returncode == 0, result.describe()
    assert result.errors == []

    events = sorted((without_app_id(e) for e in heap.events), key=lambda event: event["timestamp"])
    assert [{k: v for k, v in e.items() if k != "idempotency_key"} for e in events] == [
        {"identity": f"secret-signup-{i}@example.com", "event": "Secret Signed Up",
         "timestamp": f"2023-03-0{i}T10:00:00+00:00", "properties": {"plan": f"secret-plan-{i}", "visit_count": i}}
        for i in (1, 3, 4)
    ]
    assert all(HEX32.match(e["idempotency_key"]) for e in events) and len({e["idempotency_key"] for e in events}) == 3
    assert [without_app_id(u) for u in heap.users] == [
        {"identity": "secret-contact-1@example.com", "properties": {"full_name": "Secret Ada", "plan": "secret-pro"}}
    ]
    assert sorted((without_app_id(a) for a in heap.accounts), key=lambda a: a["account_id"]) == [
        {"account_id": "secret-co-1", "properties": {"tier": "secret-gold"}},
        {"account_id": "secret-co-2", "properties": {"tier": "silver"}},
    ]
    assert [(item["identity"], str(item["user_id"])) for item in heap.identifies] == [
        ("secret-merged@example.com", "8412345678")
    ]
    assert sorted(str(user["user_id"]) for user in heap.deleted_users) == ["77001", "77002"]

    # every state echoed with its id; the invalid event is counted as rejected on its stream's state
    states = {m["state"]["id"]: m["state"] for m in result.messages if m["type"] == "STATE"}
    assert sorted(states) == [1, 2, 3, 4, 5]
    assert {state_id: state["destinationStats"] for state_id, state in states.items()} == {
        1: {"recordCount": 3.0, "rejectedRecordCount": 1.0},
        2: {"recordCount": 1.0, "rejectedRecordCount": 0.0},
        3: {"recordCount": 2.0, "rejectedRecordCount": 0.0},
        4: {"recordCount": 1.0, "rejectedRecordCount": 0.0},
        5: {"recordCount": 2.0, "rejectedRecordCount": 0.0},
    }
    assert result.skipped == {"missing_identity (column identity)": 1}


def test_an_activation_stream_loads_as_the_same_stream_mapped_by_config(heap):
    """A stream mapped in the UI and the same rows mapped by the config's streams, in one sync: the same bodies in
    Heap, but for the idempotency key, which covers the stream's name."""
    rows = [signup(i) for i in range(1, 6)]
    by_config = {
        "stream": "signups_by_config",
        "api": {"api_type": "track", "identity_column": "email", "event_column": "action", "timestamp_column": "at",
                "event_id_column": "signup_id", "property_columns": "plan,visits"},
    }
    in_ui = Choice("signups", "event", "append",
                   {"email": "identity", "action": "event", "at": "timestamp", "signup_id": "idempotency_key",
                    "plan": "plan", "visits": "visits"})
    config = activation_config(heap, streams=[by_config])
    classic = {"stream": {"name": "signups_by_config", "json_schema": {"type": "object"},
                          "supported_sync_modes": ["incremental"]},
               "sync_mode": "incremental", "destination_sync_mode": "append"}
    catalog = {"streams": [configured_stream(discover(config), in_ui), classic]}
    messages = messages_for({in_ui: rows})
    messages += [{"type": "RECORD", "record": {"stream": "signups_by_config", "data": row, "emitted_at": 1}}
                 for row in rows]
    result = run_connector("write", config, catalog, messages)
    assert result.returncode == 0, result.describe()
    events = [without_app_id(event) for event in heap.events]
    assert len(events) == 10
    # the same event from two streams is two events (the stream is part of the key): compare all but the key
    loaded = sorted(tuple(sorted((k, str(v)) for k, v in e.items() if k != "idempotency_key")) for e in events)
    assert loaded[0::2] == loaded[1::2]


REFUSED = {
    # name: (the stream's choice, forced past the platform's checks; words the error must hold)
    "object_not_offered": (Choice("contacts", "contact", "append_dedup", {"email": "identity"}, key=["identity"]),
                           ["contacts", "'contact'", "event (append)"]),
    "sync_mode_not_offered": (Choice("signups", "event", "append_dedup", {"email": "identity", "action": "event"}),
                              ["signups", "append_dedup", "event (append)"]),
    "update_not_offered": (Choice("contacts", "user", "update", {"email": "identity"}, key=["identity"]),
                           ["contacts", "update"]),
    "key_not_offered": (Choice("contacts", "user", "append_dedup", {"email": "identity", "plan": "plan"},
                               key=["plan"]), ["contacts", "plan", "identity"]),
    "soft_delete_without_the_key": (ERASURES, ["erasures", "api_key", "soft_delete"]),
    "soft_delete_without_a_matching_key": (Choice("erasures", "user", "soft_delete", {"heap_user": "user_id"}),
                                           ["erasures", "identity or user_id"]),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_what_discover_did_not_offer_is_refused_before_anything_is_sent(heap, name):
    choice, words = REFUSED[name]
    config = activation_config(heap) if name == "soft_delete_without_the_key" else activation_config(
        heap, api_key=DELETION_KEY
    )
    good = Choice("companies", "account", "append_dedup", {"company": "account_id", "tier": "tier"})
    catalog = {"streams": [configured_stream([], good, checked=False), configured_stream([], choice, checked=False)]}
    messages = messages_for({good: [{"company": "secret-co", "tier": "gold"}], choice: [{"email": "secret@x.com"}]})
    result = run_connector("write", config, catalog, messages, private=[DELETION_KEY])
    assert result.returncode != 0, result.describe()
    (error,) = result.errors
    assert error["failure_type"] == "config_error"
    for word in words:
        assert word in error["message"], error["message"]
    assert result.states == []
    assert heap.stats()["requests"] == 0


def test_soft_delete_is_offered_only_with_the_deletion_key_and_discover_never_shows_it(heap):
    without_key = discover(activation_config(heap))
    with_key = discover(activation_config(heap, api_key=DELETION_KEY))
    assert [(op["object_name"], op["sync_mode"]) for op in with_key] == [
        ("event", "append"), ("user", "append_dedup"), ("account", "append_dedup"), ("identify", "append"),
        ("user", "soft_delete"),
    ]
    assert with_key[:-1] == without_key


def table_row(operation: dict) -> tuple:
    schema = operation["json_schema"]
    return (
        operation["object_name"], operation["sync_mode"], sorted(schema["properties"]), sorted(schema["required"]),
        operation.get("matching_keys"), schema["additionalProperties"],
    )


def test_discover_offers_heaps_objects_with_their_fields_and_matching_keys(heap):
    operations = discover(activation_config(heap, api_key=DELETION_KEY))
    assert [table_row(op) for op in operations] == [
        ("event", "append", ["event", "idempotency_key", "identity", "timestamp"], ["event", "identity"], None, True),
        ("user", "append_dedup", ["identity"], ["identity"], [["identity"]], True),
        ("account", "append_dedup", ["account_id"], ["account_id"], [["account_id"]], True),
        ("identify", "append", ["identity", "timestamp", "user_id"], ["identity", "user_id"], None, False),
        ("user", "soft_delete", ["identity", "user_id"], [], [["identity"], ["user_id"]], False),
    ]
    for operation in operations:  # what the UI shows a user
        schema = operation["json_schema"]
        assert schema["title"] and schema["description"]
        for prop in schema["properties"].values():
            assert prop["type"] in ("string", "integer") and prop["title"] and prop["description"]
    assert operations[0]["json_schema"]["properties"]["timestamp"]["format"] == "date-time"


def test_discover_with_a_bad_config_fails_with_a_config_error(heap):
    result = run_connector("discover", activation_config(heap, app_id="my-app"))
    assert result.returncode != 0
    assert [e["failure_type"] for e in result.errors] == ["config_error"]
    assert "app_id" in result.errors[0]["message"]
    assert not [m for m in result.messages if m["type"] == "DESTINATION_CATALOG"]


def test_check_on_an_activation_config_succeeds_without_writing(heap):
    result = run_connector("check", activation_config(heap))
    assert result.statuses == [{"status": "SUCCEEDED"}], result.describe()
    assert heap.stats()["requests"] == 0


def test_check_proves_the_deletion_key_by_fetching_a_token_and_deletes_nothing():
    with HeapStandin(api_key=DELETION_KEY) as heap:
        good = run_connector("check", activation_config(heap, api_key=DELETION_KEY), private=[DELETION_KEY])
        assert good.statuses == [{"status": "SUCCEEDED"}], good.describe()
        assert heap.tokens_issued == 1 and heap.deleted_users == []
        wrong = run_connector("check", activation_config(heap, api_key="s3cret-wrong-key"), private=["s3cret-wrong"])
        assert wrong.statuses[0]["status"] == "FAILED", wrong.describe()
        assert "401" in wrong.statuses[0]["message"]


# ------------------------------------------------------------------------------------------------------------
# Clear data, and columns the user never mapped


def cleared(configured: dict, how: str) -> dict:
    """The stream as the platform sends it in a Clear job: the object kept, sync mode overwrite (or, with
    supportsRefreshes, the object's own sync mode with minimum_generation_id up to the new generation)."""
    stream = {**configured, "sync_mode": "full_refresh", "generation_id": 4, "minimum_generation_id": 4}
    if how == "overwrite":
        stream["destination_sync_mode"] = "overwrite"
    return stream


@pytest.mark.parametrize("how", ["overwrite", "refresh"])
def test_a_clear_job_succeeds_sends_nothing_echoes_the_states_and_says_heap_keeps_its_data(heap, how):
    """Before, sync mode overwrite was refused as a config_error and the Clear job failed."""
    config = activation_config(heap, api_key=DELETION_KEY)
    operations = discover(config)
    choices = [SIGNUPS, CONTACTS, COMPANIES, MERGES, ERASURES]
    catalog = {"streams": [cleared(configured_stream(operations, choice), how) for choice in choices]}
    messages = [stream_state(choice.stream, state_id, 0, 0) for state_id, choice in enumerate(choices, 1)]
    result = run_connector("write", config, catalog, messages, private=[DELETION_KEY])
    result.assert_clean()
    assert [state["id"] for state in result.states] == [1, 2, 3, 4, 5]
    assert result.destination_stats == [{"recordCount": 0.0, "rejectedRecordCount": 0.0}] * 5
    assert heap.stats()["requests"] == 0 and heap.tokens_issued == 0
    said = [line for line in result.log_lines("WARN") if "Heap's data is not cleared" in line]
    assert [line.split(":")[0] for line in said] == [f"Stream {choice.stream}" for choice in choices]
    assert all("object user with the sync mode Soft delete" in line for line in said), said


def test_a_field_the_configured_schema_does_not_declare_never_reaches_heap_and_is_counted_once(heap):
    """Schema propagation selects a column added at the source and hands it on under its source name, unmapped:
    only the fields the stream's configured schema declares are sent; each other field is said once, unnamed."""
    config = activation_config(heap)
    catalog = {"streams": [configured_stream(discover(config), CONTACTS)]}
    rows = [{"identity": f"secret-contact-{i}@example.com", "full_name": f"Secret Name {i}", "plan": "pro",
             "secret_new_column": f"secret-new-{i}", "secret_other_column": i} for i in range(3)]
    messages = [{"type": "RECORD", "record": {"stream": "contacts", "data": row, "emitted_at": 1}} for row in rows]
    messages.append(stream_state("contacts", 1, 3, 3))
    result = run_connector("write", config, catalog, messages, private=["secret_new_column", "secret_other_column"])
    result.assert_clean()
    assert [without_app_id(user)["properties"] for user in heap.users] == [
        {"full_name": f"Secret Name {i}", "plan": "pro"} for i in range(3)
    ]
    said = [line for line in result.log_lines("WARN") if "does not declare" in line]
    assert len(said) == 2, result.describe()  # two field names, three records each
    assert "(field 1 so far" in said[0] and "(field 2 so far" in said[1]
