"""Benchmark: the installed connector against the local Heap stand-in, one table from one run.

Each row runs `.venv/bin/destination-heap-analytics write` as a subprocess, as Airbyte would, with stdin from a
pre-generated file of Airbyte messages (user records like sample_files/messages.jsonl, a STATE every 1,000
records) and the Heap stand-in (`python -m heap_standin`) as its own process on 127.0.0.1. Nothing is sent
anywhere else. The table goes to stdout and to benchmarks/results.md (--quick: benchmarks/results-quick.md).

    bash scripts/benchmark.sh            # full run, 6-8 minutes on a quiet 2-core machine
    bash scripts/benchmark.sh --quick    # the same rows, but the paced run lasts 20 s and the memory rows
                                         # have a tenth of their records
    bash scripts/benchmark.sh --only hot-keys   # only these rows (and their baselines), printed, no file;
                                                # one of ONLY's names (--help lists them), with --quick or not

Targets are printed with ok/MISS beside the figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
CONNECTOR = ROOT / ".venv" / "bin" / "destination-heap-analytics"
CATALOG = ROOT / "sample_files" / "configured_catalog.json"
WORK = Path(tempfile.mkdtemp(prefix="heap-bench-"))
STATE_EVERY = 1000

# The benchmark's own configs: the sample_files column mappings, plus identify (which needs a numeric column).
APIS = {
    "track": {
        "api_type": "track",
        "property_columns": "blocked,created_at,name",
        "event_column": "identities.connection",
        "identity_column": "email",
        "timestamp_column": "updated_at",
    },
    "add_user_properties": {
        "api_type": "add_user_properties",
        "identity_column": "user_id",
        "property_columns": "identities.provider,created_at,nickname",
    },
    "add_account_properties": {
        "api_type": "add_account_properties",
        "account_id_column": "identities.user_id",
        "property_columns": "family_name,email_verified,blocked",
    },
    "identify": {"api_type": "identify", "user_id_column": "heap_user_id", "identity_column": "email"},
}
# The track load above as data activation runs it: the config maps nothing, the catalog names Heap's event object
# and the platform hands on each record renamed to the object's fields (the others dropped): the same load.
ACTIVATION_CATALOG = {
    "streams": [
        {
            "stream": {"name": "users", "json_schema": {"type": "object"}, "supported_sync_modes": ["incremental"]},
            "sync_mode": "incremental",
            "destination_sync_mode": "append",
            "destination_object_name": "event",
            "primary_key": [],
            "sync_id": 1,
        }
    ]
}


def renamed_for_event(data: dict) -> dict:
    """A record as the platform renames it for the event object, mapped as APIS["track"] maps it."""
    return {
        "identity": data["email"],
        "event": data["identities"][0]["connection"],
        "timestamp": data["updated_at"],
        "blocked": data["blocked"],
        "created_at": data["created_at"],
        "name": data["name"],
    }


STORED = {
    "track": "events_stored",
    "add_user_properties": "users_stored",
    "add_account_properties": "accounts_stored",
    "identify": "identifies_stored",
}  # stand-in counters
# The connector's defaults, written out so that the labels and the wire bound follow from what was run.
BULK = {"bulk": True, "batch_size": 1000, "max_concurrent_requests": 8}
SINGLE = {"bulk": False, "max_concurrent_requests": 32}
PACED_PER_MINUTE = 15_000  # Heap's published bulk-track limit per app_id, enforced by the stand-in

# Targets (printed, never asserted)
TARGET_BULK_20MS = 60_000  # records/s, start-up included
TARGET_100MS_SHARE = 0.90  # of min(wire bound, 0 ms steady rate)
TARGET_PACED_SHARE = 0.99
TARGET_MEMORY_MB = 100
TARGET_SPEC_S = 1.2
TARGET_HOT_SHARE = 0.90  # 200,000 updates of 50 identities at 100 ms, of the same input's dry-run rate
TARGET_MIXED_SHARE = 0.90  # users interleaved with updates of 3 accounts, of the rate of the users alone
TARGET_HELD_MEMORY_MB = 150  # each of the three memory loads that hold updates back for their key
TARGET_DISTINCT_20MS = 25_000  # records/s, start-up included: 100,000 distinct users at 20 ms
TARGET_HOT_REGRESSION_SHARE = 0.90  # the hot-key row's steady rate, of the 100,000 distinct users' at 20 ms
HOT_IDENTITIES = 50
HOT_ACCOUNTS = 3
MIXED_USERS = 4_000
# Row names the targets look up
HOT = f"add_user_properties, bulk, {HOT_IDENTITIES} users"
HOT_DRY_RUN = f"{HOT}, dry run (the CPU bound)"
MIXED = f"add_user_properties, single, {MIXED_USERS:,} users + as many updates of {HOT_ACCOUNTS} accounts"
DISTINCT_20MS = "add_user_properties, bulk, 100,000 distinct users"
DISTINCT_MEMORY = "add_user_properties, bulk (memory)"
RANDOM_USERS = 100_000  # the memory row of random updates: how many users they pick from
SHARED_EVERY = 100  # the memory row held behind a slow first request: one user's update every 100 records
FIRST_REQUEST_SECONDS = 20  # how long that first request takes


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# Input files


def user_record(i: int) -> dict:
    first = ("Jamie", "Alex", "Sam", "Robin", "Kim", "Taylor", "Jordan", "Morgan")[i % 8]
    last = ("Tillman", "Garcia", "Okafor", "Lindqvist", "Novak", "Nguyen", "Schmidt")[i // 8 % 7]
    uid = f"{0x815FF3C3 + i:08x}-84fa-4f63-b959-{i:012x}"
    connection, provider = (("Username-Password-Authentication", "auth0"), ("google-oauth2", "google-oauth2"))[i % 2]
    day, second = divmod(i, 86_400)
    return {
        "blocked": i % 97 == 0,
        "created_at": f"2022-10-{1 + i % 28:02d}T04:09:54.{i % 1000:03d}Z",
        "email": f"{first.lower()}.{last.lower()}{i}@example.com",
        "email_verified": i % 3 == 0,
        "family_name": last,
        "given_name": first,
        "identities": [{"user_id": uid, "connection": connection, "provider": provider, "isSocial": i % 2 == 1}],
        "name": f"{first} {last}",
        "nickname": f"{first.lower()}{i}",
        "picture": "https://example.com/avatar.png",
        "updated_at": f"2023-{1 + day % 12:02d}-01T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z",
        "user_id": f"auth0|{uid}",
        "logins_count": i % 250,
        "tags": [["beta"], [], ["beta", "paid"]][i % 3],
        "heap_user_id": 1_000_000_000 + i,  # not in the sample: identify's user_id must be a number
    }


def hot_user_record(i: int) -> dict:
    """user_record(i) as one of HOT_IDENTITIES users: many updates of few keys (its add_user_properties
    identity is user_id)."""
    return user_record(i) | {"user_id": f"auth0|hot-user-{i % HOT_IDENTITIES}"}


@functools.cache
def random_users(records: int) -> list[int]:
    """Which of RANDOM_USERS users each of `records` updates is of: drawn once (seeded), the same every run."""
    chooser = random.Random(24)
    return [chooser.randrange(RANDOM_USERS) for _ in range(records)]


def random_user_record(records: int) -> Callable[[int], dict]:
    """user_record(i) as an update of a user drawn at random from RANDOM_USERS (a key may come back at any
    distance, or never)."""

    def data(i: int) -> dict:
        return user_record(i) | {"user_id": f"auth0|random-user-{random_users(records)[i]}"}

    return data


def shared_user_record(i: int) -> dict:
    """user_record(i) (a user of its own), but every SHARED_EVERY-th record an update of one shared user: any
    batch of SHARED_EVERY records or more holds that user, so each waits for the batch before it."""
    return user_record(i) | ({"user_id": "auth0|shared-user"} if i % SHARED_EVERY == 0 else {})


def hot_account_record(i: int) -> dict:
    """user_record(i) as an update of one of HOT_ACCOUNTS accounts (add_account_properties: identities.user_id)."""
    data = user_record(i)
    data["identities"][0]["user_id"] = f"hot-account-{i % HOT_ACCOUNTS}"
    return data


def event_record(i: int) -> dict:
    """user_record(i) renamed for the event object, as the platform hands it on (data activation)."""
    return renamed_for_event(user_record(i))


_inputs: dict[tuple, Path] = {}


Streams = tuple[tuple[str, Callable[[int], dict]], ...]  # (stream name, its record i)


def input_file(records: int, streams: Streams = (("users", user_record),)) -> Path:
    """A file of `records` RECORD messages of each stream, interleaved (record i of each in turn), with a STATE of
    a stream after every 1,000 of its records (and after its last); made once."""
    key = (records, streams)
    if key not in _inputs:
        path = _inputs[key] = WORK / f"messages-{len(_inputs)}-{records}.jsonl"
        with open(path, "wb") as out:  # written as it goes: this process stays small (see run_connector)
            for i in range(records):
                for stream, data in streams:
                    record = {"stream": stream, "data": data(i), "emitted_at": 1_666_325_394_000 + i}
                    out.write(orjson.dumps({"type": "RECORD", "record": record}) + b"\n")
                    if (i + 1) % STATE_EVERY == 0 or i + 1 == records:
                        state = {"stream_descriptor": {"name": stream}, "stream_state": {"position": i + 1}}
                        message = {"type": "STATE", "state": {"type": "STREAM", "stream": state}}
                        out.write(orjson.dumps(message) + b"\n")
    return _inputs[key]


def last_values(records: int, data: Callable[[int], dict], api_type: str, keys: int | None = None) -> dict[str, dict]:
    """Heap's end state after `records` property updates data(0..records-1), applied in input order: each key's
    last value of each property (every record has each mapped property: its last record's). `keys`: how many
    keys there are, to stop reading back once each was seen (None: read back through every record)."""
    columns = APIS[api_type]["property_columns"].split(",")
    key_column = APIS[api_type].get("identity_column") or APIS[api_type]["account_id_column"]
    held: dict[str, dict] = {}
    for i in range(records - 1, -1, -1):  # from the end: each key's last record
        row = data(i)
        key = resolve(row, key_column)
        if key not in held:
            held[key] = {column: as_heap_holds(resolve(row, column)) for column in columns}
            if len(held) == keys:
                break
    return held


def resolve(row: dict, column: str) -> object:
    """A dotted column of user_record() (`identities.provider`: the first identity's)."""
    value = row
    for part in column.split("."):
        value = value[0][part] if isinstance(value, list) else value[part]
    return value


def as_heap_holds(value: Any) -> Any:
    """A property value as the connector sends it: Heap takes numbers and text, so a boolean goes as "true"/"false"."""
    return str(value).lower() if isinstance(value, bool) else value


def end_state(items: list[dict], key: str) -> dict[str, dict]:
    """What Heap holds after these property items in arrival order: each key's last value of each property."""
    held: dict[str, dict] = {}
    for item in items:
        held.setdefault(item[key], {}).update(item["properties"])
    return held


def users_end_exactly(records: int, data: Callable[[int], dict], keys: int | None = None) -> Callable:
    """A row's check: the stand-in's users end as applying data(0..records-1) in input order leaves them (each
    user's properties those of its last update), no user missing and none extra."""

    def check(standin: Standin) -> list[str]:
        expected = last_values(records, data, "add_user_properties", keys)
        held = end_state(standin.received()["users"], "identity")
        wrong = sum(held.get(key) != values for key, values in expected.items()) + len(held.keys() - expected.keys())
        return [f"end state differs for {wrong:,} users"] if wrong else []

    return check


# ---------------------------------------------------------------------------------------------------------
# The stand-in and the connector, each its own process


class Standin:
    """`python -m heap_standin` on a free loopback port, for one row: each row starts from empty counters."""

    def __init__(
        self,
        latency_ms: float = 0,
        track_events_per_minute: int = 0,
        keep_items: bool = False,
        first_request_seconds: float = 0,
    ) -> None:
        """`first_request_seconds`: the first /api request is answered that much later (a delay fault)."""
        options = f"--port 0 --latency-ms {latency_ms} --track-events-per-minute {track_events_per_minute}"
        options += "" if keep_items else " --summary-only"
        command = [sys.executable, "-m", "heap_standin", *options.split()]
        # heap_standin is a development package at the repository root, not installed: run it from there.
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if "listening on http://127.0.0.1:" not in line:
            self.proc.kill()
            raise SystemExit(f"the Heap stand-in did not start: {line!r}")
        self.url = line.split("listening on ", 1)[1].strip()
        if first_request_seconds:
            faults = {"faults": [{"delay_seconds": first_request_seconds}]}
            requests.post(self.url + "/_standin/faults", json=faults, timeout=10).raise_for_status()

    def stats(self) -> dict:
        return requests.get(self.url + "/_standin/stats", timeout=10).json()

    def received(self) -> dict:
        """The items it holds (keep_items only), in arrival order."""
        return requests.get(self.url + "/_standin/received", timeout=60).json()

    def __enter__(self) -> Standin:
        return self

    def __exit__(self, *_: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # user + system seconds of the connector process
    peak_mb: float  # its VmHWM, the last one read before it exited
    exit_code: int
    states: int  # STATE messages it emitted
    stderr: str


class PeakWatch:
    """The peak RSS of a running process: its VmHWM (the kernel's own high-water mark of its resident set, kept
    since its exec), read from /proc/<pid>/status every PEAK_READ_SECONDS until `stop`. Unlike ru_maxrss, it
    does not start from this script's peak; a peak reached in the last read interval before exit is missed."""

    PEAK_READ_SECONDS = 0.02

    def __init__(self, pid: int) -> None:
        self.peak_kb = 0
        self._status = Path(f"/proc/{pid}/status")
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stopped.is_set():
            try:
                text = self._status.read_text()
            except OSError:  # gone
                return
            # a zombie (exited, not yet reaped) has no VmHWM line any more
            line = next((line for line in text.splitlines() if line.startswith("VmHWM:")), None)
            if line is not None:
                self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            self._stopped.wait(self.PEAK_READ_SECONDS)

    def stop(self) -> float:
        """Stop reading (call before the process is reaped, so its pid is not yet free); the peak, in MB."""
        self._stopped.set()
        self._thread.join()
        return self.peak_kb / 1024


def run_connector(args: list[str], stdin: Path | None = None, timeout: float = 900) -> Run:
    """One connector process; wall time from just before start to its exit, CPU from os.wait4, peak RSS from
    PeakWatch."""
    out_path, err_path = WORK / "connector.out", WORK / "connector.err"
    with open(stdin or os.devnull, "rb") as stdin_file, open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([str(CONNECTOR), *args], stdin=stdin_file, stdout=out, stderr=err)
        peak = PeakWatch(proc.pid)
        killer = threading.Timer(timeout, proc.kill)  # a hung run fails its row instead of the benchmark
        killer.start()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: its pid stays its own
        wall = time.perf_counter() - started
        peak_mb = peak.stop()
        _, status, usage = os.wait4(proc.pid, 0)
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    with open(out_path, "rb") as out:
        states = sum(line.startswith(b'{"type":"STATE"') for line in out)
    stderr = err_path.read_text(errors="replace")[-2000:]
    return Run(wall, usage.ru_utime + usage.ru_stime, peak_mb, proc.returncode, states, stderr)


# The airbyte-cdk modules the connector imports (grep its package for airbyte_cdk); `spec` needs none.
CDK_IMPORTS = (
    "import airbyte_cdk.destinations, airbyte_cdk.exception_handler, airbyte_cdk.models, "
    "airbyte_cdk.sources.utils.schema_helpers, airbyte_cdk.utils.airbyte_secrets_utils, "
    "airbyte_cdk.utils.traced_exception"
)


def import_seconds(statement: str) -> float:
    """Wall seconds `statement` takes in a fresh interpreter of the connector's venv, timed inside it (the
    interpreter's own start-up is not counted)."""
    code = f"import time; started = time.perf_counter(); {statement}; print(time.perf_counter() - started)"
    python = CONNECTOR.parent / "python"
    return float(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)


def write_args(
    url: str, api_type: str, settings: dict, track_events_per_minute: int = 0, activation: bool = False
) -> list[str]:
    """`activation`: mapped in Airbyte's UI (the event object), not by the config."""
    config = {"app_id": "11", "base_url": url, "track_events_per_minute": track_events_per_minute, **settings}
    catalog = CATALOG
    if activation:
        catalog = WORK / "activation_catalog.json"
        catalog.write_bytes(orjson.dumps(ACTIVATION_CATALOG))
    else:
        config["api"] = APIS[api_type]
    path = WORK / "config.json"
    path.write_bytes(orjson.dumps(config))
    return ["write", "--config", str(path), "--catalog", str(catalog)]


def two_stream_args(url: str, settings: dict) -> list[str]:
    """users -> add_user_properties and accounts -> add_account_properties, in one connection."""
    streams = [
        {"stream": "users", "api": APIS["add_user_properties"]},
        {"stream": "accounts", "api": APIS["add_account_properties"]},
    ]
    config = {"app_id": "11", "base_url": url, "streams": streams, "track_events_per_minute": 0, **settings}
    catalog = orjson.loads(CATALOG.read_bytes())
    users = catalog["streams"][0]
    catalog["streams"].append(users | {"stream": users["stream"] | {"name": "accounts"}})
    config_path, catalog_path = WORK / "config.json", WORK / "catalog-two-streams.json"
    config_path.write_bytes(orjson.dumps(config))
    catalog_path.write_bytes(orjson.dumps(catalog))
    return ["write", "--config", str(config_path), "--catalog", str(catalog_path)]


# ---------------------------------------------------------------------------------------------------------
# Rows


@dataclass
class Row:
    name: str
    latency_ms: float
    records: int
    wall: float
    cpu: float | None = None  # None: not a connector process (the anchor)
    peak_mb: float | None = None
    check: str = "ok"
    note: str = ""
    throttled: int = 0  # 429s the stand-in answered
    requests: int = 0  # the stand-in's
    items: int = 0  # items of the row's api_type the stand-in holds


class Benchmark:
    def __init__(self, memory_scale: float = 1.0) -> None:
        """`memory_scale`: the share of their full size the memory rows run at."""
        self.rows: list[Row] = []
        self.startup = self.startup_cpu = self.startup_cpu_spread = self.spec = self.cdk_import = 0.0
        self.paced: dict = {}
        self.memory_rows: list[Row] = []  # the loads that hold updates back for their key
        self.memory_scale = memory_scale

    def measure_startup(self) -> None:
        """Start-up, taken off the wall time for the steady rate: a `write` with empty stdin, median of 3."""
        with Standin() as standin:
            runs = [run_connector(write_args(standin.url, "add_user_properties", BULK)) for _ in range(3)]
        if any(run.exit_code for run in runs):
            raise SystemExit(f"the connector failed on empty input:\n{runs[-1].stderr}")
        self.startup = statistics.median(run.wall for run in runs)
        self.startup_cpu = statistics.median(run.cpu for run in runs)
        self.startup_cpu_spread = max(run.cpu for run in runs) - min(run.cpu for run in runs)
        self.spec = statistics.median(run_connector(["spec"]).wall for _ in range(3))
        self.cdk_import = statistics.median(import_seconds(CDK_IMPORTS) for _ in range(3))
        log(
            f"start-up {self.startup:.2f} s ({self.startup_cpu:.2f} CPU s), of which importing airbyte-cdk "
            f"{self.cdk_import:.2f} s; spec {self.spec:.2f} s"
        )

    def load(
        self,
        name: str,
        api_type: str,
        settings: dict,
        latency_ms: float,
        records: int,
        track_events_per_minute: int = 0,
        watch: Callable[[Standin, threading.Event], None] | None = None,
        activation: bool = False,
        streams: Streams = (("users", user_record),),
        check: Callable[[Standin], list[str]] | None = None,
        first_request_seconds: float = 0,
    ) -> Row:
        """One connector run of `records` records (of each of `streams`) against a fresh stand-in, `watch` beside
        it in a thread until the connector exits; checks what arrived (`check`: the stand-in, which then keeps
        the items, says what is wrong; by default its count of `api_type` items must be `records`, none in a
        dry run), and that every STATE came back (a dry run emits none). `activation`: the track load mapped in
        Airbyte's UI instead of by the config. `first_request_seconds`: the stand-in's first answer that late."""
        if activation:
            streams = (("users", event_record),)
        dry_run = settings.get("dry_run", False)
        keep_items = check is not None
        with Standin(latency_ms, track_events_per_minute, keep_items, first_request_seconds) as standin:
            if len(streams) == 1:
                args = write_args(standin.url, api_type, settings, track_events_per_minute, activation)
            else:
                args = two_stream_args(standin.url, settings)
            stop = threading.Event()
            watcher = threading.Thread(target=watch, args=(standin, stop)) if watch else None
            if watcher:
                watcher.start()
            run = run_connector(args, input_file(records, streams))
            stop.set()
            if watcher:
                watcher.join()
            stats = standin.stats()
            problems = [f"exit {run.exit_code}"] if run.exit_code else []
            if check is not None:
                problems += check(standin)
            elif stats[STORED[api_type]] != (0 if dry_run else records):
                problems.append(f"stand-in holds {stats[STORED[api_type]]:,}")
        if run.states != (0 if dry_run else len(streams) * -(-records // STATE_EVERY)):
            problems.append(f"{run.states} states")
        check, throttled = "; ".join(problems) or "ok", stats["by_status"].get("429", 0)
        row = Row(name, latency_ms, records, run.wall, run.cpu, run.peak_mb, check, throttled=throttled)
        row.requests, row.items = stats["requests"], stats[STORED[api_type]]
        self.rows.append(row)
        log(f"{name} @{latency_ms:g} ms, {records:,}: {run.wall:.2f} s, {records / run.wall:,.0f}/s, {row.check}")
        if problems:
            log(run.stderr)
        return row

    def anchor(self, rows: int = 300, latency_ms: float = 20) -> None:
        """The 0.1.0 connector's pattern: a fresh `requests.post` per row, no session, no concurrency."""
        with open(input_file(20_000), "rb") as lines:  # the first `rows` records only: this process stays small
            records = (orjson.loads(line)["record"]["data"] for line in lines if line.startswith(b'{"type":"REC'))
            bodies = [
                {
                    "app_id": "11",
                    "identity": r["user_id"],
                    "properties": {
                        "identities.provider": r["identities"][0]["provider"],
                        "created_at": r["created_at"],
                        "nickname": r["nickname"],
                    },
                }
                for r in islice(records, rows)
            ]
        with Standin(latency_ms) as standin:
            started = time.perf_counter()
            for body in bodies:
                requests.post(standin.url + "/api/add_user_properties", json=body, timeout=30).raise_for_status()
            wall = time.perf_counter() - started
            stored = standin.stats()["users_stored"]
        check = "ok" if stored == rows else f"stand-in holds {stored:,}"
        self.rows.append(
            Row(
                "anchor: 0.1.0 pattern, add_user_properties",
                latency_ms,
                rows,
                wall,
                check=check,
                note="one fresh requests.post per row, no session, no concurrency; no start-up",
            )
        )
        log(f"anchor: {rows / wall:,.1f} rows/s")

    def paced_track(self, seconds: int) -> None:
        """Bulk track with the connector's pacing on, against a stand-in enforcing 15,000 events a minute.

        The connector may send its first batch at once (its burst); after that it should hold the pace. So
        the rate is taken from the stand-in's count, polled every 0.05 s: events after the first arrival,
        over the time from the first arrival to the last. Fed: `seconds` worth plus that first batch."""
        samples: list[tuple[float, int]] = []

        def watch(standin: Standin, connector_done: threading.Event) -> None:
            while True:
                last_look = connector_done.is_set()  # if the last batch came between two polls
                samples.append((time.perf_counter(), standin.stats()["events_stored"]))
                if last_look or samples[-1][1] >= records:
                    return
                connector_done.wait(0.05)

        batch = BULK["batch_size"]
        records = PACED_PER_MINUTE * seconds // 60 + batch
        row = self.load("track, bulk, paced", "track", BULK, 20, records, PACED_PER_MINUTE, watch)
        arrived = [(t, n) for t, n in samples if n > 0]
        done = [(t, n) for t, n in arrived if n >= records]
        per_minute = 0.0
        if arrived and done:
            (t1, n1), (t2, n2) = arrived[0], done[0]
            per_minute = (n2 - n1) / (t2 - t1) * 60 if t2 > t1 else 0.0
        self.paced = {"per_minute": per_minute, "429": row.throttled, "seconds": seconds, "ok": row.check == "ok"}
        row.note = (
            f"{per_minute:,.0f} events/min after the first batch = {per_minute / PACED_PER_MINUTE:.1%} "
            f"of {PACED_PER_MINUTE:,}; {row.throttled} 429s"
        )

    def run(self, seconds: int) -> None:
        """Every row; the paced one for `seconds`."""
        self.measure_startup()
        for api_type in ("track", "add_user_properties", "add_account_properties"):
            self.load(f"{api_type}, bulk", api_type, BULK, 20, 200_000)
        ui = self.load("track, bulk, mapped in Airbyte's UI", "track", BULK, 20, 200_000, activation=True)
        ui.note = "data activation's event object: the track row's load, records renamed by the platform"
        self.load("add_user_properties, bulk", "add_user_properties", BULK, 0, 200_000)
        slow = self.load("add_user_properties, bulk", "add_user_properties", BULK, 100, 200_000)
        slow.note = f"wire bound {self.wire_bound(100):,.0f} records/s; {slow.requests:,} requests"
        self.hot_keys()
        self.no_regression()
        self.load("add_user_properties, single", "add_user_properties", SINGLE, 20, 20_000)
        self.load("identify (single only)", "identify", SINGLE, 20, 20_000)
        self.anchor()
        self.paced_track(seconds)
        memory = self.load(DISTINCT_MEMORY, "add_user_properties", BULK, 0, int(1_000_000 * self.memory_scale))
        memory.note = "the peak memory row"
        self.memory()

    # -- hot keys: many updates of few users or accounts --

    def hot_row(self) -> Row:
        """200,000 updates of 50 users at 100 ms, Heap's end state checked (run once, shared by two targets)."""
        if (row := self.maybe(HOT, 100)) is not None:
            return row
        row = self.load(
            HOT,
            "add_user_properties",
            BULK,
            100,
            200_000,
            streams=(("users", hot_user_record),),
            check=users_end_exactly(200_000, hot_user_record, HOT_IDENTITIES),
        )
        row.note = f"Heap received {row.items:,} items in {row.requests:,} requests; end state = input applied in order"
        return row

    def hot_keys(self) -> None:
        """The hot-key row beside its CPU bound: the same input, same config, with dry_run on. A dry run reads,
        maps, batches and merges the input as the run does and sends nothing, so its rate is what the run would
        reach if Heap cost nothing. (A stand-in answering at 0 ms is no such bound: the run still pays for
        every request, and with quick answers fewer updates wait, so fewer merge: more items, another load.)
        And a user stream (single mode, 20 ms) interleaved with as many updates of 3 accounts, against the user
        stream alone."""
        self.hot_row()
        bound = self.load(
            HOT_DRY_RUN,
            "add_user_properties",
            BULK | {"dry_run": True},
            100,
            200_000,
            streams=(("users", hot_user_record),),
        )
        bound.note = "the hot-key row's input and config, dry_run: true: read, mapped and merged, nothing sent"
        self.load(
            f"add_user_properties, single, {MIXED_USERS:,} users alone", "add_user_properties", SINGLE, 20, MIXED_USERS
        )

        def both_arrived(standin: Standin) -> list[str]:
            received = standin.received()
            expected = last_values(MIXED_USERS, hot_account_record, "add_account_properties", HOT_ACCOUNTS)
            problems = (
                [] if len(received["users"]) == MIXED_USERS else [f"stand-in holds {len(received['users']):,} users"]
            )
            if end_state(received["accounts"], "account_id") != expected:
                problems.append("accounts' end state differs")
            return problems

        mixed = self.load(
            MIXED,
            "add_user_properties",
            SINGLE,
            20,
            MIXED_USERS,
            streams=(("users", user_record), ("accounts", hot_account_record)),
            check=both_arrived,
        )
        mixed.note = f"records/s: the users'; {mixed.requests:,} requests; accounts' end state checked"

    def hot_key_targets(self) -> list[tuple[str, str, bool]]:
        hot, bound = self.maybe(HOT, 100), self.maybe(HOT_DRY_RUN, 100)
        alone = self.maybe(f"add_user_properties, single, {MIXED_USERS:,} users alone", 20)
        mixed = self.maybe(MIXED, 20)
        if None in (hot, bound, alone, mixed):
            return []
        hot_share, mixed_share = self.steady(hot) / self.steady(bound), self.steady(mixed) / self.steady(alone)
        return [
            (
                f"{hot.records:,} updates of {HOT_IDENTITIES} users at 100 ms, steady >= {TARGET_HOT_SHARE:.0%} of "
                "the same input's dry run (read and mapped, nothing sent: the CPU bound), end state exact",
                f"{self.steady(hot):,.0f} vs {self.steady(bound):,.0f} = {hot_share:.1%}; Heap received "
                f"{hot.items:,} items in {hot.requests:,} requests",
                hot_share >= TARGET_HOT_SHARE and hot.check == "ok" and bound.check == "ok",
            ),
            (
                f"{MIXED_USERS:,} users (single, 20 ms) with updates of {HOT_ACCOUNTS} accounts interleaved, steady >= "
                f"{TARGET_MIXED_SHARE:.0%} of the users alone",
                f"{self.steady(mixed):,.0f} vs {self.steady(alone):,.0f} = {mixed_share:.1%}",
                mixed_share >= TARGET_MIXED_SHARE and mixed.check == "ok",
            ),
        ]

    # -- no regression: distinct users, and the hot-key row against them --

    def no_regression(self) -> None:
        """100,000 distinct users at 20 ms, and the hot-key row (200,000 updates of 50 users at 100 ms)."""
        self.load(DISTINCT_20MS, "add_user_properties", BULK, 20, 100_000)
        self.hot_row()

    def no_regression_targets(self) -> list[tuple[str, str, bool]]:
        distinct, hot = self.maybe(DISTINCT_20MS, 20), self.maybe(HOT, 100)
        if distinct is None or hot is None:
            return []
        rate, share = distinct.records / distinct.wall, self.steady(hot) / self.steady(distinct)
        return [
            (
                f"{distinct.records:,} distinct users at 20 ms >= {TARGET_DISTINCT_20MS:,} records/s (start-up "
                "included)",
                f"{rate:,.0f}",
                rate >= TARGET_DISTINCT_20MS and distinct.check == "ok",
            ),
            (  # steady rates: the two loads differ in size, so start-up would weigh differently in each
                f"{hot.records:,} updates of {HOT_IDENTITIES} users at 100 ms, steady >= "
                f"{TARGET_HOT_REGRESSION_SHARE:.0%} of the {distinct.records:,} distinct users' steady rate",
                f"{self.steady(hot):,.0f} vs {self.steady(distinct):,.0f} = {share:.1%}",
                share >= TARGET_HOT_REGRESSION_SHARE and hot.check == "ok",
            ),
        ]

    # -- memory: updates held back for their key, each load's peak and Heap's end state --

    def memory(self) -> None:
        """The three loads that hold updates back for their key, side by side."""
        self.memory_hot_users()
        self.memory_random_users()
        self.memory_held_behind_first_request()

    def memory_row(
        self,
        name: str,
        latency_ms: float,
        records: int,
        data: Callable[[int], dict],
        keys: int | None = None,
        first_request_seconds: float = 0,
    ) -> None:
        row = self.load(
            name,
            "add_user_properties",
            BULK,
            latency_ms,
            records,
            streams=(("users", data),),
            check=users_end_exactly(records, data, keys),
            first_request_seconds=first_request_seconds,
        )
        row.note = f"Heap received {row.items:,} items in {row.requests:,} requests; end state = input applied in order"
        self.memory_rows.append(row)

    def memory_hot_users(self) -> None:
        records = int(1_000_000 * self.memory_scale)
        name = f"add_user_properties, bulk, {records:,} updates of {HOT_IDENTITIES} users (memory)"
        self.memory_row(name, 2000, records, hot_user_record, HOT_IDENTITIES)

    def memory_random_users(self) -> None:
        records = int(300_000 * self.memory_scale)
        name = f"add_user_properties, bulk, {records:,} updates of users drawn from {RANDOM_USERS:,} (memory)"
        self.memory_row(name, 1000, records, random_user_record(records))

    def memory_held_behind_first_request(self) -> None:
        records = int(300_000 * self.memory_scale)
        name = (
            f"add_user_properties, bulk, {records:,} records, one user every {SHARED_EVERY}, first request "
            f"{FIRST_REQUEST_SECONDS} s (memory)"
        )
        self.memory_row(name, 0, records, shared_user_record, first_request_seconds=FIRST_REQUEST_SECONDS)

    def memory_targets(self) -> list[tuple[str, str, bool]]:
        return [
            (
                f"{row.name}: peak RSS <= {TARGET_HELD_MEMORY_MB} MB, Heap's end state exact"
                + ("" if self.memory_scale == 1 else f" (this run: {self.memory_scale:g} of the full size)"),
                f"{row.peak_mb:.0f} MB; {row.check}",
                row.peak_mb <= TARGET_HELD_MEMORY_MB and row.check == "ok",
            )
            for row in self.memory_rows
        ]

    @staticmethod
    def wire_bound(latency_ms: float) -> float:
        """Requests in flight x batch size / latency: the most records a second the wire allows."""
        return BULK["max_concurrent_requests"] * BULK["batch_size"] / (latency_ms / 1000)

    # -- the report --

    def steady(self, row: Row) -> float:
        """Records a second after start-up; NaN (printed "nan", any target on it missed) when the row took no
        longer than the start-up runs: a machine too busy for the figure to mean anything."""
        if row.cpu is None:
            return row.records / row.wall
        return row.records / (row.wall - self.startup) if row.wall > self.startup else math.nan

    def maybe(self, name: str, latency_ms: float) -> Row | None:
        """The row of that name and latency, if this run has it."""
        return next((row for row in self.rows if row.name == name and row.latency_ms == latency_ms), None)

    def targets(self) -> list[tuple[str, str, bool]]:
        """The targets of the rows this run has."""
        return self.full_run_targets() + self.hot_key_targets() + self.no_regression_targets() + self.memory_targets()

    def full_run_targets(self) -> list[tuple[str, str, bool]]:
        bulk20 = self.maybe("add_user_properties, bulk", 20)
        fast, slow = self.maybe("add_user_properties, bulk", 0), self.maybe("add_user_properties, bulk", 100)
        memory = self.maybe(DISTINCT_MEMORY, 0)
        if None in (bulk20, fast, slow, memory) or not self.paced:
            return []
        bound = min(self.wire_bound(100), self.steady(fast))
        paced = self.paced
        paced_share = paced["per_minute"] / PACED_PER_MINUTE
        return [
            (
                f"add_user_properties bulk, 200,000 at 20 ms >= {TARGET_BULK_20MS:,} records/s (start-up included)",
                f"{bulk20.records / bulk20.wall:,.0f}",
                bulk20.records / bulk20.wall >= TARGET_BULK_20MS,
            ),
            (  # one-sided: faster than the bound's 90% is fine
                f"add_user_properties bulk at 100 ms, steady >= {TARGET_100MS_SHARE:.0%} of min(wire bound "
                f"{self.wire_bound(100):,.0f}, 0 ms steady {self.steady(fast):,.0f})",
                f"{self.steady(slow):,.0f} = {self.steady(slow) / bound:.1%}",
                self.steady(slow) >= TARGET_100MS_SHARE * bound,
            ),
            (
                f"paced track >= {TARGET_PACED_SHARE:.0%} of {PACED_PER_MINUTE:,}/min over 120 s, zero 429s"
                + (f" (this run: {paced['seconds']} s)" if paced["seconds"] != 120 else ""),
                f"{paced_share:.1%}, {paced['429']} 429s",
                paced_share >= TARGET_PACED_SHARE and paced["429"] == 0 and paced["ok"],
            ),
            (
                f"peak memory <= {TARGET_MEMORY_MB} MB at 1,000,000 records"
                + (f" (this run: {memory.records:,})" if memory.records != 1_000_000 else ""),
                f"{memory.peak_mb:.0f} MB",
                memory.peak_mb <= TARGET_MEMORY_MB,
            ),
            (f"`spec` <= {TARGET_SPEC_S} s (warm, median of 3)", f"{self.spec:.2f} s", self.spec <= TARGET_SPEC_S),
        ]

    def report(self, header: list[str], command: str) -> str:
        lines = [
            "# destination-heap-analytics benchmark",
            "",
            *header,
            f"- Load average at the end: {load_average()}",
            f"- Command: `{command}`",
            "- Each row: the installed `destination-heap-analytics write` (.venv) as a subprocess, stdin from a "
            "pre-generated file (user records of 15 fields, a STATE every 1,000 of a stream), against the Heap "
            "stand-in (`python -m heap_standin --summary-only`, its own process on 127.0.0.1, sharing the cores; "
            "keeping "
            "the items for the rows whose end state is checked; a delay fault makes the first answer late where a "
            "row says so); "
            "pacing off (track_events_per_minute 0) except the paced row. Bulk: batch_size 1000, 8 requests "
            "in flight; single: 32 in flight (the defaults, set explicitly).",
            f"- Start-up (`write` with empty stdin, median of 3): {self.startup:.2f} s wall, "
            f"{self.startup_cpu:.2f} s CPU (spread {self.startup_cpu_spread:.2f} s). Steady records/s = records / "
            '(wall - start-up); "nan" where a row took no longer than the start-up runs (a busy machine). '
            'CPU µs/record = (connector user+sys CPU - start-up CPU) / records; "~0": '
            "no more than the start-up runs' CPU spread.",
            "- Peak RSS: the connector process's own high-water mark (VmHWM in /proc/<pid>/status, read every "
            f"{PeakWatch.PEAK_READ_SECONDS * 1000:g} ms while it runs; not ru_maxrss, which starts from this "
            "script's peak).",
            f"- Of the start-up, importing the airbyte-cdk modules the connector uses, in a fresh interpreter (median"
            f" of 3): {self.cdk_import:.2f} s.",
            f"- `spec` start (warm: the median of 3 runs back to back, files in the page cache): {self.spec:.2f} s.",
            "",
            "| row | latency | records | wall s | records/s | steady records/s | CPU µs/record "
            "(start-up CPU subtracted) | peak RSS MB | check | notes |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            busy = None if row.cpu is None else row.cpu - self.startup_cpu
            cpu = (
                "—" if busy is None else "~0" if busy <= self.startup_cpu_spread else f"{busy / row.records * 1e6:.0f}"
            )
            peak = "—" if row.peak_mb is None else f"{row.peak_mb:.0f}"
            rate = row.records / row.wall
            lines.append(
                f"| {row.name} | {row.latency_ms:g} ms | {row.records:,} | {row.wall:.2f} "
                f"| {rate:,.{0 if rate >= 100 else 1}f} | {self.steady(row):,.{0 if rate >= 100 else 1}f} "
                f"| {cpu} | {peak} | {row.check} | {row.note} |"
            )
        lines += ["", "## Targets (printed, never asserted)", "", "| target | measured | |", "|---|---|---|"]
        lines += [f"| {target} | {measured} | {'ok' if met else 'MISS'} |" for target, measured, met in self.targets()]
        return "\n".join(lines) + "\n"


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> list[str]:
    """Taken before the run: the date it started, the commit (and any local change) it ran."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    dirty = " (tree dirty: uncommitted changes)" if git("status", "--porcelain") else " (tree clean)"
    return [
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- Commit: {git('rev-parse', '--short', 'HEAD')}{dirty}",
        f"- Machine: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()} ({platform.platform()})",
        f"- Load average (1/5/15 min) at the start: {load_average()} (a shared machine moves the figures)",
    ]


# --only: the rows that run alone (each with its baselines), by name
ONLY: dict[str, Callable[[Benchmark], None]] = {
    "hot-keys": Benchmark.hot_keys,
    "no-regression": Benchmark.no_regression,
    "memory": Benchmark.memory,
    "memory-hot-users": Benchmark.memory_hot_users,
    "memory-random-users": Benchmark.memory_random_users,
    "memory-held-behind-first-request": Benchmark.memory_held_behind_first_request,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="paced run 20 s, memory rows a tenth of their size")
    parser.add_argument(
        "--only", choices=sorted(ONLY), help="run only these rows (and their baselines) and print them; no file"
    )
    args = parser.parse_args()
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1"  # for requests here and in the connector
    header, bench = machine(), Benchmark(memory_scale=0.1 if args.quick else 1.0)
    try:
        if args.only:
            bench.measure_startup()
            ONLY[args.only](bench)
        else:
            bench.run(seconds=20 if args.quick else 120)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    command = (
        "bash scripts/benchmark.sh" + (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "")
    )
    report = bench.report(header, command)
    print(report)
    if not args.only:
        output = ROOT / "benchmarks" / ("results-quick.md" if args.quick else "results.md")
        output.write_text(report)
        log(f"written to {output.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
