"""A tiny collector of reliability figures: what the adversarial integration tests put the connector through.

Tests call `record(kind, amount)` (records loaded, kill points survived, faults injected by kind, hostile
inputs tried, records lost, records doubled); the figures go to a JSON file so that they add up across test
modules and pytest-xdist workers. `summary_lines()` renders them, for a `pytest_terminal_summary` hook.

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

# The figures every summary shows, even at zero, in this order; any other kind follows alphabetically.
HEADLINE_KINDS = (
    "records_loaded",
    "kill_points_survived",
    "hostile_inputs_tried",
    "records_lost",
    "records_doubled",
)


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
        if document.get("session") != _session():
            document["session"] = _session()
            document["figures"] = {}
        figures = document["figures"]
        figures[kind] = int(figures.get(kind, 0)) + amount


def figures() -> dict[str, int]:
    """The figures recorded so far (by this session, or the last one that recorded anything)."""
    with _locked() as document:
        return {str(key): int(value) for key, value in document["figures"].items()}


def reset() -> None:
    """Forget every figure (for a session start hook, if wanted)."""
    with _locked() as document:
        document["session"] = _session()
        document["figures"] = {}


def summary_lines() -> list[str]:
    """One line per figure, headline figures first; empty when nothing was recorded."""
    values = figures()
    if not values:
        return []
    kinds = [kind for kind in HEADLINE_KINDS if kind in values]
    kinds += sorted(kind for kind in values if kind not in HEADLINE_KINDS)
    width = max(len(kind) for kind in kinds)
    lines = [f"reliability figures ({figures_path()}):"]
    lines += [f"  {kind.replace('_', ' ').ljust(width)}  {values[kind]}" for kind in kinds]
    return lines
