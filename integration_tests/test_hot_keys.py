"""Hot keys: many property updates of few users or accounts. Updates of one key that wait (in the open batch,
or behind a request for that key still in flight) merge into one item; Heap ends in the state of every record
applied in input order, in far fewer requests; STATEs still leave only once every record before them is in
Heap; a refused merged item rejects only the record Heap refuses on its own; and one stream's waits never
hold another's requests."""

from __future__ import annotations

import random
import re
import subprocess
import threading
import time

import pytest

from heap_standin import HeapStandin
from integration_tests.ordered_model import applied_in_order, heap_end_state
from integration_tests.support import (
    APP_ID,
    catalog,
    config,
    drained,
    in_flight_together,
    interleave,
    record,
    run_connector,
    states_of,
    without_destination_stats,
)
from integration_tests.support import state as stream_state

USERS = {"api_type": "add_user_properties", "identity_column": "email", "property_columns": "seq,plan,visits"}
ACCOUNTS = {"api_type": "add_account_properties", "account_id_column": "account", "property_columns": "seq,plan"}
MERGED = re.compile(r", (\d+) records merged into an earlier update of their key")


def updates(count: int, keys: int, seed: int = 7) -> list[dict]:
    """`count` updates of `keys` users in random order: `seq` in every one, `plan` in some only (so an item
    holds the union of several records' properties), `visits` in others."""
    chooser = random.Random(seed)
    rows = []
    for seq in range(count):
        row = {"email": f"secret-hot-{chooser.randrange(keys)}@example.com", "seq": seq}
        if seq % 3 == 0:
            row["plan"] = f"plan-{seq}"
        else:
            row["visits"] = seq
        rows.append(row)
    return rows


def expected_state(rows: list[dict], key: str = "email") -> dict[str, dict]:
    """What applying these rows in input order leaves, keyed by `key`: every other column is a property."""
    return applied_in_order((row[key], {k: v for k, v in row.items() if k != key}) for row in rows)


class LatestWatcher:
    """Each key's latest `seq` in Heap at the moment each STATE leaves the connector."""

    def __init__(self, heap: HeapStandin) -> None:
        self._heap = heap
        self.snapshots: list[tuple[dict, dict[str, int]]] = []

    def on_message(self, message: dict) -> None:
        if message["type"] == "STATE":
            held = {key: properties["seq"] for key, properties in heap_end_state(self._heap.users, "identity").items()}
            self.snapshots.append((without_destination_stats(message["state"]), held))

    def assert_safe(self, messages: list[dict]) -> None:
        """Every STATE left once each key's last update before it (merged or not) was in Heap, in input order."""
        prefixes, latest = [], {}
        for message in messages:
            if message["type"] == "STATE":
                prefixes.append((message["state"], dict(latest)))
            else:
                data = message["record"]["data"]
                latest[data["email"]] = data["seq"]
        assert [state for state, _ in self.snapshots] == [state for state, _ in prefixes]
        for number, ((_, held), (_, before)) in enumerate(zip(self.snapshots, prefixes, strict=True), start=1):
            behind = [key for key, seq in before.items() if held.get(key, -1) < seq]
            assert not behind, f"STATE #{number} left before the updates of {len(behind)} keys were in Heap"


@pytest.mark.parametrize(
    "settings",
    [
        {},  # batches of 1000: every update of a key in the open batch merges
        {"batch_size": 4},  # full at 4 items, batches wait for the one before them holding their keys
        {"bulk": False},  # one item a request: a key's updates merge while its previous request is in flight
    ],
)
def test_many_updates_of_few_users_end_in_the_state_of_every_record_in_order_in_fewer_requests(settings):
    rows = updates(3000, keys=8)
    messages = interleave(rows, every=100)
    with HeapStandin(latency_ms=10) as heap:
        watcher = LatestWatcher(heap)
        cfg = config(heap, USERS, **settings)
        result = run_connector("write", cfg, catalog(), messages, timeout=120, on_message=watcher.on_message)
        assert result.returncode == 0, result.describe()
        stats = heap.stats()
        assert heap_end_state(heap.users, "identity") == expected_state(rows)
    assert stats["requests"] < len(rows) / 2, stats
    summary = result.summary
    assert (summary["read"], summary["sent"], summary["skipped"]) == (3000, 3000, 0)
    merged = int(MERGED.search(result.summary_line)[1])
    assert merged == 3000 - stats["users_stored"]  # each merged record is one item fewer
    assert result.states == states_of(messages)
    watcher.assert_safe(messages)


def test_a_refused_merged_item_is_split_back_so_only_the_record_heap_refuses_is_rejected():
    """Ten users, five updates each, in one batch: one user's last update has a plan Heap refuses, so Heap
    refuses that user's merged item. It is split back into its records (in halves, in order): only the refused
    one is rejected, and the user ends on its fourth update, as ordered delivery without it leaves the user. (On
    d108963 the merged item's five records were all rejected and Heap held nothing for that user.)"""
    rows = [
        {"email": f"secret-user-{u}@example.com", "seq": r, "plan": f"plan-{r}"} for r in range(5) for u in range(10)
    ]
    rows[-1]["plan"] = "refused-plan"
    with HeapStandin() as heap:
        heap.reject_when(
            lambda item: (
                "postBody.users[0].properties.plan should be string"
                if item["properties"].get("plan") == "refused-plan"
                else None
            )
        )
        messages = interleave(rows, every=50)
        result = run_connector("write", config(heap, USERS), catalog(), messages)
        assert result.returncode == 0, result.describe()
        assert heap_end_state(heap.users, "identity") == expected_state(rows[:-1])
    summary = result.summary
    assert (summary["read"], summary["sent"], summary["skipped"]) == (50, 49, 1)
    (reason,) = result.skipped
    assert reason.startswith("rejected_by_heap") and result.skipped[reason] == 1
    assert int(MERGED.search(result.summary_line)[1]) >= 36  # at least 4 of each of the 9 users Heap took at once
    assert result.states == states_of(messages)
    (state,) = [message["state"] for message in result.messages if message["type"] == "STATE"]
    assert state["destinationStats"] == {"recordCount": 49.0, "rejectedRecordCount": 1.0}


def test_an_update_behind_a_request_for_its_key_still_in_flight_merges_into_the_next_item():
    """One user's updates in three parts. The first part goes out once the source is quiet (the feed waits for
    its request), and Heap holds its answer until the connector has read the whole input (its stdin pipe is
    empty); the second part's batch, due when the source is quiet again (a pause longer than the connector's
    1 s quiet mark: time is the behaviour there), waits behind that request and takes the third part too: two
    items, not three. Were the second batch still open when the third part came, it would take it all the
    same: the pause decides which wait the merging happens in, not the outcome."""
    rows = [{"email": "secret-hot@example.com", "seq": i, "plan": f"plan-{i}"} for i in range(30)]
    messages = interleave(rows, every=10)  # a STATE after each part
    first, second = [index for index, message in enumerate(messages) if message["type"] == "STATE"][:2]
    first_arrived, answer_first, started = threading.Event(), threading.Event(), threading.Event()
    connector: list[subprocess.Popen] = []

    def hold_the_first_request(item: dict) -> None:
        if not first_arrived.is_set():
            first_arrived.set()
            answer_first.wait(60)  # the bound only ends a run that went wrong
        return None

    def note_the_connector(process: subprocess.Popen) -> None:
        connector.append(process)
        started.set()

    def answer_once_all_input_is_read() -> None:
        started.wait(60)
        while not drained(connector[0]):
            time.sleep(0.01)
        answer_first.set()

    with HeapStandin() as heap:
        heap.reject_when(hold_the_first_request)
        pauses = {first: lambda: first_arrived.wait(60), second: 1.5, len(messages) - 1: answer_once_all_input_is_read}
        result = run_connector(
            "write",
            config(heap, USERS),
            catalog(),
            messages,
            pauses=pauses,
            on_start=note_the_connector,
            timeout=60,
        )
        assert result.returncode == 0, result.describe()
        items = [user["properties"]["seq"] for user in heap.users]
    assert first_arrived.is_set() and answer_first.is_set()
    assert items == [9, 29]  # each item its part's last update: the second holds the second and third parts
    assert result.summary["sent"] == 30
    assert result.states == states_of(messages)


def test_a_stream_of_updates_to_three_accounts_never_holds_the_user_streams_requests():
    """Users (each once) interleaved with two updates of three accounts per user, 4 requests at a time, in
    batches of 2: the account batches wait for each other (each shares an account with the one before it),
    and must do so without a sender thread, so the user batches keep all 4 requests busy."""
    users = [{"email": f"secret-user-{i}@example.com", "seq": i, "plan": f"plan-{i}"} for i in range(120)]
    accounts = [{"account": f"secret-account-{i % 3}", "seq": i, "plan": f"plan-{i}"} for i in range(240)]
    messages = []
    for i, user in enumerate(users):
        messages += [record(user, "users"), *(record(account, "accounts") for account in accounts[2 * i : 2 * i + 2])]
        if (i + 1) % 40 == 0:
            messages += [stream_state(i, "users", state_id=i), stream_state(i, "accounts", state_id=1000 + i)]
    streams = [{"stream": "users", "api": USERS}, {"stream": "accounts", "api": ACCOUNTS}]
    with HeapStandin(latency_ms=50) as heap:
        together = in_flight_together(heap, 4)  # held until 4 are in flight at once
        cfg = {"app_id": APP_ID, "base_url": heap.url, "streams": streams, "batch_size": 2}
        cfg["max_concurrent_requests"] = 4
        result = run_connector("write", cfg, catalog("users", "accounts"), messages, timeout=120)
        assert result.returncode == 0, result.describe()
        stats = heap.stats()
        assert heap_end_state(heap.users, "identity") == expected_state(users)
        assert heap_end_state(heap.accounts, "account_id") == expected_state(accounts, "account")
    assert not together.broken, "the connector never had 4 requests in flight at once"
    assert stats["max_in_flight"] == 4, stats
    for stream in ("users", "accounts"):  # each stream's states, in its order (the streams' may interleave)
        assert [s for s in result.states if s["stream"]["stream_descriptor"]["name"] == stream] == [
            s for s in states_of(messages) if s["stream"]["stream_descriptor"]["name"] == stream
        ]
