"""The Airbyte protocol surface: spec, check (valid and invalid configs) and write's catalog/config checks."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys

import pytest

from integration_tests.support import (
    CONNECTOR,
    TRACK_API,
    USER_API,
    OutboundRecorder,
    assert_check_failed,
    catalog,
    config,
    interleave,
    loopback_env,
    people,
    run_connector,
    sample_catalog,
    sample_config,
    sample_messages,
)


def assert_nothing_sent(heap) -> None:
    stats = heap.stats()
    assert stats["requests"] == 0, f"the connector sent {stats['requests']} /api/* requests"
    assert heap.events == heap.users == heap.accounts == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------------------------
# spec


def test_spec_prints_exactly_one_spec_message():
    result = run_connector("spec")
    assert result.returncode == 0, result.describe()
    assert [m["type"] for m in result.messages] == ["SPEC"]
    spec = result.messages[0]["spec"]
    schema = spec["connectionSpecification"]
    assert "app_id" in schema["required"]
    assert {"app_id", "base_url", "api"} <= set(schema["properties"])
    assert "append" in spec["supported_destination_sync_modes"]
    assert result.stderr == ""


def test_each_message_leaves_in_one_write(monkeypatch):
    """A message written in two pieces (print: the text, then the newline) lets a log line from a sender thread
    fall between them, and the platform reads two messages glued into one line (seen in a dry run)."""
    from destination_heap_analytics.destination import DestinationHeapAnalytics

    class Recorded(io.TextIOWrapper):
        writes: list[str] = []

        def write(self, text: str) -> int:
            self.writes.append(text)
            return super().write(text)

    stdout = Recorded(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stdout)
    DestinationHeapAnalytics().run(["spec"])
    assert Recorded.writes, "nothing was written"
    for text in Recorded.writes:
        assert text.endswith("\n") and json.loads(text)["type"], f"a write that is not one whole message: {text!r}"


# ------------------------------------------------------------------------------------------------------------
# check


@pytest.mark.parametrize("kind", ["track", "user_properties", "account_properties"])
def test_check_succeeds_for_sample_configs_and_writes_nothing(heap, kind):
    result = run_connector("check", sample_config(kind, heap))
    assert result.returncode == 0, result.describe()
    assert [m["type"] for m in result.messages if m["type"] != "LOG"] == ["CONNECTION_STATUS"]
    assert result.statuses == [{"status": "SUCCEEDED"}], result.describe()
    assert_nothing_sent(heap)


def test_check_tolerates_unknown_top_level_fields_and_accepts_every_optional_field(heap):
    full = config(
        heap,
        TRACK_API,
        bulk=False,
        batch_size=1000,
        on_invalid_record="fail",
        max_concurrent_requests=8,
        track_events_per_minute=15000,
        request_timeout_seconds=30,
        max_retries=6,
        unknown_top_level_field={"anything": [1, 2]},
    )
    result = run_connector("check", full)
    assert result.statuses == [{"status": "SUCCEEDED"}], result.describe()
    assert_nothing_sent(heap)


def _without(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


BAD_CONFIGS = {
    # name: (change to a valid track config, words the message must contain)
    "missing_app_id": (lambda c: _without(c, "app_id"), ["app_id", "environment"]),
    "non_numeric_app_id": (lambda c: {**c, "app_id": "my-app"}, ["app_id", "digits"]),
    "unknown_api_type": (lambda c: {**c, "api": {**c["api"], "api_type": "send_emails"}}, ["api_type", "track"]),
    "missing_identity_column": (lambda c: {**c, "api": _without(c["api"], "identity_column")}, ["identity_column"]),
    "users_without_property_columns": (
        lambda c: {**c, "api": _without(USER_API, "property_columns")},
        ["property_columns"],
    ),
    "batch_size_0": (lambda c: {**c, "batch_size": 0}, ["batch_size", "1 to 1000"]),
    "batch_size_5000": (lambda c: {**c, "batch_size": 5000}, ["batch_size", "1 to 1000"]),
    "plain_http_to_public_host": (lambda c: {**c, "base_url": "http://example.com"}, ["https", "base_url"]),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_check_fails_with_a_message_saying_what_to_fix(heap, name):
    change, words = BAD_CONFIGS[name]
    result = run_connector("check", change(config(heap, TRACK_API)))
    assert result.returncode == 0, result.describe()
    assert_check_failed(result, words)
    # Validation fails before any traffic: nothing at the stand-in, nothing at the outbound guard (which
    # run_connector asserts), so http://example.com was never contacted.
    assert_nothing_sent(heap)


def test_check_fails_when_nothing_listens_at_base_url():
    port = free_port()
    result = run_connector("check", {"app_id": "11", "base_url": f"http://127.0.0.1:{port}", "api": TRACK_API})
    assert result.statuses[0]["status"] == "FAILED", result.describe()
    message = result.statuses[0]["message"]
    assert f"127.0.0.1:{port}" in message and "base_url" in message


def test_check_reports_an_unreadable_config_file(tmp_path):
    broken = tmp_path / "config.json"
    broken.write_text("{not json")
    result = run_connector("check", argv=[CONNECTOR, "check", "--config", str(broken)])
    assert result.statuses and result.statuses[0]["status"] == "FAILED", result.describe()


def test_check_rejects_an_app_id_in_full_width_digits(heap):
    result = run_connector("check", config(heap, TRACK_API, app_id="１１"))
    assert result.statuses[0]["status"] == "FAILED", result.describe()
    assert "app_id" in result.statuses[0]["message"]


PROXY_SMUGGLED_BASE_URL = "http://example.com\\@127.0.0.1"


@pytest.fixture(scope="module")
def routed_recorder():
    """A local recorder posing as every host outside NO_PROXY=127.0.0.1, answering 200 and forwarding nothing.

    Before it is used, a loopback URL outside NO_PROXY (localhost) must be seen going through it: only then is
    it certain that the connector's requests follow the proxy variables, so even a connector that tries to reach
    a public host sends nothing beyond 127.0.0.1. Otherwise the tests using it error out (not xfail)."""
    recorder = OutboundRecorder(answer=200)
    env = recorder.env(no_proxy="127.0.0.1")
    port = free_port()
    result = run_connector("check", {"app_id": "11", "base_url": f"http://localhost:{port}", "api": TRACK_API}, env=env)
    if not any(host == f"localhost:{port}" for _, _, host, _ in recorder.seen):
        recorder.close()
        raise RuntimeError(f"proxy environment not honoured; refusing to go on\n{result.describe()}")
    recorder.clear()
    yield recorder, env
    recorder.close()


def test_check_never_contacts_a_public_host_over_plain_http(routed_recorder):
    """A public host hidden behind a backslash must be refused; no request may reach it."""
    recorder, env = routed_recorder
    recorder.clear()
    smuggled = {"app_id": "11", "base_url": PROXY_SMUGGLED_BASE_URL, "api": TRACK_API}
    result = run_connector("check", smuggled, env=env)
    hosts = [host for _, _, host, _ in recorder.seen]
    assert hosts == [], f"check sent plain-http requests to {hosts}"
    assert result.statuses[0]["status"] == "FAILED", result.describe()
    assert "https" in result.statuses[0]["message"]


def test_write_never_posts_records_to_a_public_host_over_plain_http(routed_recorder):
    recorder, env = routed_recorder
    recorder.clear()
    cfg = {"app_id": "11", "base_url": PROXY_SMUGGLED_BASE_URL, "api": TRACK_API, "track_events_per_minute": 0}
    result = run_connector("write", cfg, catalog(), interleave(people(3), every=3), env=env)
    leaked_to = [host for _, _, host, _ in recorder.seen]
    assert leaked_to == [], f"records were posted over plain http to {leaked_to}"
    assert result.returncode != 0
    assert [e["failure_type"] for e in result.errors] == ["config_error"]


# ------------------------------------------------------------------------------------------------------------
# write: what is refused before anything is sent


def test_write_refuses_a_catalog_with_two_streams_naming_both(heap):
    result = run_connector(
        "write", config(heap, TRACK_API), catalog("users", "orders"), interleave(people(5), every=2)
    )
    assert result.returncode != 0, result.describe()
    assert len(result.errors) == 1, result.describe()
    error = result.errors[0]
    assert error["failure_type"] == "config_error"
    assert "users" in error["message"] and "orders" in error["message"]
    assert result.states == []
    assert_nothing_sent(heap)


def test_write_with_an_invalid_config_fails_as_config_error_and_sends_nothing(heap):
    result = run_connector(
        "write", config(heap, TRACK_API, batch_size=0), catalog(), interleave(people(5), every=2)
    )
    assert result.returncode != 0, result.describe()
    assert [e["failure_type"] for e in result.errors] == ["config_error"]
    assert "batch_size" in result.errors[0]["message"]
    assert result.states == []
    assert_nothing_sent(heap)



# ------------------------------------------------------------------------------------------------------------
# Closed pipes: one clear line, never a traceback


def write_files(heap, tmp_path) -> tuple[str, str]:
    config_path, catalog_path = tmp_path / "config.json", tmp_path / "catalog.json"
    config_path.write_text(json.dumps(sample_config("track", heap)))
    catalog_path.write_text(json.dumps(sample_catalog()))
    return str(config_path), str(catalog_path)


def test_a_closed_stdin_ends_write_with_a_config_error_not_a_traceback(heap, tmp_path):
    config_path, catalog_path = write_files(heap, tmp_path)
    process = subprocess.run(
        [CONNECTOR, "write", "--config", config_path, "--catalog", catalog_path],
        preexec_fn=lambda: os.close(0),  # started with no stdin at all
        capture_output=True,
        text=True,
        env=loopback_env(),
        timeout=60,
    )
    assert process.returncode != 0
    assert "Traceback" not in process.stderr + process.stdout
    traces = [json.loads(line)["trace"] for line in process.stdout.splitlines() if '"TRACE"' in line]
    assert [trace["error"]["failure_type"] for trace in traces] == ["config_error"]
    assert "stdin is closed" in traces[0]["error"]["message"]


def test_a_closed_stdout_ends_quietly(heap, tmp_path):
    """Whoever read the connector's output is gone: the connector stops with one line on stderr at most."""
    config_path, catalog_path = write_files(heap, tmp_path)
    for closed_early in (False, True):
        process = subprocess.Popen(
            [CONNECTOR, "write", "--config", config_path, "--catalog", catalog_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=loopback_env(),
        )
        if closed_early:
            process.stdout.close()  # before the connector wrote anything
        else:
            process.stdout.readline()
            process.stdout.close()
        lines = "\n".join(json.dumps(message) for message in sample_messages() * 50) + "\n"
        try:
            process.stdin.write(lines.encode())
            process.stdin.close()
        except BrokenPipeError:
            pass
        stderr = process.stderr.read().decode()
        process.wait(timeout=60)
        assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
        assert len(stderr.splitlines()) <= 1, stderr
