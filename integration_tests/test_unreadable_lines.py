"""Every record line counts: lines the fast JSON parser refuses are read again by the standard library, and
what no parser can use is counted as an invalid record (or an unreadable line), never dropped in silence."""

from __future__ import annotations

import json

import pytest

from integration_tests.support import USER_API, catalog, config, person, record, run_connector

STATE = '{"type": "STATE", "state": {"type": "STREAM", "id": 7, "stream": {"stream_descriptor": {"name": "users"}, ' \
    '"stream_state": {"position": 1}}}}'


def record_line(data_json: str) -> str:
    return '{"type": "RECORD", "record": {"stream": "users", "emitted_at": 1700000000000, "data": ' + data_json + "}}"


def test_values_python_json_writes_but_orjson_refuses_are_read_and_the_rest_of_the_record_delivered(heap):
    base = person(1)
    lines = [
        record_line(json.dumps(dict(base, score=float("nan")))),  # NaN, as Python's json writes it
        record_line(json.dumps(dict(person(2), score=float("inf")))),  # Infinity
        record_line(json.dumps(dict(person(3))).replace('"visits": 3', '"visits": 1e400')),  # past a double
        record_line(json.dumps(dict(person(4), nickname="\ud800x"))),  # a lone surrogate, escaped
        STATE,
    ]
    api = dict(USER_API, property_columns="plan,name,visits,score,nickname")
    result = run_connector("write", config(heap, api), catalog(), stdin_lines=lines, check_leaks=False)
    assert result.returncode == 0, result.describe()
    by_identity = {user["identity"]: user["properties"] for user in heap.users}
    assert set(by_identity) == {person(i)["email"] for i in (1, 2, 3, 4)}
    assert "score" not in by_identity[person(1)["email"]]  # NaN left out...
    assert by_identity[person(1)["email"]]["plan"] == base["plan"]  # ...the rest delivered
    assert "visits" not in by_identity[person(3)["email"]]
    assert by_identity[person(4)["email"]]["nickname"] == "\ufffdx"
    assert result.summary["read"] == 4 and result.summary["sent"] == 4
    assert result.destination_record_counts == [4.0]
    adjusted = " ".join(result.log_lines("WARN"))
    assert "unsupported_value" in adjusted  # the left-out values are counted


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"type": "RECORD", "record": {"stream": "users", "emitted_at": 1}}', "RECORD without data"),
        ('{"type": "RECORD", "record": {"data": {"email": "x"}}}', "RECORD without a stream"),
        ('{"type": "RECORD", "record": {"stream": "users", "data": {"email": "secret-cut', "not JSON"),
    ],
)
def test_a_record_no_parser_can_use_is_an_invalid_record(heap, line, problem):
    lines = [json.dumps(record(person(1))), line, STATE]
    result = run_connector("write", config(heap, USER_API), catalog(), stdin_lines=lines, check_leaks=False)
    assert result.returncode == 0, result.describe()
    assert result.skipped == {"unreadable_record": 1}
    # A line whose record cannot be read belongs to no stream: it counts toward states for every stream only
    # (test_a_record_no_parser_can_use_counts_toward_a_global_state), not this stream's, with one stream or several.
    assert result.destination_stats == [{"recordCount": 1.0, "rejectedRecordCount": 0.0}]
    assert any(f"line 2 ({problem})" in line or f"Input line 2: {problem}" in line for line in result.log_lines())
    assert "secret-cut" not in result.stdout + result.stderr

    failing = run_connector(
        "write", config(heap, USER_API, on_invalid_record="fail"), catalog(), stdin_lines=lines, check_leaks=False
    )
    assert failing.returncode != 0
    assert [e["failure_type"] for e in failing.errors] == ["config_error"]
    assert f"input line 2 ({problem})" in failing.errors[0]["message"]
    assert failing.states == []


def test_a_record_no_parser_can_use_counts_toward_a_global_state(heap):
    body = {"type": "GLOBAL", "id": 8, "global": {"shared_state": {"lsn": 2}, "stream_states": []}}
    global_state = json.dumps({"type": "STATE", "state": body})
    lines = [json.dumps(record(person(1))), '{"type": "RECORD", "record": {"data": {"email": "x"}}}', global_state]
    result = run_connector("write", config(heap, USER_API), catalog(), stdin_lines=lines, check_leaks=False)
    assert result.returncode == 0, result.describe()
    assert result.destination_stats == [{"recordCount": 1.0, "rejectedRecordCount": 1.0}]


def test_a_state_without_a_body_is_counted_and_reported_not_a_traceback(heap):
    lines = [json.dumps(record(person(1))), '{"type": "STATE"}', STATE]
    result = run_connector("write", config(heap, USER_API), catalog(), stdin_lines=lines, check_leaks=False)
    assert result.returncode == 0, result.describe()
    assert "Traceback" not in result.stderr + result.stdout
    assert any("Input line 2: STATE without a state body" in line for line in result.log_lines("WARN"))
    assert [m["state"]["id"] for m in result.messages if m["type"] == "STATE"] == [7]
