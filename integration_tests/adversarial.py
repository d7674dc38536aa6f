"""Helpers shared by the adversarial integration tests: fault storms, hostile stdin, kill/resume, secrets and config.

These tests drive the installed connector in ways conftest.run_connector does not cover: stdin as raw bytes read
from a file (invalid UTF-8, 50 MB lines, junk that is not a message at all), a callback that breaks the stand-in
while the process runs, runs in parallel threads each watched by a recording proxy of its own, and a source whose
STATE cursor is the index of the last record before it. So they run the connector with `run_command` below and
read what it printed through this module's `Result`, whose `states` are those cursors. The message builders,
configs, catalogs and the subprocess environment are conftest's, set up for the one stream `events` they share.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from destination_heap_analytics.heap_standin import HeapStandin
from integration_tests import reliability
from integration_tests.conftest import (
    CONNECTOR,
    SKIPPED_PREFIX,
    catalog,
    config,
    loopback_env,
    record,
    state,
)

STREAM = "events"
EMITTED_AT = 1_700_000_000_000
TRACEBACK = "Traceback (most recent call last)"
NOT_A_MESSAGE = re.compile(r"Input line (\d+) is not an Airbyte message")
# The track mapping every adversarial test starts from: who did what, every column a property.
EVENT_API = {"api_type": "track", "identity_column": "user", "event_column": "event", "property_columns": "*"}


# ------------------------------------------------------------------------------------------------------------
# Input: messages whose STATE carries the index of the last record before it, configs and catalogs


def state_message(last: int, stream: str = STREAM) -> dict:
    return state(last, stream, cursor="last")


def record_line(data: Any, stream: str = STREAM, emitted_at: int = EMITTED_AT, ascii_only: bool = True) -> str:
    return json.dumps(record(data, stream, emitted_at), ensure_ascii=ascii_only)


def state_line(last: int) -> str:
    return json.dumps(state_message(last))


def lines(*items: str | bytes) -> bytes:
    """Stdin bytes: each item (text, or bytes as they are) on a line of its own."""
    return b"".join((item if isinstance(item, bytes) else item.encode()) + b"\n" for item in items)


def event_config(heap: HeapStandin | str, api: dict | None = None, **overrides: Any) -> dict:
    """conftest.config with EVENT_API (its fields replaced by `api`) for the stand-in or a base_url given as text."""
    return config(heap, {**EVENT_API, **(api or {})}, **overrides)


def events_catalog(*names: str) -> dict:
    """A catalog of `names` (default: the events stream), each incremental only, appended."""
    return catalog(*(names or (STREAM,)), supported_sync_modes=("incremental",))


def write_inputs(directory: Path, config: dict | str, catalog: dict | None = None) -> list[str]:
    """config.json (a dict as JSON, text as it is) and catalog.json in `directory`; the arguments naming them."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "config.json"
    config_path.write_text(config if isinstance(config, str) else json.dumps(config))
    args = ["--config", str(config_path)]
    if catalog is not None:
        catalog_path = directory / "catalog.json"
        catalog_path.write_text(json.dumps(catalog))
        args += ["--catalog", str(catalog_path)]
    return args


# ------------------------------------------------------------------------------------------------------------
# Running the connector


@dataclass
class Result:
    code: int
    messages: list[dict]
    stdout: str
    stderr: str
    seconds: float

    @property
    def states(self) -> list[int]:
        """The `last` cursor of every STATE, in the order they came out."""
        return [m["state"]["stream"]["stream_state"]["last"] for m in self.messages if m["type"] == "STATE"]

    @property
    def errors(self) -> list[dict]:
        return [m["trace"]["error"] for m in self.messages if m["type"] == "TRACE" and m["trace"]["type"] == "ERROR"]

    @property
    def statuses(self) -> list[dict]:
        return [m["connectionStatus"] for m in self.messages if m["type"] == "CONNECTION_STATUS"]

    def logs(self, level: str | None = None) -> list[str]:
        return [m["log"]["message"] for m in self.messages if m["type"] == "LOG" and level in (None, m["log"]["level"])]

    def skipped(self) -> dict[str, int]:
        """reason -> count, summed over the WARN 'Records skipped, by reason' lines ({} when there is none)."""
        counts: dict[str, int] = {}
        for line in self.logs("WARN"):
            if line.startswith(SKIPPED_PREFIX):
                for part in line[len(SKIPPED_PREFIX) :].split(", "):
                    reason, _, count = part.rpartition(": ")
                    counts[reason] = counts.get(reason, 0) + int(count)
        return counts

    def summary_line(self) -> str:
        line = next((text for text in self.logs("INFO") if text.startswith("Sync summary")), None)
        assert line, f"no Sync summary line\n{self.describe()}"
        return line

    def summary(self) -> dict[str, int]:
        line = self.summary_line()
        figures = re.search(r"(\d+) records read, (\d+) sent and acknowledged by Heap, (\d+) skipped", line)
        assert figures, line
        return dict(zip(("read", "sent", "skipped"), map(int, figures.groups()), strict=True))

    def unparsable_lines(self) -> list[int]:
        return [int(m[1]) for text in self.logs("WARN") if (m := NOT_A_MESSAGE.match(text))]

    def output_without_states(self) -> str:
        """stdout without its STATE lines (they carry the source's own cursor), then stderr."""
        printed = [line for line in self.stdout.splitlines() if line.strip()]
        lines = [line for line, m in zip(printed, self.messages, strict=True) if m["type"] != "STATE"]
        return "\n".join(lines) + "\n" + self.stderr

    def assert_clean(self, *secrets: str) -> None:
        """Exit 0, no TRACE, no traceback, stdout all Airbyte messages, none of `secrets` in any output."""
        assert self.code == 0, self.describe()
        assert not self.errors, self.describe()
        assert_no_traceback(self)
        output = self.stdout + self.stderr
        leaked = [secret for secret in secrets if secret in output]
        assert not leaked, f"input content leaked into the output: {leaked[:3]}"

    def describe(self) -> str:
        return f"exit {self.code} after {self.seconds:.1f} s\n{self.stdout[-5000:]}\nstderr:\n{self.stderr[-2000:]}"


def run_command(
    directory: Path,
    command: str,
    config: dict | str,
    *,
    catalog: dict | None = None,
    stdin: bytes | str = b"",
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    during: Callable[[subprocess.Popen], None] | None = None,
) -> Result:
    """Run `destination-heap-analytics <command>` in `directory`, with its config (and catalog) files there and
    `stdin` read from a file there; `during(process)` runs meanwhile. Every stdout line must be a JSON message.

    `env` defaults to loopback_env(): no proxy at all (these runs talk to the stand-in only); a test that must
    prove nothing leaves loopback passes a recording proxy's env instead.
    """
    args = [CONNECTOR, command, *write_inputs(directory, config, catalog)]
    input_path = directory / "stdin.bin"
    input_path.write_bytes(stdin.encode() if isinstance(stdin, str) else stdin)
    started = time.monotonic()
    with open(input_path, "rb") as handle:
        process = subprocess.Popen(
            args,
            stdin=handle,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=directory,
            env=env if env is not None else loopback_env(),
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
    stdout = outputs.get("out", b"").decode("utf-8", errors="replace")
    messages = []
    for line in stdout.splitlines():
        if line.strip():
            message = json.loads(line)  # every stdout line must be an Airbyte message
            assert isinstance(message, dict) and "type" in message, line[:200]
            messages.append(message)
    stderr = outputs.get("err", b"").decode("utf-8", errors="replace")
    result = Result(process.returncode, messages, stdout, stderr, seconds)
    assert seconds < timeout, f"the connector did not finish within {timeout} s\n{result.describe()}"
    return result


# ------------------------------------------------------------------------------------------------------------
# Checks


def assert_no_traceback(result: Result) -> None:
    assert TRACEBACK not in result.stdout and TRACEBACK not in result.stderr, result.describe()
    for error in result.errors:
        assert not error.get("stack_trace"), f"TRACE carries a stack trace: {error.get('stack_trace', '')[:300]}"


def assert_no_record_values(result: Result, records: Iterable[dict], keys: Iterable[str] | None = None) -> None:
    """No text value of `records` (of their `keys` only, when given) in the output, STATE lines excepted."""
    output = result.output_without_states()
    wanted = None if keys is None else set(keys)
    values = {v for r in records for k, v in r.items() if isinstance(v, str) and (wanted is None or k in wanted)}
    leaked = sorted(value for value in values if value in output)
    assert not leaked, f"record values in the connector's output: {leaked[:5]}\n{result.describe()}"


def event_indices(heap: HeapStandin) -> Counter:
    """How many times the stand-in holds the event of each record index (the `i` property)."""
    return Counter(event["properties"]["i"] for event in heap.events)


def assert_loaded_once(heap: HeapStandin, expected: set[int]) -> None:
    """The stand-in holds the event of every expected record index exactly once, and nothing else."""
    held = event_indices(heap)
    lost = len(expected - set(held))
    doubled = sum(count - 1 for count in held.values() if count > 1)
    reliability.record("records_lost", lost)
    reliability.record("records_doubled", doubled)
    assert lost == 0, f"{lost} records never reached Heap: {sorted(expected - set(held))[:10]}"
    assert doubled == 0, f"{doubled} records were stored twice"
    assert set(held) == expected, f"unexpected records in Heap: {sorted(set(held) - expected)[:10]}"
    assert heap.stats()["events_stored"] == len(expected) == len(heap.events)
    reliability.record("records_loaded", len(expected))
