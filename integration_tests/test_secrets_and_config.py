"""Config errors, refused hosts, and what must never appear in the connector's output.

- A bad config fails `check` with a FAILED status that says what to fix, and fails `write` with a TRACE
  (failure_type config_error), a non-zero exit and no traceback anywhere, before anything is sent.
- A plain-http base_url off the loopback interface is refused in check and write; no request leaves: every
  run goes through a recording proxy on 127.0.0.1 that fails the test if it hears anything.
- Record values never appear in any output (STATE messages excepted: they are the source's own cursor).
- A catalog with two streams is a config_error that names both; nothing is sent.
- Every spec field marked airbyte_secret (api.api_key of delete_users) is scanned for in every output,
  automatically, with the secret where the connector reads it; and the deletion API key once more by hand, with
  proof that it was really used (the stand-in issued tokens for it) and malformed.
"""

from __future__ import annotations

import json
import logging
import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from heap_standin import HeapStandin
from integration_tests import reliability
from integration_tests.adversarial import (
    assert_no_record_values,
    event_config,
    events_catalog,
    record_line,
    state_line,
)
from integration_tests.bucket import LocalBucket
from integration_tests.support import (
    CONNECTOR,
    OutboundRecorder,
    Result,
    assert_check_failed,
    assert_no_traceback,
    config,
    run_connector,
)

STORAGE_FIELD = "object_storage_config"  # its keys are in use only against a bucket that exists
CREDENTIAL_WORDS = ("key", "secret", "token", "password", "credential")
LOOPBACK = "127.0.0.1,localhost,::1"


# ------------------------------------------------------------------------------------------------------------
# A recording proxy: any request the connector makes to a non-loopback host lands there, never on the network.
# Each test has its own (runs go in parallel here, while support's shared guard is cleared by every run).


def _recorder() -> OutboundRecorder:
    """A recording proxy that answers 200; its env() with LOOPBACK sends every non-loopback request to it."""
    return OutboundRecorder(answer=200)


# ------------------------------------------------------------------------------------------------------------
# Running the connector


def run(
    directory: Path,
    command: str,
    config: Any,
    env: dict[str, str] | None,
    catalog: dict | None = None,
    stdin: str = "",
    raw_config: str | None = None,
) -> Result:
    """`command` with the config (or `raw_config` as the config file's text) and, for write, the catalog."""
    if command == "write":
        catalog = catalog or events_catalog()
    else:
        catalog = None
    config = raw_config if raw_config is not None else config
    return run_connector(command, config, catalog, stdin=stdin, directory=directory, env=env, timeout=120)


def valid_config(base_url: str, **overrides: Any) -> dict:
    return event_config(base_url, **{"max_retries": 1, **overrides})


SECRET_RECORDS = [
    {"user": f"SECRET-CFG-USER-{i}", "event": "SECRET-CFG-EVENT", "note": f"SECRET-CFG-NOTE-{i}"} for i in range(3)
]
SECRET_INPUT = "".join(record_line(r) + "\n" for r in SECRET_RECORDS) + state_line(2) + "\n"


# ------------------------------------------------------------------------------------------------------------
# Config errors: check says what to fix, write fails with config_error, nothing is sent


def _without(mapping: dict, *path: str) -> dict:
    copy = json.loads(json.dumps(mapping))
    target = copy
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return copy


def _with(mapping: dict, path: tuple[str, ...], value: Any) -> dict:
    copy = json.loads(json.dumps(mapping))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def _config_cases(base_url: str) -> dict[str, tuple[dict, tuple[str, ...]]]:
    good = valid_config(base_url)
    return {
        "app_id_not_digits": (_with(good, ("app_id",), "eleven"), ("app_id", "digits")),
        "api_type_unknown": (_with(good, ("api", "api_type"), "teleport"), ("api.api_type", "track")),
        "event_column_missing": (
            _without(good, "api", "event_column"),
            ("api.event_column", "api.event_name", "exactly one"),
        ),
        "batch_size_too_big": (_with(good, ("batch_size",), 5000), ("batch_size", "1 to 1000")),
        "on_invalid_record_unknown": (_with(good, ("on_invalid_record",), "explode"), ("on_invalid_record", "skip")),
        "base_url_plain_http_remote": (_with(good, ("base_url",), "http://heapanalytics.com"), ("https",)),
        "base_url_plain_http_private_ip": (_with(good, ("base_url",), "http://10.1.2.3:8080"), ("https",)),
        "base_url_plain_http_loopback_lookalike": (_with(good, ("base_url",), "http://127.0.0.1.nip.io"), ("https",)),
        # a URL's credentials are never printed, whatever its scheme (URL_PASSWORD: test_..._credentials_...)
        "base_url_ftp_with_credentials": (
            _with(good, ("base_url",), f"ftp://admin:{URL_PASSWORD}@heap.invalid"), ("base_url", "ftp://…@heap.invalid")
        ),
        "base_url_misspelt_scheme_with_credentials": (
            _with(good, ("base_url",), f"htps://admin:{URL_PASSWORD}@heap.invalid"), ("base_url", "not a URL")
        ),
        "base_url_https_with_credentials": (
            _with(good, ("base_url",), f"https://admin:{URL_PASSWORD}@heap.invalid"), ("base_url", "no credentials")
        ),
    }


URL_PASSWORD = "SECRET-URL-PASSWORD"
CASE_IDS = list(_config_cases("http://127.0.0.1:1"))
CREDENTIAL_CASES = [case for case in CASE_IDS if case.endswith("_with_credentials")]
UNREADABLE = {"config_not_an_object": "[]", "config_not_json": "{not json"}


@dataclass
class ConfigRuns:
    check: dict[str, Result]
    write: dict[str, Result]
    heap_requests: int
    recorder_seen: list


@pytest.fixture(scope="module")
def config_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConfigRuns]:
    """Every bad config through check and write, a few at a time (each run starts a Python process)."""
    heap = HeapStandin().start()
    recorder = _recorder()
    root = tmp_path_factory.mktemp("config-errors")
    cases = _config_cases(heap.url)
    env = recorder.env(LOOPBACK)
    jobs = {}
    with ThreadPoolExecutor(max_workers=3) as pool:
        for name, (config, _) in cases.items():
            for command in ("check", "write"):
                jobs[(command, name)] = pool.submit(
                    run, root / f"{command}-{name}", command, config, env, stdin=SECRET_INPUT
                )
        for name, raw in UNREADABLE.items():
            for command in ("check", "write"):
                jobs[(command, name)] = pool.submit(
                    run, root / f"{command}-{name}", command, None, env, stdin=SECRET_INPUT, raw_config=raw
                )
        results = {key: job.result() for key, job in jobs.items()}
    try:
        yield ConfigRuns(
            check={name: r for (command, name), r in results.items() if command == "check"},
            write={name: r for (command, name), r in results.items() if command == "write"},
            heap_requests=heap.stats()["requests"],
            recorder_seen=recorder.seen,
        )
    finally:
        heap.stop()
        recorder.close()


@pytest.mark.parametrize("case", CASE_IDS)
def test_check_fails_with_a_message_saying_what_to_fix(case: str, config_runs: ConfigRuns) -> None:
    result = config_runs.check[case]
    _, words = _config_cases("http://127.0.0.1:1")[case]
    assert_check_failed(result, words)
    assert_no_traceback(result)
    assert not config_runs.recorder_seen, f"traffic left loopback: {config_runs.recorder_seen[:3]}"
    reliability.note("config_errors_refused", f"check: {case}")


@pytest.mark.parametrize("case", CASE_IDS)
def test_write_fails_with_config_error_before_sending_anything(case: str, config_runs: ConfigRuns) -> None:
    result = config_runs.write[case]
    _, words = _config_cases("http://127.0.0.1:1")[case]
    assert result.returncode != 0, result.describe()
    assert result.errors, f"no TRACE error\n{result.describe()}"
    error = result.errors[-1]
    assert error["failure_type"] == "config_error", result.describe()
    for word in words:
        assert word in error["message"], f"{word!r} not in {error['message']!r}"
    assert not [m for m in result.messages if m["type"] == "STATE"], "a STATE after a config error"
    assert_no_traceback(result)
    assert_no_record_values(result, SECRET_RECORDS)
    assert config_runs.heap_requests == 0, "a request reached Heap although every config was invalid"
    assert not config_runs.recorder_seen, f"traffic left loopback: {config_runs.recorder_seen[:3]}"
    reliability.note("config_errors_refused", f"write: {case}")


@pytest.mark.parametrize("case", CREDENTIAL_CASES)
def test_a_base_url_s_credentials_are_never_printed(case: str, config_runs: ConfigRuns) -> None:
    """Not in check's status, nor write's TRACE, its ERROR log line or stderr."""
    for result in (config_runs.check[case], config_runs.write[case]):
        assert URL_PASSWORD not in result.stdout + result.stderr, result.describe()
        assert "admin" not in result.stdout + result.stderr, result.describe()


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_check_reports_an_unreadable_config_file(case: str, config_runs: ConfigRuns) -> None:
    result = config_runs.check[case]
    assert [s["status"] for s in result.statuses] == ["FAILED"], result.describe()
    assert "config" in result.statuses[0]["message"].lower()
    assert_no_traceback(result)
    reliability.note("config_errors_refused", f"check: {case}")


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_write_reports_an_unreadable_config_file_as_config_error(case: str, config_runs: ConfigRuns) -> None:
    result = config_runs.write[case]
    assert result.returncode != 0
    assert result.errors and result.errors[-1]["failure_type"] == "config_error", result.describe()
    assert_no_traceback(result)
    reliability.note("config_errors_refused", f"write: {case}")


# ------------------------------------------------------------------------------------------------------------
# Plain http must not leave the loopback interface, however the URL is spelled


URL_TRICKS = {
    "backslash_before_at": "http://heap-exfil.invalid\\@127.0.0.1:{port}",
    "backslash_after_loopback": "http://127.0.0.1:{port}\\@heap-exfil.invalid",
    "userinfo_port": "http://heap-exfil.invalid:80@127.0.0.1:{port}",
    "fragment_at": "http://heap-exfil.invalid#@127.0.0.1:{port}",
    "newline_userinfo": "http://heap-exfil.invalid\n@127.0.0.1:{port}",
}


@pytest.mark.parametrize("trick", list(URL_TRICKS))
def test_a_url_parser_trick_cannot_send_plain_http_off_loopback(trick: str, tmp_path: Path) -> None:
    """The host the config validation checks must be the host requests connects to: a differential between
    URL parsers (urlsplit vs urllib3) must not let plain http reach a remote host."""
    heap = HeapStandin().start()
    recorder = _recorder()
    try:
        config = valid_config(URL_TRICKS[trick].format(port=heap.port))
        with ThreadPoolExecutor(max_workers=2) as pool:
            check = pool.submit(run, tmp_path / "check", "check", config, recorder.env(LOOPBACK))
            write = pool.submit(run, tmp_path / "write", "write", config, recorder.env(LOOPBACK), stdin=SECRET_INPUT)
            check, write = check.result(), write.result()
        seen = recorder.seen
        assert not seen, f"plain-http requests for a non-loopback host (caught by the local proxy): {seen[:3]}"
        for result in (check, write):
            assert_no_traceback(result)
            assert_no_record_values(result, SECRET_RECORDS)
        if check.statuses[0]["status"] == "FAILED":  # refused: write must refuse it too, before sending anything
            assert write.errors and write.errors[-1]["failure_type"] == "config_error", write.describe()
            assert heap.stats()["requests"] == 0
        reliability.note("hostile_inputs", f"base_url parser trick: {trick}")
    finally:
        recorder.close()
        heap.stop()


# ------------------------------------------------------------------------------------------------------------
# Record values never appear in the output


def test_record_values_never_appear_in_any_output(tmp_path: Path) -> None:
    token = uuid.uuid4().hex[:10]
    heap = HeapStandin().start()
    recorder = _recorder()

    def refuse(item: dict) -> str | None:
        value = item.get("properties", {}).get("refuse_me")
        if value is None:
            return None
        return f'postBody.events[0].properties.refuse_me has value "{value}" (also \'{value}\') which is refused'

    heap.reject_when(refuse)
    try:
        good = [
            {"user": f"LEAK-{token}-user-{i}", "event": f"LEAK-{token}-event", "plan": f"LEAK-{token}-plan-{i}"}
            for i in range(5)
        ]
        invalid = [
            {"user": f"LEAK-{token}-long-" + "u" * 300, "event": "x"},  # identity_too_long
            {"user": f"LEAK-{token}-ts-user", "event": "x", "at": f"LEAK-{token}-not-a-time"},  # invalid_timestamp
            {"user": f"LEAK-{token}-ev-user", "event": f"LEAK-{token}-" + "e" * 1100},  # event_too_long
            {"user": f"LEAK-{token}-refused", "event": "x", "refuse_me": f"LEAK-{token}-refused-value"},
            {"user": f"LEAK-{token}-trunc", "event": "x", "essay": f"LEAK-{token}-essay-" + "z" * 2000},
        ]
        other_stream = {"user": f"LEAK-{token}-other", "event": f"LEAK-{token}-other-event"}
        stdin = "".join(record_line(r) + "\n" for r in good + invalid)
        stdin += record_line([f"LEAK-{token}-list"]) + "\n" + state_line(0) + "\n"
        config = valid_config(heap.url, api={
            "api_type": "track", "identity_column": "user", "event_column": "event", "timestamp_column": "at",
            "property_columns": "*",
        })
        skip = run(tmp_path / "skip", "write", config, recorder.env(LOOPBACK), stdin=stdin)
        fail = run(
            tmp_path / "fail",
            "write",
            {**config, "on_invalid_record": "fail"},
            recorder.env(LOOPBACK),
            stdin=record_line(good[0]) + "\n" + record_line(invalid[1]) + "\n",
        )
        unknown = run(  # a record of a stream outside the catalog stops the sync, naming the stream only
            tmp_path / "unknown", "write", config, recorder.env(LOOPBACK),
            stdin=record_line(other_stream, stream="other") + "\n",
        )
        check = run(tmp_path / "check", "check", config, recorder.env(LOOPBACK))
        assert skip.returncode == 0, skip.describe()
        assert unknown.returncode != 0 and "other" in unknown.errors[-1]["message"], unknown.describe()
        assert fail.returncode != 0 and fail.errors, fail.describe()
        assert "invalid_timestamp" in fail.errors[-1]["message"], fail.describe()
        assert check.statuses[0]["status"] == "SUCCEEDED", check.describe()
        for result in (skip, fail, unknown, check):
            assert f"LEAK-{token}" not in result.output_without_states, result.describe()
            assert_no_traceback(result)
        assert len(heap.events) == len(good) + 1  # the good ones, and the one with a truncated essay
        assert not recorder.seen
        reliability.note(
            "hostile_inputs",
            "identity over 255 characters",
            "timestamp that is no time",
            "event name over 1024 characters",
            "property Heap refuses with a 400 quoting its value",
            "property value over 1023 characters",
            "record for a stream not in the catalog: other name",
            "record data not an object: list",
            "invalid record with on_invalid_record fail",
        )
    finally:
        recorder.close()
        heap.stop()


def test_property_names_from_the_data_never_appear_in_any_output(heap: HeapStandin, tmp_path: Path) -> None:
    """Under property_columns "*", a record's own keys are property names: a map keyed by name and phone
    number makes them personal data, so Heap's refusal path is logged with the name masked."""
    key = "jane_doe_555_0142"

    def refuse(item: dict) -> str | None:
        names = [name for name in item.get("properties", {}) if key in name]
        return f"postBody.users[0].properties.{names[0]} should be string" if names else None

    heap.reject_when(refuse)
    api = {"api_type": "add_user_properties", "identity_column": "user", "property_columns": "*"}
    rows = [{"user": "u-1", "contacts": {key: True}}, {"user": "u-2", "plan": "pro"}]
    stdin = "".join(record_line(row) + "\n" for row in rows) + state_line(1) + "\n"
    result = run(tmp_path, "write", config(heap, api), None, stdin=stdin)
    result.assert_clean()
    assert result.skipped == {"rejected_by_heap: postBody.users[n].properties.<property> should be string": 1}
    assert key not in result.output_without_states, result.describe()
    assert [user["identity"] for user in heap.users] == ["u-2"]


# ------------------------------------------------------------------------------------------------------------
# One stream per connection


def test_two_stream_catalog_is_a_config_error_naming_both(tmp_path: Path) -> None:
    heap = HeapStandin().start()
    recorder = _recorder()
    try:
        stdin = record_line({"user": "SECRET-TWO-A", "event": "e"}, stream="alpha_stream") + "\n"
        stdin += record_line({"user": "SECRET-TWO-B", "event": "e"}, stream="beta_stream") + "\n"
        catalog = events_catalog("alpha_stream", "beta_stream")
        result = run(tmp_path, "write", valid_config(heap.url), recorder.env(LOOPBACK), catalog=catalog, stdin=stdin)
        assert result.returncode != 0, result.describe()
        error = result.errors[-1]
        assert error["failure_type"] == "config_error"
        assert "alpha_stream" in error["message"] and "beta_stream" in error["message"], error["message"]
        assert_no_traceback(result)
        assert "SECRET-TWO" not in result.output_without_states
        assert heap.stats()["requests"] == 0 and not recorder.seen
    finally:
        recorder.close()
        heap.stop()


# ------------------------------------------------------------------------------------------------------------
# Secret fields of the spec: scanned for everywhere, as soon as the spec has any


def _all_paths(schema: Any, prefix: tuple[str, ...] = (), secret_only: bool = False) -> list[tuple[str, ...]]:
    """Paths of every property (only those marked airbyte_secret, with `secret_only`), through nested objects and
    oneOf/anyOf/allOf."""
    found: list[tuple[str, ...]] = []
    if not isinstance(schema, dict):
        return found
    for name, sub in (schema.get("properties") or {}).items():
        if not secret_only or (isinstance(sub, dict) and sub.get("airbyte_secret")):
            found.append((*prefix, name))
        found += _all_paths(sub, (*prefix, name), secret_only)
    for keyword in ("oneOf", "anyOf", "allOf"):
        for option in schema.get(keyword) or []:
            found += _all_paths(option, prefix, secret_only)
    return sorted(set(found))


def _secret_paths(schema: Any) -> list[tuple[str, ...]]:
    """Paths of every property marked airbyte_secret."""
    return _all_paths(schema, secret_only=True)


def _spec_schema() -> dict:
    from destination_heap_analytics.destination import DestinationHeapAnalytics

    return DestinationHeapAnalytics().spec(logging.getLogger("spec-for-tests")).connectionSpecification


SECRET_FIELDS = _secret_paths(_spec_schema())


def test_spec_secret_fields_are_the_ones_the_installed_connector_declares(tmp_path: Path) -> None:
    done = subprocess.run([CONNECTOR, "spec"], capture_output=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    specs = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    schema = next(m["spec"]["connectionSpecification"] for m in specs if m["type"] == "SPEC")
    assert _secret_paths(schema) == SECRET_FIELDS, "the parametrisation below must follow the installed spec"
    for path in _all_paths(schema):
        if any(word in path[-1].lower() for word in CREDENTIAL_WORDS) and not path[-1].endswith("_column"):
            assert path in SECRET_FIELDS, f"spec field {'.'.join(path)} looks like a credential: mark it airbyte_secret"
    for path in SECRET_FIELDS:
        assert path[-1] not in ("app_id", "base_url"), path


def _option_declaring(schema: dict, path: tuple[str, ...]) -> dict | None:
    """The oneOf/anyOf option of the object at path[:-1] whose properties include path[-1] (None if not in one)."""
    node = schema
    for key in path[:-1]:
        node = (node.get("properties") or {}).get(key) or {}
    for keyword in ("oneOf", "anyOf"):
        for option in node.get(keyword) or []:
            if path[-1] in (option.get("properties") or {}):
                return option
    return None


def _config_using(base_url: str, path: tuple[str, ...], secret: str) -> dict:
    """A config in which the secret is really used: under a oneOf, the option that declares it, with its
    required fields (and its first column field) filled from the spec's const, default or first example."""
    config = valid_config(base_url)
    option = _option_declaring(_spec_schema(), path)
    if option is not None:
        filled: dict[str, Any] = {}
        properties = option.get("properties") or {}
        wanted = list(option.get("required") or [])
        wanted += [name for name in properties if name.endswith("_column")][:1]
        for name in wanted:
            spec = properties.get(name) or {}
            value = spec.get("const", spec.get("default", (spec.get("examples") or ["email"])[0]))
            filled[name] = value
        target = config
        for key in path[:-2]:
            target = target.setdefault(key, {})
        target[path[-2]] = filled
    target = config
    for key in path[:-1]:  # a secret under an object the base config lacks gets that object
        target = target.setdefault(key, {})
    target[path[-1]] = secret
    return config


ScanCheck = Callable[[dict[str, Result], HeapStandin, HeapStandin], None]


def _secret_scan(
    tmp_path: Path,
    path: tuple[str, ...],
    make_config: Callable[[str, str, bool], dict] | None = None,
    extra_jobs: Callable[[str, dict, str], dict[str, tuple[str, dict, str]]] | None = None,
    also: ScanCheck | None = None,
) -> None:
    """The value of a credential field never appears in check, write, or a failing check or write's output,
    whether Heap takes the credential or refuses it. `make_config(base_url, secret, refused)` builds the config
    (`refused`: the one whose credential is to be refused; default: the secret at `path`, in the spec's option
    that declares it); `extra_jobs(secret, good_config, stdin)` adds
    runs; `also(runs, accepting, refusing)` checks more once every run is scanned."""
    secret = f"CRED-{uuid.uuid4().hex}"
    make_config = make_config or (lambda base_url, value, refused: _config_using(base_url, path, value))
    accepting = HeapStandin().start()
    refusing = HeapStandin(api_key=f"OTHER-{uuid.uuid4().hex}").start()
    recorder = _recorder()
    records = [
        {"email": f"SECRET-SCAN-{i}@example.com", "user_id": str(1000 + i), "user": f"SECRET-SCAN-{i}",
         "event": "SECRET-SCAN-EVENT", "event_name": "SECRET-SCAN-EVENT", "account_id": f"acct-{i}",
         "updated_at": "2024-01-01T00:00:00Z", "time": "2024-01-01T00:00:00Z"}
        for i in range(3)
    ]
    stdin = "".join(record_line(r) + "\n" for r in records) + state_line(2) + "\n"
    try:
        good, bad_key = make_config(accepting.url, secret, False), make_config(refusing.url, secret, True)
        jobs = {
            "check": ("check", good, ""),
            "check, credential refused": ("check", bad_key, ""),
            "check, bad config": ("check", {**good, "batch_size": 0}, ""),
            "write": ("write", good, stdin),
            "write, credential refused": ("write", bad_key, stdin),
            "write, bad config": ("write", {**good, "app_id": "x"}, stdin),
            **(extra_jobs(secret, good, stdin) if extra_jobs else {}),
        }
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = {
                name: pool.submit(run, tmp_path / f"run-{n}", command, config, recorder.env(LOOPBACK), stdin=text)
                for n, (name, (command, config, text)) in enumerate(jobs.items())
            }
            runs = {name: future.result() for name, future in futures.items()}
        for name, result in runs.items():
            assert secret not in result.stdout and secret not in result.stderr, f"{name}:\n{result.describe()}"
            assert secret[:16] not in result.stdout + result.stderr, f"{name}: part of the secret\n{result.describe()}"
            assert_no_traceback(result)
        assert runs["check"].statuses[0]["status"] == "SUCCEEDED", runs["check"].describe()
        assert runs["check, bad config"].statuses[0]["status"] == "FAILED"
        if _option_declaring(_spec_schema(), path) is not None:  # the credential is in use: Heap's refusal shows
            refused = runs["check, credential refused"]
            assert refused.statuses[0]["status"] == "FAILED", refused.describe()
        assert runs["write"].returncode == 0, runs["write"].describe()
        assert runs["write, bad config"].returncode != 0
        for heap in (accepting, refusing):
            assert secret not in json.dumps(heap.events + heap.users + heap.accounts), "a credential sent as data"
        assert not recorder.seen
        if also is not None:
            also(runs, accepting, refusing)
        reliability.record("secret_scans", len(runs))
    finally:
        recorder.close()
        accepting.stop()
        refusing.stop()


@pytest.mark.parametrize("path", SECRET_FIELDS, ids=[".".join(p) for p in SECRET_FIELDS])
def test_secret_field_value_never_appears_in_any_output(
    path: tuple[str, ...], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if path[0] == STORAGE_FIELD:  # the bucket's keys, in use against a real (local) bucket
        _secret_scan(tmp_path, path, _storage_config(request.getfixturevalue("bucket"), path[-1]))
    else:
        _secret_scan(tmp_path, path)


def _storage_config(bucket: LocalBucket, name: str) -> Callable[[str, str, bool], dict]:
    """The secret as object_storage_config's `name` (the other key beside it), for a bucket that exists, or for
    one that does not where the credential is to be refused (check then fails on the bucket)."""

    def make(base_url: str, secret: str, refused: bool) -> dict:
        keys = {"access_key_id": "AKIASCANPARTNER00001", "secret_access_key": "scan-partner-secret", name: secret}
        storage = bucket.storage(**keys, **({"s3_bucket_name": "no-such-scan-bucket"} if refused else {}))
        return valid_config(base_url, object_storage_config=storage)

    return make


def _deletion_config(base_url: str, secret: str, refused: bool = False) -> dict:
    """delete_users with the key where the connector reads it: api.api_key."""
    api = {"api_type": "delete_users", "api_key": secret, "identity_column": "email"}
    return config(base_url, api, max_retries=1)


def _malformed_key_jobs(secret: str, good: dict, stdin: str) -> dict[str, tuple[str, dict, str]]:
    """The key pasted with a character no Heap key has: refused in check and write, without being quoted."""
    malformed = json.loads(json.dumps(good))
    malformed["api"]["api_key"] = secret + "\u00e9\u0007"
    return {"check, key malformed": ("check", malformed, ""), "write, key malformed": ("write", malformed, stdin)}


def _key_really_used(runs: dict[str, Result], accepting: HeapStandin, refusing: HeapStandin) -> None:
    """The scans above meant something: the key went to Heap's token endpoint and the deletions were made with
    it; the refusing stand-in issued nothing and both runs against it failed; a malformed key is a config_error."""
    assert accepting.tokens_issued >= 2, f"{accepting.tokens_issued} tokens issued: the api_key was never used"
    assert sorted(user["identity"] for user in accepting.deleted_users) == [
        f"SECRET-SCAN-{i}@example.com" for i in range(3)
    ], accepting.deleted_users
    assert refusing.tokens_issued == 0
    # One token request for check and one for write, each refused and never retried: a refused key is a
    # config_error at once, not a wait through retries.
    assert refusing.stats()["by_status"] == {"401": 2}, refusing.stats()["by_status"]
    assert runs["check, credential refused"].statuses[0]["status"] == "FAILED"
    assert runs["write, credential refused"].returncode != 0, runs["write, credential refused"].describe()
    assert runs["check, key malformed"].statuses[0]["status"] == "FAILED"
    malformed = runs["write, key malformed"]
    assert malformed.errors and malformed.errors[-1]["failure_type"] == "config_error", malformed.describe()


def test_deletion_api_key_in_use_refused_or_malformed_is_never_echoed(tmp_path: Path) -> None:
    """heap-api.md: the deletion API's api_key is a secret. Put where the connector reads it (api.api_key, with
    api_type delete_users), independently of the spec walk above: used, refused, malformed, beside a bad config."""
    _secret_scan(
        tmp_path, ("api", "api_key"), _deletion_config, extra_jobs=_malformed_key_jobs, also=_key_really_used
    )


@pytest.mark.parametrize("command", ["check", "write"])
def test_a_secret_pasted_into_another_field_is_masked_by_check_as_by_write(command: str, tmp_path: Path) -> None:
    """The deletion key pasted into dry_run: the refusal quotes the value it refuses, and the key must not show.
    Before, write masked it and check printed it in its FAILED status."""
    secret = f"SECRET-KEY-{uuid.uuid4().hex}"
    recorder = _recorder()
    try:
        raw = {**valid_config("http://127.0.0.1:9"), "api_key": secret, "dry_run": secret}
        result = run(tmp_path, command, raw, recorder.env(LOOPBACK), stdin=SECRET_INPUT)
    finally:
        recorder.close()
    refusal = result.statuses[0]["message"] if command == "check" else result.errors[-1]["message"]
    assert refusal.startswith("dry_run must be true or false"), result.describe()
    assert secret not in result.stdout + result.stderr and secret[:16] not in result.stdout, result.describe()
    assert_no_traceback(result)


def test_the_cdks_in_process_check_masks_a_secret_in_its_message_too() -> None:
    """Hosts that call check in-process (the CDK's contract) get the same masked message."""
    from destination_heap_analytics import DestinationHeapAnalytics

    secret = f"SECRET-KEY-{uuid.uuid4().hex}"
    raw = {**valid_config("http://127.0.0.1:9"), "api_key": secret, "dry_run": secret}
    status = DestinationHeapAnalytics().check(logging.getLogger("airbyte"), raw)
    assert status.status.value == "FAILED" and status.message.startswith("dry_run must be true or false")
    assert secret not in status.message
