"""Kill the connector at random points of a 50,000-record track load, resume as Airbyte would, and check the promise.

The promise: every record before an emitted STATE is in Heap; a re-run from that state completes the load; no
event lands twice. The load is a file of 50,000 unique records with a STATE after every 500 (carrying the index
of the last record before it); each run reads it as stdin from the position after the last state the previous
run emitted. Runs are cut by SIGKILL (nothing cleans up) or SIGTERM (the connector drains, then exits non-zero
with a TRACE) at seeded-random points: after a random number of STATE lines, a random number of requests, or a
random delay, with the odd 5xx, reset or 429 injected so batches finish out of order.

The connector runs with PYTHONUNBUFFERED=1 so each STATE reaches the pipe when it is printed (by default
Python block-buffers a piped stdout, which only delays states, making the check below weaker, not different).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from destination_heap_analytics.heap_standin import Fault, HeapStandin
from integration_tests import reliability
from integration_tests.adversarial import (
    EMITTED_AT,
    assert_loaded_once,
    event_config,
    events_catalog,
    record_line,
    state_line,
    write_inputs,
)
from integration_tests.conftest import CONNECTOR, loopback_env

TOTAL = 50_000
STATE_EVERY = 500
SEED = 20240531
MIN_KILL_POINTS = 20
SIGTERM_POINTS = 5
TERM_EXIT_BOUND_SECONDS = 15.0  # 10 s grace for requests in flight, plus room to exit


# ------------------------------------------------------------------------------------------------------------
# Input: one file, and where a run resumes after each state


@dataclass(frozen=True)
class Load:
    path: Path
    resume_offset: dict[int, int]  # state's "last" index -> byte offset of the line after that STATE


def _record_line(i: int) -> str:
    data = {"user": f"kill-user-{i % 1000:04d}", "event": "Kill Resume Probe", "i": i, "salt": f"s{i * 7919 % 100003}"}
    return record_line(data, emitted_at=EMITTED_AT + i)


@pytest.fixture(scope="module")
def load(tmp_path_factory: pytest.TempPathFactory) -> Load:
    path = tmp_path_factory.mktemp("kill-resume") / "messages.jsonl"
    offsets: dict[int, int] = {}
    position = 0
    with open(path, "wb") as handle:
        for i in range(TOTAL):
            chunk = (_record_line(i) + "\n").encode()
            if i % STATE_EVERY == STATE_EVERY - 1:
                chunk += (state_line(i) + "\n").encode()
                offsets[i] = position + len(chunk)
            handle.write(chunk)
            position += len(chunk)
    return Load(path, offsets)


def _write_config(directory: Path, heap: HeapStandin, **overrides: object) -> list[str]:
    """config.json and catalog.json in `directory`; the connector arguments naming them."""
    tuning = {"batch_size": 200, "max_concurrent_requests": 3, "request_timeout_seconds": 2, "max_retries": 10}
    config = event_config(heap, {"property_columns": "i"}, **{**tuning, **overrides})
    return write_inputs(directory, config, events_catalog())


# ------------------------------------------------------------------------------------------------------------
# One connector run, watched line by line


@dataclass
class Run:
    process: subprocess.Popen
    heap: HeapStandin
    started: float = field(default_factory=time.monotonic)
    states: list[int] = field(default_factory=list)  # "last" of every STATE, in order
    snapshots: list[tuple[int, int]] = field(default_factory=list)  # (state's last, events the stand-in held then)
    messages: list[dict] = field(default_factory=list)
    bad_lines: list[bytes] = field(default_factory=list)  # stdout lines that are not one JSON message
    stderr: str = ""
    condition: threading.Condition = field(default_factory=threading.Condition)
    threads: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def start(cls, load: Load, offset: int, heap: HeapStandin, inputs: list[str]) -> Run:
        """`write` with the arguments naming the config and catalog, reading `load` from `offset` on."""
        with open(load.path, "rb") as stdin:
            stdin.seek(offset)
            process = subprocess.Popen(
                [CONNECTOR, "write", *inputs],
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=loopback_env(),
            )
        run = cls(process, heap)
        run.threads = [
            threading.Thread(target=run._read_stdout, daemon=True),
            threading.Thread(target=run._read_stderr, daemon=True),
        ]
        for thread in run.threads:
            thread.start()
        return run

    def _read_stdout(self) -> None:
        for raw in self.process.stdout:
            if not raw.endswith(b"\n"):
                break  # a line cut by the kill is no message at all
            try:
                message = json.loads(raw)
            except json.JSONDecodeError:
                with self.condition:
                    self.bad_lines.append(raw)
                continue
            with self.condition:
                if message.get("type") == "STATE":
                    last = message["state"]["stream"]["stream_state"]["last"]
                    # The stand-in's event list only grows: its length now bounds what was acknowledged.
                    self.snapshots.append((last, len(self.heap.events)))
                    self.states.append(last)
                self.messages.append(message)
                self.condition.notify_all()
        with self.condition:
            self.condition.notify_all()

    def _read_stderr(self) -> None:
        self.stderr = self.process.stderr.read().decode(errors="replace")

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
        """True once predicate() holds; False if the process ended first."""
        deadline = time.monotonic() + timeout
        with self.condition:
            while not predicate():
                if self.process.poll() is not None or time.monotonic() > deadline:
                    return predicate()
                self.condition.wait(0.002)
        return True

    def finish(self, timeout: float = 60.0) -> int:
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            for thread in self.threads:
                thread.join(10)
        return code

    def traces(self) -> list[dict]:
        return [m["trace"] for m in self.messages if m.get("type") == "TRACE"]

    def describe(self) -> str:
        tail = "\n".join(json.dumps(m)[:400] for m in self.messages[-8:])
        return f"exit {self.process.returncode}; last messages:\n{tail}\nstderr:\n{self.stderr[-2000:]}"


def _cut(run: Run, rng: random.Random, modes: tuple[str, ...] = ("states", "requests", "delay")) -> str:
    """Wait for a random point of the run (or its end); returns what the point was."""
    mode = rng.choice(modes)
    if mode == "states":
        wanted = len(run.states) + rng.randint(1, 3)
        run.wait_until(lambda: len(run.states) >= wanted)
        return f"after {wanted} states"
    if mode == "requests":
        base = run.heap.stats()["requests"]
        wanted = rng.randint(1, 6)
        run.wait_until(lambda: run.heap.stats()["requests"] - base >= wanted)
        return f"after {wanted} requests reached Heap"
    delay = rng.uniform(0.0, 0.12)
    run.wait_until(lambda: bool(run.messages))  # the connector is up and reading
    time.sleep(delay)
    return f"{delay * 1000:.0f} ms after start-up"


def _maybe_inject(heap: HeapStandin, rng: random.Random) -> str | None:
    if rng.random() > 0.35:
        return None
    kind, fault = rng.choice(
        (
            ("503", Fault(status=503)),
            ("500", Fault(status=500)),
            ("reset", Fault(reset=True)),
            ("429_retry_after", Fault(status=429, retry_after=0.05)),
        )
    )
    heap.inject(fault)
    reliability.record(f"faults_injected_{kind}")
    return kind


def _check_states(runs: list[Run], heap: HeapStandin) -> None:
    """Every STATE that left any run came after every record up to its index was in the stand-in."""
    position: dict[int, int] = {}
    for index, event in enumerate(heap.events):
        position.setdefault(event["properties"]["i"], index)
    # prefix[i]: the stand-in's event count by which records 0..i had all arrived (TOTAL+ if one never did)
    latest, prefix = -1, []
    for i in range(TOTAL):
        latest = max(latest, position.get(i, 10 * TOTAL))
        prefix.append(latest + 1)
    for number, run in enumerate(runs):
        for last, held in run.snapshots:
            assert prefix[last] <= held, (
                f"run {number}: STATE last={last} left the connector when the stand-in held {held} events, "
                f"but records up to {last} were only all there at {prefix[last]}"
            )


def _check_final(heap: HeapStandin) -> None:
    assert_loaded_once(heap, set(range(TOTAL)))
    keys = Counter(event["idempotency_key"] for event in heap.events)
    assert len(keys) == TOTAL, "two stored events share an idempotency key"
    reliability.record("replays_absorbed_by_idempotency", heap.stats()["events_deduplicated"])


def _resume_point(run: Run, load: Load, offset: int) -> int:
    return load.resume_offset[run.states[-1]] if run.states else offset


# ------------------------------------------------------------------------------------------------------------
# The tests


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_loads_everything_once(load: Load, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    heap = HeapStandin(latency_ms=5).start()
    try:
        inputs = _write_config(tmp_path, heap)
        runs: list[Run] = []
        offset, kills, began = 0, 0, time.monotonic()
        while kills < MIN_KILL_POINTS:
            _maybe_inject(heap, rng)
            run = Run.start(load, offset, heap, inputs)
            runs.append(run)
            point = _cut(run, rng)
            if run.process.poll() is None:
                run.process.send_signal(signal.SIGKILL)
                kills += 1
                reliability.record("kill_points_survived")
            code = run.finish()
            if code == 0:  # the load ended before this kill point: nothing left to cut
                break
            assert code == -signal.SIGKILL, f"run {len(runs)} ({point}) ended by itself with {code}\n{run.describe()}"
            assert run.states == sorted(set(run.states)), f"states out of order or repeated: {run.states}"
            assert not run.bad_lines, f"stdout lines that are not one message: {run.bad_lines[:2]}"
            _check_states([run], heap)
            offset = _resume_point(run, load, offset)
            held = heap.stats()["events_stored"]
            print(f"SIGKILL {kills} {point}: states {run.states[:1]}..{run.states[-1:]}, {held} events in Heap")
        assert kills >= MIN_KILL_POINTS, f"only {kills} kill points landed before the load completed"

        final = Run.start(load, offset, heap, inputs)
        runs.append(final)
        assert final.finish(90) == 0, final.describe()
        assert final.states and final.states[-1] == TOTAL - 1, final.describe()
        assert not final.traces(), final.describe()
        assert not final.bad_lines, final.bad_lines[:2]
        _check_states(runs, heap)
        _check_final(heap)
        assert time.monotonic() - began < 150, "kill/resume took far longer than it should"
    finally:
        heap.stop()


@pytest.mark.slow
def test_sigterm_drains_emits_only_acknowledged_states_and_resume_completes(load: Load, tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    heap = HeapStandin(latency_ms=5).start()
    try:
        inputs = _write_config(tmp_path, heap)
        runs: list[Run] = []
        offset, terminated = 0, 0
        failure_types: Counter = Counter()
        completed = False
        while terminated < SIGTERM_POINTS:
            _maybe_inject(heap, rng)
            run = Run.start(load, offset, heap, inputs)
            runs.append(run)
            # A SIGTERM must find the connector writing (before that, Python's default action applies):
            # wait for a STATE or a request, then cut at a random point. Not right after a STATE line: where
            # the signal lands while messages are printed or STATEs parsed is the subject of
            # test_sigterm_while_states_stream_out_keeps_the_protocol; this test is about the data promise.
            run.wait_until(lambda r=run: bool(r.states) or heap.stats()["in_flight"] > 0)
            point = _cut(run, rng, modes=("requests", "delay"))
            if run.process.poll() is not None:
                assert run.finish() == 0, run.describe()
                completed = True
                break
            signalled = time.monotonic()
            run.process.send_signal(signal.SIGTERM)
            code = run.finish(60)
            took = time.monotonic() - signalled
            terminated += 1
            reliability.record("kill_points_survived")
            assert run.states == sorted(set(run.states)), run.states
            _check_states([run], heap)
            if code == 0:  # the SIGTERM was lost (see the test named above): the load ran to its end
                failure_types["sigterm_ignored"] += 1
                assert run.states[-1] == TOTAL - 1, run.describe()
                completed = True
                break
            assert took < TERM_EXIT_BOUND_SECONDS, f"exit took {took:.1f} s after SIGTERM\n{run.describe()}"
            errors = [t["error"] for t in run.traces() if t.get("type") == "ERROR"]
            assert errors, f"no TRACE error after SIGTERM ({point})\n{run.describe()}"
            failure_types[errors[-1]["failure_type"]] += 1
            offset = _resume_point(run, load, offset)
            print(f"SIGTERM {terminated} {point}: exit {code} after {took:.2f} s, states {run.states[-1:]}")
        print(f"TRACE failure types after SIGTERM: {dict(failure_types)}")
        assert terminated >= SIGTERM_POINTS or failure_types["sigterm_ignored"], f"only {terminated} SIGTERMs landed"
        assert failure_types["transient_error"] >= 1, f"no SIGTERM ended as the README says: {dict(failure_types)}"

        if not completed:
            final = Run.start(load, offset, heap, inputs)
            runs.append(final)
            assert final.finish(90) == 0, final.describe()
            assert final.states[-1] == TOTAL - 1
        _check_states(runs, heap)
        _check_final(heap)
    finally:
        heap.stop()


def test_sigterm_exits_within_grace_even_when_a_request_hangs(tmp_path: Path) -> None:
    heap = HeapStandin().start()
    try:
        inputs = _write_config(tmp_path, heap, request_timeout_seconds=30, max_concurrent_requests=2, batch_size=100)
        lines = [_record_line(i) for i in range(1000)] + [state_line(999)]
        path = tmp_path / "messages.jsonl"
        path.write_text("\n".join(lines) + "\n")
        heap.inject(Fault(hang_seconds=18), Fault(hang_seconds=18))
        reliability.record("faults_injected_hang", 2)
        run = Run.start(Load(path, {}), 0, heap, inputs)
        assert run.wait_until(lambda: heap.stats()["in_flight"] >= 2, timeout=30), run.describe()
        signalled = time.monotonic()
        run.process.send_signal(signal.SIGTERM)
        code = run.finish(60)
        took = time.monotonic() - signalled
        reliability.record("kill_points_survived")
        assert code != 0
        assert [t for t in run.traces() if t.get("type") == "ERROR"], run.describe()
        assert took < TERM_EXIT_BOUND_SECONDS, f"the connector exited {took:.1f} s after SIGTERM"
    finally:
        heap.stop()


def test_sigterm_while_states_stream_out_keeps_the_protocol(tmp_path: Path) -> None:
    """A STATE after every record keeps the main thread printing; SIGTERM lands at a random point of that.
    Every attempt must end with whole lines and a transient_error TRACE without a stack trace."""
    path = tmp_path / "dense.jsonl"
    with open(path, "w") as handle:
        for i in range(20_000):
            handle.write(_record_line(i) + "\n" + state_line(i) + "\n")
    heap = HeapStandin().start()
    try:
        inputs = _write_config(tmp_path, heap, batch_size=100, max_concurrent_requests=4)
        for attempt in range(16):  # the race is won about a third of the time; 16 misses in a row: ~0.3 %
            run = Run.start(Load(path, {}), 0, heap, inputs)
            assert run.wait_until(lambda r=run: len(r.states) >= 50), run.describe()
            run.process.send_signal(signal.SIGTERM)
            code = run.finish(60)
            reliability.record("kill_points_survived")
            assert code != 0, run.describe()
            _check_states([run], heap)
            glued = run.bad_lines[0][:300] if run.bad_lines else b""
            assert not run.bad_lines, f"attempt {attempt}: a stdout line holding more than one message: {glued!r}"
            errors = [t["error"] for t in run.traces() if t.get("type") == "ERROR"]
            assert errors, f"attempt {attempt}: no TRACE\n{run.describe()}"
            assert errors[-1]["failure_type"] == "transient_error", f"attempt {attempt}: {errors[-1]}"
            assert not errors[-1].get("stack_trace"), f"attempt {attempt}: a stack trace in the TRACE"
    finally:
        heap.stop()
