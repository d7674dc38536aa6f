"""Fault storms: the stand-in misbehaves (429 with and without Retry-After, 500/502/503, hangs past the timeout,
connection resets, a server that goes away and comes back), one kind at a time and all together.

Each storm must end with nothing lost (every input record in the stand-in), nothing doubled (events_stored equals
the number of records), inside a generous time bound. When retries run out (the server gone for good, faults
that never stop) the connector must fail clearly: a TRACE with failure_type transient_error, a non-zero exit,
no STATE past what the stand-in holds, and a re-run from the last state completes the load. A bulk request Heap
refuses is bisected: the good items arrive, the bad ones are reported by reason, at a bounded request cost.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from destination_heap_analytics.heap_standin import Fault, HeapStandin
from integration_tests import reliability

CONNECTOR = str(Path(sys.executable).parent / "destination-heap-analytics")
STREAM = "events"
RECORDS = 2000
STATE_EVERY = 250
SKIPPED_PREFIX = "Records skipped, by reason: "


# ------------------------------------------------------------------------------------------------------------
# Helpers


def _data(i: int, **extra: object) -> dict:
    return {"user": f"storm-user-{i % 50:02d}", "event": "Storm Probe", "i": i, "note": f"secret-note-{i:06d}", **extra}


def _messages(rows: list[dict]) -> list[dict]:
    messages: list[dict] = []
    for row in rows:
        messages.append({"type": "RECORD", "record": {"stream": STREAM, "data": row, "emitted_at": 1_700_000_000_000}})
        if (row["i"] + 1) % STATE_EVERY == 0 or row is rows[-1]:
            stream = {"stream_descriptor": {"name": STREAM}, "stream_state": {"last": row["i"]}}
            messages.append({"type": "STATE", "state": {"type": "STREAM", "stream": stream}})
    return messages


def _config(heap: HeapStandin, **overrides: object) -> dict:
    return {
        "app_id": "11",
        "base_url": heap.url,
        "api": {"api_type": "track", "identity_column": "user", "event_column": "event", "property_columns": "i"},
        "batch_size": 100,
        "max_concurrent_requests": 4,
        "track_events_per_minute": 0,
        "request_timeout_seconds": 1,
        "max_retries": 10,
        **overrides,
    }


def _catalog() -> dict:
    stream = {"name": STREAM, "json_schema": {"type": "object"}, "supported_sync_modes": ["incremental"]}
    return {"streams": [{"stream": stream, "sync_mode": "incremental", "destination_sync_mode": "append"}]}


def _env() -> dict[str, str]:
    proxies = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    env = {key: value for key, value in os.environ.items() if key.lower() not in proxies}
    env.update(PYTHONUNBUFFERED="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env


@dataclass
class Result:
    code: int
    messages: list[dict]
    stdout: str
    stderr: str
    seconds: float

    @property
    def states(self) -> list[int]:
        return [m["state"]["stream"]["stream_state"]["last"] for m in self.messages if m["type"] == "STATE"]

    @property
    def errors(self) -> list[dict]:
        return [m["trace"]["error"] for m in self.messages if m["type"] == "TRACE" and m["trace"]["type"] == "ERROR"]

    def logs(self, level: str | None = None) -> list[str]:
        return [m["log"]["message"] for m in self.messages if m["type"] == "LOG" and level in (None, m["log"]["level"])]

    def skipped(self) -> dict[str, int]:
        lines = [line[len(SKIPPED_PREFIX) :] for line in self.logs("WARN") if line.startswith(SKIPPED_PREFIX)]
        counts: dict[str, int] = {}
        for listing in lines:
            for part in listing.split(", "):
                reason, _, count = part.rpartition(": ")
                counts[reason] = counts.get(reason, 0) + int(count)
        return counts

    def describe(self) -> str:
        return f"exit {self.code} after {self.seconds:.1f} s\n{self.stdout[-4000:]}\nstderr:\n{self.stderr[-2000:]}"


def run_write(
    tmp_path: Path,
    config: dict,
    messages: list[dict],
    during: Callable[[subprocess.Popen], None] | None = None,
    timeout: float = 120.0,
) -> Result:
    """Run the installed connector's write with `messages` as stdin (from a file); `during` runs meanwhile."""
    config_path, catalog_path, input_path = tmp_path / "config.json", tmp_path / "catalog.json", tmp_path / "in.jsonl"
    config_path.write_text(json.dumps(config))
    catalog_path.write_text(json.dumps(_catalog()))
    input_path.write_text("".join(json.dumps(m) + "\n" for m in messages))
    started = time.monotonic()
    with open(input_path, "rb") as stdin:
        process = subprocess.Popen(
            [CONNECTOR, "write", "--config", str(config_path), "--catalog", str(catalog_path)],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
        )
    outputs: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: outputs.update(zip(("out", "err"), process.communicate(), strict=True)))
    reader.start()
    try:
        if during is not None:
            during(process)
        reader.join(timeout)
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(10)
    seconds = time.monotonic() - started
    stdout = outputs.get("out", b"").decode(errors="replace")
    parsed = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    result = Result(process.returncode, parsed, stdout, outputs.get("err", b"").decode(errors="replace"), seconds)
    assert seconds < timeout, f"the connector did not finish within {timeout} s\n{result.describe()}"
    output = "\n".join(line for line in stdout.splitlines() if '"type":"STATE"' not in line) + result.stderr
    leaked = [m["record"]["data"]["note"] for m in messages if m["type"] == "RECORD"]
    leaked = [note for note in leaked if note in output]
    assert not leaked, f"record values in the connector's output: {leaked[:3]}"
    return result


def _indices(heap: HeapStandin) -> Counter:
    return Counter(event["properties"]["i"] for event in heap.events)


def assert_everything_once(heap: HeapStandin, expected: set[int]) -> None:
    held = _indices(heap)
    lost = len(expected - set(held))
    doubled = sum(count - 1 for count in held.values() if count > 1)
    reliability.record("records_lost", lost)
    reliability.record("records_doubled", doubled)
    assert lost == 0, f"{lost} records never reached Heap: {sorted(expected - set(held))[:10]}"
    assert doubled == 0, f"{doubled} records were stored twice"
    assert set(held) == expected, f"unexpected records in Heap: {sorted(set(held) - expected)[:10]}"
    assert heap.stats()["events_stored"] == len(expected)
    reliability.record("records_loaded", len(expected))


def assert_states_covered(result: Result, heap: HeapStandin, first: int = 0) -> None:
    """No STATE claims a record the stand-in does not hold."""
    held = set(_indices(heap))
    assert result.states == sorted(set(result.states)), f"states repeated or out of order: {result.states}"
    for last in result.states:
        missing = [i for i in range(first, last + 1) if i not in held]
        assert not missing, f"STATE last={last} emitted, but {len(missing)} records up to it are not in Heap"


def when(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.002)
    return condition()


@pytest.fixture
def standin():
    heap = HeapStandin(latency_ms=2).start()
    try:
        yield heap
    finally:
        heap.stop()


# ------------------------------------------------------------------------------------------------------------
# Storms the connector must ride out


def _storm(kind: str) -> list[tuple[str, Fault]]:
    kinds = {
        "429_retry_after": [("429_retry_after", Fault(status=429, retry_after=0.2))] * 8,
        "429_no_retry_after": [("429", Fault(status=429))] * 8,
        "5xx": [(str(s), Fault(status=s)) for s in (500, 502, 503)] * 3,
        "hang_past_timeout": [("hang", Fault(hang_seconds=3))] * 4,
        "connection_reset": [("reset", Fault(reset=True))] * 8,
    }
    if kind != "everything_at_once":
        return kinds[kind]
    mixed = [pair for faults in kinds.values() for pair in faults[:3]]
    random.Random(7).shuffle(mixed)
    return mixed


STORMS = ("429_retry_after", "429_no_retry_after", "5xx", "hang_past_timeout", "connection_reset", "everything_at_once")


@pytest.mark.parametrize("storm", STORMS)
def test_storm_loses_nothing_doubles_nothing(storm: str, standin: HeapStandin, tmp_path: Path) -> None:
    faults = _storm(storm)
    standin.inject(*(fault for _, fault in faults))
    for kind, count in Counter(kind for kind, _ in faults).items():
        reliability.record(f"faults_injected_{kind}", count)
    rows = [_data(i) for i in range(RECORDS)]
    result = run_write(tmp_path, _config(standin), _messages(rows))
    assert result.code == 0, result.describe()
    assert not result.errors, result.describe()
    assert result.states[-1] == RECORDS - 1
    assert standin.stats()["faults_served"] == len(faults), "not every injected fault was met"
    assert result.seconds < 60, f"the storm took {result.seconds:.0f} s"
    summary = next(line for line in result.logs("INFO") if line.startswith("Sync summary"))
    retries = re.search(r"\((\d+) retries", summary)
    assert retries and int(retries[1]) > 0, f"the connector reports no retries after a storm: {summary}"
    assert_everything_once(standin, set(range(RECORDS)))
    assert_states_covered(result, standin)


@pytest.mark.parametrize("with_faults", [False, True], ids=["server_gone", "server_gone_plus_storm"])
def test_server_gone_for_two_seconds_then_back(with_faults: bool, standin: HeapStandin, tmp_path: Path) -> None:
    standin.set_latency(10)
    if with_faults:
        faults = _storm("everything_at_once")
        standin.inject(*(fault for _, fault in faults))
        for kind, count in Counter(kind for kind, _ in faults).items():
            reliability.record(f"faults_injected_{kind}", count)
    outage: dict[str, float] = {}

    def take_server_away(process: subprocess.Popen) -> None:
        assert when(lambda: standin.stats()["events_stored"] >= 500, process), "the load never got going"
        standin.stop()
        outage["from"] = time.monotonic()
        time.sleep(2)
        standin.start()
        outage["to"] = time.monotonic()
        reliability.record("faults_injected_server_gone_2s")

    rows = [_data(i) for i in range(RECORDS)]
    result = run_write(tmp_path, _config(standin, max_retries=12), _messages(rows), during=take_server_away)
    assert outage.get("to"), "the outage never happened"
    assert result.code == 0, result.describe()
    assert result.states[-1] == RECORDS - 1
    assert result.seconds < 90, f"took {result.seconds:.0f} s"
    assert_everything_once(standin, set(range(RECORDS)))
    assert_states_covered(result, standin)


def test_retry_after_is_honoured(standin: HeapStandin, tmp_path: Path) -> None:
    """With one sender, the retry after a 429 carrying Retry-After: 1.5 comes no sooner than 1.5 s later."""
    first_accepted: list[float] = []
    answered: list[float] = []

    def note(item: dict) -> None:
        if not first_accepted:
            first_accepted.append(time.monotonic())
        return None

    standin.reject_when(note)
    standin.inject(Fault(status=429, retry_after=1.5))
    reliability.record("faults_injected_429_retry_after")

    def watch_429(process: subprocess.Popen) -> None:
        if when(lambda: standin.stats()["faults_served"] >= 1, process):
            answered.append(time.monotonic())

    rows = [_data(i) for i in range(200)]
    result = run_write(tmp_path, _config(standin, max_concurrent_requests=1), _messages(rows), during=watch_429)
    assert result.code == 0, result.describe()
    assert answered and first_accepted
    waited = first_accepted[0] - answered[0]
    assert waited >= 1.4, f"retried {waited:.2f} s after a 429 that asked for 1.5 s"
    assert_everything_once(standin, set(range(200)))


# ------------------------------------------------------------------------------------------------------------
# When retries run out


def _exhausting(kind: str) -> list[Fault]:
    return {
        "503_forever": [Fault(status=503)] * 16,
        "429_forever": [Fault(status=429, retry_after=0.1)] * 16,
        "hang_forever": [Fault(hang_seconds=2)] * 12,
    }[kind]


@pytest.mark.parametrize("kind", ["server_gone_for_good", "503_forever", "429_forever", "hang_forever"])
def test_retries_exhausted_fail_clearly_and_resume_completes(kind: str, standin: HeapStandin, tmp_path: Path) -> None:
    standin.set_latency(10)
    rows = [_data(i) for i in range(RECORDS)]
    config = _config(standin, max_retries=2, max_concurrent_requests=2)

    def break_heap(process: subprocess.Popen) -> None:
        assert when(lambda: standin.stats()["events_stored"] >= 600, process), "the load never got going"
        if kind == "server_gone_for_good":
            standin.stop()
        else:
            standin.inject(*_exhausting(kind))
        reliability.record(f"faults_injected_{kind}")

    result = run_write(tmp_path, config, _messages(rows), during=break_heap, timeout=90)
    assert result.code != 0, result.describe()
    assert result.seconds < 45, f"giving up took {result.seconds:.0f} s"
    assert result.errors, f"no TRACE error\n{result.describe()}"
    error = result.errors[-1]
    assert error["failure_type"] == "transient_error", result.describe()
    assert "Traceback" not in error["message"]
    assert "run the sync again" in error["message"].lower() or "resume" in error["message"].lower(), error["message"]
    assert result.states[-1:] != [RECORDS - 1], "the last STATE claims a load that failed"
    assert_states_covered(result, standin)

    # Heap is back: Airbyte re-runs from the last state the failed attempt emitted, and the load completes.
    if kind == "server_gone_for_good":
        standin.start()
    _drain_faults(standin)
    resume_from = result.states[-1] + 1 if result.states else 0
    rerun = run_write(tmp_path, config, _messages(rows[resume_from:]))
    assert rerun.code == 0, rerun.describe()
    assert rerun.states[-1] == RECORDS - 1
    assert_everything_once(standin, set(range(RECORDS)))


def _drain_faults(heap: HeapStandin) -> None:
    """Pending faults are consumed one per request: send harmless requests until none is left."""
    import urllib.request

    while heap.stats()["faults_pending"]:
        request = urllib.request.Request(heap.url + "/api/track", data=b"{}", method="POST")
        try:
            urllib.request.urlopen(request, timeout=0.3).read()
        except Exception:  # noqa: BLE001 - each answer is a fault we asked for
            pass


# ------------------------------------------------------------------------------------------------------------
# Bulk rejection: bisect to the bad items


BAD = (17, 500, 873)
# In the schema form of Heap's own 400s ("postBody.events[0].properties should be object"): the form the
# connector logs (other free text could echo record values, so it is not logged).
REASON = "postBody.events[0].properties.bad should not be set in this project"


@pytest.mark.parametrize("with_faults", [False, True], ids=["clean", "with_5xx_and_resets"])
def test_bulk_rejection_isolates_bad_items_at_bounded_cost(
    with_faults: bool, standin: HeapStandin, tmp_path: Path
) -> None:
    standin.reject_when(lambda item: REASON if item.get("properties", {}).get("bad") else None)
    faults = [Fault(status=503), Fault(reset=True), Fault(status=502)] if with_faults else []
    standin.inject(*faults)
    for fault in faults:
        reliability.record(f"faults_injected_{fault.status or 'reset'}")
    rows = [_data(i, bad=True) if i in BAD else _data(i) for i in range(1000)]
    config = _config(standin, batch_size=1000, max_concurrent_requests=1)
    config["api"]["property_columns"] = "i,bad"
    result = run_write(tmp_path, config, _messages(rows))

    assert result.code == 0, result.describe()
    assert result.states[-1] == 999
    good = set(range(1000)) - set(BAD)
    assert_everything_once(standin, good)
    skipped = result.skipped()
    assert list(skipped.values()) == [len(BAD)], result.describe()
    reason = next(iter(skipped))
    assert reason.startswith("rejected_by_heap: "), reason
    assert "properties.bad should not be set in this project" in reason, reason
    requests = standin.stats()["requests"] - len(faults)
    budget = 1 + len(BAD) * (2 * math.ceil(math.log2(1000)) + 2)
    assert requests <= budget, f"{requests} requests to isolate {len(BAD)} bad items (budget {budget})"
    reliability.record("bad_items_isolated", len(BAD))
