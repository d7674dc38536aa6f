"""The worker processes that parse and map the input: same results as mapping in the main process, and they
never outlive the sync or hide their death."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from destination_heap_analytics.intake import WORKER_SWITCH
from integration_tests.support import (
    TRACK_API,
    catalog,
    config,
    interleave,
    outbound_guard,
    people,
    person,
    record,
    run_connector,
    states_of,
    stored,
)

USERS = {"api_type": "add_user_properties", "identity_column": "email", "property_columns": "plan,visits"}


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in path.read_text().split()]
        except OSError:
            pass
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def once_workers_run(
    seconds: float, action: Callable[[subprocess.Popen], None]
) -> Callable[[subprocess.Popen], None]:
    """An on_start hook: once the connector has forked its workers, wait `seconds`, then action(process)."""

    def start(process: subprocess.Popen) -> None:
        def watch() -> None:
            if wait_for(lambda: children_of(process.pid), 10):
                time.sleep(seconds)
                action(process)

        threading.Thread(target=watch, daemon=True).start()

    return start


def test_mapping_in_the_main_process_loads_exactly_what_the_worker_loads(heap) -> None:
    """DESTINATION_HEAP_MAPPING_WORKER=off (and one-core machines) map in the main process: same items, same
    states, same counts, including skipped records and lines that are not messages."""
    rows = people(2500) + [person(9000, email=None), {"email": "no-properties@example.com"}]
    messages = interleave(rows, every=700) + [record(person(9001), stream="orders")]
    lines = [*(json.dumps(m) for m in messages), "not json"]
    loaded = {}
    for switch in ("on", "off"):
        heap.reset()
        env = {**outbound_guard().env(), WORKER_SWITCH: switch}
        result = run_connector("write", config(heap, USERS), catalog(), messages, stdin_lines=lines, env=env)
        assert result.returncode == 0, result.describe()
        assert result.states == states_of(messages)
        loaded[switch] = (
            sorted(map(str, stored(heap, "add_user_properties"))),
            result.summary,
            result.skipped,
            result.destination_record_counts,
            [line for line in result.log_lines("WARN") if "not an Airbyte message" in line],
        )
    assert loaded["on"][0] and len(loaded["on"][0]) == 2500
    assert {k: v for k, v in loaded["on"][1].items() if k != "seconds"} == {
        k: v for k, v in loaded["off"][1].items() if k != "seconds"
    }
    assert loaded["on"][0] == loaded["off"][0]
    assert loaded["on"][2:] == loaded["off"][2:]
    assert loaded["on"][2] == {
        "missing_identity (column email)": 1,
        "no_properties (column property_columns)": 1,
        "stream_not_in_catalog": 1,
    }


def test_a_killed_connector_leaves_no_worker_behind(heap) -> None:
    """SIGKILL gives the connector no chance to clean up. Its workers, waiting for their next read, find
    their input pipe closed and exit, though the source still holds stdin open."""
    workers: list[int] = []

    def kill_connector(process: subprocess.Popen) -> None:
        workers.extend(children_of(process.pid))
        process.send_signal(signal.SIGKILL)

    messages = interleave(people(50), every=25)
    on_start = once_workers_run(1.5, kill_connector)  # into the stall: records sent, the source silent
    result = run_connector("write", config(heap, USERS), catalog(), messages, pauses={30: 20.0}, on_start=on_start)
    assert result.returncode == -signal.SIGKILL, result.describe()
    assert workers
    assert wait_for(lambda: not any(map(alive, workers)), 5.0), "a worker outlived its connector"


def test_a_worker_that_dies_fails_the_sync_with_a_clear_error_and_no_unconfirmed_state(heap) -> None:
    """If the workers are killed (out of memory, say), the input after that is lost to this run: the sync
    must fail with a TRACE that says what happened, and never emit a STATE for records Heap did not get."""
    killed = threading.Event()

    def kill_workers(process: subprocess.Popen) -> None:
        for child in children_of(process.pid):
            os.kill(child, signal.SIGKILL)
        killed.set()

    messages = interleave(people(60), every=20)
    on_start = once_workers_run(3.0, kill_workers)  # into the stall: the first STATE confirmed, the source silent
    result = run_connector(
        "write", config(heap, TRACK_API), catalog(), messages, pauses={25: 10.0}, on_start=on_start
    )
    assert killed.is_set()
    assert result.returncode != 0, result.describe()
    [error] = result.errors
    assert "parsing and mapping the input ended unexpectedly" in error["message"]
    assert "resumes from the last state" in error["message"]
    assert error["failure_type"] == "system_error"
    # Only the first state's 20 records can be confirmed: everything after the kill never reached the writer.
    assert result.states == states_of(messages)[:1]
    assert len(stored(heap, "track")) >= 20
