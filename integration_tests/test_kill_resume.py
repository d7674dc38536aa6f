"""Kill the connector at random points of a 50,000-record track load, resume as Airbyte would, and check the promise.

The promise: every record before an emitted STATE is in Heap; a re-run from that state completes the load; no
event lands twice. The load is a file of 50,000 unique records with a STATE after every 500 (carrying the index
of the last record before it); each run reads it as stdin from the position after the last state the previous
run emitted. Runs are cut by SIGKILL (nothing cleans up) or SIGTERM (the connector drains, then exits non-zero
with a TRACE) at seeded-random points: after a random number of STATE lines, a random number of requests, or a
random delay, with the odd 5xx, reset or 429 injected so batches finish out of order.

A kill point counts only when it was observed to land mid-load: the process was alive when the signal went, the
stand-in did not yet hold the whole load, and afterwards the process had exited by the signal (SIGKILL: killed,
no summary printed) or, for SIGTERM, with the transient_error TRACE the README promises for every SIGTERM that
lands mid-load. Faults are counted as the stand-in served them. Sends the stand-in saw twice must be explained
by replays after a kill (records the stand-in held past the state a run resumed from) or lost acknowledgements.

The connector runs with PYTHONUNBUFFERED=1 so each STATE reaches the pipe when it is printed (by default
Python block-buffers a piped stdout, which only delays states, making the check below weaker, not different).
"""

from __future__ import annotations

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

from heap_standin import Fault, HeapStandin
from integration_tests import reliability
from integration_tests.adversarial import (
    EMITTED_AT,
    assert_loaded_once,
    event_config,
    event_indices,
    events_catalog,
    record_faults_served,
    record_line,
    state_line,
)
from integration_tests.support import Result, run_connector

TOTAL = 50_000
STATE_EVERY = 500
SEED = 20240531
MIN_KILL_POINTS = 20
SIGTERM_POINTS = 5
# A deadline is the behaviour here: after SIGTERM, requests in flight get 10 s, then the connector exits. 30 s
# leaves a loaded machine room; a connector that waits for a hanging request (60 s below) cannot meet it.
TERM_EXIT_BOUND_SECONDS = 30.0
CUT_RUN_TIMEOUT = 150.0  # up to 60 s to reach the cut point, up to 60 s to exit after it, and room


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


def _config(heap: HeapStandin, **overrides: object) -> dict:
    tuning = {"batch_size": 200, "max_concurrent_requests": 3, "request_timeout_seconds": 2, "max_retries": 10}
    return event_config(heap, {"property_columns": "i"}, **{**tuning, **overrides})


# ------------------------------------------------------------------------------------------------------------
# One connector run (support.run_connector), watched line by line while it runs


@dataclass
class Watch:
    """What a run has printed so far, as its lines arrive (run_connector's on_message), for cutting it there."""

    heap: HeapStandin
    process: subprocess.Popen | None = None
    states: list[int] = field(default_factory=list)  # "last" of every STATE, in order
    snapshots: list[tuple[int, int]] = field(default_factory=list)  # (state's last, events the stand-in held then)
    messages: int = 0
    condition: threading.Condition = field(default_factory=threading.Condition)

    def on_message(self, message: dict) -> None:
        with self.condition:
            if message["type"] == "STATE":
                last = message["state"]["stream"]["stream_state"]["last"]
                # The stand-in's event list only grows: its length now bounds what was acknowledged.
                self.snapshots.append((last, len(self.heap.events)))
                self.states.append(last)
            self.messages += 1
            self.condition.notify_all()

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
        """True once predicate() holds; False if the process ended first."""
        deadline = time.monotonic() + timeout
        with self.condition:
            while not predicate():
                if self.process.poll() is not None or time.monotonic() > deadline:
                    return predicate()
                self.condition.wait(0.002)
        return True


def _run(
    load: Load,
    offset: int,
    heap: HeapStandin,
    config: dict,
    during: Callable[[Watch], None] | None = None,
    timeout: float = CUT_RUN_TIMEOUT,
) -> tuple[Watch, Result]:
    """`write` reading `load` from `offset` on; `during(watch)` runs meanwhile (to cut the run, say). Lines that
    are not one message, or cut by a kill, are the test's to judge (strict=False)."""
    watch = Watch(heap)

    def started(process: subprocess.Popen) -> None:
        watch.process = process
        if during is not None:
            during(watch)

    result = run_connector(
        "write",
        config,
        events_catalog(),
        stdin_file=load.path,
        stdin_offset=offset,
        on_message=watch.on_message,
        on_start=started,
        strict=False,
        timeout=timeout,
    )
    return watch, result


def _cut(run: Watch, rng: random.Random, modes: tuple[str, ...] = ("states", "requests", "delay")) -> str:
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


def _maybe_inject(heap: HeapStandin, rng: random.Random) -> None:
    """Sometimes queue one fault (recorded only once the stand-in served it: record_faults_served)."""
    if rng.random() > 0.35:
        return
    faults = (Fault(status=503), Fault(status=500), Fault(reset=True), Fault(status=429, retry_after=0.05))
    heap.inject(rng.choice(faults))


def _check_states(runs: list[Watch], heap: HeapStandin) -> None:
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


def _check_final(heap: HeapStandin, replays: int) -> None:
    assert_loaded_once(heap, set(range(TOTAL)), replays=replays)
    keys = Counter(event["idempotency_key"] for event in heap.events)
    assert len(keys) == TOTAL, "two stored events share an idempotency key"
    reliability.record("replays_absorbed_by_idempotency", heap.duplicates_dropped)
    record_faults_served(heap.faults_served)


def _resume_point(result: Result, load: Load, offset: int) -> int:
    states = result.cursors()
    return load.resume_offset[states[-1]] if states else offset


def _replays(heap: HeapStandin, load: Load, offset: int) -> int:
    """Records a run reading `load` from `offset` will send although the stand-in already holds them: those past
    the state it resumes from that an earlier run delivered (acknowledged after that state, or cut by a kill)."""
    first = 0 if offset == 0 else next(last + 1 for last, at in load.resume_offset.items() if at == offset)
    return sum(1 for i in event_indices(heap) if i >= first)


def _landed_mid_load(process: subprocess.Popen, heap: HeapStandin, total: int = TOTAL) -> bool:
    """Just before a signal: the process had not exited and the stand-in did not hold the whole load yet (so
    the load could not have finished: the connector ends only once Heap acknowledged every record)."""
    return process.poll() is None and heap.stats()["events_stored"] < total


def _summary_printed(result: Result) -> bool:
    return any(line.startswith("Sync summary") for line in result.log_lines())


def _describe(result: Result) -> str:
    return f"{result.describe()}\nlines that were not one message: {result.bad_lines[:2]}"


# ------------------------------------------------------------------------------------------------------------
# The tests


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_loads_everything_once(load: Load) -> None:
    rng = random.Random(SEED)
    heap = HeapStandin(latency_ms=5).start()
    try:
        config = _config(heap)
        watches: list[Watch] = []
        offset, kills, replays = 0, 0, 0
        while kills < MIN_KILL_POINTS:
            _maybe_inject(heap, rng)
            cut: dict[str, object] = {}

            def kill_at_a_random_point(run: Watch, cut: dict = cut) -> None:
                cut["point"] = _cut(run, rng)
                if run.process.poll() is None:
                    cut["mid_load"] = _landed_mid_load(run.process, heap)
                    run.process.send_signal(signal.SIGKILL)
                    cut["killed"] = True

            replays += _replays(heap, load, offset)
            watch, result = _run(load, offset, heap, config, kill_at_a_random_point)
            watches.append(watch)
            if result.returncode == 0:  # the load ended before this kill point: nothing left to cut
                break
            number, point, code = len(watches), cut.get("point"), result.returncode
            assert code == -signal.SIGKILL, f"run {number} ({point}) ended by itself with {code}\n{_describe(result)}"
            # Observed: alive and short of the whole load when the signal went, killed by it, no summary printed.
            if cut.get("killed") and cut.get("mid_load") and not _summary_printed(result):
                kills += 1
            states = result.cursors()
            assert states == watch.states, "the runner and the watch saw different states"
            assert states == sorted(set(states)), f"states out of order or repeated: {states}"
            assert not result.bad_lines, f"stdout lines that are not one message: {result.bad_lines[:2]}"
            _check_states([watch], heap)
            offset = _resume_point(result, load, offset)
            held = heap.stats()["events_stored"]
            print(f"SIGKILL {kills} {point}: states {states[:1]}..{states[-1:]}, {held} events in Heap")
        assert kills >= MIN_KILL_POINTS, f"only {kills} kill points landed before the load completed"

        replays += _replays(heap, load, offset)
        final_watch, final = _run(load, offset, heap, config, timeout=90)
        watches.append(final_watch)
        assert final.returncode == 0, _describe(final)
        assert final.cursors() and final.cursors()[-1] == TOTAL - 1, _describe(final)
        assert not final.traces, _describe(final)
        assert not final.bad_lines and not final.cut_line, final.bad_lines[:2]
        _check_states(watches, heap)
        _check_final(heap, replays)
        reliability.record("kill_points_survived", kills)
        reliability.record("kill_points_sigkill", kills)
    finally:
        heap.stop()


@pytest.mark.slow
def test_sigterm_drains_emits_only_acknowledged_states_and_resume_completes(load: Load) -> None:
    rng = random.Random(SEED + 1)
    heap = HeapStandin(latency_ms=5).start()
    try:
        config = _config(heap)
        watches: list[Watch] = []
        offset, terminated, replays = 0, 0, 0
        failure_types: Counter = Counter()
        completed = False
        while terminated < SIGTERM_POINTS:
            _maybe_inject(heap, rng)
            cut: dict[str, object] = {}

            def terminate_at_a_random_point(run: Watch, cut: dict = cut) -> None:
                # A SIGTERM must find the connector writing (before that, Python's default action applies):
                # wait for a STATE or a request, then cut at a random point. Not right after a STATE line: where
                # the signal lands while messages are printed or STATEs parsed is the subject of
                # test_sigterm_while_states_stream_out_keeps_the_protocol; this test is about the data promise.
                run.wait_until(lambda: bool(run.states) or heap.stats()["in_flight"] > 0)
                cut["point"] = _cut(run, rng, modes=("requests", "delay"))
                if run.process.poll() is None:
                    cut["mid_load"] = _landed_mid_load(run.process, heap)
                    cut["signalled"] = time.monotonic()
                    run.process.send_signal(signal.SIGTERM)

            replays += _replays(heap, load, offset)
            watch, result = _run(load, offset, heap, config, terminate_at_a_random_point)
            watches.append(watch)
            if "signalled" not in cut:  # the load ended before the cut point
                assert result.returncode == 0, _describe(result)
                completed = True
                break
            code, point, states = result.returncode, cut["point"], result.cursors()
            took = result.ended_at - cut["signalled"]
            assert states == sorted(set(states)), states
            _check_states([watch], heap)
            if not cut["mid_load"]:  # the stand-in held the whole load already: no promise about how it ends
                failure_types["after_the_load"] += 1
                if code == 0:
                    completed = True
                    break
                offset = _resume_point(result, load, offset)
                continue
            # The README's promise, every time: a SIGTERM that lands mid-load ends the sync with a transient_error
            # TRACE and a non-zero exit, within the grace period.
            assert code != 0, f"SIGTERM ({point}) landed mid-load, yet the sync exited 0\n{_describe(result)}"
            assert took < TERM_EXIT_BOUND_SECONDS, f"exit took {took:.1f} s after SIGTERM\n{_describe(result)}"
            assert result.errors, f"no TRACE error after SIGTERM ({point})\n{_describe(result)}"
            failure_types[result.errors[-1]["failure_type"]] += 1
            assert result.errors[-1]["failure_type"] == "transient_error", f"SIGTERM ({point}): {result.errors[-1]}"
            assert states[-1:] != [TOTAL - 1], "the last STATE claims a load that SIGTERM cut"
            terminated += 1
            offset = _resume_point(result, load, offset)
            print(f"SIGTERM {terminated} {point}: exit {code} after {took:.2f} s, states {states[-1:]}")
        print(f"TRACE failure types after SIGTERM: {dict(failure_types)}")
        assert terminated >= SIGTERM_POINTS, f"only {terminated} SIGTERMs landed mid-load: {dict(failure_types)}"

        if not completed:
            replays += _replays(heap, load, offset)
            final_watch, final = _run(load, offset, heap, config, timeout=90)
            watches.append(final_watch)
            assert final.returncode == 0, _describe(final)
            assert final.cursors()[-1] == TOTAL - 1
        _check_states(watches, heap)
        _check_final(heap, replays)
        reliability.record("kill_points_survived", terminated)
        reliability.record("kill_points_sigterm", terminated)
    finally:
        heap.stop()


def test_sigterm_exits_within_grace_even_when_a_request_hangs(tmp_path: Path) -> None:
    heap = HeapStandin().start()
    try:
        config = _config(heap, request_timeout_seconds=90, max_concurrent_requests=2, batch_size=100)
        lines = [_record_line(i) for i in range(1000)] + [state_line(999)]
        path = tmp_path / "messages.jsonl"
        path.write_text("\n".join(lines) + "\n")
        heap.inject(Fault(hang_seconds=60), Fault(hang_seconds=60))
        signalled: list[float] = []
        mid_load: list[bool] = []

        def terminate_while_requests_hang(run: Watch) -> None:
            assert run.wait_until(lambda: heap.stats()["in_flight"] >= 2, timeout=30), "no request ever hung"
            mid_load.append(_landed_mid_load(run.process, heap, total=1000))
            signalled.append(time.monotonic())
            run.process.send_signal(signal.SIGTERM)

        _, result = _run(Load(path, {}), 0, heap, config, terminate_while_requests_hang, timeout=150)
        took = result.ended_at - signalled[0]
        assert mid_load == [True], "the connector had ended before the SIGTERM"
        assert result.returncode != 0
        assert result.errors, _describe(result)
        assert result.errors[-1]["failure_type"] == "transient_error", _describe(result)
        assert took < TERM_EXIT_BOUND_SECONDS, f"the connector exited {took:.1f} s after SIGTERM"
        assert heap.faults_served == {"hang": 2}
        record_faults_served(heap.faults_served)
        reliability.record("kill_points_survived")
        reliability.record("kill_points_sigterm")
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
        config = _config(heap, batch_size=100, max_concurrent_requests=4)

        mid_load: list[bool] = []
        received = [0]  # records the stand-in had received (stored or deduplicated) when the attempt began

        def terminate_while_states_stream_out(run: Watch) -> None:
            assert run.wait_until(lambda: len(run.states) >= 50), "fewer than 50 states came out"
            # Mid-load: alive, and this attempt had not yet sent all 20,000 records (each is sent at least once).
            stats = heap.stats()
            sent = stats["events_stored"] + stats["events_deduplicated"] - received[0]
            mid_load.append(run.process.poll() is None and sent < 20_000)
            run.process.send_signal(signal.SIGTERM)

        landed = 0
        for attempt in range(16):  # the race is won about a third of the time; 16 misses in a row: ~0.3 %
            stats = heap.stats()
            received[0] = stats["events_stored"] + stats["events_deduplicated"]
            del mid_load[:]
            watch, result = _run(Load(path, {}), 0, heap, config, terminate_while_states_stream_out, timeout=120)
            assert result.returncode != 0, _describe(result)
            _check_states([watch], heap)
            glued = result.bad_lines[0][:300] if result.bad_lines else ""
            assert not result.bad_lines, f"attempt {attempt}: a stdout line holding more than one message: {glued!r}"
            assert result.errors, f"attempt {attempt}: no TRACE\n{_describe(result)}"
            assert result.errors[-1]["failure_type"] == "transient_error", f"attempt {attempt}: {result.errors[-1]}"
            assert not result.errors[-1].get("stack_trace"), f"attempt {attempt}: a stack trace in the TRACE"
            landed += mid_load == [True]
        reliability.record("kill_points_survived", landed)
        reliability.record("kill_points_sigterm", landed)
    finally:
        heap.stop()
