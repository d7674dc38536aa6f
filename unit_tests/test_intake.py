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


def line(data: object, stream: str = "users", namespace: str | None = None) -> bytes:
    record = {"stream": stream, "data": data, "emitted_at": 1_700_000_000_000}
    if namespace:
        record["namespace"] = namespace
    return orjson.dumps({"type": "RECORD", "record": record})


def test_a_record_becomes_its_heap_items_json_and_the_identity_it_counts_against() -> None:
    [(body, identity, notes)] = encoder().encode((1, line({"email": "a@x.io", "plan": "pro", "extra": 1})))
    assert orjson.loads(body) == {"identity": "a@x.io", "properties": {"plan": "pro"}}
    assert identity == "a@x.io"
    assert notes is None


def test_notes_on_adjusted_values_travel_with_the_record() -> None:
    [(body, _, notes)] = encoder().encode((1, line({"email": "a@x.io", "bio": "x" * 2000})))
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
    [rejection] = encoder().encode((1, record_line))
    assert isinstance(rejection, Rejection)
    assert rejection.reason == reason


def test_other_lines_keep_their_place_and_a_non_message_only_its_number() -> None:
    ok = line({"email": "a@x.io", "plan": "pro"})
    state = b'{"type":"STATE","state":{"type":"LEGACY","data":{"at":1}}}'
    log = b'{"type":"LOG","log":{"level":"INFO","message":"hi"}}'
    lines = [ok, state, log, line({}), b"not json, maybe personal data", b"  ", ok]
    entries = encoder().encode((41, b"\n".join(lines) + b"\n"))
    kinds = [type(entry).__name__ for entry in entries]
    assert kinds == ["tuple", "AirbyteMessage", "AirbyteMessage", "Rejection", "UnparsableLine", "tuple"]
    assert entries[1].type == Type.STATE and entries[2].type == Type.LOG
    assert isinstance(entries[4], UnparsableLine) and entries[4].number == 45  # the blank line is no message


def test_the_catalogs_namespace_must_match() -> None:
    [entry] = encoder(namespace="crm").encode((1, line({"email": "a@x.io", "plan": "pro"}, namespace="crm")))
    assert isinstance(entry, tuple)


def test_every_entry_crosses_a_pipe_intact() -> None:
    """Workers send entries to the writer pickled: each kind must survive the trip unchanged."""
    import pickle

    lines = [line({"email": "a@x.io", "bio": "x" * 2000}), line({}), b"{", b'{"type":"STATE","state":{"data":{}}}']
    entries = encoder().encode((1, b"\n".join(lines)))
    back = pickle.loads(pickle.dumps(entries, protocol=pickle.HIGHEST_PROTOCOL))
    assert back[0] == entries[0]
    assert back[1] == entries[1]
    assert back[2].number == entries[2].number == 3
    assert isinstance(back[3], AirbyteMessage) and back[3].state == entries[3].state


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
    assert [[type(entry).__name__ for entry in chunk] for chunk in chunks[:1]] == [["tuple", "Rejection"]]
    assert chunks[1] is None
    assert len(started) == 1
    with pytest.raises(ChildProcessError):  # reaped already: no zombie left
        os.waitpid(started[0], os.WNOHANG)
