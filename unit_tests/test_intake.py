"""The intake's encoding: what each line of a read becomes on its way to a batch, in input order."""

from __future__ import annotations

import errno
import os

import orjson
import pytest
from airbyte_cdk.models import AirbyteMessage, Type

from destination_heap_analytics import intake
from destination_heap_analytics.config import parse_config
from destination_heap_analytics.intake import Intake, RecordEncoder, cpus_allowed
from destination_heap_analytics.mapping import Mapping, Rejection
from destination_heap_analytics.messages import UnparsableLine

USERS = {"api_type": "add_user_properties", "identity_column": "email", "property_columns": "plan,bio"}


def encoder(namespace: str | None = None) -> RecordEncoder:
    config = parse_config({"app_id": "11", "base_url": "http://127.0.0.1:1", "api": USERS})
    return RecordEncoder(Mapping(config.mapping), "users", namespace)


def entries(block: bytes, namespace: str | None = None) -> list:
    return encoder(namespace).encode(block)[1]


def line(data: object, stream: str = "users", namespace: str | None = None) -> bytes:
    record = {"stream": stream, "data": data, "emitted_at": 1_700_000_000_000}
    if namespace:
        record["namespace"] = namespace
    return orjson.dumps({"type": "RECORD", "record": record})


def test_a_record_becomes_its_heap_items_json_and_the_identity_it_counts_against() -> None:
    [(body, identity, notes)] = entries(line({"email": "a@x.io", "plan": "pro", "extra": 1}))
    assert orjson.loads(body) == {"identity": "a@x.io", "properties": {"plan": "pro"}}
    assert identity == "a@x.io"
    assert notes is None


def test_notes_on_adjusted_values_travel_with_the_record() -> None:
    [(body, _, notes)] = entries(line({"email": "a@x.io", "bio": "x" * 2000}))
    assert len(orjson.loads(body)["properties"]["bio"]) == 1023
    assert notes == [("truncated", "bio")]


@pytest.mark.parametrize(
    ("record_line", "reason"),
    [
        (line({"plan": "pro"}), "missing_identity"),
        (line({"email": "a@x.io"}), "no_properties"),
        (line({"email": "a@x.io", "plan": "pro"}, stream="orders"), "stream_not_in_catalog"),
        (line({"email": "a@x.io", "plan": "pro"}, namespace="crm"), "stream_not_in_catalog"),
        (line(["not", "an", "object"]), "record_not_an_object"),
    ],
)
def test_a_record_that_cannot_be_loaded_becomes_its_rejection(record_line: bytes, reason: str) -> None:
    [rejection] = entries(record_line)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == reason


def test_other_lines_keep_their_place_and_a_non_message_only_its_number() -> None:
    ok = line({"email": "a@x.io", "plan": "pro"})
    state = b'{"type":"STATE","state":{"type":"LEGACY","data":{"at":1}}}'
    log = b'{"type":"LOG","log":{"level":"INFO","message":"hi"}}'
    lines = [ok, state, log, line({}), b"not json, maybe personal data", b"  ", ok]
    count, encoded = encoder().encode(b"\n".join(lines) + b"\n")
    kinds = [type(entry).__name__ for entry in encoded]
    assert kinds == ["tuple", "AirbyteMessage", "AirbyteMessage", "Rejection", "UnparsableLine", "tuple"]
    assert encoded[1].type == Type.STATE and encoded[2].type == Type.LOG
    assert isinstance(encoded[4], UnparsableLine) and encoded[4].number == 4  # the blank line is no message
    assert count == 7


@pytest.mark.parametrize("workers", ["on", "off"])
def test_a_lines_number_counts_every_line_of_the_reads_before(workers: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads are numbered in input order however they were cut, with workers or without."""
    monkeypatch.setenv(intake.WORKER_SWITCH, workers)
    monkeypatch.setattr(intake, "usable_cores", lambda: 2)
    ok = line({"email": "a@x.io", "plan": "pro"})
    reads = [ok + b"\n" + ok + b"\n", None, b"\n" + ok + b"\nnot json\n", ok + b"\n{broken"]
    chunks = list(Intake(iter(reads), encoder()))
    assert chunks[1] is None
    numbered = [
        (first + entry.number)
        for first, found in filter(None, chunks)
        for entry in found
        if isinstance(entry, UnparsableLine)
    ]
    assert [first for first, _ in filter(None, chunks)] == [1, 3, 6]
    assert numbered == [5, 7]


def test_the_catalogs_namespace_must_match() -> None:
    [entry] = entries(line({"email": "a@x.io", "plan": "pro"}, namespace="crm"), namespace="crm")
    assert isinstance(entry, tuple)


def test_every_entry_crosses_a_pipe_intact() -> None:
    """Workers send entries to the writer pickled: each kind must survive the trip unchanged."""
    import pickle

    lines = [line({"email": "a@x.io", "bio": "x" * 2000}), line({}), b"{", b'{"type":"STATE","state":{"data":{}}}']
    encoded = entries(b"\n".join(lines))
    back = pickle.loads(pickle.dumps(encoded, protocol=pickle.HIGHEST_PROTOCOL))
    assert back[0] == encoded[0]
    assert back[1] == encoded[1]
    assert back[2].number == encoded[2].number == 2
    assert isinstance(back[3], AirbyteMessage) and back[3].state == encoded[3].state


@pytest.mark.parametrize(
    ("quota", "period", "cpus"),
    [
        ("max", "100000", None),  # cgroup v2, no limit
        ("-1\n", "100000\n", None),  # cgroup v1, no limit
        ("100000", "100000", 1),
        ("150000", "100000", 2),  # one and a half CPUs: a second worker still has half a CPU to use
        ("50000", "100000", 1),
        ("400000\n", "100000\n", 4),
        ("0", "100000", None),
    ],
)
def test_a_containers_cpu_limit_caps_the_workers(quota: str, period: str, cpus: int | None) -> None:
    assert cpus_allowed(quota, period) == cpus


def test_without_a_process_to_spare_the_intake_maps_in_this_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container's pid limit can refuse a fork (EAGAIN): the sync goes on, slower, with the same entries.
    The worker already started is stopped and reaped, not left behind."""
    real_fork, started = os.fork, []

    def fork_once() -> int:
        if started:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        started.append(real_fork())
        return started[-1]

    monkeypatch.setattr(intake, "usable_cores", lambda: 2)
    monkeypatch.setattr(os, "fork", fork_once)
    block = line({"email": "a@x.io", "plan": "pro"}) + b"\n" + line({"plan": "pro"}) + b"\n"
    chunks = list(Intake(iter([block, None]), encoder()))
    assert [[type(entry).__name__ for entry in found] for _, found in chunks[:1]] == [["tuple", "Rejection"]]
    assert chunks[1] is None
    assert len(started) == 1
    with pytest.raises(ChildProcessError):  # reaped already: no zombie left
        os.waitpid(started[0], os.WNOHANG)


@pytest.mark.parametrize(
    ("held", "pipe_bytes", "size", "takes"),
    [
        ([], 0, 50_000_000, True),  # waiting for a read: it drains the pipe as the read goes in, whatever its size
        ([393_216], 1_048_576, 393_216, True),  # a second read waits in the pipe beside the first
        ([600_000], 1_048_576, 600_000, False),  # the two would not fit: the send could wait on a busy worker
        ([1000, 1000], 1_048_576, 1000, False),  # two reads held already
        ([1000], 0, 1000, False),  # a pipe of unknown size: one read at a time
    ],
)
def test_a_read_goes_to_a_busy_worker_only_if_its_pipe_holds_it(
    held: list[int], pipe_bytes: int, size: int, takes: bool
) -> None:
    """The writer must never wait on a send to a worker that may be waiting for the writer to take its results."""
    worker = intake._Worker(0, None, None, pipe_bytes)  # type: ignore[arg-type]
    worker.held.extend(held)
    assert worker.takes_without_waiting(size) is takes
