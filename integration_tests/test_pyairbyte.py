"""The connector driven by a real Airbyte client: PyAirbyte (`airbyte` 0.71.x) syncing the real source-faker.

PyAirbyte runs in a venv of its own (scripts/setup-pyairbyte.sh, cached between runs) and is never imported into
this process: a small driver script runs under that venv's python, offline (AIRBYTE_OFFLINE_MODE=1, no
telemetry) and without uv (AIRBYTE_NO_UV=1), with every non-loopback request sent to the outbound guard's
recorder. The destination is this project's installed console script (`local_executable`), the source is
source-faker's `users` stream (500 users, seed 1), and Heap is the in-process stand-in on 127.0.0.1.

Two ways PyAirbyte feeds a destination are covered:
- streaming (`write(..., cache=False)`), once per API type: every user arrives once, the STATE messages come
  back to PyAirbyte, which stores them and starts the next sync from them;
- through its default DuckDB cache (`write(source)`), with the executable wrapped by a script that records
  exactly what PyAirbyte sends (catalog, stdin) and what the connector answers (stdout).
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pendulum
import pytest

from heap_standin import HeapStandin
from integration_tests.support import CONNECTOR, PROJECT_ROOT, config, outbound_guard, run_setup_script

SETUP = PROJECT_ROOT / "scripts" / "setup-pyairbyte.sh"
SETUP_TIMEOUT = 1800  # from scratch about 2 minutes here; cached, well under a second
DRIVER_TIMEOUT = 600
STREAM = "users"
USERS = 500
FAKER_CONFIG = {"count": USERS, "seed": 1, "records_per_slice": 100, "parallelism": 2, "always_updated": False}

# Real faker `users` columns: id, created_at, updated_at, name, title, age, email, telephone, gender, language,
# academic_degree, nationality, occupation, height, blood_type, weight, address{street_number, street_name,
# city, state, province, postal_code, country_code}. Emails look like `word1984+<id>@duck.com`.
APIS = {
    "track": {
        "api_type": "track",
        "identity_column": "email",
        "event_column": "occupation",
        "timestamp_column": "created_at",
        "property_columns": "name,age,nationality,address.city",
    },
    # `*` includes faker's `id`, which Heap refuses as a user property: it must be left out, not fail the sync.
    "add_user_properties": {"api_type": "add_user_properties", "identity_column": "email", "property_columns": "*"},
    "add_account_properties": {
        "api_type": "add_account_properties",
        "account_id_column": "id",
        "property_columns": "name,email,occupation,nationality,address.country_code",
    },
}
ID_IN_EMAIL = re.compile(r"\+(\d+)@")

DRIVER = textwrap.dedent(
    '''
    """Runs under PyAirbyte's venv: check, then each requested write; the outcome goes to a JSON file."""
    import json
    import sys
    import traceback
    from importlib.metadata import version
    from pathlib import Path

    job = json.loads(Path(sys.argv[1]).read_text())
    out = {"airbyte_version": version("airbyte"), "writes": []}


    def save():
        Path(job["result_path"]).write_text(json.dumps(out, default=str))


    try:
        import airbyte as ab

        source = ab.get_source(
            "source-faker",
            config=job["source_config"],
            pip_url="airbyte-source-faker",
            install_root=Path(job["install_root"]),
            install_if_missing=False,
        )
        source.select_streams(job["streams"])
        destination = ab.get_destination(
            "destination-heap-analytics", config=job["destination_config"], local_executable=job["executable"]
        )
        destination.check()
        out["check"] = "succeeded"
        save()
        for spec in job["writes"]:
            kwargs = {"cache": False} if spec.get("cache") is False else {}
            result = destination.write(source, **kwargs)
            stored = ab.get_default_cache().get_state_provider(
                source_name=source.name, destination_name=destination.name, refresh=True
            )
            states = {name: stored.get_stream_state(name, not_found=None) for name in job["streams"]}
            state = states[job["streams"][0]]
            tracker = getattr(result, "_progress_tracker", None)
            confirmed = getattr(tracker, "destination_stream_records_confirmed", {}) or {}
            out["writes"].append(
                {
                    "processed_records": result.processed_records,
                    "confirmed_records": sum(confirmed.values()),
                    "stored_state": None if state is None else json.loads(state.model_dump_json()),
                    "stored_states": {
                        name: None if value is None else json.loads(value.model_dump_json())
                        for name, value in states.items()
                    },
                }
            )
            save()
    except BaseException as error:  # noqa: BLE001 - whatever failed is the test's to report
        out["error"] = f"{type(error).__name__}: {error}"
        out["traceback"] = traceback.format_exc()
        save()
        sys.exit(1)
    save()
    '''
)

# Wraps the destination executable for the cache-path sync: records argv, the catalog, stdin and stdout.
RECORDER = textwrap.dedent(
    """\
    #!/bin/bash
    set -o pipefail
    capture={capture}
    n=$(date +%s%N)
    printf '%s\\n' "$*" > "$capture/$n.args"
    previous=
    for argument in "$@"; do
      [ "$previous" = --catalog ] && cp "$argument" "$capture/$n.catalog.json"
      previous=$argument
    done
    if [ "$1" = write ]; then
      tee "$capture/$n.stdin.jsonl" | {connector} "$@" | tee "$capture/$n.stdout.jsonl"
      exit "${{PIPESTATUS[1]}}"
    fi
    exec {connector} "$@"
    """
)


@pytest.fixture(scope="module")
def pyairbyte_venv() -> Path:
    """PyAirbyte's own venv, with source-faker installed by PyAirbyte under <venv>/connectors."""
    venv = Path(run_setup_script(SETUP, SETUP_TIMEOUT).strip().splitlines()[-1])
    assert (venv / "bin" / "python").exists(), f"no python in {venv}"
    return venv


@dataclass
class Sync:
    api_type: str
    outcome: dict
    returncode: int
    stdout: str
    stderr: str
    after_each_write: list[dict] = field(default_factory=list)  # stand-in stats after each write
    items: list[dict] = field(default_factory=list)  # what the stand-in held after the first write
    all_items: list[dict] = field(default_factory=list)  # ... and at the end
    outbound: list = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"driver exit {self.returncode}; outcome {json.dumps(self.outcome)[:3000]}\n"
            f"--- stderr ---\n{self.stderr[-4000:]}"
        )


def drive(
    venv: Path,
    work: Path,
    api: dict,
    writes: list[dict],
    executable: str = CONNECTOR,
    streams: tuple[str, ...] = (STREAM,),
    stream_mappings: list[dict] | None = None,
) -> Sync:
    """Run the driver against a fresh stand-in; the stand-in's contents are snapshotted after each write.
    `stream_mappings`: a config's `streams` list, for a sync of several streams (`api` is then unused)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    guard = outbound_guard()
    guard.clear()
    with HeapStandin() as heap:
        job = {
            "streams": list(streams),
            "source_config": FAKER_CONFIG,
            "install_root": str(venv / "connectors"),
            "executable": executable,
            "destination_config": _destination_config(heap, api, stream_mappings),
            "writes": writes,
            "result_path": str(work / "outcome.json"),
        }
        (work / "job.json").write_text(json.dumps(job))
        (work / "driver.py").write_text(DRIVER)
        env = guard.env()
        for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(name, None)
        env.update(
            AIRBYTE_OFFLINE_MODE="1",
            AIRBYTE_NO_UV="1",
            DO_NOT_TRACK="1",
            NO_LIVE_PROGRESS="1",
            AIRBYTE_PROJECT_DIR=str(work),
            AIRBYTE_CACHE_ROOT=str(work / ".cache"),
            AIRBYTE_LOGGING_ROOT=str(work / "logs"),
            AIRBYTE_TEMP_DIR=str(work / "tmp"),
            PYTHONWARNINGS="ignore::FutureWarning",
        )
        snapshots: list[dict] = []
        items_after_first: list[dict] = []
        # Snapshots between writes: the driver saves its outcome file after each write; polling it is enough,
        # since the next write needs seconds to start its processes and the poll takes 10 ms.
        process = subprocess.Popen(
            [str(venv / "bin" / "python"), str(work / "driver.py"), str(work / "job.json")],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        done = threading.Event()

        def watch() -> None:
            seen = 0
            while True:
                finished = done.is_set()  # read first: one more pass after the driver exited
                try:
                    outcome = json.loads((work / "outcome.json").read_text())
                except (OSError, ValueError):
                    outcome = {}
                while seen < len(outcome.get("writes", [])):
                    snapshots.append(heap.stats())
                    if seen == 0:
                        items_after_first.extend(heap.events + heap.users + heap.accounts)
                    seen += 1
                if finished:
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            stdout, stderr = process.communicate(timeout=DRIVER_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            pytest.fail(f"the PyAirbyte driver did not finish within {DRIVER_TIMEOUT} s\n{stderr[-4000:]}")
        finally:
            done.set()
            watcher.join(5)
        try:
            outcome = json.loads((work / "outcome.json").read_text())
        except (OSError, ValueError):
            outcome = {}
        return Sync(
            api_type=api["api_type"],
            outcome=outcome,
            returncode=process.returncode,
            stdout=stdout,
            stderr=stderr,
            after_each_write=snapshots,
            items=items_after_first,
            all_items=heap.events + heap.users + heap.accounts,
            outbound=guard.seen,
        )


def _destination_config(heap: HeapStandin, api: dict, stream_mappings: list[dict] | None) -> dict:
    if stream_mappings is None:
        return config(heap, api)
    whole = config(heap, api)
    del whole["api"]
    return whole | {"streams": stream_mappings}


# ------------------------------------------------------------------------------------------------------------
# Streaming (cache=False), one sync per API type, then a second sync that must resume from the stored state


@pytest.fixture(scope="module", params=sorted(APIS))
def streamed(request, pyairbyte_venv, tmp_path_factory) -> Sync:
    api = APIS[request.param]
    work = tmp_path_factory.mktemp(f"pyairbyte-{request.param}")
    return drive(pyairbyte_venv, work, api, writes=[{"cache": False}, {"cache": False}])


def test_check_and_both_writes_succeed(streamed):
    """PyAirbyte raises when the connector fails (check or write): the driver must finish cleanly."""
    assert streamed.returncode == 0 and "error" not in streamed.outcome, streamed.describe()
    assert streamed.outcome["check"] == "succeeded"
    assert streamed.outcome["airbyte_version"].startswith("0.71.")
    assert len(streamed.outcome["writes"]) == 2, streamed.describe()
    assert not streamed.outbound, f"something tried to leave the machine: {streamed.outbound[:3]}"


def test_every_faker_user_arrives_once(streamed):
    assert streamed.returncode == 0, streamed.describe()
    first = streamed.outcome["writes"][0]
    assert first["processed_records"] == USERS, "PyAirbyte did not send the 500 faker users"
    items = streamed.items
    assert len(items) == USERS, f"{len(items)} items in Heap after the first sync, expected {USERS}"
    assert all(item["app_id"] == "11" for item in items)
    if streamed.api_type == "add_account_properties":
        held = {str(item["account_id"]) for item in items}
        assert held == {str(i) for i in range(1, USERS + 1)}
    else:
        identities = [item["identity"] for item in items]
        assert len(set(identities)) == USERS
        ids = {int(m[1]) for identity in identities if (m := ID_IN_EMAIL.search(identity))}
        assert ids == set(range(1, USERS + 1)), "identities are not faker's 500 users' emails"


def test_items_carry_the_mapped_columns(streamed):
    assert streamed.returncode == 0, streamed.describe()
    items = streamed.items
    assert items
    if streamed.api_type == "track":
        assert all(item["event"] and isinstance(item["event"], str) for item in items)
        for item in items:
            assert pendulum.parse(item["timestamp"]).utcoffset() is not None, item["timestamp"]
            assert set(item["properties"]) <= {"name", "age", "nationality", "address.city"}
            assert "address.city" in item["properties"]
        assert len({item["idempotency_key"] for item in items}) == USERS
    elif streamed.api_type == "add_user_properties":
        for item in items:
            properties = item["properties"]
            assert not [key for key in properties if key.lower() == "id"], "a user property named id reached Heap"
            assert properties["email"] == item["identity"]
            assert {"name", "age", "occupation", "address.city", "address.country_code"} <= set(properties)
            assert all(not isinstance(value, (dict, list)) for value in properties.values())
    else:
        for item in items:
            assert {"name", "email", "occupation", "nationality", "address.country_code"} <= set(item["properties"])


def test_states_come_back_to_pyairbyte_and_the_next_sync_resumes_from_them(streamed):
    """The connector's STATE messages reach PyAirbyte, which stores the last one; the second sync hands it to
    faker, which then has nothing new: no record is sent, and Heap gets no request."""
    assert streamed.returncode == 0, streamed.describe()
    first, second = streamed.outcome["writes"]
    stored = first["stored_state"]
    assert stored is not None, "PyAirbyte stored no state from the destination"
    assert stored["type"] == "STREAM"
    assert stored["stream"]["stream_descriptor"]["name"] == STREAM
    assert stored["stream"]["stream_state"]["loop_offset"] == USERS, "the stored state is not faker's last one"
    assert second["processed_records"] == 0, "the second sync did not resume from the stored state"
    assert second["stored_state"]["stream"]["stream_state"] == stored["stream"]["stream_state"]
    before, after = streamed.after_each_write
    assert after["requests"] == before["requests"], "the resumed sync sent requests to Heap"
    assert len(streamed.all_items) == USERS


# ------------------------------------------------------------------------------------------------------------
# Through PyAirbyte's default cache (DuckDB), recording what PyAirbyte actually sends


CACHE_API = {
    "api_type": "track",
    "identity_column": "email",
    "event_column": "occupation",
    "timestamp_column": "created_at",
    "property_columns": "*",
}


@dataclass
class Capture:
    catalogs: list[dict]
    inputs: list[list[dict]]  # per write: the messages PyAirbyte wrote to the connector's stdin
    outputs: list[list[dict]]  # per write: the connector's stdout


def read_capture(directory: Path) -> Capture:
    writes = sorted(p for p in directory.glob("*.args") if p.read_text().startswith("write"))

    def jsonl(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    return Capture(
        catalogs=[json.loads(directory.joinpath(p.stem + ".catalog.json").read_text()) for p in writes],
        inputs=[jsonl(directory / f"{p.stem}.stdin.jsonl") for p in writes],
        outputs=[jsonl(directory / f"{p.stem}.stdout.jsonl") for p in writes],
    )


@pytest.fixture(scope="module")
def cached(pyairbyte_venv, tmp_path_factory) -> tuple[Sync, Capture]:
    work = tmp_path_factory.mktemp("pyairbyte-cache")
    capture = work / "capture"
    capture.mkdir()
    recorder = work / "destination-heap-analytics"
    recorder.write_text(RECORDER.format(capture=capture, connector=CONNECTOR))
    recorder.chmod(0o755)
    sync = drive(pyairbyte_venv, work / "run", CACHE_API, writes=[{}, {}], executable=str(recorder))
    return sync, read_capture(capture)


def records_in(messages: list[dict]) -> list[dict]:
    return [m["record"] for m in messages if m["type"] == "RECORD"]


def stream_states(messages: list[dict]) -> list[tuple[str, Any]]:
    return [
        (m["state"]["stream"]["stream_descriptor"]["name"], m["state"]["stream"]["stream_state"])
        for m in messages
        if m["type"] == "STATE"
    ]


def test_cache_path_every_record_arrives_once_and_replays_are_deduplicated(cached):
    """Each write(source) replays the whole cached table: the second sends the same 500 records again, and the
    events' idempotency keys keep Heap at 500 events."""
    sync, capture = cached
    assert sync.returncode == 0 and "error" not in sync.outcome, sync.describe()
    assert not sync.outbound
    assert [len(c["streams"]) for c in capture.catalogs] == [1, 1]
    assert all(c["streams"][0]["stream"]["name"] == STREAM for c in capture.catalogs)
    first, second = (records_in(messages) for messages in capture.inputs)
    assert len(first) == USERS and len(second) == USERS
    emails = {r["data"]["email"] for r in first}
    assert len(emails) == USERS
    assert {item["identity"] for item in sync.items} == emails
    assert len(sync.items) == USERS
    assert len(sync.all_items) == USERS, "replayed records became second events in Heap"


def test_cache_path_states_come_back_in_order(cached):
    sync, capture = cached
    assert sync.returncode == 0, sync.describe()
    for sent, answered in zip(capture.inputs, capture.outputs, strict=True):
        assert stream_states(sent), "PyAirbyte sent no STATE"
        assert stream_states(answered) == stream_states(sent)
    assert sync.outcome["writes"][0]["stored_state"]["stream"]["stream_state"]["loop_offset"] == USERS


def test_cache_path_naive_timestamps_are_taken_as_utc(cached):
    """DuckDB hands back `created_at` without its offset (2007-10-18T04:23:58); it was UTC."""
    sync, capture = cached
    assert sync.returncode == 0, sync.describe()
    created = {r["data"]["email"]: r["data"]["created_at"] for r in records_in(capture.inputs[0])}
    for item in sync.items:
        expected = pendulum.parse(created[item["identity"]], tz="UTC")
        assert pendulum.parse(item["timestamp"]) == expected, (item["timestamp"], created[item["identity"]])


def test_cache_path_airbyte_columns_do_not_reach_heap(cached):
    sync, capture = cached
    assert sync.returncode == 0, sync.describe()
    assert any(k.startswith("_airbyte_") for r in records_in(capture.inputs[0]) for k in r["data"])
    leaked = sorted({key for item in sync.items for key in item["properties"] if key.startswith("_airbyte_")})
    assert not leaked, f"PyAirbyte's bookkeeping columns sent to Heap as properties: {leaked}"


def test_states_report_the_records_the_destination_committed(cached):
    sync, capture = cached
    assert sync.returncode == 0, sync.describe()
    answered = [m["state"] for m in capture.outputs[0] if m["type"] == "STATE"]
    assert answered
    assert sum((s.get("destinationStats") or {}).get("recordCount", 0) for s in answered) == USERS
    assert sync.outcome["writes"][0]["confirmed_records"] == USERS


# ------------------------------------------------------------------------------------------------------------
# One write, two streams: faker's users as user properties, its purchases as track events of one name

PURCHASE = {
    "api_type": "track",
    "identity_column": "user_id",
    "event_name": "Purchase",
    "timestamp_column": "purchased_at",
    "property_columns": "product_id,added_to_cart_at",
}


def test_users_and_purchases_load_in_one_write_each_through_its_own_mapping(pyairbyte_venv, tmp_path_factory):
    mappings = [
        {"stream": "users", "api": APIS["add_user_properties"]},
        {"stream": "purchases", "api": PURCHASE},
    ]
    sync = drive(
        pyairbyte_venv,
        tmp_path_factory.mktemp("pyairbyte-streams"),
        APIS["add_user_properties"],
        writes=[{"cache": False}],
        streams=("users", "purchases"),
        stream_mappings=mappings,
    )
    assert sync.returncode == 0 and "error" not in sync.outcome, sync.describe()
    (write,) = sync.outcome["writes"]
    users = [item for item in sync.all_items if "identity" in item and "event" not in item]
    events = [item for item in sync.all_items if "event" in item]
    assert len(users) == USERS
    assert events and {event["event"] for event in events} == {"Purchase"}
    assert len(users) + len(events) == write["processed_records"], "every record of both streams, once"
    assert set(write["stored_states"]) == {"users", "purchases"}
    assert all(state is not None for state in write["stored_states"].values()), write["stored_states"]
