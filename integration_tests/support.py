"""The integration tests' toolkit: the one way they run the connector, what a run returns, and the inputs.

Every test runs the INSTALLED console script (`destination-heap-analytics`, next to this interpreter) as a
subprocess with `run_connector`, with the config and catalog as JSON files and the input on stdin, against a
Heap stand-in (the `heap_standin` package) on 127.0.0.1. What the run printed comes back as a `Result`.

Two guards run on every connector invocation:
- outbound guard: the subprocess gets HTTP(S)_PROXY pointing at a local recorder and NO_PROXY covering
  loopback, so a request to any non-loopback host lands in the recorder (and fails the test) instead of
  leaving the machine (a test that passes its own `env` brings its own recorder);
- leak guard: no string value from the input records may appear in stderr or in any stdout line other
  than a STATE message (logs must never contain record values).

Also here: the message builders (person, people, record, state, interleave, catalog, config, ...), the checks
shared by several modules (assert_no_leaks, assert_no_traceback, assert_check_failed) and StateWatcher, which
compares what the stand-in holds at the moment each STATE comes out. conftest.py holds only the fixtures.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import pytest
import serpyco_rs
from airbyte_cdk.models import AirbyteMessageSerializer
from airbyte_protocol_dataclasses.models import AirbyteMessage as ProtocolMessage

from heap_standin import HeapStandin

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONTAINER_SETUP = PROJECT_ROOT / "scripts" / "setup-container.sh"
CONTAINER_SETUP_TIMEOUT = 1800  # from scratch about 2.5 minutes here (apt, debootstrap, build); cached, seconds
CONNECTOR_IMAGE = "localhost/destination-heap-analytics:dev"  # what scripts/setup-container.sh builds
# A directory whose `docker` runs podman with the flags this machine needs: first on PATH, it is the docker CLI
# the CDK's standard image tests call.
PODMAN_AS_DOCKER = PROJECT_ROOT / "scripts" / "podman-as-docker"
SAMPLE_DIR = PROJECT_ROOT / "sample_files"
BIN_DIR = Path(sys.executable).parent
CONNECTOR = shutil.which("destination-heap-analytics", path=str(BIN_DIR)) or str(BIN_DIR / "destination-heap-analytics")
AIRBYTE_TYPES = {
    "RECORD", "STATE", "LOG", "TRACE", "SPEC", "CONNECTION_STATUS", "CATALOG", "CONTROL", "DESTINATION_CATALOG"
}
STREAM = "users"
APP_ID = "11"
HEX32 = re.compile(r"^[0-9a-f]{32}$")
# The protocol's own message model: the CDK's (airbyte-cdk 7.x) drops what it does not know, discover's
# destination_catalog among it, where this one checks it.
PROTOCOL_MESSAGE = serpyco_rs.Serializer(ProtocolMessage, omit_none=True)

# Mapping configs for the synthetic people below (column names never contain record values).
TRACK_API = {
    "api_type": "track",
    "identity_column": "email",
    "event_column": "action",
    "timestamp_column": "updated_at",
    "property_columns": "plan,name,visits",
}
USER_API = {"api_type": "add_user_properties", "identity_column": "email", "property_columns": "plan,name,visits"}
ACCOUNT_API = {"api_type": "add_account_properties", "account_id_column": "account", "property_columns": "plan,name"}
ITEM_KIND = {"track": "events", "add_user_properties": "users", "add_account_properties": "accounts"}


# ------------------------------------------------------------------------------------------------------------
# Message builders


def person(i: int, **overrides: Any) -> dict:
    """One synthetic source row; every text value is distinctive so a leak into the logs is detectable."""
    data = {
        "email": f"secret-person-{i}@example.com",
        "name": f"Secret Name {i:05d}",
        "action": "Secret Signed Up",
        "account": f"secret-account-{i:05d}",
        "plan": f"secret-plan-{i % 7}",
        "visits": i,
        "updated_at": f"2023-03-{1 + i % 28:02d}T10:{i % 60:02d}:{i % 60:02d}Z",
    }
    data.update(overrides)
    return data


def people(n: int, start: int = 0) -> list[dict]:
    return [person(i) for i in range(start, start + n)]


def record(data: Any, stream: str = STREAM, emitted_at: int = 1_700_000_000_000) -> dict:
    return {"type": "RECORD", "record": {"stream": stream, "data": data, "emitted_at": emitted_at}}


def state(n: int, stream: str = STREAM, cursor: str = "position", state_id: int | None = None) -> dict:
    """A STREAM state; with `state_id`, the `id` the Airbyte platform (1.7+) gives every state it sends."""
    body = {"type": "STREAM", "stream": {"stream_descriptor": {"name": stream}, "stream_state": {cursor: n}}}
    if state_id is not None:
        body["id"] = state_id
    return {"type": "STATE", "state": body}


def interleave(rows: Iterable[dict], every: int, stream: str = STREAM, final_state: bool = True) -> list[dict]:
    """RECORD messages with a STATE (numbered 1, 2, ...) after every `every` records, and one at the end."""
    messages: list[dict] = []
    states = 0
    count = 0
    for count, row in enumerate(rows, 1):
        messages.append(record(row, stream))
        if count % every == 0:
            states += 1
            messages.append(state(states, stream))
    if final_state and (count == 0 or count % every):
        messages.append(state(states + 1, stream))
    return messages


def catalog(
    *streams: str,
    destination_sync_mode: str = "append",
    supported_sync_modes: Sequence[str] = ("full_refresh", "incremental"),
) -> dict:
    return {
        "streams": [
            {
                "stream": {
                    "name": name,
                    "json_schema": {"type": "object"},
                    "supported_sync_modes": list(supported_sync_modes),
                },
                "sync_mode": "incremental",
                "destination_sync_mode": destination_sync_mode,
            }
            for name in (streams or (STREAM,))
        ]
    }


def config(heap: HeapStandin | str, api: dict, **overrides: Any) -> dict:
    """A config for the stand-in (or for a base_url given as text); pacing off unless a test asks for it, so tests
    stay fast."""
    base_url = heap if isinstance(heap, str) else heap.url
    return {"app_id": APP_ID, "base_url": base_url, "api": dict(api), "track_events_per_minute": 0, **overrides}


def sample_config(kind: str, heap: HeapStandin, **overrides: Any) -> dict:
    """sample_files/config_<kind>.json with base_url pointed at the stand-in."""
    raw = json.loads((SAMPLE_DIR / f"config_{kind}.json").read_text())
    raw["base_url"] = heap.url
    raw.setdefault("track_events_per_minute", 0)
    raw.update(overrides)
    return raw


def sample_messages() -> list[dict]:
    return [json.loads(line) for line in (SAMPLE_DIR / "messages.jsonl").read_text().splitlines() if line.strip()]


def sample_catalog() -> dict:
    return json.loads((SAMPLE_DIR / "configured_catalog.json").read_text())


def records_of(messages: Iterable[dict]) -> list[dict]:
    return [m["record"]["data"] for m in messages if m["type"] == "RECORD"]


def without_destination_stats(state: dict) -> dict:
    return {key: value for key, value in state.items() if key != "destinationStats"}


def states_of(messages: Iterable[dict]) -> list[dict]:
    return [m["state"] for m in messages if m["type"] == "STATE"]


def without_app_id(item: dict) -> dict:
    assert item.get("app_id") == APP_ID, f"item stored under the wrong app_id: {item.get('app_id')!r}"
    return {k: v for k, v in item.items() if k != "app_id"}


def stored(heap: HeapStandin, api_type: str) -> list[dict]:
    return getattr(heap, ITEM_KIND[api_type])


# ------------------------------------------------------------------------------------------------------------
# Outbound guard: a local recorder standing in for every non-loopback host


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, self.headers.get("Host"), body))  # type: ignore[attr-defined]
        payload = b"{}"
        self.send_response(self.server.answer)  # type: ignore[attr-defined]
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_HEAD = do_CONNECT = do_DELETE = do_PATCH = _record


class OutboundRecorder:
    """An HTTP proxy on 127.0.0.1 that never forwards anything: it records what it was asked and answers."""

    def __init__(self, answer: int = 502) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        self._server.daemon_threads = True
        self._server.seen = []  # type: ignore[attr-defined]
        self._server.answer = answer  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def seen(self) -> list[tuple[str, str, str | None, bytes]]:
        return list(self._server.seen)  # type: ignore[attr-defined]

    def clear(self) -> None:
        self._server.seen.clear()  # type: ignore[attr-defined]

    def env(self, no_proxy: str = "127.0.0.1,localhost") -> dict[str, str]:
        """Environment that sends every request of the subprocess to this recorder, except to `no_proxy` hosts."""
        return loopback_env(self.url, no_proxy)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def loopback_env(proxy: str | None = None, no_proxy: str = "127.0.0.1,localhost") -> dict[str, str]:
    """This process's environment for a connector subprocess: the caller's proxy settings removed, `no_proxy`
    hosts reached directly and, when `proxy` is given, every other host sent to that (local) proxy."""
    proxy_names = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    env = {k: v for k, v in os.environ.items() if k.lower() not in proxy_names}
    if proxy is not None:
        env.update(HTTP_PROXY=proxy, HTTPS_PROXY=proxy, http_proxy=proxy, https_proxy=proxy)
    env.update(
        NO_PROXY=no_proxy,
        no_proxy=no_proxy,
        # Each line reaches the pipe when printed, so a test sees a STATE at the moment it is emitted
        # (a block-buffered stdout would only delay states, weakening the state-safety checks).
        PYTHONUNBUFFERED="1",
    )
    return env


_GUARD: OutboundRecorder | None = None


def outbound_guard() -> OutboundRecorder:
    global _GUARD
    if _GUARD is None:
        _GUARD = OutboundRecorder()
    return _GUARD


def close_outbound_guard() -> None:
    """End of the session: stop the shared recorder, if a run started it."""
    global _GUARD
    if _GUARD is not None:
        _GUARD.close()
        _GUARD = None


# ------------------------------------------------------------------------------------------------------------
# What a run printed

SUMMARY = re.compile(
    r"Sync summary \((?P<outcome>\w+)\): (?P<read>\d+) records read, (?P<sent>\d+) sent and acknowledged by Heap, "
    r"(?P<skipped>\d+) skipped, (?P<states>\d+) states emitted; (?P<requests>\d+) requests "
    r"\((?P<retries>\d+) retries, (?P<throttled>\d+) throttled\)"
)
SKIPPED_PREFIX = "Records skipped, by reason: "
TRACEBACK = "Traceback (most recent call last)"
NOT_A_MESSAGE = re.compile(r"Input line (\d+): ")


@dataclass
class Result:
    returncode: int
    messages: list[dict]
    stdout: str  # everything the connector printed on stdout
    stderr: str
    lines: list[str]  # the stdout lines that were messages, one per message
    duration: float  # from start to exit, seconds
    ended_at: float  # time.monotonic() when the process had exited
    input_messages: list[dict] = field(default_factory=list)
    # Only with strict=False (runs cut by a signal): stdout lines that were not one Airbyte message each, and an
    # unterminated last line (a message cut by SIGKILL is no message at all).
    bad_lines: list[str] = field(default_factory=list)
    cut_line: str = ""

    @property
    def states(self) -> list[dict]:
        """The emitted states as the source sent them: without the destinationStats the connector adds."""
        return [without_destination_stats(m["state"]) for m in self.messages if m["type"] == "STATE"]

    def cursors(self, key: str = "last") -> list[Any]:
        """The `key` cursor of every emitted (per-stream) STATE, in the order they came out."""
        return [m["state"]["stream"]["stream_state"][key] for m in self.messages if m["type"] == "STATE"]

    @property
    def destination_record_counts(self) -> list[float]:
        return [m["state"]["destinationStats"]["recordCount"] for m in self.messages if m["type"] == "STATE"]

    @property
    def destination_stats(self) -> list[dict]:
        """Each emitted state's destinationStats: recordCount (reached Heap) and rejectedRecordCount."""
        return [m["state"]["destinationStats"] for m in self.messages if m["type"] == "STATE"]

    @property
    def logs(self) -> list[dict]:
        return [m["log"] for m in self.messages if m["type"] == "LOG"]

    @property
    def traces(self) -> list[dict]:
        return [m["trace"] for m in self.messages if m["type"] == "TRACE"]

    @property
    def errors(self) -> list[dict]:
        return [t["error"] for t in self.traces if t.get("type") == "ERROR"]

    @property
    def statuses(self) -> list[dict]:
        return [m["connectionStatus"] for m in self.messages if m["type"] == "CONNECTION_STATUS"]

    def log_lines(self, level: str | None = None) -> list[str]:
        return [log["message"] for log in self.logs if level is None or log["level"] == level]

    @property
    def summary_line(self) -> str:
        """The final 'Sync summary' LOG line (exactly one must exist)."""
        found = [line for line in self.log_lines("INFO") if SUMMARY.search(line) or line.startswith("Sync summary")]
        assert len(found) == 1, f"expected one Sync summary line, got {len(found)}:\n{self.describe()}"
        return found[0]

    @property
    def summary(self) -> dict:
        """The figures of the Sync summary line: read, sent, skipped, states, requests, retries, throttled
        (ints) and outcome."""
        match = SUMMARY.search(self.summary_line)
        assert match, f"the Sync summary line is not in the expected form: {self.summary_line}"
        figures: dict[str, Any] = {k: int(v) for k, v in match.groupdict().items() if k != "outcome"}
        figures["outcome"] = match["outcome"]
        return figures

    @property
    def skipped(self) -> dict[str, int]:
        """reason -> count from the WARN 'Records skipped, by reason' line ({} when there is none)."""
        lines = [line for line in self.log_lines("WARN") if line.startswith(SKIPPED_PREFIX)]
        assert len(lines) <= 1, lines
        if not lines:
            return {}
        listing = lines[0][len(SKIPPED_PREFIX) :]
        return {m[1]: int(m[2]) for m in re.finditer(r"(.+?): (\d+)(?:, |$)", listing)}

    @property
    def unparsable_lines(self) -> list[int]:
        """The input line numbers the connector reported as not Airbyte messages, in the order reported."""
        return [int(m[1]) for text in self.log_lines("WARN") if (m := NOT_A_MESSAGE.match(text))]

    @property
    def output_without_states(self) -> str:
        """Everything printed except the STATE lines (they carry the source's own cursor): stdout, then stderr."""
        lines = [line for line, m in zip(self.lines, self.messages, strict=True) if m["type"] != "STATE"]
        lines += self.bad_lines + ([self.cut_line] if self.cut_line else [])
        return "\n".join(lines) + "\n" + self.stderr

    def assert_clean(self, *secrets: str) -> None:
        """Exit 0, no TRACE, no traceback, none of `secrets` in any output."""
        assert self.returncode == 0, self.describe()
        assert not self.errors, self.describe()
        assert_no_traceback(self)
        output = self.stdout + self.stderr
        leaked = [secret for secret in secrets if secret in output]
        assert not leaked, f"input content leaked into the output: {leaked[:3]}"

    def describe(self) -> str:
        return (
            f"exit code {self.returncode} after {self.duration:.1f} s\n--- stdout ---\n{self.stdout[-6000:]}\n"
            f"--- stderr ---\n{self.stderr[-3000:]}"
        )


# ------------------------------------------------------------------------------------------------------------
# Checks


def assert_check_failed(result: Result, words: Iterable[str]) -> None:
    """`result` (of `check`) holds one CONNECTION_STATUS: FAILED, its message naming every word."""
    assert len(result.statuses) == 1, result.describe()
    status = result.statuses[0]
    assert status["status"] == "FAILED", result.describe()
    for word in words:
        assert word in status["message"], f"{word!r} missing from: {status['message']!r}"


def assert_no_traceback(result: Result) -> None:
    assert TRACEBACK not in result.stdout and TRACEBACK not in result.stderr, result.describe()
    for error in result.errors:
        assert not error.get("stack_trace"), f"TRACE carries a stack trace: {error.get('stack_trace', '')[:300]}"


def _private_values(messages: Iterable[dict]) -> set[str]:
    """Every text value (and number-like text) in the input records, long enough to be recognisable."""
    values: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for inner in value.values():
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)
        elif isinstance(value, str) and len(value) >= 6:
            values.add(value)

    for message in messages:
        if isinstance(message, dict) and message.get("type") == "RECORD":
            walk(message.get("record", {}).get("data"))
    return values


def assert_no_leaks(result: Result, private: Iterable[str]) -> None:
    """No record value in stderr or in any stdout line except STATE messages (which carry the source's cursor)."""
    text = result.output_without_states
    leaked = sorted(value for value in private if value in text)
    assert not leaked, f"record values leaked into the connector's output: {leaked[:5]}\n{result.describe()}"


def _message_or_error(raw: bytes) -> tuple[dict | None, str]:
    """(the Airbyte message on this stdout line, "") or (None, why it is not one)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"a stdout line that is not UTF-8 ({error})"
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        return None, "a stdout line that is not JSON"
    if not (isinstance(message, dict) and message.get("type") in AIRBYTE_TYPES):
        return None, "a stdout line that is not an Airbyte message"
    try:
        if message["type"] == "DESTINATION_CATALOG":
            PROTOCOL_MESSAGE.load(message)
        else:
            AirbyteMessageSerializer.load(message)
    except Exception as error:  # noqa: BLE001 - any failure to load means the line breaks the protocol
        return None, f"a stdout line that is not a valid Airbyte message ({error})"
    return message, ""


# ------------------------------------------------------------------------------------------------------------
# Running the connector


def run_connector(
    command: str,
    config: dict | str | None = None,
    catalog: dict | None = None,
    messages: Iterable[dict] = (),
    timeout: float = 60.0,
    *,
    stdin_lines: Iterable[str] | None = None,
    stdin: bytes | str | None = None,
    stdin_file: Path | None = None,
    stdin_offset: int = 0,
    pauses: dict[int, float | Callable[[], object]] | None = None,
    on_message: Callable[[dict], None] | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
    env: dict[str, str] | None = None,
    check_leaks: bool = True,
    private: Iterable[str] = (),
    argv: list[str] | None = None,
    directory: Path | None = None,
    strict: bool = True,
) -> Result:
    """Run `destination-heap-analytics <command>` with config/catalog files and its input on stdin; what it printed.

    Input: `messages`, one JSON line each, fed through a pipe; or, instead, `stdin_lines` (text lines, through
    the pipe), `stdin` (raw bytes or text, written to a file the connector reads) or `stdin_file` (read from
    `stdin_offset` on). With one of those, `messages` only says what the input holds, for the leak check.
    `pauses` maps a piped line's index to what the source does after writing it: wait that many seconds (a
    stalled or trickling source), or call a function that returns once the test's event happened (the source
    stays quiet until then: a wait on an Event, with a generous bound).
    `config` is a dict (written as JSON) or text (written as it is: a broken config file).

    Each stdout line is parsed (and must be an Airbyte message, else the test fails) as it arrives; `on_message`
    sees it at that moment, from a reader thread, so a test can compare what the stand-in holds when a STATE
    leaves the connector. `on_start(process)` runs in the calling thread while the connector runs and may take
    its time (wait for a moment, send a signal); if it raises, the connector is killed and the error raised.
    With `strict=False` (runs cut by a signal), lines that are not one message are kept in `Result.bad_lines`
    for the test to judge, and an unterminated last line in `Result.cut_line`.

    The files go to `directory` (also the working directory; default a temporary one). `env` defaults to the
    outbound guard's (then checked afterwards); `check_leaks` looks for the records' values (from `messages`)
    and `private` in every output line but STATEs. Past `timeout` seconds the connector is killed and the test
    fails.
    """
    messages = list(messages)
    piped = stdin is None and stdin_file is None
    if not piped and (stdin_lines is not None or pauses or (stdin is not None and stdin_file is not None)):
        raise ValueError("give the input one way: messages or stdin_lines (piped, with pauses), stdin or stdin_file")
    lines = ([json.dumps(m) for m in messages] if stdin_lines is None else list(stdin_lines)) if piped else []
    guard = outbound_guard() if env is None else None
    if guard is not None:
        guard.clear()
    with ExitStack() as cleanup:
        if directory is None:
            directory = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="heap-it-")))
        input_file = ExitStack()  # closed once the child has its own copy
        directory.mkdir(parents=True, exist_ok=True)
        args = [CONNECTOR, command] if argv is None else list(argv)
        if config is not None:
            config_path = directory / "config.json"
            config_path.write_text(config if isinstance(config, str) else json.dumps(config))
            args += ["--config", str(config_path)]
        if catalog is not None:
            catalog_path = directory / "catalog.json"
            catalog_path.write_text(json.dumps(catalog))
            args += ["--catalog", str(catalog_path)]
        stdin_source: IO[bytes] | int = subprocess.PIPE
        if stdin is not None:
            stdin_path = directory / "stdin.bin"
            stdin_path.write_bytes(stdin.encode() if isinstance(stdin, str) else stdin)
            stdin_source = input_file.enter_context(open(stdin_path, "rb"))
        elif stdin_file is not None:
            stdin_source = input_file.enter_context(open(stdin_file, "rb"))
            stdin_source.seek(stdin_offset)
        started = time.monotonic()
        with input_file:
            process = subprocess.Popen(
                args,
                stdin=stdin_source,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=directory,
                env=env if env is not None else guard.env(),
            )
        run = _Run(process, lines, pauses, on_message, strict, timeout)
        try:
            if on_start is not None:
                on_start(process)
            returncode = run.wait()
            ended = time.monotonic()
        finally:
            run.stop()
        stdout = run.stdout_text()
    result = Result(
        returncode=returncode,
        messages=run.messages,
        stdout=stdout,
        lines=run.lines,
        stderr=run.stderr_text(),
        duration=ended - started,
        ended_at=ended,
        input_messages=messages,
        bad_lines=run.bad_lines,
        cut_line=run.cut_line,
    )
    if run.failure is not None:
        raise run.failure
    if run.timed_out.is_set():
        pytest.fail(f"the connector did not finish within {timeout} s\n{result.describe()}")
    if guard is not None:
        assert not guard.seen, f"the connector tried to reach a non-loopback host: {guard.seen[:3]}"
    if check_leaks:
        assert_no_leaks(result, _private_values(messages) | set(private))
    return result


class _Run:
    """The threads around one connector process: stdin feeder, stdout reader, stderr drain, timeout."""

    def __init__(
        self,
        process: subprocess.Popen,
        lines: list[str],
        pauses: dict[int, float | Callable[[], object]] | None,
        on_message: Callable[[dict], None] | None,
        strict: bool,
        timeout: float,
    ) -> None:
        self.process = process
        self.messages: list[dict] = []
        self.lines: list[str] = []
        self.bad_lines: list[str] = []
        self.cut_line = ""
        self.failure: BaseException | None = None  # from the reader: a broken line (strict) or on_message
        self.timed_out = threading.Event()
        self._exited = threading.Event()
        self._stdout: list[bytes] = []
        self._stderr: list[bytes] = []
        self._lines, self._pauses, self._on_message, self._strict = lines, pauses, on_message, strict
        self._timer = threading.Timer(timeout, self._time_out)
        self._threads = [threading.Thread(target=self._read, daemon=True)]
        self._threads.append(threading.Thread(target=lambda: self._stderr.append(process.stderr.read()), daemon=True))
        if process.stdin is not None:
            self._threads.append(threading.Thread(target=self._feed, daemon=True))
        self._timer.start()
        for thread in self._threads:
            thread.start()

    def _time_out(self) -> None:
        self.timed_out.set()
        self.process.kill()

    def _feed(self) -> None:
        stdin = self.process.stdin
        try:
            for index, line in enumerate(self._lines):
                stdin.write(line.encode() + b"\n")
                stdin.flush()  # line by line, as a source writes
                if self._pauses and index in self._pauses and self._pause(self._pauses[index]):
                    break
            stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the connector stopped reading (it failed, or was terminated): that is its right

    def _pause(self, pause: float | Callable[[], object]) -> bool:
        """The source's pause after a line; True when the run ended meanwhile."""
        if callable(pause):
            pause()
            return self._exited.is_set()
        return self._exited.wait(pause)

    def _read(self) -> None:
        try:
            for raw in self.process.stdout:
                self._stdout.append(raw)
                if not raw.endswith(b"\n") and not self._strict:
                    self.cut_line = raw.decode("utf-8", errors="replace")
                    break
                if not raw.strip():
                    continue
                message, error = _message_or_error(raw.rstrip(b"\n"))
                if message is None:
                    text = raw.rstrip(b"\n").decode("utf-8", errors="replace")
                    if self._strict:
                        pytest.fail(f"connector printed {error}: {text[:300]!r}")
                    self.bad_lines.append(text)
                    continue
                self.lines.append(raw.rstrip(b"\n").decode("utf-8"))
                self.messages.append(message)
                if self._on_message is not None:
                    self._on_message(message)
        except BaseException as failure:  # noqa: BLE001 - raised again in the test's thread by run_connector
            self.failure = failure
            self.process.kill()
            self._stdout.append(self.process.stdout.read())

    def wait(self) -> int:
        self._threads[0].join()  # stdout ends when the connector exits (or is killed)
        return self.process.wait()

    def stop(self) -> None:
        self._exited.set()
        self._timer.cancel()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for thread in self._threads:
            thread.join(5)

    def stdout_text(self) -> str:
        return b"".join(self._stdout).decode("utf-8", errors="replace")

    def stderr_text(self) -> str:
        return b"".join(self._stderr).decode("utf-8", errors="replace")


# ------------------------------------------------------------------------------------------------------------
# State safety


class StateWatcher:
    """Snapshots what the stand-in holds at the moment each STATE comes out of the connector."""

    def __init__(self, heap: HeapStandin, api_type: str, key: Callable[[dict], str]) -> None:
        self._heap = heap
        self._kind = ITEM_KIND[api_type]
        self._id_field = "account_id" if api_type == "add_account_properties" else "identity"
        self._key = key
        self.snapshots: list[tuple[dict, set[str]]] = []

    def held(self) -> set[str]:
        return {item[self._id_field] for item in getattr(self._heap, self._kind)}

    def on_message(self, message: dict) -> None:
        if message["type"] == "STATE":
            self.snapshots.append((without_destination_stats(message["state"]), self.held()))

    def assert_safe(self, input_messages: list[dict], valid: Callable[[dict], bool] = lambda m: True) -> None:
        """Every emitted STATE: each valid record before it in the input was in the stand-in when it left;
        and states come out in input order, each once."""
        prefixes: list[tuple[dict, set[str]]] = []  # each input STATE, with the keys of the records before it
        keys: set[str] = set()
        for message in input_messages:
            if message["type"] == "STATE":
                prefixes.append((message["state"], set(keys)))
            elif message["type"] == "RECORD" and valid(message):
                keys.add(self._key(message["record"]["data"]))
        emitted = [s for s, _ in self.snapshots]
        assert emitted == [s for s, _ in prefixes[: len(emitted)]], "states emitted out of order, twice or altered"
        for position, ((_, held), (_, before)) in enumerate(zip(self.snapshots, prefixes, strict=False)):
            missing = before - held
            assert not missing, (
                f"STATE #{position + 1} left the connector before {len(missing)} earlier records were in Heap"
            )


def watch(condition: Callable[[], bool], action: Callable[[], None], timeout: float = 30.0) -> threading.Thread:
    """Run `action` (once) as soon as `condition()` holds, polling from a daemon thread."""

    def loop() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                action()
                return
            time.sleep(0.002)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def in_flight_together(heap: HeapStandin, count: int, timeout: float = 60.0) -> threading.Barrier:
    """The stand-in holds the first request on each of its first `count` connections until `count` requests
    are in flight at once (a barrier their handler threads meet at), then lets them all through: a test sees
    that the connector reaches `count` requests together as an event, not by luck of timing. The barrier is
    broken if they never met within `timeout` (generous: only a connector that never reaches `count` waits
    that long). Replaces any reject_when predicate."""
    barrier = threading.Barrier(count, timeout=timeout)
    held: set[int] = set()  # the handler threads (one per connection) that met at the barrier
    lock = threading.Lock()

    def hold(item: dict) -> None:
        thread = threading.get_ident()
        with lock:
            meets = len(held) < count and thread not in held
            if meets:
                held.add(thread)
        if meets:
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass  # the test sees barrier.broken
        return None

    heap.reject_when(hold)
    return barrier


def drained(process: subprocess.Popen) -> bool:
    """No byte written to the process's stdin pipe is still unread: it has read everything it was given."""
    unread = array.array("i", [0])
    fcntl.ioctl(process.stdin.fileno(), termios.FIONREAD, unread)
    return unread[0] == 0


def run_setup_script(script: Path, timeout: float) -> str:
    """Run one of scripts/setup-*.sh for a test module's fixture; its stdout, or the test fails saying why."""
    try:
        setup = subprocess.run(
            ["bash", str(script)], capture_output=True, text=True, timeout=timeout, cwd=script.parent.parent
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{script.name} did not finish within {timeout} s: {error}")
    if setup.returncode != 0:
        pytest.fail(f"{script.name} failed (exit {setup.returncode}):\n{setup.stdout[-3000:]}\n{setup.stderr[-5000:]}")
    return setup.stdout


def build_connector_image() -> str:
    """The connector image, built (or refreshed from the layer cache) by scripts/setup-container.sh; the test
    skips only where podman cannot be had (not root, or no apt-get), and fails instead under CI."""
    missing = [
        tool
        for tool in ("podman", "runc", "debootstrap")
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()
    ]
    if missing and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        reason = (
            f"{', '.join(missing)} not installed, and installing needs root and apt-get "
            "(run scripts/setup-container.sh as root on Debian)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the container tests: {reason}")
        pytest.skip(reason)
    run_setup_script(CONTAINER_SETUP, CONTAINER_SETUP_TIMEOUT)
    return CONNECTOR_IMAGE


def docker_run(*args: str) -> list[str]:
    """`docker run -i --rm <args>` by podman with this machine's flags (scripts/podman-as-docker/docker)."""
    return [str(PODMAN_AS_DOCKER / "docker"), "run", "-i", "--rm", *args]


def send_sigterm(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
