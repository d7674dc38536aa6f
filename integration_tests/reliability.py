"""A tiny collector of reliability figures: what the adversarial integration tests put the connector through.

Every figure is counted from what a test observed, after the checks it backs have passed: items the stand-in holds
(and the updates they carry, where updates of a key merge), never input rows; faults the stand-in served (not
queued), signals seen to land on a connector still mid-load, duplicates the stand-in saw. Tests call `record(kind,
amount)` for counts, and `note(kind, *labels)` for figures that count DISTINCT things (hostile inputs by kind, bad
configs by case): the figure is how many distinct labels were noted. The figures go to a JSON file so that they add
up across test modules and pytest-xdist workers. `summary_lines()` renders them with LABELS, for a
`pytest_terminal_summary` hook.

The file is RELIABILITY_FIGURES if set, else `heap-destination-reliability.json` in the system temp dir.
Figures from an earlier pytest session are dropped the first time this session records anything.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV_VAR = "RELIABILITY_FIGURES"
DEFAULT_NAME = "heap-destination-reliability.json"

# The figures a summary shows first (those recorded), in this order; any other kind follows alphabetically.
HEADLINE_KINDS = (
    "records_loaded",
    "property_items_in_order",
    "property_updates_carried",
    "kill_points_survived",
    "kill_points_sigkill",
    "kill_points_sigterm",
    "hostile_inputs",
    "records_lost",
    "records_held_twice",
    "records_sent_twice",
    "records_sent_twice_unexplained",
)

# What each figure counts, as the end-of-run table prints it. A kind without a label prints as its name.
LABELS = {
    "records_loaded": "records loaded as track events (each held exactly once by the stand-in, checked)",
    "kill_points_survived": "kill points survived (SIGKILL or SIGTERM seen to land while the load ran; checks passed)",
    "kill_points_sigkill": "  of which SIGKILL (exited by the signal, no summary printed; resumed from its last state)",
    "kill_points_sigterm": "  of which SIGTERM (every one ended with a transient_error TRACE)",
    "hostile_inputs": "hostile inputs tried (distinct kinds; expected-failure tests not counted)",
    "records_lost": "records lost (expected, not held by the stand-in)",
    "records_held_twice": "records held twice by the stand-in (after its idempotency-key dedup)",
    "records_sent_twice": "records sent twice (the stand-in saw a repeated idempotency key or property item)",
    "records_sent_twice_unexplained": "records sent twice beyond lost acknowledgements and kill/resume replays",
    "replays_absorbed_by_idempotency": "replays absorbed by idempotency keys (kill/resume tests: events resent)",
    "bad_items_isolated": "bad items isolated in bulk requests (reported by reason, the rest loaded)",
    "config_errors_refused": "bad configs refused (distinct case x command, check or write)",
    "secret_scans": "secret scans (runs with the api_key in use, every output line scanned)",
    "outage_2s_ridden_out": "server outages ridden out (stopped 2 s mid-load, the connector still running)",
    "outage_for_good": "server gone for good mid-load (ended as transient_error, resumed)",
    "acknowledgements_lost": "items stored by the stand-in whose acknowledgement may not have reached the connector",
    "property_items_in_order": "user/account property items the stand-in holds, each key's in input order "
    "(checked: all)",
    "property_updates_carried": "  updates those items carry (an item carries its key's updates since the key's "
    "previous item)",
    "request_refusals_caught": "refusals of the request itself caught in a few requests (distinct kinds)",
    "bytes_bound_peak_mb": "peak MB of 8,000 records of 40 kB against a slow stand-in (bound: 250)",
}
FAULT_PREFIX = "faults_served_"


def figures_path() -> Path:
    # One file a pytest process by default, so that two test runs on one machine never mix their figures.
    default = Path(tempfile.gettempdir()) / f"{DEFAULT_NAME.removesuffix('.json')}-{os.getpid()}.json"
    return Path(os.environ.get(ENV_VAR) or default)


def _session() -> str:
    # One pytest session: xdist workers share the run's uid; a plain run is one process.
    return os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid-{os.getpid()}"


@contextmanager
def _locked() -> Iterator[dict]:
    """The stored document, locked against other processes; changes are written back on exit."""
    path = figures_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            text = handle.read()
            try:
                document = json.loads(text) if text.strip() else {}
            except json.JSONDecodeError:
                document = {}
            if not isinstance(document, dict) or not isinstance(document.get("figures"), dict):
                document = {"session": None, "figures": {}}
            if not isinstance(document.get("distinct"), dict):
                document["distinct"] = {}
            before = json.dumps(document, sort_keys=True)
            yield document
            if json.dumps(document, sort_keys=True) != before:
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps(document, sort_keys=True, indent=1))
                handle.flush()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def record(kind: str, amount: int = 1) -> None:
    """Add `amount` to the figure `kind` (0 is useful: it makes e.g. records_lost show up as 0)."""
    if not isinstance(kind, str) or not kind:
        raise ValueError("kind must be a non-empty string")
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError("amount must be an int")
    with _locked() as document:
        _this_session(document)
        figures = document["figures"]
        figures[kind] = int(figures.get(kind, 0)) + amount


def note(kind: str, *labels: str) -> None:
    """Count distinct things: the figure `kind` is the number of distinct labels ever noted under it, so a
    test that runs twice, or two tests trying the same input, count it once."""
    if not isinstance(kind, str) or not kind:
        raise ValueError("kind must be a non-empty string")
    if not labels or not all(isinstance(label, str) and label for label in labels):
        raise ValueError("note needs non-empty text labels")
    with _locked() as document:
        _this_session(document)
        distinct = document["distinct"]
        distinct[kind] = sorted(set(distinct.get(kind, [])) | set(labels))


def _this_session(document: dict) -> None:
    if document.get("session") != _session():
        document["session"] = _session()
        document["figures"] = {}
        document["distinct"] = {}


def figures() -> dict[str, int]:
    """The figures recorded so far (by this session, or the last one that recorded anything)."""
    with _locked() as document:
        values = {str(key): int(value) for key, value in document["figures"].items()}
        values.update({str(key): len(labels) for key, labels in document["distinct"].items()})
        return values


def distinct(kind: str) -> list[str]:
    """The labels noted under `kind`."""
    with _locked() as document:
        return list(document["distinct"].get(kind, []))


def reset() -> None:
    """Forget every figure (for a session start hook, if wanted)."""
    with _locked() as document:
        document["session"] = _session()
        document["figures"] = {}
        document["distinct"] = {}


def label(kind: str) -> str:
    """What the figure `kind` counts, in words."""
    if kind in LABELS:
        return LABELS[kind]
    if kind.startswith(FAULT_PREFIX):
        what = kind.removeprefix(FAULT_PREFIX)
        after = what.endswith("_after_store")
        what = what.removesuffix("_after_store")
        words = {"hang": "hang (silence, then close)", "reset": "connection reset", "delay": "delay (answered late)"}
        text = words.get(what, f"HTTP {what}".replace("_retry_after", " with Retry-After"))
        return f"faults the stand-in served: {text}" + (" AFTER storing the batch" if after else "")
    return kind.replace("_", " ")


def summary_lines() -> list[str]:
    """One line per figure, headline figures first; empty when nothing was recorded."""
    values = figures()
    if not values:
        return []
    kinds = [kind for kind in HEADLINE_KINDS if kind in values]
    kinds += sorted(kind for kind in values if kind not in kinds)
    width = max(len(label(kind)) for kind in kinds)
    lines = [f"reliability figures ({figures_path()}):"]
    lines += [f"  {label(kind).ljust(width)}  {values[kind]}" for kind in kinds]
    return lines
