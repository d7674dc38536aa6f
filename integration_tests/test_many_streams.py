"""One connection, many streams: each stream of the catalog loads through its own Heap mapping, its states
leave once its own records are in Heap, and every stream shares one budget against Heap's limits."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Iterable

import pytest

from heap_standin import HeapStandin
from integration_tests import reliability
from integration_tests.adversarial import assert_each_key_in_order
from integration_tests.support import APP_ID, catalog, record, run_connector
from integration_tests.support import state as stream_state

USERS = {"api_type": "add_user_properties", "identity_column": "email", "property_columns": "plan,seats"}
ACCOUNTS = {"api_type": "add_account_properties", "account_id_column": "account", "property_columns": "plan,seats"}
ORDERS = {"api_type": "track", "identity_column": "email", "event_name": "Order Placed", "timestamp_column": "at"}


def stream_config(heap: HeapStandin, entries: dict[str, dict], **overrides) -> dict:
    streams = [{"stream": name, "api": api} for name, api in entries.items()]
    return {"app_id": APP_ID, "base_url": heap.url, "streams": streams, "track_events_per_minute": 0, **overrides}


def row(stream: str, i: int) -> dict:
    return {
        "email": f"secret-{stream}-{i % 97}@example.com",
        "account": f"secret-account-{i % 31}",
        "plan": f"plan-{i}",
        "seats": i,
        "order_id": f"{stream}-{i}",
        "at": f"2024-05-01T10:{i // 60 % 60:02d}:{i % 60:02d}Z",
    }


def rec(stream: str, i: int) -> dict:
    return record(row(stream, i), stream)


def interleaved(counts: dict[str, int], state_every: dict[str, int], start: dict[str, int] | None = None) -> list:
    """Records of each stream from `start` (by index), dealt round robin across streams, with a STREAM state after
    every `state_every` records of that stream and one at each stream's end."""
    start = start or {}
    positions = {name: start.get(name, 0) for name in counts}
    messages, state_id = [], 0
    while any(positions[name] < counts[name] for name in counts):
        for name in counts:
            i = positions[name]
            if i >= counts[name]:
                continue
            messages.append(rec(name, i))
            positions[name] = i + 1
            if (i + 1) % state_every[name] == 0 or i + 1 == counts[name]:
                state_id += 1
                messages.append(stream_state(i, name, state_id=state_id))
    return messages


class PerStreamWatcher:
    """What the stand-in holds at the moment each STATE leaves the connector."""

    def __init__(self, heap: HeapStandin) -> None:
        self._heap = heap
        self.snapshots: list[tuple[dict, set[str], set[str], set[str]]] = []

    def on_message(self, message: dict) -> None:
        if message["type"] == "STATE":
            held_users = {user["properties"]["plan"] for user in self._heap.users}
            held_accounts = {account["properties"]["plan"] for account in self._heap.accounts}
            held_orders = {event["properties"]["order_id"] for event in self._heap.events}
            self.snapshots.append((message["state"], held_users, held_accounts, held_orders))


def test_three_streams_through_three_apis_each_record_once_each_streams_states_after_its_own_records(heap):
    heap.set_latency(5)
    entries = {"users": USERS, "accounts": ACCOUNTS, "orders": dict(ORDERS, property_columns="order_id,seats")}
    counts = {"users": 900, "accounts": 700, "orders": 1200}
    messages = interleaved(counts, {"users": 250, "accounts": 100, "orders": 333})
    watcher = PerStreamWatcher(heap)
    result = run_connector(
        "write",
        stream_config(heap, entries, batch_size=50),
        catalog(*entries),
        messages,
        on_message=watcher.on_message,
        timeout=120,
    )
    assert result.returncode == 0, result.describe()
    # each user and account ends on its last update (updates of one key may merge), each event is there once
    users = {user["identity"]: user["properties"]["plan"] for user in heap.users}  # in Heap's arrival order
    assert users == {row("users", i)["email"]: f"plan-{i}" for i in range(900)}
    accounts = {account["account_id"]: account["properties"]["plan"] for account in heap.accounts}
    assert accounts == {row("accounts", i)["account"]: f"plan-{i}" for i in range(700)}
    assert sorted(e["properties"]["order_id"] for e in heap.events) == sorted(f"orders-{i}" for i in range(1200))
    assert {event["event"] for event in heap.events} == {"Order Placed"}

    # every state comes out once, with its id; each stream's in input order
    sent_states = [m["state"] for m in messages if m["type"] == "STATE"]
    echoed = [dict(snapshot[0]) for snapshot in watcher.snapshots]
    for state in echoed:
        state.pop("destinationStats")
    assert sorted(s["id"] for s in echoed) == sorted(s["id"] for s in sent_states)
    for name in entries:
        assert [s["id"] for s in echoed if s["stream"]["stream_descriptor"]["name"] == name] == [
            s["id"] for s in sent_states if s["stream"]["stream_descriptor"]["name"] == name
        ]
    # when a stream's state left, every record of that stream before it was in Heap: each event, and each
    # user's and account's last update before it (or a later one it merged into)
    keys = {"users": 97, "accounts": 31}  # row(): a user's record every 97, an account's every 31
    index = {"users": 1, "accounts": 2, "orders": 3}
    for state, *held in watcher.snapshots:
        name = state["stream"]["stream_descriptor"]["name"]
        position = state["stream"]["stream_state"]["position"]
        if name == "orders":
            missing = {row(name, i)["order_id"] for i in range(position + 1)} - held[index[name] - 1]
        else:
            held_latest = latest((int(plan.removeprefix("plan-")) for plan in held[index[name] - 1]), keys[name])
            before = latest(range(position + 1), keys[name])
            missing = {key for key, i in before.items() if held_latest.get(key, -1) < i}
        assert not missing, f"{name} state at {position} left before {len(missing)} of its records were in Heap"
    # the platform's per-state count: the stream's records since its previous state
    for state in (snapshot[0] for snapshot in watcher.snapshots):
        name = state["stream"]["stream_descriptor"]["name"]
        every = {"users": 250, "accounts": 100, "orders": 333}[name]
        position = state["stream"]["stream_state"]["position"]
        assert state["destinationStats"]["recordCount"] == float(position % every + 1), state

    summary = [line for line in result.log_lines("INFO") if line.startswith("Sync summary")]
    assert "By stream: users: 900 read, 900 sent, 0 skipped; accounts: 700 read, 700 sent, 0 skipped; " \
        "orders: 1200 read, 1200 sent, 0 skipped" in summary[0], summary
    # what the stand-in holds: each event once (checked above); each user's and account's items in order
    reliability.record("records_loaded", len(heap.events))
    by_key = [("users", heap.users, "identity", "email"), ("accounts", heap.accounts, "account_id", "account")]
    for name, held, item_key, row_key in by_key:
        every = keys[name]  # row(name, i) is of key i % every: the key's update number i // every
        positions: dict[str, list[int]] = {}
        for item in held:  # in arrival order
            i = int(item["properties"]["plan"].removeprefix("plan-"))
            positions.setdefault(item[item_key], []).append(i // every)
        last = {row(name, i)[row_key]: i // every for i in range(counts[name])}
        assert_each_key_in_order(positions, last)


def latest(indexes: Iterable[int], keys: int) -> dict[int, int]:
    """Each key's latest record, by index, among these rows of row() (keyed by index % keys)."""
    found: dict[int, int] = {}
    for i in indexes:
        found[i % keys] = max(found.get(i % keys, -1), i)
    return found


def test_an_unmapped_stream_is_refused_before_anything_is_sent(heap):
    config = stream_config(heap, {"users": USERS})
    result = run_connector("write", config, catalog("users", "orders"), [rec("users", 1)])
    assert result.returncode != 0
    (error,) = result.errors
    assert error["failure_type"] == "config_error"
    assert "No Heap mapping for the stream(s) orders" in error["message"]
    assert '"streams": [{"stream": "orders"' in error["message"]
    assert heap.stats()["requests"] == 0


@pytest.mark.parametrize("streams", [("users",), ("users", "orders")], ids=["one_stream", "two_streams"])
def test_a_record_of_a_stream_outside_the_catalog_stops_the_sync_naming_it_before_any_later_state(heap, streams):
    """One rule with one catalog stream or several: a record of a stream the catalog lacks has no mapping the user
    chose (a catalog naming `customers` while the records say `users`); the sync stops with a config error naming
    that stream and the catalog's, and no STATE after it leaves (one before it may, once its records are in)."""
    messages = [rec("users", 1), stream_state(1, "users", state_id=1), rec("elsewhere", 2)]
    messages += [rec("users", 3), stream_state(2, "users", state_id=2)]
    entries = {"users": USERS, "orders": ORDERS}
    config = stream_config(heap, {name: entries[name] for name in streams})
    result = run_connector("write", config, catalog(*streams), messages)
    assert result.returncode != 0, result.describe()
    (error,) = result.errors
    assert error["failure_type"] == "config_error"
    assert "elsewhere" in error["message"] and all(name in error["message"] for name in streams)
    assert [state["state"]["id"] for state in result.states] in ([], [1])
    assert len(heap.users) <= 1


def test_two_track_streams_share_one_budget_against_heaps_limit():
    """Two bulk track streams paced together: within one per-environment budget, zero 429s. The stand-in enforces
    6,000 events a minute; the config says the same."""
    limit = 6_000
    with HeapStandin(track_events_per_minute=limit) as heap:
        entries = {"clicks": ORDERS, "views": dict(ORDERS, event_name="Viewed")}
        messages = interleaved({"clicks": 1000, "views": 1000}, {"clicks": 250, "views": 250})
        started = time.monotonic()
        result = run_connector(
            "write",
            stream_config(heap, entries, track_events_per_minute=limit, batch_size=500),
            catalog(*entries),
            messages,
            timeout=120,
        )
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.describe()
        assert heap.stats()["by_status"].get("429", 0) == 0, heap.stats()
        assert len(heap.events) == 2000
        # a burst of one batch, then the rest at 100 events a second: the two streams could not go faster
        assert elapsed >= (2000 - 500) / (limit / 60) * 0.9, elapsed


@pytest.mark.slow
def test_kill_and_resume_with_two_streams_interleaved_loses_and_doubles_nothing():
    """SIGKILL once a seeded-random share of what is left has reached Heap (progress, not time, so the kill lands
    mid-load on a fast machine and a slow one alike); each run resumes every stream from its own last emitted
    state, as the platform does; at the end every event is in Heap exactly once, and nothing was SENT twice
    beyond what a kill explains (a resumed run replays the records after its stream's last state) or a lost
    acknowledgement."""
    counts = {"clicks": 4000, "views": 3000}
    every = {"clicks": 200, "views": 150}
    tracked = dict(ORDERS, property_columns="order_id")
    entries = {"clicks": dict(tracked, event_name="Clicked"), "views": dict(tracked, event_name="Viewed")}
    generator = random.Random(20261201)
    with HeapStandin(latency_ms=10) as heap:
        config = stream_config(heap, dict(entries), batch_size=100)
        resume: dict[str, int] = {}
        kills = replays = 0
        for run in range(12):
            replays += _held_from(heap, resume)  # this run sends them again: they come after the last states
            messages = interleaved(counts, every, start=resume)
            held = len(heap.events)
            target = held + int((sum(counts.values()) - held) * generator.uniform(0.1, 0.6))
            killed: list[bool] = []

            def kill_later(process, target=target, killed=killed) -> None:
                def fire() -> None:
                    while process.poll() is None and len(heap.events) < target:
                        time.sleep(0.005)
                    if process.poll() is None:
                        process.send_signal(signal.SIGKILL)
                        killed.append(True)

                threading.Thread(target=fire, daemon=True).start()

            result = run_connector(
                "write", config, catalog(*entries), messages, on_start=kill_later if run < 8 else None,
                strict=False, timeout=120,
            )
            for state in (m["state"] for m in result.messages if m["type"] == "STATE"):
                name = state["stream"]["stream_descriptor"]["name"]
                resume[name] = state["stream"]["stream_state"]["position"] + 1
            kills += bool(killed) and result.returncode == -signal.SIGKILL
            if not killed and result.returncode == 0:
                break
        assert kills >= 3, f"only {kills} kills landed mid-load"
        order_ids = [event["properties"]["order_id"] for event in heap.events]
        expected = {f"{name}-{i}" for name, count in counts.items() for i in range(count)}
        assert set(order_ids) == expected, f"{len(expected - set(order_ids))} lost"
        assert len(order_ids) == len(set(order_ids)), "an event is held twice"
        sent_twice, unconfirmed = heap.sent_twice, heap.unconfirmed
        assert sent_twice <= replays + unconfirmed, (
            f"{sent_twice} events were sent twice, but only {replays} were replayed after a kill and "
            f"{unconfirmed} lost their acknowledgement"
        )
        reliability.record("kill_points_survived", kills)
        reliability.record("kill_points_sigkill", kills)
        reliability.record("records_lost", 0)
        reliability.record("records_held_twice", 0)
        reliability.record("records_sent_twice", sent_twice)
        reliability.record("records_sent_twice_unexplained", 0)
        reliability.record("acknowledgements_lost", unconfirmed)


def _held_from(heap: HeapStandin, resume: dict[str, int]) -> int:
    """Events the stand-in holds at or past each stream's resume point: a resumed run sends them again."""
    held = (event["properties"]["order_id"].rsplit("-", 1) for event in heap.events)
    return sum(1 for stream, i in held if int(i) >= resume.get(stream, 0))
